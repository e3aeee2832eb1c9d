package keyset

import (
	"sync"
	"sync/atomic"
)

// MaxCounted is how many results a key's counts can tell apart.
const MaxCounted = 8

// countCell holds one key's request counts by result, since the key was
// first counted in this process: requests add to them, the count
// tracker's owner reads what is new.
type countCell struct {
	id     string
	counts [MaxCounted]atomic.Int64
	sent   [MaxCounted]int64 // the counts as of the last Collect: the collector's
	queued atomic.Bool       // already handed to the collector
}

// Count is n requests of key ID with result Result (an index the caller
// gave Count), counted since the last Collect.
type Count struct {
	ID     string
	Result int
	N      int64
}

// CountTracker counts each key's requests by result on the request path,
// for a store's usage counts; one goroutine collects what is new.
type CountTracker struct {
	mu       sync.Mutex
	incoming []*countCell
}

// Count adds one request of key k with result r (0 to MaxCounted-1): an
// atomic add, and at worst an append under a short lock once per key per
// collection.
func (t *CountTracker) Count(k *Key, r int) {
	c := k.counts.Load()
	if c == nil {
		c = &countCell{id: k.ID}
		if !k.counts.CompareAndSwap(nil, c) {
			c = k.counts.Load()
		}
	}
	c.counts[r].Add(1)
	if !c.queued.Load() && c.queued.CompareAndSwap(false, true) {
		t.mu.Lock()
		t.incoming = append(t.incoming, c)
		t.mu.Unlock()
	}
}

// Collect appends to buf, and returns, the counts made since the last
// Collect, one per key and result with any; the caller owns them from
// then on (a write that fails must keep them for the next).
func (t *CountTracker) Collect(buf []Count) []Count {
	t.mu.Lock()
	cells := t.incoming
	t.incoming = nil
	t.mu.Unlock()
	for _, c := range cells {
		// Lower the flag before reading, so that a request after the
		// read queues the cell again instead of being missed.
		c.queued.Store(false)
		for r := range c.counts {
			if n := c.counts[r].Load(); n > c.sent[r] {
				buf = append(buf, Count{ID: c.id, Result: r, N: n - c.sent[r]})
				c.sent[r] = n
			}
		}
	}
	return buf
}
