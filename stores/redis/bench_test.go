package redis

import (
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testfleet"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// BenchmarkRedisPropagation measures how long a change takes to be in force
// on three servers following one key set in a real redis-server: from the
// change being acknowledged by Redis to the new key set being in force on
// all three (each store here is a server's, in one process; the request
// path reads the same pointer). Each op adds one key. It reports p50 and
// p99 over the ops, in milliseconds.
func BenchmarkRedisPropagation(b *testing.B) {
	for _, n := range []int{1000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			r := testredis.Start(b)
			c := r.Client()
			keys, _ := keyspace.New("")
			ctx := b.Context()
			seedRedis(b, r, n)
			var fleet []*live.Set
			for range 3 {
				s, err := openRedisStore(b, r, "", "", time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				fleet = append(fleet, s)
			}
			version := int64(1)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				raw := testkeys.BenchRawKey(n + i)
				rec, err := keyfile.NewRecord(keyset.Record{ID: testkeys.BenchID(n + i), Label: "new", KeyHash: keyset.HashKey(raw), KeyPrefix: raw[:11]})
				if err != nil {
					b.Fatal(err)
				}
				doc := keyfile.NewList(rec)
				if version, err = keyspace.WriteChanged(ctx, c, keys, doc, version, false); err != nil {
					b.Fatal(err)
				}
				acked := time.Now()
				for _, s := range fleet {
					for {
						if k, _ := s.KeySet().Lookup(raw); k != nil {
							break
						}
						time.Sleep(50 * time.Microsecond) // not a spin: the followers need the CPU
					}
				}
				lat = append(lat, time.Since(acked))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(testfleet.Percentile(lat, 0.5))/1e6, "p50-ms")
			b.ReportMetric(float64(testfleet.Percentile(lat, 0.99))/1e6, "p99-ms")
			for _, s := range fleet {
				if got := s.Syncs(); got != 1 {
					b.Errorf("a store read the whole key set %d times; want 1 (changes come from the log)", got)
				}
			}
		})
	}
}

// seedRedis writes a key set of n records (benchRecords) straight into
// r's Redis, at the default prefix, version 1.
func seedRedis(b *testing.B, r *testredis.Server, n int) {
	c := r.Client()
	keys, _ := keyspace.New("")
	records := testkeys.BenchRecords(n)
	cmds := make(rueidis.Commands, 0, 1000)
	for i := 0; i < n; i += 1000 {
		cmds = cmds[:0]
		for j := i; j < min(i+1000, n); j++ {
			d, err := keyfile.NewRecord(records[j].Record)
			if err != nil {
				b.Fatal(err)
			}
			js, err := d.Compact()
			if err != nil {
				b.Fatal(err)
			}
			cmds = append(cmds, c.B().Hset().Key(keys.Records).FieldValue().FieldValue(records[j].ID, string(js)).Build())
		}
		for _, res := range c.DoMulti(b.Context(), cmds...) {
			if err := res.Error(); err != nil {
				b.Fatal(err)
			}
		}
	}
	r.Do("SET", keys.Version, "1")
}

// BenchmarkRedisLoad measures a Redis store's full read of a key set of n
// keys (at start, and after a gap in the log): scanning the records,
// checking them and building the key set.
func BenchmarkRedisLoad(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			r := testredis.Start(b)
			seedRedis(b, r, n)
			opt, shown, _ := parseURL(r.URL)
			keys, _ := keyspace.New("")
			s := newLiveSet(opt, shown, keys, "")
			defer s.ReleaseMetrics()
			c := r.Client()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := s.FullSync(c); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got := s.KeySet().Len(); got != n {
				b.Fatalf("%d keys loaded, want %d", got, n)
			}
		})
	}
}

// BenchmarkRedisRestart measures a Redis store's start from its cache file
// (what a config load waits for when a server restarts): reading the
// snapshot of n keys, connecting, and catching up from the log with the
// changes made since it was written, each adding a key, one log entry
// each. Every op starts a new store from the same cache file.
func BenchmarkRedisRestart(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		r := testredis.Start(b)
		seedRedis(b, r, n)
		cache := filepath.Join(b.TempDir(), "cache")
		opt, shown, _ := parseURL(r.URL)
		keys, _ := keyspace.New("")
		first := newLiveSet(opt, shown, keys, cache)
		if err := first.Open(); err != nil {
			b.Fatal(err)
		}
		first.WriteCache()
		first.CloseClient()
		first.ReleaseMetrics()
		c := r.Client()
		version := int64(1)
		made := 0
		for _, changes := range []int{0, 100, 10_000} {
			for ; made < changes; made++ {
				raw := testkeys.BenchRawKey(n + made)
				rec, err := keyfile.NewRecord(keyset.Record{ID: testkeys.BenchID(n + made), Label: "new", KeyHash: keyset.HashKey(raw), KeyPrefix: raw[:11]})
				if err != nil {
					b.Fatal(err)
				}
				var werr error
				if version, werr = keyspace.WriteChanged(b.Context(), c, keys, keyfile.NewList(rec), version, false); werr != nil {
					b.Fatal(werr)
				}
			}
			b.Run(fmt.Sprintf("keys=%d/changes=%d", n, changes), func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					s := newLiveSet(opt, shown, keys, cache)
					s.Logger = zap.NewNop()
					if err := s.Open(); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if s.Syncs() != 0 || s.KeySet().Len() != n+changes {
						b.Fatalf("%d full reads, %d keys; want none, %d", s.Syncs(), s.KeySet().Len(), n+changes)
					}
					s.CloseClient()
					s.ReleaseMetrics()
					runtime.GC()
					b.StartTimer()
				}
			})
		}
	}
}

// newMemoryRedisStore is a Redis store module over the key set ks, as if
// it had been read from Redis, with usage tracking on; nothing connects.
func newMemoryRedisStore(ks *keyset.KeySet) *Store {
	keys, _ := keyspace.New("")
	s := newLiveSet(rueidis.ClientOption{}, "redis://bench", keys, "")
	s.SetKeySet(ks)
	return &Store{store: s}
}

// BenchmarkRequestPath measures what the handler asks of a Redis store on
// each request, the key set in force (KeySet) and a use noted (MarkUsed),
// over valid keys spread across the set, against the same two steps on a
// bare key set and usage tracker (what the handler's in-process benchmark
// store does): the Redis store adds no cost and no network call to the
// request path.
func BenchmarkRequestPath(b *testing.B) {
	for _, n := range []int{1, 10_000, 1_000_000} {
		ks := testkeys.BenchKeySet(b, n)
		raws := make([]string, min(n, 4096))
		for i := range raws {
			raws[i] = testkeys.BenchRawKey(i * (n / len(raws)))
		}
		s := newMemoryRedisStore(ks)
		s.store.Leases().Add(storecore.Settings{Usage: storecore.Interval{Every: time.Hour}, Reload: storecore.Interval{Off: true}})
		var bare keyset.UsageTracker
		for _, tc := range []struct {
			name string
			keys func() *keyset.KeySet
			mark func(*keyset.Key, [32]byte, int64)
		}{
			{"redis-store", s.KeySet, s.MarkUsed},
			{"bare", func() *keyset.KeySet { return ks }, bare.Mark},
		} {
			b.Run(fmt.Sprintf("%s/keys=%d", tc.name, n), func(b *testing.B) {
				now := time.Now().UnixNano()
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					k, sum := tc.keys().Lookup(raws[i%len(raws)])
					if k == nil {
						b.Fatal("a valid key not found")
					}
					tc.mark(k, sum, now)
					i++
				}
			})
		}
	}
}
