package ratelimit

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// t0 is a time at the start of a window of every length the tests use
// (a multiple of a day since the epoch).
const t0 = int64(20000 * 24 * time.Hour)

func at(d time.Duration) int64 { return t0 + int64(d) }

// allowN sends n requests at now and returns how many were admitted.
func allowN(l *Limiter, key string, limits []Limit, now int64, n int) int {
	admitted := 0
	for range n {
		if l.Allow(key, limits, now).Allowed {
			admitted++
		}
	}
	return admitted
}

// The arithmetic of one limit: a full window refuses, the previous
// window's count weighs by the part of it the sliding window covers, and
// RetryAfter and Reset say exactly when things change.
func TestAllowArithmetic(t *testing.T) {
	l := New(Options{})
	lim := []Limit{{10, 10 * time.Second}}
	L := 10 * time.Second

	// Window 0: ten admitted, with remaining counting down.
	for i := range 10 {
		d := l.Allow("k", lim, at(0))
		if !d.Allowed || d.Remaining != int64(9-i) || d.Limit != lim[0] {
			t.Fatalf("request %d: %+v, want admitted with %d remaining", i+1, d, 9-i)
		}
		if d.Reset != 2*L {
			t.Fatalf("request %d: Reset %v, want %v (this window and the next)", i+1, d.Reset, 2*L)
		}
	}
	// The eleventh, refused: the next window's first admission comes
	// once the ten weigh 9, 1 s into it: 11 s.
	d := l.Allow("k", lim, at(0))
	if d.Allowed || d.Remaining != 0 || d.RetryAfter != 11*time.Second || d.RetryAfterSeconds() != 11 {
		t.Fatalf("eleventh: %+v, want refused, RetryAfter 11s", d)
	}
	if d := l.Allow("k", lim, at(11*time.Second-1)); d.Allowed || d.RetryAfter != 1 {
		t.Fatalf("1 ns before: %+v, want refused with RetryAfter 1ns", d)
	}
	if d.RetryAfterSeconds() != 11 {
		t.Errorf("RetryAfterSeconds %d", d.RetryAfterSeconds())
	}
	d = l.Allow("k", lim, at(11*time.Second))
	// used = ⌈10 × 9/10⌉ = 9: admitted, none remaining; the count of
	// window 0 weighs until 20 s, that of this one (from 10 s) until 30 s.
	if !d.Allowed || d.Remaining != 0 || d.Reset != 19*time.Second {
		t.Fatalf("at 11s: %+v, want admitted, 0 remaining, Reset 19s", d)
	}
	// Now cur = 1, prev = 10: at 15 s, ⌈10 × 5/10⌉ + 1 = 6: four more.
	if n := allowN(l, "k", lim, at(15*time.Second), 10); n != 4 {
		t.Fatalf("at 15s: %d admitted, want 4", n)
	}
	// cur = 5, prev = 10: refused until ⌈10 × (10 − e)/10⌉ ≤ 4, e = 6 s:
	// 16 s, 1 s from now.
	if d := l.Allow("k", lim, at(15*time.Second)); d.Allowed || d.RetryAfter != time.Second {
		t.Fatalf("at 15s, full: %+v, want RetryAfter 1s", d)
	}
	if d := l.Allow("k", lim, at(16*time.Second-1)); d.Allowed {
		t.Fatalf("at 16s − 1ns: %+v, want refused", d)
	}
	if d := l.Allow("k", lim, at(16*time.Second)); !d.Allowed || d.Remaining != 0 {
		t.Fatalf("at 16s: %+v, want admitted with 0 remaining", d)
	}
	// A gap of more than a window forgets everything.
	if n := allowN(l, "k", lim, at(40*time.Second), 11); n != 10 {
		t.Fatalf("after a gap: %d admitted, want 10", n)
	}
	// A request stamped before the current window (a clock step back):
	// decided at the window's start, never a panic.
	if d := l.Allow("k", lim, at(0)); d.Allowed {
		t.Fatalf("stepped back: %+v, want refused", d)
	}
}

// A limit of 1: a request in one window keeps the next one closed to its
// end.
func TestAllowLimitOfOne(t *testing.T) {
	l := New(Options{})
	lim := []Limit{{1, time.Minute}}
	if !l.Allow("k", lim, at(30*time.Second)).Allowed {
		t.Fatal("first refused")
	}
	d := l.Allow("k", lim, at(30*time.Second))
	if d.Allowed || d.RetryAfter != 90*time.Second {
		t.Fatalf("second: %+v, want RetryAfter 90s (the window after next)", d)
	}
	if l.Allow("k", lim, at(2*time.Minute-1)).Allowed {
		t.Fatal("admitted 1 ns before the window after next")
	}
	if !l.Allow("k", lim, at(2*time.Minute)).Allowed {
		t.Fatal("refused in the window after next")
	}
}

// The previous window weighs linearly: with prev = 600 in a 1m window, a
// request e into the next window sees ⌈600 × (60 − e)/60⌉.
func TestAllowPreviousWeight(t *testing.T) {
	for _, e := range []time.Duration{0, time.Second, 15 * time.Second, 30 * time.Second, 59 * time.Second, time.Minute - 1} {
		l := New(Options{})
		lim := []Limit{{600, time.Minute}}
		if n := allowN(l, "k", lim, at(0), 600); n != 600 {
			t.Fatalf("%d admitted in window 0", n)
		}
		weighted := (600*(int64(time.Minute)-int64(e)) + int64(time.Minute) - 1) / int64(time.Minute)
		if n := allowN(l, "k", lim, at(time.Minute+e), 700); int64(n) != 600-weighted {
			t.Errorf("e = %v: %d admitted, want 600 − %d", e, n, weighted)
		}
	}
}

// A request refused by one limit is counted by none, and refused requests
// are never counted.
func TestAllowAllOrNothing(t *testing.T) {
	l := New(Options{})
	limits := []Limit{{3, time.Second}, {5, time.Minute}}
	if n := allowN(l, "k", limits, at(0), 10); n != 3 {
		t.Fatalf("%d admitted, want 3 (the 1s limit)", n)
	}
	// Seven refused by the 1s limit: the 1m limit counts 3, so 2 remain.
	d := l.Allow("k", limits, at(5*time.Second))
	if !d.Allowed || d.Limit != limits[1] || d.Remaining != 1 {
		t.Fatalf("at 5s: %+v, want admitted, the 1m limit binding with 1 remaining", d)
	}
	if !l.Allow("k", limits, at(6*time.Second)).Allowed {
		t.Fatal("the fifth refused")
	}
	// Now the 1m limit refuses: the 1s limit must not count these.
	for range 20 {
		if d := l.Allow("k", limits, at(7*time.Second)); d.Allowed || d.Limit != limits[1] {
			t.Fatalf("%+v, want refused by the 1m limit", d)
		}
	}
	// Had the 1s limit counted the 20 refused requests, it would refuse
	// at 7s; as it did not, the 1s limit alone now admits as many as it
	// does on a limiter fed only the admitted requests: 2 (the request at
	// 6 s weighs 1).
	only := New(Options{})
	one := limits[:1]
	allowN(only, "k", one, at(0), 3)
	allowN(only, "k", one, at(5*time.Second), 1)
	allowN(only, "k", one, at(6*time.Second), 1)
	if n, want := allowN(l, "k", one, at(7*time.Second), 5), allowN(only, "k", one, at(7*time.Second), 5); n != want || n != 2 {
		t.Fatalf("the 1s limit admits %d at 7s, want %d as when fed only admitted requests, and 2", n, want)
	}
}

// With several limits refusing, RetryAfter is the longest wait and Limit
// the one that imposes it.
func TestAllowRetryAfterOfSeveral(t *testing.T) {
	l := New(Options{})
	limits := []Limit{{2, time.Second}, {2, time.Minute}, {100, time.Hour}}
	allowN(l, "k", limits, at(0), 2)
	d := l.Allow("k", limits, at(0))
	// 1s: next window at 1s, ⌈2 × (1 − e)⌉ ≤ 1 at e = 0.5s: 1.5s. 1m: 90s.
	if d.Allowed || d.Limit != limits[1] || d.RetryAfter != 90*time.Second {
		t.Fatalf("%+v, want refused by 2/1m for 90s", d)
	}
	if l.Allow("k", limits, at(90*time.Second-1)).Allowed || !l.Allow("k", limits, at(90*time.Second)).Allowed {
		t.Fatal("not admitted at exactly RetryAfter")
	}
}

// A key whose limits change keeps the state of the windows it keeps.
func TestAllowLimitsChange(t *testing.T) {
	l := New(Options{})
	allowN(l, "k", []Limit{{10, time.Minute}}, at(0), 4)
	limits := []Limit{{100, time.Second}, {10, time.Minute}}
	if n := allowN(l, "k", limits, at(time.Second), 20); n != 6 {
		t.Fatalf("after adding a 1s limit: %d admitted, want 6 (the 1m window kept its 4)", n)
	}
	// And back: still 10 in the 1m window.
	if n := allowN(l, "k", []Limit{{10, time.Minute}}, at(2*time.Second), 5); n != 0 {
		t.Fatalf("back to 1m alone: %d admitted, want 0", n)
	}
	// Alternating between two lists allocates only the first time.
	a, b := []Limit{{1000, time.Hour}}, []Limit{{1000, time.Second}, {1000, time.Hour}}
	l.Allow("x", a, at(0))
	l.Allow("x", b, at(0))
	if n := testing.AllocsPerRun(100, func() {
		l.Allow("x", a, at(0))
		l.Allow("x", b, at(0))
	}); n != 0 {
		t.Errorf("alternating limits: %v allocations per run", n)
	}
}

// Limits Allow cannot use refuse: fail closed.
func TestAllowUnusableLimits(t *testing.T) {
	l := New(Options{})
	nine := make([]Limit, MaxLimits+1)
	for i := range nine {
		nine[i] = Limit{10, time.Duration(i+1) * time.Second}
	}
	for _, limits := range [][]Limit{{{0, time.Second}}, {{-1, time.Second}}, {{10, 0}}, nine} {
		if d := l.Allow("k", limits, at(0)); d.Allowed {
			t.Errorf("%v admitted", limits)
		}
	}
	if d := l.Allow("k", nil, at(0)); !d.Allowed {
		t.Error("no limits refused")
	}
	if l.Len() != 0 {
		t.Errorf("%d keys hold state", l.Len())
	}
}

// Keys are counted apart.
func TestAllowKeysApart(t *testing.T) {
	l := New(Options{})
	lim := []Limit{{5, time.Minute}}
	for i := range 100 {
		if n := allowN(l, fmt.Sprint("key-", i), lim, at(0), 7); n != 5 {
			t.Fatalf("key %d: %d admitted", i, n)
		}
	}
	if l.Len() != 100 {
		t.Errorf("Len %d", l.Len())
	}
}

// Many goroutines on one key, at one instant: exactly the limit is
// admitted, whatever the interleaving; and on many keys at once.
func TestAllowConcurrent(t *testing.T) {
	l := New(Options{Fleet: true})
	limits := []Limit{{500, time.Minute}, {800, time.Hour}}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				if l.Allow("hot", limits, at(time.Duration(g))).Allowed {
					admitted.Add(1)
				}
				l.Allow(fmt.Sprint("cold-", g, "-", i%50), limits, at(time.Second))
			}
		})
	}
	// A sweep and a sync at the same time.
	wg.Go(func() {
		for range 50 {
			l.Sweep(at(time.Second))
			ds := l.Pending(at(time.Second), nil)
			l.Synced(ds, make([]int64, len(ds)))
		}
	})
	wg.Wait()
	if admitted.Load() != 500 {
		t.Fatalf("%d admitted, want exactly 500", admitted.Load())
	}
}

// An existing key's decision allocates nothing, with one limit or three,
// and with a fleet's bookkeeping.
func TestAllowNoAllocation(t *testing.T) {
	for _, fleet := range []bool{false, true} {
		l := New(Options{Fleet: fleet})
		one := []Limit{{1 << 30, time.Minute}}
		three := []Limit{{1 << 30, time.Second}, {1 << 30, time.Minute}, {1 << 30, time.Hour}}
		l.Allow("one", one, at(0))
		l.Allow("three", three, at(0))
		now := at(0)
		if n := testing.AllocsPerRun(1000, func() {
			now += int64(time.Millisecond)
			l.Allow("one", one, now)
			l.Allow("three", three, now)
		}); n != 0 {
			t.Errorf("fleet %v: %v allocations per run", fleet, n)
		}
	}
}

// Idle keys are freed by Sweep, once nothing of theirs counts, and the
// shards' maps are made again small; a limiter that is never swept still
// frees as it grows.
func TestSweep(t *testing.T) {
	l := New(Options{Fleet: true})
	lim := []Limit{{10, time.Minute}}
	for i := range 10000 {
		l.Allow(fmt.Sprint("k", i), lim, at(time.Duration(i)*time.Millisecond)) // 0 to 10 s
	}
	l.Allow("long", []Limit{{10, time.Minute}, {10, time.Hour}}, at(0))
	if n := l.Sweep(at(2*time.Minute - 1)); n != 0 {
		t.Fatalf("swept %d before their windows were over", n)
	}
	if n := l.Sweep(at(2 * time.Minute)); n != 10000 {
		t.Fatalf("swept %d, want 10000", n)
	}
	if l.Len() != 1 {
		t.Fatalf("Len %d, want 1 (the key with a 1h limit)", l.Len())
	}
	for i := range l.shards {
		if sh := &l.shards[i]; sh.peak > 1 || len(sh.listed) > 1 {
			t.Fatalf("shard %d: peak %d, %d listed after the sweep", i, sh.peak, len(sh.listed))
		}
	}
	if n := l.Sweep(at(2 * time.Hour)); n != 1 || l.Len() != 0 {
		t.Fatalf("swept %d, Len %d", n, l.Len())
	}

	// Never swept: one new key a second, each idle after 2 s. The
	// shards' own sweeps keep the state to a few thousand keys.
	l = New(Options{})
	most := 0
	for i := range 200000 {
		l.Allow(fmt.Sprint("k", i), []Limit{{1, time.Second}}, at(time.Duration(i)*time.Second))
		if i%1000 == 0 {
			most = max(most, l.Len())
		}
	}
	// A shard holds at most autoSweepMin keys added since its last
	// sweep, plus the two or so that still count.
	if bound := numShards * (autoSweepMin + 3); most > bound || l.Len() > bound {
		t.Fatalf("up to %d keys held without Sweep (%d at the end), want at most %d", most, l.Len(), bound)
	}
}

// Two keys whose hashes are the same (forced here: about once in 10¹³
// keys otherwise) keep states of their own, are synced and swept.
func TestAllowHashCollision(t *testing.T) {
	l := New(Options{Fleet: true})
	lim := []Limit{{3, time.Minute}}
	sh := &l.shards[0]
	long := "a-key-id-longer-than-forty-characters-0123456789"
	for _, k := range []string{"first", "second", long} {
		sh.mu.Lock()
		e := sh.add(7, k, nil, lim, at(0))
		sh.mu.Unlock()
		if e.key != k || sh.get(7, k) != e {
			t.Fatalf("%q: entry of %q", k, e.key)
		}
	}
	if sh.get(7, "third") != nil {
		t.Fatal("an unknown key with the same hash found an entry")
	}
	if len(sh.collided) != 2 || l.Len() != 3 {
		t.Fatalf("%d collided, Len %d", len(sh.collided), l.Len())
	}
	// Their counts apart.
	sh.mu.Lock()
	sh.get(7, "second").ws[0].cur.local = 3
	counts := []int64{sh.get(7, "first").ws[0].cur.local, sh.get(7, "second").ws[0].cur.local, sh.get(7, long).ws[0].cur.local}
	sh.mu.Unlock()
	if !slices.Equal(counts, []int64{0, 3, 0}) {
		t.Fatalf("counts %v, want [0 3 0]", counts)
	}
	// Sweep frees both maps.
	if n := l.Sweep(at(2 * time.Minute)); n != 3 || l.Len() != 0 || sh.collided != nil {
		t.Fatalf("swept %d, Len %d, collided %v", n, l.Len(), sh.collided)
	}
}
