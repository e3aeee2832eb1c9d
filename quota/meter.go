package quota

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// MaxWait is the longest a request waits for a block of units on its way
// from the bank, when its server holds too few.
const MaxWait = 250 * time.Millisecond

// SyncInterval is how often a server asks the bank again about keys it
// refused (no units left, or the bank unreachable) that requests still
// come for, gives back what failed to go back, and settles what was
// admitted while the bank was unreachable (Owe).
const SyncInterval = time.Second

// bankTimeout bounds one call to the bank.
const bankTimeout = 2 * time.Second

// Options configure a Meter.
type Options struct {
	// Trouble, if set, is called from the meter's goroutine when a call
	// to the bank fails (err) and when one works again after failing
	// (nil), for the store to log it once.
	Trouble func(err error)
}

// Outcome is what became of a request's spending.
type Outcome uint8

// The outcomes of Spend.
const (
	Spent       Outcome = iota // admitted: its units are spent
	Exceeded                   // refused: the key's quota for the period is used up
	Unavailable                // refused: no units held, and the bank cannot be reached (or is slow)
	Owed                       // admitted while the bank cannot be reached; charged once it can (see Owe)
)

// Decision is the answer to one request's spending.
type Decision struct {
	Outcome   Outcome
	Limit     int64 // the allowance of the period
	Remaining int64 // units left in the period, as this server knows it (its own and the bank's)
	Reset     int64 // when the period ends (unix nanoseconds; Never's for a fixed allowance)
}

// Allowed reports whether the request is admitted.
func (d Decision) Allowed() bool { return d.Outcome == Spent || d.Outcome == Owed }

// ResetSeconds is the number of whole seconds, rounded up, until the
// period ends, from now.
func (d Decision) ResetSeconds(now int64) int64 {
	return max((d.Reset-now+int64(time.Second)-1)/int64(time.Second), 1)
}

// The status of a Holder, as of its last call to the bank.
const (
	statusOK   uint32 = iota
	statusDry         // the bank has no units left for the period
	statusDown        // the bank could not be reached
)

// Holder is one key's units on this server. A caller may keep a key's
// Holder beside the key (see Meter.SpendVia), to spare the lookup by id.
type Holder struct {
	// What a spend reads, in the first 64 bytes (a Holder is 192 bytes,
	// a size class whose objects start on a cache line): one line to
	// load when the key's state is out of the CPU's caches.
	m      *Meter
	held   atomic.Int64  // units taken from the bank, not yet spent
	left   atomic.Int64  // units the bank had left at the last take
	end    atomic.Int64  // unix nanoseconds: when the period of held ends
	q      atomic.Int64  // the quota held was taken under: Requests<<2 | Period
	low    atomic.Int64  // ask for more when held falls below this
	st     atomic.Uint32 // status
	asking atomic.Bool   // an ask is queued or in flight
	wanted atomic.Bool   // a request was refused since the meter last asked about the key
	_      [8]byte

	id     string
	most   atomic.Int64 // the largest cost a request asked for
	owed   atomic.Int64 // units admitted while the bank was down, to charge (Owe)
	mu     sync.Mutex
	period string        // the name of the period of held
	ready  chan struct{} // closed when the ask in flight is answered
	_      [56]byte
}

func packQuota(q Quota) int64 { return q.Requests<<2 | int64(q.Period) }

// Meter spends the quotas of one key set's keys. Its goroutine talks to
// the bank; Spend never does.
type Meter struct {
	bank    Bank
	opt     Options
	holders sync.Map // id -> *Holder

	mu     sync.Mutex
	queue  []*Holder // holders to ask for
	gives  []Give    // units to give back
	signal chan struct{}

	stop   context.CancelFunc
	done   chan struct{}
	closed atomic.Bool
	down   atomic.Bool // the last call to the bank failed
	flush  chan chan struct{}
}

// NewMeter returns a meter on bank, running until Close.
func NewMeter(bank Bank, opt Options) *Meter {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Meter{bank: bank, opt: opt, signal: make(chan struct{}, 1), stop: cancel, done: make(chan struct{}), flush: make(chan chan struct{})}
	go m.run(ctx)
	return m
}

// Spend spends cost units of key id's quota q at now (unix nanoseconds).
// It does no I/O; when the server holds too few units and more are on
// their way, it waits for them at most MaxWait.
func (m *Meter) Spend(id string, q Quota, cost, now int64) Decision {
	return m.spend(m.holder(id), q, cost, now)
}

// SpendVia is Spend with the key's Holder kept in slot, a place beside
// the key: found by id and put there on the first spend, and used as it
// is on the next ones (a Holder of another meter is replaced).
func (m *Meter) SpendVia(slot *atomic.Pointer[Holder], id string, q Quota, cost, now int64) Decision {
	h := slot.Load()
	if h == nil || h.m != m {
		h = m.holder(id)
		slot.Store(h)
	}
	return m.spend(h, q, cost, now)
}

func (m *Meter) spend(h *Holder, q Quota, cost, now int64) Decision {
	if now >= h.end.Load() || h.q.Load() != packQuota(q) {
		m.renew(h, q, now)
	}
	for {
		held := h.held.Load()
		if held < cost {
			break
		}
		if h.held.CompareAndSwap(held, held-cost) {
			if held-cost < h.low.Load() && h.st.Load() == statusOK && !h.asking.Load() {
				m.ask(h)
			}
			return Decision{Outcome: Spent, Limit: q.Requests, Remaining: h.left.Load() + held - cost, Reset: h.end.Load()}
		}
	}
	return m.short(h, q, cost, now)
}

// short is Spend when the server holds fewer than cost units.
func (m *Meter) short(h *Holder, q Quota, cost, now int64) Decision {
	if cost > h.most.Load() {
		h.most.Store(cost)
		h.low.Store(lowMark(q, cost))
	}
	deadline := time.Now().Add(MaxWait)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if held := h.held.Load(); held >= cost {
			if h.held.CompareAndSwap(held, held-cost) {
				return Decision{Outcome: Spent, Limit: q.Requests, Remaining: h.left.Load() + held - cost, Reset: h.end.Load()}
			}
			continue
		}
		d := Decision{Limit: q.Requests, Remaining: h.left.Load() + h.held.Load(), Reset: h.end.Load()}
		switch h.st.Load() {
		case statusDry:
			h.wanted.Store(true)
			d.Outcome = Exceeded
			return d
		case statusDown:
			h.wanted.Store(true)
			d.Outcome = Unavailable
			return d
		}
		if m.closed.Load() {
			d.Outcome = Unavailable
			return d
		}
		ready := m.ask(h)
		wait := time.Until(deadline)
		if wait <= 0 {
			h.wanted.Store(true)
			d.Outcome = Unavailable
			return d
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-ready:
		case <-timer.C:
			h.wanted.Store(true)
			d.Outcome = Unavailable
			return d
		}
	}
}

// Owe notes that a request of key id was admitted for cost units that its
// server did not hold (Spend said Unavailable, and the caller admits
// then): they are charged to the key's quota once the bank can be
// reached, even past its allowance.
func (m *Meter) Owe(id string, cost int64) {
	m.holder(id).owed.Add(cost)
}

// lowMark is the held units under which a Holder asks for more: half its
// block (the largest cost seen, if more), and at least 1.
func lowMark(q Quota, most int64) int64 { return (max(q.Block(), most) + 1) / 2 }

// Holder returns id's Holder, made on first use.
func (m *Meter) holder(id string) *Holder {
	if v, ok := m.holders.Load(id); ok {
		return v.(*Holder)
	}
	h := &Holder{m: m, id: id, ready: make(chan struct{})}
	close(h.ready)
	h.end.Store(-1 << 63) // renewed on first use
	v, _ := m.holders.LoadOrStore(id, h)
	return v.(*Holder)
}

// renew puts a Holder on the period of now and on quota q: the units it
// held for a period that ended go back to the bank, and a changed quota
// is asked about again at once.
func (m *Meter) renew(h *Holder, q Quota, now int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now < h.end.Load() && h.q.Load() == packQuota(q) {
		return // another request renewed it
	}
	name, _, end := q.Period.At(time.Unix(0, now))
	if name != h.period {
		if n := h.held.Swap(0); n > 0 && h.period != "" {
			m.giveBack(Give{ID: h.id, Period: h.period, N: n})
		}
		h.period = name
		h.left.Store(0)
	}
	h.end.Store(end.UnixNano())
	h.q.Store(packQuota(q))
	h.low.Store(lowMark(q, h.most.Load()))
	h.st.Store(statusOK) // a new period or quota: ask the bank again
	if !h.asking.Load() {
		m.askLocked(h)
	}
}

// ask queues h to be asked about, if it is not already, and returns the
// channel closed once it is answered.
func (m *Meter) ask(h *Holder) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return m.askLocked(h)
}

func (m *Meter) askLocked(h *Holder) <-chan struct{} {
	if h.asking.Load() {
		return h.ready
	}
	h.asking.Store(true)
	h.ready = make(chan struct{})
	m.mu.Lock()
	m.queue = append(m.queue, h)
	m.mu.Unlock()
	m.wake()
	return h.ready
}

func (m *Meter) wake() {
	select {
	case m.signal <- struct{}{}:
	default:
	}
}

// giveBack queues units to go back to the bank.
func (m *Meter) giveBack(g Give) {
	m.mu.Lock()
	m.gives = append(m.gives, g)
	m.mu.Unlock()
	m.wake()
}

// run is the meter's goroutine: it asks the bank for what holders need
// and gives back what they return, until the meter is closed.
func (m *Meter) run(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(SyncInterval)
	defer t.Stop()
	for {
		var flushed chan struct{}
		select {
		case <-ctx.Done():
			return
		case <-m.signal:
		case flushed = <-m.flush:
			m.requeue()
		case <-t.C:
			m.requeue()
		}
		m.round(ctx)
		if flushed != nil {
			close(flushed)
		}
	}
}

// requeue asks again about the keys refused since the last ask.
func (m *Meter) requeue() {
	m.holders.Range(func(_, v any) bool {
		h := v.(*Holder)
		if h.st.Load() != statusOK && h.wanted.Load() || h.owed.Load() > 0 {
			m.ask(h)
		}
		return true
	})
}

// Sync asks the bank at once about the keys that were refused, settles
// what is owed and gives back what is due, and returns when that is done
// (for tests and the admin API, which need not wait SyncInterval).
func (m *Meter) Sync() {
	reply := make(chan struct{})
	select {
	case m.flush <- reply:
		<-reply
	case <-m.done:
	}
}

// round makes one call to the bank for the queued asks, and one for the
// queued gives.
func (m *Meter) round(ctx context.Context) {
	m.mu.Lock()
	queue, gives := m.queue, m.gives
	m.queue, m.gives = nil, nil
	m.mu.Unlock()
	if len(gives) > 0 {
		cctx, cancel := context.WithTimeout(ctx, bankTimeout)
		err := m.bank.GiveQuota(cctx, gives)
		cancel()
		m.report(err)
		if err != nil {
			m.mu.Lock()
			m.gives = append(m.gives, gives...) // the next round tries again
			m.mu.Unlock()
		}
	}
	if len(queue) == 0 {
		return
	}
	takes := make([]Take, 0, len(queue))
	asked := make([]*Holder, 0, len(queue))
	for _, h := range queue {
		h.mu.Lock()
		h.wanted.Store(false)
		q := h.q.Load()
		allowance, period := q>>2, Period(q&3)
		owed := h.owed.Swap(0)
		want := max(Quota{Requests: allowance, Period: period}.Block(), h.most.Load()) - h.held.Load()
		if want <= 0 && owed == 0 {
			m.answered(h)
			h.mu.Unlock()
			continue
		}
		takes = append(takes, Take{ID: h.id, Period: h.period, Allowance: allowance, Want: max(want, 0), Owed: owed, Ends: time.Unix(0, h.end.Load()).UTC()})
		asked = append(asked, h)
		h.mu.Unlock()
	}
	if len(takes) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, bankTimeout)
	taken, err := m.bank.TakeQuota(cctx, takes)
	cancel()
	if err == nil && len(taken) != len(takes) {
		err = ErrUnavailable
	}
	m.report(err)
	for i, h := range asked {
		h.mu.Lock()
		switch {
		case err != nil:
			h.owed.Add(takes[i].Owed) // still owed
			h.st.Store(statusDown)
			h.wanted.Store(true) // asked again next round
		case takes[i].Period != h.period:
			// The period ended while the bank answered: what was taken
			// goes back to the period it came from.
			if taken[i].Got > 0 {
				m.giveBack(Give{ID: h.id, Period: takes[i].Period, N: taken[i].Got})
			}
		default:
			got := taken[i].Got
			h.held.Add(got)
			h.left.Store(taken[i].Left)
			if taken[i].Left == 0 && got < takes[i].Want {
				h.st.Store(statusDry)
			} else {
				h.st.Store(statusOK)
			}
		}
		m.answered(h)
		h.mu.Unlock()
	}
}

// answered ends h's ask; h.mu is held.
func (m *Meter) answered(h *Holder) {
	h.asking.Store(false)
	close(h.ready)
	h.ready = make(chan struct{})
	close(h.ready) // nothing in flight: a waiter does not wait
}

// report tells Options.Trouble of a call that failed, or worked after one
// failed.
func (m *Meter) report(err error) {
	was := m.down.Swap(err != nil)
	if m.opt.Trouble != nil && (err != nil && !was || err == nil && was) {
		m.opt.Trouble(err)
	}
}

// Close stops the meter and gives back every unit its holders hold,
// waiting for the bank at most bankTimeout.
func (m *Meter) Close() {
	if m.closed.Swap(true) {
		return
	}
	m.stop()
	<-m.done
	var gives []Give
	var owed []Take
	m.holders.Range(func(_, v any) bool {
		h := v.(*Holder)
		h.mu.Lock()
		if n := h.held.Swap(0); n > 0 {
			gives = append(gives, Give{ID: h.id, Period: h.period, N: n})
		}
		if n := h.owed.Swap(0); n > 0 {
			owed = append(owed, Take{ID: h.id, Period: h.period, Allowance: h.q.Load() >> 2, Owed: n, Ends: time.Unix(0, h.end.Load()).UTC()})
		}
		h.mu.Unlock()
		return true
	})
	m.mu.Lock()
	gives = append(gives, m.gives...)
	m.gives = nil
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), bankTimeout)
	defer cancel()
	if len(gives) > 0 {
		m.report(m.bank.GiveQuota(ctx, gives))
	}
	if len(owed) > 0 {
		_, err := m.bank.TakeQuota(ctx, owed)
		m.report(err)
	}
}

// Held is how many units of key id's quota this server holds.
func (m *Meter) Held(id string) int64 {
	if v, ok := m.holders.Load(id); ok {
		return v.(*Holder).held.Load()
	}
	return 0
}
