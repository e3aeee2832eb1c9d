package ratelimit

import (
	"math/rand/v2"
	"testing"
	"time"
)

// One server, one key, 600/1m, a client sending 3× that for 3 minutes,
// evenly and at random (Poisson): admitted per fixed window and per
// sliding minute within 1 % of the limit. The figures are logged (-v).
func TestAccuracySingleServer(t *testing.T) {
	lim := []Limit{{600, time.Minute}}
	const total = 3 * 1800 // 3× 600 a minute, for 3 minutes
	arrivals := map[string][]int64{"even": nil, "poisson": nil}
	for i := range total {
		arrivals["even"] = append(arrivals["even"], at(time.Duration(i)*time.Minute/1800))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for now := at(0); now < at(3*time.Minute); now += int64(r.ExpFloat64() * float64(time.Minute/1800)) {
		arrivals["poisson"] = append(arrivals["poisson"], now)
	}
	for name, ts := range arrivals {
		l := New(Options{})
		var admitted []int64
		for _, now := range ts {
			if l.Allow("k", lim, now).Allowed {
				admitted = append(admitted, now)
			}
		}
		fixed := perWindow(admitted, time.Minute)
		// Sliding minutes from the second window on, and from the third:
		// the first window's burst (600 in its first 20 s) weighs in the
		// second as if spread evenly.
		lo1, hi1 := slidingMinMax(admitted, time.Minute, at(time.Minute))
		lo2, _ := slidingMinMax(admitted, time.Minute, at(2*time.Minute))
		t.Logf("%s (%d requests): admitted per fixed window %v; per sliding minute: at most %d, at least %d from 1 min on, %d from 2 min on",
			name, len(ts), fixed, hi1, lo1, lo2)
		for i, n := range fixed {
			if n < 594 || n > 606 {
				t.Errorf("%s: window %d admitted %d, want 600 ± 1 %%", name, i, n)
			}
		}
		if hi1 > 606 || lo2 < 594 {
			t.Errorf("%s: sliding minutes from %d to %d, want 600 ± 1 %%", name, lo2, hi1)
		}
	}
}

// The sliding-window counter's known limit, measured: a client that sends
// its whole quota at the very end of one window and then steadily is
// admitted up to nearly twice the limit within one sliding minute (each
// fixed window still holds at most the limit).
func TestAccuracyAdversarial(t *testing.T) {
	l := New(Options{})
	lim := []Limit{{600, time.Minute}}
	var admitted []int64
	for i := range 600 {
		if l.Allow("k", lim, at(59*time.Second)).Allowed {
			admitted = append(admitted, at(59*time.Second+time.Duration(i)))
		}
	}
	for now := at(time.Minute); now < at(3*time.Minute); now += int64(10 * time.Millisecond) {
		if l.Allow("k", lim, now).Allowed {
			admitted = append(admitted, now)
		}
	}
	fixed := perWindow(admitted, time.Minute)
	_, hi := slidingMinMax(admitted, time.Minute, at(0))
	t.Logf("quota spent 1 s before the end of a window, then 100/s: per fixed window %v, most in a sliding minute %d", fixed, hi)
	for i, n := range fixed {
		if n > 600 {
			t.Errorf("window %d admitted %d, more than the limit", i, n)
		}
	}
	if hi > 2*600 {
		t.Errorf("a sliding minute held %d, more than twice the limit", hi)
	}
}
