package ratelimit

import (
	"hash/maphash"
	"math/bits"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Limiter decides, in memory, whether each request of a key is within the
// key's limits. It is safe for concurrent use. The zero Limiter is not
// ready: make one with New.
type Limiter struct {
	seed   maphash.Seed
	fleet  bool
	shards [numShards]shard
}

// Options configure a Limiter.
type Options struct {
	// Fleet says that the limiter's counts are shared with other servers
	// (Pending and Synced). Without it, the limiter keeps no list of keys
	// to share and Pending returns nothing.
	Fleet bool
}

// New returns a Limiter.
func New(opts Options) *Limiter {
	l := &Limiter{seed: maphash.MakeSeed(), fleet: opts.Fleet}
	for i := range l.shards {
		l.shards[i].m = make(map[uint64]*entry)
	}
	return l
}

// numShards is how many parts the keys' state is split into, each behind
// its own lock.
const numShards = 256

// autoSweepMin is how many keys a shard adds before it sweeps itself (see
// shard.add).
const autoSweepMin = 1024

type shard struct {
	shardState
	_ [64]byte // keeps two shards' locks out of one cache line
}

type shardState struct {
	mu sync.Mutex
	// m holds the keys' entries by the hash of their key (the one that
	// picks the shard: no second hash, and no key to read elsewhere in
	// memory); a key whose hash another key already has, which happens
	// about once in 10¹³ keys, is in collided.
	m        map[uint64]*entry
	collided map[string]*entry
	// listed holds the keys with admissions the fleet has not been told of
	// (with Options.Fleet): Pending walks it rather than every key.
	listed  []*entry
	inserts int // keys added since the last sweep
	swept   int // keys left by the last sweep
	peak    int // the most keys the map has held since it was made
}

// entry is a key's state.
type entry struct {
	key    string   // the limiter's own copy: in kbuf when it fits
	hash   uint64   // maphash of key
	ws     []window // its windows: those of its limits first, in their order
	listed bool     // in its shard's listed
	kbuf   [keyInline]byte
}

// keyInline is the longest key kept in its entry (an id as the commands
// make them, a UUID, has 36 characters), so that checking a key reads no
// other memory.
const keyInline = 40

// entry1 is the entry of a key with one limit, in one allocation.
type entry1 struct {
	entry
	w [1]window
}

// window is the state of one of a key's limits: the counts of the window
// that holds the present and of the one before it. Windows are aligned on
// the Unix epoch (a window of length L starts at a multiple of L), so that
// every server of a fleet agrees on them without a word.
type window struct {
	length    int64 // nanoseconds
	start     int64 // the current window's start, unix nanoseconds (a multiple of length)
	cur, prev counts
}

// counts are one window's requests admitted.
type counts struct {
	local  int64 // admitted by this limiter
	sent   int64 // of local, how many the fleet was told of (Synced)
	others int64 // admitted by the fleet's other servers, as of the last sync
}

func (c *counts) total() int64 { return c.local + c.others }

// maxOthers bounds the other servers' counts that a sync may bring: a
// damaged or hostile total must not overflow the arithmetic (it refuses
// the key's requests, as a total that high means to).
const maxOthers = 1 << 50

// roll moves w to the window that holds now and returns how far into it
// now is. A now before the current window (the clock stepped back, or a
// request that read the time before another that rolled the window) is
// taken as the current window's start.
func (w *window) roll(now int64) int64 {
	e := now - w.start
	if e >= 0 && e < w.length {
		return e
	}
	if e < 0 {
		return 0
	}
	n := e / w.length
	w.start += n * w.length
	if n == 1 {
		w.prev = w.cur
	} else {
		w.prev = counts{}
	}
	w.cur = counts{}
	return e - n*w.length
}

// used is the count that a request e into the current window is weighed
// against: the current window's count plus the previous window's, weighted
// by the part of the previous window that the sliding window still covers,
// rounded up: cur + ⌈prev × (L − e) / L⌉.
func (w *window) used(e int64) int64 {
	c, p := w.cur.total(), w.prev.total()
	if p == 0 {
		return c
	}
	hi, lo := bits.Mul64(uint64(p), uint64(w.length-e))
	q, r := bits.Div64(hi, lo, uint64(w.length)) // q ≤ p: no overflow
	if r != 0 {
		q++
	}
	return c + int64(q)
}

// retryAfter is how long after e a request would be admitted, for a window
// that refuses one at e (used(e) ≥ limit) and no further request: the
// earliest time the weighted count falls below limit. The weight of the
// previous window falls as the window slides, so that time is the first of
// a range that lasts.
func (w *window) retryAfter(limit, e int64) int64 {
	L := w.length
	c, p := w.cur.total(), w.prev.total()
	if room := limit - 1 - c; room >= 0 && p > room {
		// Within this window, at the e′ where p × (L − e′) ≤ room × L.
		hi, lo := bits.Mul64(uint64(room), uint64(L))
		q, _ := bits.Div64(hi, lo, uint64(p)) // q < L, as room < p
		if at := L - int64(q); at < L && at > e {
			return at - e
		}
	}
	// In the next window, whose previous count is c and current count 0,
	// at the e″ where c × (L − e″) ≤ (limit − 1) × L: L when the limit
	// is 1 (the window after it).
	var at int64
	if c > limit-1 {
		hi, lo := bits.Mul64(uint64(limit-1), uint64(L))
		q, _ := bits.Div64(hi, lo, uint64(c)) // q < L, as limit − 1 < c
		at = L - int64(q)
	}
	return L - e + at
}

// resetIn is how long after e, with no further request, until nothing is
// counted any more: the current window's count weighs until the end of
// the next window, the previous one's until the end of this one.
func (w *window) resetIn(e int64) int64 {
	switch {
	case w.cur.total() > 0:
		return 2*w.length - e
	case w.prev.total() > 0:
		return w.length - e
	}
	return 0
}

// idle reports whether nothing of w counts at now any more.
func (w *window) idle(now int64) bool { return now-w.start >= 2*w.length }

// Decision is what Allow decided for one request, with what the headers
// say of the limit that binds.
type Decision struct {
	Allowed bool
	// Limit is the limit that binds: of those that admitted the request,
	// the one with the fewest requests remaining (the longer window on a
	// tie); of those that refused it, the one that refuses longest.
	Limit Limit
	// Remaining is how many more requests Limit admits now (0 when
	// refused).
	Remaining int64
	// Reset is how long until Limit counts nothing, if no request came:
	// its quota whole again.
	Reset time.Duration
	// RetryAfter, when refused, is how long until a request would be
	// admitted by every limit, if none came before.
	RetryAfter time.Duration
}

// Seconds is d in whole seconds, rounded up, as headers give times.
func Seconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// RetryAfterSeconds is RetryAfter for the Retry-After header: whole seconds,
// rounded up, at least 1.
func (d Decision) RetryAfterSeconds() int64 { return max(1, Seconds(d.RetryAfter)) }

// ResetSeconds is Reset in whole seconds, rounded up, for the reset of the
// RateLimit and X-RateLimit-Reset headers.
func (d Decision) ResetSeconds() int64 { return Seconds(d.Reset) }

// Allow decides a request of key, whose limits are limits, at now (unix
// nanoseconds), and counts it if admitted. Every limit must admit the
// request for it to be admitted, and then it is counted against all of
// them; a refused request is counted against none, so that a client that
// keeps trying is not kept out for it.
//
// limits are a key's limits as CheckLimits accepts them (at most
// MaxLimits, each within bounds, no two with the same window); no limits
// admit everything. A list it cannot use (more than MaxLimits, a
// non-positive request count or window) refuses every request: fail
// closed. A key's state follows its limits by window: the state of a
// window it keeps stays when its limits change.
//
// For a key that has state for these limits, Allow does not allocate.
func (l *Limiter) Allow(key string, limits []Limit, now int64) Decision {
	if len(limits) == 0 {
		return Decision{Allowed: true}
	}
	if len(limits) > MaxLimits {
		return Decision{Limit: limits[0]}
	}
	for _, lim := range limits {
		if lim.Requests <= 0 || lim.Window <= 0 {
			return Decision{Limit: lim}
		}
	}
	h := maphash.String(l.seed, key)
	sh := &l.shards[h&(numShards-1)]
	sh.mu.Lock()
	e := sh.get(h, key)
	var pos [MaxLimits]uint8 // limits[i]'s window is e.ws[pos[i]]
	if e == nil || !e.find(limits, &pos) {
		e = sh.add(h, key, e, limits, now)
		for i := range limits {
			pos[i] = uint8(i)
		}
	}
	ws := e.ws
	var used, el [MaxLimits]int64
	allowed := true
	for i, lim := range limits {
		w := &ws[pos[i]]
		el[i] = w.roll(now)
		used[i] = w.used(el[i])
		if used[i] >= lim.Requests {
			allowed = false
		}
	}
	var d Decision
	best := 0
	if allowed {
		d.Allowed = true
		for i, lim := range limits {
			ws[pos[i]].cur.local++
			rem := lim.Requests - used[i] - 1
			if i == 0 || rem < d.Remaining || (rem == d.Remaining && lim.Window > d.Limit.Window) {
				best, d.Remaining, d.Limit = i, rem, lim
			}
		}
		if l.fleet && !e.listed {
			e.listed = true
			sh.listed = append(sh.listed, e)
		}
	} else {
		for i, lim := range limits {
			if used[i] < lim.Requests {
				continue
			}
			if r := time.Duration(ws[pos[i]].retryAfter(lim.Requests, el[i])); d.RetryAfter == 0 || r > d.RetryAfter {
				best, d.RetryAfter, d.Limit = i, r, lim
			}
		}
	}
	d.Reset = time.Duration(ws[pos[best]].resetIn(el[best]))
	sh.mu.Unlock()
	return d
}

// find sets pos[i] to the index in e.ws of the window of limits[i], and
// reports whether e has them all. The windows of the limits a key was
// last given are first, in their order: found at once.
func (e *entry) find(limits []Limit, pos *[MaxLimits]uint8) bool {
	for i, lim := range limits {
		if i < len(e.ws) && e.ws[i].length == int64(lim.Window) {
			pos[i] = uint8(i)
			continue
		}
		j := 0
		for j < len(e.ws) && e.ws[j].length != int64(lim.Window) {
			j++
		}
		if j == len(e.ws) {
			return false
		}
		pos[i] = uint8(j)
	}
	return true
}

// get returns the entry of key, whose hash is h, or nil.
func (sh *shardState) get(h uint64, key string) *entry {
	e := sh.m[h]
	if e != nil && e.key != key {
		e = sh.collided[key]
	}
	return e
}

// add gives key (whose hash is h, and entry e, nil for a new key) the windows of
// limits, first and in their order: it keeps the state of a window it
// already has, and of its other windows those that still count; it
// returns the entry. It allocates.
func (sh *shardState) add(h uint64, key string, e *entry, limits []Limit, now int64) *entry {
	var old []window
	if e != nil {
		old = e.ws
	}
	var next []window
	if e == nil && len(limits) == 1 {
		e1 := &entry1{}
		e, next = &e1.entry, e1.w[:]
	} else {
		if e == nil {
			e = &entry{}
		}
		next = make([]window, len(limits), len(limits)+len(old))
	}
	for i, lim := range limits {
		next[i] = window{length: int64(lim.Window)}
		found := false
		for j := range old {
			if old[j].length == next[i].length {
				next[i], found = old[j], true
				break
			}
		}
		if !found {
			next[i].start = now - floorMod(now, next[i].length)
		}
	}
	for j := range old {
		kept := false
		for i := range limits {
			kept = kept || next[i].length == old[j].length
		}
		if !kept && !old[j].idle(now) {
			next = append(next, old[j])
		}
	}
	if e.key == "" {
		// A new key. The caller's string may be a view of a larger block
		// (a key set's strings share one): the limiter keeps a copy.
		if len(key) <= keyInline {
			n := copy(e.kbuf[:], key)
			e.key = unsafe.String(&e.kbuf[0], n)
		} else {
			e.key = strings.Clone(key)
		}
		e.hash = h
		sh.inserts++
		if sh.inserts > max(sh.swept, autoSweepMin) {
			sh.sweep(now)
		}
		if sh.m[h] == nil {
			sh.m[h] = e
		} else {
			if sh.collided == nil {
				sh.collided = make(map[string]*entry)
			}
			sh.collided[e.key] = e
		}
		sh.peak = max(sh.peak, len(sh.m))
	}
	e.ws = next
	return e
}

// floorMod is a mod b for b > 0, in [0, b).
func floorMod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// Sweep drops the state of every key that counts nothing at now any more
// (all its windows, and the ones before them, are over), and gives back
// the memory of a shard that shrank to a quarter of its peak. It returns
// how many keys it dropped. Run it on a timer (every window or so); a
// shard also sweeps itself as it grows, once it has added as many keys as
// it held after its last sweep, so that state stays bounded without it.
func (l *Limiter) Sweep(now int64) int {
	freed := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		freed += sh.sweep(now)
		sh.mu.Unlock()
	}
	return freed
}

func (sh *shardState) sweep(now int64) int {
	freed := 0
	for h, e := range sh.m {
		if e.idle(now) {
			delete(sh.m, h)
			freed++
		}
	}
	for k, e := range sh.collided {
		if e.idle(now) {
			delete(sh.collided, k)
			freed++
		}
	}
	if len(sh.collided) == 0 {
		sh.collided = nil
	}
	if len(sh.m) <= sh.peak/4 && sh.peak >= 16 {
		// A map keeps its size when emptied: make it again.
		m := make(map[uint64]*entry, len(sh.m))
		for h, e := range sh.m {
			m[h] = e
		}
		sh.m, sh.peak = m, len(m)
	}
	if freed > 0 && len(sh.listed) > 0 {
		keep := sh.listed[:0]
		for _, e := range sh.listed {
			if sh.get(e.hash, e.key) == e {
				keep = append(keep, e)
			}
		}
		clear(sh.listed[len(keep):])
		sh.listed = keep
	}
	if cap(sh.listed) > 64 && len(sh.listed) < cap(sh.listed)/4 {
		sh.listed = append([]*entry(nil), sh.listed...)
	}
	sh.swept, sh.inserts = len(sh.m)+len(sh.collided), 0
	return freed
}

// idle reports whether nothing of e counts at now any more.
func (e *entry) idle(now int64) bool {
	for i := range e.ws {
		if !e.ws[i].idle(now) {
			return false
		}
	}
	return true
}

// Len is how many keys the limiter holds state for.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.m) + len(sh.collided)
		sh.mu.Unlock()
	}
	return n
}
