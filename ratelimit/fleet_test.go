package ratelimit

import (
	"slices"
	"testing"
	"time"
)

// hub stands for the fleet's store (Redis): a total per slot, to which
// each server adds its deltas and from which it reads the sums back, as
// HINCRBY does.
type hub struct {
	totals map[Slot]int64
	ops    int // commands a store would run: one per delta
}

func newHub() *hub { return &hub{totals: make(map[Slot]int64)} }

// sync is one server's sync: its deltas added, the totals handed back.
func (h *hub) sync(l *Limiter, now int64) {
	ds := l.Pending(now, nil)
	totals := make([]int64, len(ds))
	for i, d := range ds {
		h.totals[d.Slot] += d.N
		totals[i] = h.totals[d.Slot]
	}
	h.ops += len(ds)
	l.Synced(ds, totals)
}

// Three servers' counts add up: each sees the others' after a sync, and
// refuses once the fleet has used the limit.
func TestFleetMerge(t *testing.T) {
	h := newHub()
	servers := []*Limiter{New(Options{Fleet: true}), New(Options{Fleet: true}), New(Options{Fleet: true})}
	lim := []Limit{{100, time.Minute}}
	for _, s := range servers {
		if n := allowN(s, "k", lim, at(0), 40); n != 40 {
			t.Fatalf("%d admitted before any sync", n)
		}
	}
	for _, s := range servers {
		h.sync(s, at(time.Millisecond))
	}
	if got := h.totals[Slot{"k", time.Minute, t0 / int64(time.Minute)}]; got != 120 {
		t.Fatalf("fleet total %d, want 120", got)
	}
	// The third server synced last: it saw all 120 and refuses.
	if d := servers[2].Allow("k", lim, at(time.Second)); d.Allowed {
		t.Fatalf("third server: %+v, want refused (the fleet used 120 of 100)", d)
	}
	// The first synced first and has seen only its own 40: it admits one
	// more, learns of the others at its next sync, and then refuses.
	if d := servers[0].Allow("k", lim, at(time.Second)); !d.Allowed || d.Remaining != 59 {
		t.Fatalf("first server: %+v, want admitted with 59 remaining (its own view)", d)
	}
	h.sync(servers[0], at(1100*time.Millisecond))
	if d := servers[0].Allow("k", lim, at(2*time.Second)); d.Allowed {
		t.Fatalf("first server after its sync: %+v, want refused", d)
	}
	// The others' counts weigh in the next window too, as the previous
	// window's: 121 × 50/60 = 101 at 10 s into it.
	if d := servers[2].Allow("k", lim, at(time.Minute+10*time.Second)); d.Allowed {
		t.Fatalf("next window: %+v, want refused (121 weighted by 5/6 is 101)", d)
	}
}

// A sync that fails (no Synced) loses nothing: the same requests are
// pending again, with the newer ones.
func TestFleetSyncFailure(t *testing.T) {
	l := New(Options{Fleet: true})
	lim := []Limit{{100, time.Minute}}
	allowN(l, "k", lim, at(0), 10)
	ds := l.Pending(at(time.Millisecond), nil)
	slot := Slot{"k", time.Minute, t0 / int64(time.Minute)}
	prev := Slot{"k", time.Minute, slot.Index - 1}
	if !slices.Equal(ds, []Delta{{prev, 0}, {slot, 10}}) {
		t.Fatalf("Pending: %+v", ds)
	}
	// The push failed: no Synced.
	allowN(l, "k", lim, at(time.Second), 5)
	ds = l.Pending(at(time.Second), ds[:0])
	if !slices.Equal(ds, []Delta{{prev, 0}, {slot, 15}}) {
		t.Fatalf("Pending after a failed sync: %+v, want 15", ds)
	}
	// Admitted between Pending and Synced: still pending afterwards.
	allowN(l, "k", lim, at(time.Second), 2)
	l.Synced(ds, []int64{0, 15 + 30}) // 30 from other servers
	ds = l.Pending(at(2*time.Second), ds[:0])
	if !slices.Equal(ds, []Delta{{prev, 0}, {slot, 2}}) {
		t.Fatalf("Pending after a sync: %+v, want the 2 admitted meanwhile", ds)
	}
	l.Synced(ds, []int64{0, 47})
	if ds = l.Pending(at(3*time.Second), ds[:0]); len(ds) != 0 {
		t.Fatalf("nothing new, yet pending: %+v", ds)
	}
	// 17 own + 30 others: 53 more.
	if n := allowN(l, "k", lim, at(4*time.Second), 100); n != 53 {
		t.Fatalf("%d admitted, want 53", n)
	}
	// Without Options.Fleet, nothing is ever pending.
	solo := New(Options{})
	allowN(solo, "k", lim, at(0), 5)
	if ds := solo.Pending(at(0), nil); len(ds) != 0 {
		t.Fatalf("Pending without Fleet: %+v", ds)
	}
}

// Requests admitted at the end of a window and told after it rolled are
// told as the previous window's, and its total read back weighs in.
func TestFleetWindowRoll(t *testing.T) {
	l := New(Options{Fleet: true})
	lim := []Limit{{100, time.Minute}, {1000, time.Hour}}
	allowN(l, "k", lim, at(59*time.Second), 7)
	ds := l.Pending(at(time.Minute+50*time.Millisecond), nil)
	idx := t0 / int64(time.Minute)
	hour := t0 / int64(time.Hour)
	want := []Delta{
		{Slot{"k", time.Minute, idx}, 7},     // previous
		{Slot{"k", time.Minute, idx + 1}, 0}, // current: read only
		{Slot{"k", time.Hour, hour - 1}, 0},
		{Slot{"k", time.Hour, hour}, 7},
	}
	if !slices.Equal(ds, want) {
		t.Fatalf("Pending:\n%+v\nwant\n%+v", ds, want)
	}
	l.Synced(ds, []int64{7 + 60, 0, 0, 7 + 60})
	// At 30 s into the new window: ⌈67 × 1/2⌉ = 34 weighs: 66 admitted.
	if n := allowN(l, "k", lim, at(time.Minute+30*time.Second), 100); n != 66 {
		t.Fatalf("%d admitted, want 66", n)
	}
	// A slot whose window is over is passed over.
	l.Synced([]Delta{{Slot{"k", time.Minute, idx - 5}, 3}}, []int64{1 << 40})
	l.Synced([]Delta{{Slot{"gone", time.Minute, idx}, 3}}, []int64{3})
	// A hostile total refuses, never overflows.
	l.Synced([]Delta{{Slot{"k", time.Hour, t0 / int64(time.Hour)}, 0}}, []int64{1 << 62})
	if d := l.Allow("k", lim, at(time.Minute+31*time.Second)); d.Allowed || d.Limit != lim[1] || d.RetryAfter <= 0 {
		t.Fatalf("after a huge total: %+v, want refused by the 1h limit", d)
	}
}

// With the store down (no sync for minutes), every server goes on
// deciding from what it has: never more than the limit on its own, and
// with the others' counts as last seen.
func TestFleetStoreDown(t *testing.T) {
	h := newHub()
	a, b := New(Options{Fleet: true}), New(Options{Fleet: true})
	lim := []Limit{{100, time.Minute}}
	allowN(a, "k", lim, at(0), 30)
	allowN(b, "k", lim, at(0), 30)
	h.sync(a, at(time.Millisecond))
	h.sync(b, at(time.Millisecond))
	// Down from here: b saw a's 30; a did not see b's.
	if n := allowN(b, "k", lim, at(time.Second), 100); n != 40 {
		t.Fatalf("b admitted %d, want 40", n)
	}
	if n := allowN(a, "k", lim, at(time.Second), 100); n != 70 {
		t.Fatalf("a admitted %d, want 70", n)
	}
	for m := range 5 {
		now := at(time.Duration(m+2) * time.Minute)
		for _, s := range []*Limiter{a, b} {
			if n := allowN(s, "k", lim, now, 200); n > 100 {
				t.Fatalf("minute %d: %d admitted by one server", m+2, n)
			}
			s.Pending(now, nil) // tried, failed: no Synced
		}
	}
}

// fleetRun simulates servers behind a load balancer on one key: requests
// arrive every `every`, each to the server route(i) picks; each server syncs
// with the hub every `sync`, at its own phase. It returns the admission
// times.
func fleetRun(servers []*Limiter, h *hub, lim []Limit, start, end, every, sync time.Duration, route func(i int) int) []int64 {
	var admitted []int64
	n := len(servers)
	next := make([]int64, n)
	for i := range n {
		next[i] = at(start) + int64(sync)*int64(i)/int64(n)
	}
	i := 0
	for t := at(start); t < at(end); t += int64(every) {
		for s := range n {
			for next[s] <= t {
				h.sync(servers[s], next[s])
				next[s] += int64(sync)
			}
		}
		if servers[route(i)].Allow("k", lim, t).Allowed {
			admitted = append(admitted, t)
		}
		i++
	}
	return admitted
}

// Three servers, round-robin and then all on one, at 3× a limit of
// 600/1m, syncing every 100 ms: the fleet admits within 3 % of the limit
// per window, and within the overshoot bound of the package
// documentation.
func TestFleetAccuracy(t *testing.T) {
	const S = 100 * time.Millisecond
	servers := []*Limiter{New(Options{Fleet: true}), New(Options{Fleet: true}), New(Options{Fleet: true})}
	h := newHub()
	lim := []Limit{{600, time.Minute}}
	every := time.Minute / 1800 // 3×: 30 a second
	rr := fleetRun(servers, h, lim, 0, 3*time.Minute, every, S, func(i int) int { return i % 3 })
	one := fleetRun(servers, h, lim, 3*time.Minute, 6*time.Minute, every, S, func(int) int { return 0 })
	back := fleetRun(servers, h, lim, 6*time.Minute, 9*time.Minute, every, S, func(int) int { return 2 })
	all := slices.Concat(rr, one, back)
	fixed := perWindow(all, time.Minute)
	lo, hi := slidingMinMax(all, time.Minute, at(2*time.Minute))
	t.Logf("fleet of 3, sync %v, 600/1m at 3×: admitted per fixed window %v; per sliding minute %d to %d (from 2 min on)", S, fixed, lo, hi)
	// Bound: 2·S·λ·(N−1)/N = 2 × 0.1 s × 30/s × 2/3 = 4 (round-robin); a
	// switch of all traffic to a server that has not seen the key for a
	// while: λ·S = 3.
	for i, n := range fixed {
		if n < 594 || n > 606 {
			t.Errorf("window %d: %d admitted, want within 3 %% of 600 (and 1 %% here)", i, n)
		}
		if n > 600+4 {
			t.Errorf("window %d: %d admitted, more than the bound 604", i, n)
		}
	}
	if hi > 600+4 {
		t.Errorf("a sliding minute held %d, more than the bound 604", hi)
	}
	t.Logf("hub operations: %d over 9 minutes (%.1f per second per server)", h.ops, float64(h.ops)/540/3)
}

// The overshoot bound is an upper bound where it matters: at 1000
// requests a second round-robin on three servers, a limit of 6000/1m and
// syncs every 100 ms, the fleet admits at most 2·S·λ·(N−1)/N = 133 more
// than the limit in any fixed window.
func TestFleetOvershootBound(t *testing.T) {
	if testing.Short() {
		t.Skip("720 000 simulated requests: about 5 s with the race detector")
	}
	for _, S := range []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, time.Second} {
		servers := []*Limiter{New(Options{Fleet: true}), New(Options{Fleet: true}), New(Options{Fleet: true})}
		h := newHub()
		lim := []Limit{{6000, time.Minute}}
		const lambda = 1000.0
		admitted := fleetRun(servers, h, lim, 0, 4*time.Minute, time.Second/1000, S, func(i int) int { return i % 3 })
		bound := int(2 * S.Seconds() * lambda * 2 / 3)
		fixed := perWindow(admitted, time.Minute)
		_, hi := slidingMinMax(admitted, time.Minute, at(time.Minute))
		t.Logf("sync %v: per fixed window %v, most in a sliding minute %d; bound %d over 6000", S, fixed, hi, bound)
		for i, n := range fixed {
			if n > 6000+bound {
				t.Errorf("sync %v, window %d: %d admitted, over the bound %d", S, i, n, 6000+bound)
			}
		}
		if hi > 6000+bound {
			t.Errorf("sync %v: a sliding minute held %d, over the bound %d", S, hi, 6000+bound)
		}
	}
}

// perWindow counts the admissions in each fixed window from t0.
func perWindow(ts []int64, w time.Duration) []int {
	var out []int
	for _, t := range ts {
		i := int((t - t0) / int64(w))
		for len(out) <= i {
			out = append(out, 0)
		}
		out[i]++
	}
	return out
}

// slidingMinMax is the fewest and most admissions in a window of length w
// ending at any admission at or after from (the most counts every window;
// the fewest, those that end at an admission: where a steady client is
// admitted).
func slidingMinMax(ts []int64, w time.Duration, from int64) (lo, hi int) {
	lo = 1 << 62
	j := 0
	for i, t := range ts {
		for ts[j] <= t-int64(w) {
			j++
		}
		n := i - j + 1
		hi = max(hi, n)
		if t >= from {
			lo = min(lo, n)
		}
	}
	return lo, hi
}

func TestFleetSlotStart(t *testing.T) {
	if s := (Slot{"k", time.Minute, 5}); s.Start() != int64(5*time.Minute) {
		t.Errorf("Start %d", s.Start())
	}
}
