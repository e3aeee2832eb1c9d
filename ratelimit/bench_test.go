package ratelimit

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"
)

// keyID is an id as the commands make them (a UUID's form).
func keyID(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i) }

var benchLimits = map[string][]Limit{
	"none":     nil,
	"1limit":   {{1 << 30, time.Minute}},
	"3limits":  {{1 << 30, time.Second}, {1 << 30, time.Minute}, {1 << 30, time.Hour}},
	"1refused": {{1, time.Hour}},
}

// BenchmarkAllow: the decision for a key that has state, time moving on by
// 1 µs a request (its windows roll as they would). "none" is the cost of
// no limits (the handler's baseline); "1refused" a key over its limit.
// keys=100000: requests spread over 100 000 keys (the state out of the
// CPU's caches). parallel: every goroutine on keys of its own; hotkey:
// all on one key.
func BenchmarkAllow(b *testing.B) {
	for _, name := range []string{"none", "1limit", "3limits", "1refused"} {
		limits := benchLimits[name]
		b.Run(name, func(b *testing.B) {
			l := New(Options{Fleet: true})
			now := at(0)
			l.Allow("k", limits, now)
			b.ReportAllocs()
			for b.Loop() {
				now += int64(time.Microsecond)
				l.Allow("k", limits, now)
			}
		})
	}
	for _, name := range []string{"1limit", "3limits"} {
		limits := benchLimits[name]
		b.Run(name+"/keys=100000", func(b *testing.B) {
			l := New(Options{Fleet: true})
			keys := make([]string, 100000)
			for i := range keys {
				keys[i] = keyID(i)
				l.Allow(keys[i], limits, at(0))
			}
			now, i := at(0), 0
			b.ReportAllocs()
			for b.Loop() {
				now += int64(time.Microsecond)
				l.Allow(keys[i], limits, now)
				if i++; i == len(keys) {
					i = 0
				}
			}
		})
		b.Run(name+"/parallel", func(b *testing.B) {
			l := New(Options{Fleet: true})
			var g atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				key := keyID(int(g.Add(1)))
				now := at(0)
				for pb.Next() {
					now += int64(time.Microsecond)
					l.Allow(key, limits, now)
				}
			})
		})
		b.Run(name+"/parallel/hotkey", func(b *testing.B) {
			l := New(Options{Fleet: true})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				now := at(0)
				for pb.Next() {
					now += int64(time.Microsecond)
					l.Allow("hot", limits, now)
				}
			})
		})
	}
}

// BenchmarkAllowNewKey: the first request of a key (its state made).
func BenchmarkAllowNewKey(b *testing.B) {
	keys := make([]string, 1<<20)
	for i := range keys {
		keys[i] = keyID(i)
	}
	l := New(Options{Fleet: true})
	limits := benchLimits["1limit"]
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if i == len(keys) {
			b.StopTimer()
			l = New(Options{Fleet: true})
			i = 0
			b.StartTimer()
		}
		l.Allow(keys[i], limits, at(0))
		i++
	}
}

// BenchmarkSync: Pending and Synced for 10 000 keys that each admitted a
// request since the last sync, one limit each (two slots a key).
func BenchmarkSync(b *testing.B) {
	l := New(Options{Fleet: true})
	limits := benchLimits["1limit"]
	keys := make([]string, 10000)
	for i := range keys {
		keys[i] = keyID(i)
	}
	var ds []Delta
	var totals []int64
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for _, k := range keys {
			l.Allow(k, limits, at(0))
		}
		b.StartTimer()
		ds = l.Pending(at(0), ds[:0])
		totals = append(totals[:0], make([]int64, len(ds))...)
		l.Synced(ds, totals)
	}
}

// heap returns, after a collection, the live heap and the heap memory the
// process holds from the system (what it has not given back).
func heap() (live, held uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.HeapSys - m.HeapReleased
}

// BenchmarkMemory measures the heap that keys' state takes: n distinct
// keys (ids of 36 characters, as the commands make them) each sending one
// request with one limit; what a sync of them all holds; the heap once
// Sweep has freed them, and what the process still holds from the system
// once the runtime has given back what it can (debug.FreeOSMemory, which
// the runtime's scavenger does by itself, in time). Every figure is
// relative to before the limiter was made. Run it once per size
// (-benchtime=1x): the figures are the metrics.
func BenchmarkMemory(b *testing.B) {
	for _, n := range []int{100000, 1000000} {
		b.Run(fmt.Sprint("keys=", n), func(b *testing.B) {
			for b.Loop() {
				keys := make([]string, n)
				for i := range keys {
					keys[i] = keyID(i)
				}
				limits := benchLimits["1limit"]
				debug.FreeOSMemory()
				live0, held0 := heap()
				l := New(Options{Fleet: true})
				for i, k := range keys {
					l.Allow(k, limits, at(time.Duration(i)*time.Microsecond))
				}
				live1, held1 := heap()
				// What a fleet's sync holds at most, once: every key listed.
				ds := l.Pending(at(time.Second), nil)
				live2, _ := heap()
				runtime.KeepAlive(ds)
				ds = nil
				freed := l.Sweep(at(3 * time.Minute))
				live3, _ := heap()
				debug.FreeOSMemory()
				_, held4 := heap()
				if freed != n || l.Len() != 0 {
					b.Fatalf("swept %d of %d, %d left", freed, n, l.Len())
				}
				mb := func(a, b uint64) float64 { return float64(int64(a)-int64(b)) / 1e6 }
				b.ReportMetric(float64(live1-live0)/float64(n), "B/key")
				b.ReportMetric(mb(live1, live0), "MB-live")
				b.ReportMetric(mb(held1, held0), "MB-held")
				b.ReportMetric(mb(live2, live1), "MB-pending")
				b.ReportMetric(mb(live3, live0), "MB-live-swept")
				b.ReportMetric(mb(held4, held0), "MB-held-swept")
				runtime.KeepAlive(keys)
				runtime.KeepAlive(l)
			}
		})
	}
}

// BenchmarkSweep: a Sweep that frees nothing, over a million keys with one
// limit: what the timer's Sweep costs while the keys are active (each
// shard's lock is held for its part, about a 64th).
func BenchmarkSweep(b *testing.B) {
	l := New(Options{})
	limits := benchLimits["1limit"]
	for i := range 1000000 {
		l.Allow(keyID(i), limits, at(0))
	}
	b.ResetTimer()
	for b.Loop() {
		if n := l.Sweep(at(time.Second)); n != 0 {
			b.Fatalf("swept %d", n)
		}
	}
}
