package ratelimit

import (
	"hash/maphash"
	"time"
)

// Slot names one window of one key's limit, as the fleet counts it: the
// key, the window's length, and its index, the number of whole windows
// since the Unix epoch at its start (the window runs from Index × Window
// to (Index + 1) × Window, unix time). Every server names a window alike.
type Slot struct {
	Key    string
	Window time.Duration
	Index  int64
}

// Start is the slot's start, unix nanoseconds.
func (s Slot) Start() int64 { return s.Index * int64(s.Window) }

// Delta is what Pending hands the fleet for one slot: N requests this
// server admitted in it that the fleet was not yet told of. N is 0 for a
// slot whose total is only to be read back.
type Delta struct {
	Slot
	N int64
}

// Pending appends to buf, and returns, what the fleet is to be told at
// now: for every key that admitted a request since its counts were last
// synced, each of its windows' previous and current slots, with the
// requests not yet told (N = 0: to be read back only). It tells nothing
// (returns buf) unless the limiter was made with Options.Fleet.
//
// The fleet's store adds each Delta's N to the slot's fleet-wide total
// (N = 0: reads it) and hands the totals it then holds to Synced, in the
// same order. Until Synced is called for them, the same requests are
// pending again at the next call, together with any newer ones: a sync
// that fails is retried in full by the next.
func (l *Limiter) Pending(now int64, buf []Delta) []Delta {
	if !l.fleet {
		return buf
	}
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		keep := sh.listed[:0]
		for _, e := range sh.listed {
			if sh.get(e.hash, e.key) != e { // swept since
				continue
			}
			unsent := false
			for j := range e.ws {
				w := &e.ws[j]
				w.roll(now)
				unsent = unsent || w.cur.local > w.cur.sent || w.prev.local > w.prev.sent
			}
			if !unsent {
				e.listed = false
				continue
			}
			keep = append(keep, e)
			for j := range e.ws {
				w := &e.ws[j]
				idx := w.start / w.length
				// The previous slot always: a server that takes over a
				// key must learn what the others admitted before it.
				buf = append(buf, Delta{Slot{e.key, time.Duration(w.length), idx - 1}, w.prev.local - w.prev.sent})
				buf = append(buf, Delta{Slot{e.key, time.Duration(w.length), idx}, w.cur.local - w.cur.sent})
			}
		}
		clear(sh.listed[len(keep):])
		sh.listed = keep
		sh.mu.Unlock()
	}
	return buf
}

// Synced takes the fleet's answer to deltas, as Pending gave them:
// totals[i] is the fleet-wide total of deltas[i]'s slot once deltas[i].N
// was added to it (every server's requests that the fleet was told of).
// The deltas count as told, and the other servers' counts in each slot
// become its total less what this server told. A slot that has since
// stopped counting (its window is over, its key swept) is passed over; so
// are deltas without a total.
//
// A server's view of a slot is then its own count plus the others' as of
// its last sync: with no sync (the fleet's store down), it goes on
// deciding from that.
func (l *Limiter) Synced(deltas []Delta, totals []int64) {
	var sh *shard
	for i := range min(len(deltas), len(totals)) {
		d := &deltas[i]
		h := maphash.String(l.seed, d.Key)
		next := &l.shards[h&(numShards-1)]
		if next != sh {
			if sh != nil {
				sh.mu.Unlock()
			}
			sh = next
			sh.mu.Lock()
		}
		e := sh.get(h, d.Key)
		if e == nil {
			continue
		}
		for j := range e.ws {
			w := &e.ws[j]
			if w.length != int64(d.Window) {
				continue
			}
			var c *counts
			switch d.Index {
			case w.start / w.length:
				c = &w.cur
			case w.start/w.length - 1:
				c = &w.prev
			}
			if c != nil {
				c.sent = min(c.sent+max(d.N, 0), c.local)
				c.others = min(max(totals[i]-c.sent, 0), maxOthers)
			}
			break
		}
	}
	if sh != nil {
		sh.mu.Unlock()
	}
}
