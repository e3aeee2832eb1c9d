package keyset

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"time"
)

// usageResolution is how stale a key's in-memory last-used time may get.
// Updating it at most once a second keeps many cores from all writing the
// same cache line on every request.
const usageResolution = int64(time.Second)

// usageCell holds the last-used time of one key. Requests write lastUsed;
// the store's writer owns the rest.
type usageCell struct {
	id   string
	hash [sha256.Size]byte

	lastUsed atomic.Int64 // unix nanoseconds of the latest use seen
	queued   atomic.Bool  // already handed to the writer

	persistedAt time.Time // when the writer last wrote this key
	written     int64     // the lastUsed value last written
}

// UsageKey names one key for a usage write: its id and key_hash (lowercase
// hex). A key whose record now has the same id but another hash was
// replaced, and its old uses are not the new key's.
type UsageKey struct{ ID, Hash string }

// UsageTracker notes uses on the request path and hands the due ones to a
// store's writer, which is the only goroutine to call Collect and Done.
type UsageTracker struct {
	// incoming collects cells used since the writer last looked; a cell
	// is appended once, when its queued flag goes up.
	incomingMu sync.Mutex
	incoming   []*usageCell

	waiting map[*usageCell]struct{} // the writer's
}

// Mark records a use of key k (whose hash is sum) at now. At worst it
// appends to a slice under a short lock, once per key per write cycle.
func (u *UsageTracker) Mark(k *Key, sum [sha256.Size]byte, now int64) {
	c := k.usage.Load()
	if c == nil {
		c = &usageCell{id: k.ID, hash: sum}
		if !k.usage.CompareAndSwap(nil, c) {
			c = k.usage.Load()
		}
	}
	if now-c.lastUsed.Load() >= usageResolution {
		c.lastUsed.Store(now)
	}
	if !c.queued.Load() && c.queued.CompareAndSwap(false, true) {
		u.incomingMu.Lock()
		u.incoming = append(u.incoming, c)
		u.incomingMu.Unlock()
	}
}

// UsageBatch is one usage write: the latest use of each due key.
type UsageBatch struct {
	Updates map[UsageKey]time.Time
	due     []dueCell
	at      time.Time
}

type dueCell struct {
	cell *usageCell
	used int64
}

// Collect returns the uses due for writing at now: those of keys not
// written within iv, or all of them; nil when none is due.
func (u *UsageTracker) Collect(all bool, iv time.Duration, now time.Time) *UsageBatch {
	u.incomingMu.Lock()
	if u.waiting == nil {
		u.waiting = make(map[*usageCell]struct{})
	}
	for _, c := range u.incoming {
		u.waiting[c] = struct{}{}
	}
	u.incoming = u.incoming[:0]
	u.incomingMu.Unlock()
	if len(u.waiting) == 0 {
		return nil
	}
	b := &UsageBatch{Updates: make(map[UsageKey]time.Time), at: now}
	for c := range u.waiting {
		if !all && !c.persistedAt.IsZero() && now.Sub(c.persistedAt) < iv {
			continue
		}
		// Lower the flag before reading the time, so that a use after
		// the read queues the cell again instead of being missed.
		c.queued.Store(false)
		used := c.lastUsed.Load()
		if used <= c.written {
			delete(u.waiting, c)
			continue
		}
		b.due = append(b.due, dueCell{c, used})
		key := UsageKey{c.id, hex.EncodeToString(c.hash[:])}
		if at := time.Unix(0, used); at.After(b.Updates[key]) {
			b.Updates[key] = at
		}
	}
	if len(b.due) == 0 {
		return nil
	}
	return b
}

// Pending is how many keys have uses the writer has not written yet, as
// of its last Collect.
func (u *UsageTracker) Pending() int { return len(u.waiting) }

// Done marks a batch written.
func (u *UsageTracker) Done(b *UsageBatch) {
	for _, d := range b.due {
		d.cell.written = d.used
		d.cell.persistedAt = b.at
		delete(u.waiting, d.cell)
	}
}

// CarryUsage moves the usage cells of keys that are still the same key (same
// hash, same id) into the new key set, so their throttle state survives a
// reload.
func CarryUsage(old, next *KeySet) {
	for sum, i := range next.byHash {
		k := &next.keys[i]
		if prev := old.Find(sum); prev != nil && prev.ID == k.ID {
			if c := prev.usage.Load(); c != nil {
				k.usage.Store(c)
			}
			if c := prev.counts.Load(); c != nil {
				k.counts.Store(c)
			}
			k.meter.Store(prev.meter.Load())
		}
	}
}
