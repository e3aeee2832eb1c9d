package storecore

// Trouble is one kind of trouble a store meets again and again while it
// lasts (a file that cannot be read, a Redis that cannot be reached, writes
// that fail): it is logged once when it starts, again only if it changes
// (another error), and once when it ends, never once per try. The zero
// Trouble is no trouble. It is not safe for concurrent use: each store
// goroutine keeps its own.
type Trouble struct {
	on   bool
	last string // what was last reported
}

// Meet notes that the trouble is there, err saying what; it reports whether
// that is news to log: the trouble was not there before, or said another
// thing.
func (t *Trouble) Meet(err error) bool {
	what := ""
	if err != nil {
		what = err.Error()
	}
	news := !t.on || what != t.last
	t.on, t.last = true, what
	return news
}

// Start notes that the trouble is there; it reports whether it was not
// before (whatever it says).
func (t *Trouble) Start() bool {
	news := !t.on
	t.on = true
	return news
}

// End notes that the trouble is over; it reports whether it was there, so
// that its end is logged once.
func (t *Trouble) End() bool {
	was := t.on
	t.on, t.last = false, ""
	return was
}

// On reports whether the trouble is there.
func (t *Trouble) On() bool { return t.on }
