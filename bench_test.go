package apikey

import (
	"os"
	"path/filepath"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/redis/rueidis"
	"go.uber.org/zap"

	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Benchmarks of the request path and of the key file's scale. Run them with
//
//	go test -short -run '^$' -bench . -benchmem .
//
// (-short keeps TestMain from starting the integration tests' Caddy, which
// no benchmark needs.)

// benchRecords returns n records in the reference application's shape
// (every fourth one already used, none with lifecycle members).
func benchRecords(n int) []keyfile.Record {
	recs := make([]keyfile.Record, n)
	created := "2026-11-25T20:14:31.123456+00:00"
	used := "2026-11-26T08:02:11.654321+00:00"
	for i := range recs {
		raw := testkeys.BenchRawKey(i)
		recs[i].Record = keyset.Record{
			ID:        testkeys.BenchID(i),
			Label:     "Key " + strconv.Itoa(i),
			KeyHash:   keyset.HashKey(raw),
			KeyPrefix: raw[:11],
			CreatedAt: &created,
		}
		if i%4 == 0 {
			recs[i].LastUsedAt = &used
		}
	}
	return recs
}

// benchKeySets caches the in-memory key sets by size: a million keys take a
// few seconds to build and are shared by the sub-benchmarks.
var benchKeySets = map[int]*keyset.KeySet{}

func benchKeySet(tb testing.TB, n int) *keyset.KeySet {
	if ks := benchKeySets[n]; ks != nil {
		return ks
	}
	ks, err := keyfile.BuildKeySet(benchRecords(n))
	if err != nil {
		tb.Fatal(err)
	}
	benchKeySets[n] = ks
	return ks
}

// newBenchHandler sets up a Handler with the default credential sources,
// as Provision would, but on the in-memory key set ks instead of a file.
// Usage tracking is on; nothing flushes it, and nothing needs to: a key is
// queued for writing once.
func newBenchHandler(ks *keyset.KeySet) *Handler {
	return newMemoryHandler(&Handler{KeysFile: "bench-keys.json"}, ks)
}

// discardWriter is a ResponseWriter that keeps nothing. One is reused for
// all requests, header map included, so the refusal paths' header writes
// replace existing entries instead of growing a fresh map as a real
// response would.
type discardWriter struct {
	hdr    http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.hdr }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }

var noopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// benchBatch is how many requests are prepared at a time with the timer
// stopped.
const benchBatch = 1024

// BenchmarkServeHTTP measures the handler alone. Each request is prepared
// as Caddy's server prepares it (a fresh caddy.Replacer and the request
// context caddyhttp.PrepareRequest builds), in batches with the timer
// stopped, so ns/op and allocs/op are the handler's own cost. Each case
// runs without and with caddy_apikey_requests_total counting (metrics=off,
// metrics=on), side by side.
func BenchmarkServeHTTP(b *testing.B) {
	for _, n := range []int{1, 10_000, 1_000_000} {
		valid := testkeys.BenchRawKey(n / 2)
		spread := make([]string, 4096)
		for i := range spread {
			spread[i] = "Bearer " + testkeys.BenchRawKey(i*n/len(spread))
		}
		cases := []struct {
			name   string
			header string // Authorization value
			query  string
			spread bool
			redis  bool // the Redis store's key set instead of the file store's
			status int
		}{
			{name: "valid-bearer", header: "Bearer " + valid, status: 0},
			// The same request on a Redis store: its request path is the
			// file store's (the key set in memory, no network call).
			{name: "valid-bearer-redis-store", header: "Bearer " + valid, redis: true, status: 0},
			{name: "valid-query", query: "page=2&api_key=" + valid, status: 0},
			{name: "missing", query: "page=2", status: http.StatusUnauthorized},
			{name: "invalid", header: "Bearer sk_notakeyatallnotakeyatallnotakeyatallnota", status: http.StatusForbidden},
			// Valid keys spread over the whole set, 4096 different
			// ones in turn, so that a big set cannot stay in the
			// CPU caches as one key does.
			{name: "valid-bearer-spread", spread: true, status: 0},
		}
		for _, c := range cases {
			for _, metricsOn := range []bool{false, true} {
				b.Run(fmt.Sprintf("%s/keys=%d/metrics=%s", c.name, n, onOff(metricsOn)), func(b *testing.B) {
					h := newBenchHandler(benchKeySet(b, n))
					if c.redis {
						h.store = newMemoryRedisStore(benchKeySet(b, n))
					}
					if metricsOn {
						h.results = requestResults // as Provision sets it
					}
					w := &discardWriter{hdr: make(http.Header)}
					reqs := make([]*http.Request, benchBatch)
					prepare := func(offset int) {
						for j := range reqs {
							u := &url.URL{Path: "/api/items", RawQuery: c.query}
							r := &http.Request{Method: "GET", URL: u, Header: make(http.Header), RemoteAddr: "192.0.2.1:51234", RequestURI: u.RequestURI()}
							r = r.WithContext(b.Context())
							switch {
							case c.spread:
								r.Header["Authorization"] = []string{spread[(offset+j)%len(spread)]}
							case c.header != "":
								r.Header["Authorization"] = []string{c.header}
							}
							reqs[j] = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
						}
					}
					// Warm up: first uses of the keys (usage cells) are not
					// the steady state.
					prepare(0)
					for _, r := range reqs {
						_ = h.ServeHTTP(w, r, noopNext)
					}
					w.status = 0
					b.ReportAllocs()
					b.ResetTimer()
					for i := 0; i < b.N; i += benchBatch {
						b.StopTimer()
						prepare(i)
						b.StartTimer()
						m := min(benchBatch, b.N-i)
						for _, r := range reqs[:m] {
							if err := h.ServeHTTP(w, r, noopNext); err != nil {
								b.Fatal(err)
							}
						}
					}
					b.StopTimer()
					if w.status != c.status {
						b.Fatalf("status %d, want %d", w.status, c.status)
					}
				})
			}
		}
	}
}

// newMemoryRedisStore is a Redis store module over the key set ks, as if
// it had been read from Redis, with usage tracking on; nothing connects.
func newMemoryRedisStore(ks *keyset.KeySet) *RedisStore {
	keys, _ := newRedisKeys("")
	s := newRedisKeyStore(rueidis.ClientOption{}, "redis://bench", keys, "")
	s.keys.Store(ks)
	return &RedisStore{store: s}
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// BenchmarkLoadKeyFile measures parsing and indexing a key file of n keys,
// from its bytes (as readKeySet does after reading the file), and reports
// the heap the loaded key set keeps per key.
func BenchmarkLoadKeyFile(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) { benchLoad(b, n, testkeys.BenchKeyFile(n), keyfile.ParseKeySet) })
	}
	// As the watcher reads a file: streamed, never whole in memory.
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("stream/keys=%d", n), func(b *testing.B) {
			benchLoad(b, n, testkeys.BenchKeyFile(n), func(data []byte) (*keyset.KeySet, error) {
				return keyfile.DecodeKeySet(bytes.NewReader(data), int64(len(data)))
			})
		})
	}
	// Labels with escapes (as json.Marshal writes "R&D") and non-ASCII
	// text (as Python's json.dump writes it): no slower than plain ones.
	const n = 100_000
	b.Run(fmt.Sprintf("escaped/keys=%d", n), func(b *testing.B) {
		benchLoad(b, n, testkeys.BenchKeyFileLabeled(n, `R\u0026D K\u00e4se \"%d\"`), keyfile.ParseKeySet)
	})
	b.Run(fmt.Sprintf("non-ascii/keys=%d", n), func(b *testing.B) {
		benchLoad(b, n, testkeys.BenchKeyFileLabeled(n, "Käse für Ünïcødé %d"), keyfile.ParseKeySet)
	})
}

func benchLoad(b *testing.B, n int, data []byte, load func([]byte) (*keyset.KeySet, error)) {
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	var perKey float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		ks, err := load(data)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		if ks.Len() != n {
			b.Fatalf("%d keys loaded, want %d", ks.Len(), n)
		}
		perKey = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
		runtime.KeepAlive(ks)
		b.StartTimer()
	}
	b.ReportMetric(perKey, "B/key")
}

// BenchmarkTokenize compares the two JSON readers this package could build
// on, by the cost of only reading every token of a 100 000-key file: the
// standard library's encoding/json Decoder.Token and jsontext (the code of
// Go's encoding/json/v2), which parseKeyDoc uses.
func BenchmarkTokenize(b *testing.B) {
	data := testkeys.BenchKeyFile(100_000)
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			dec := json.NewDecoder(bytes.NewReader(data))
			for {
				if _, err := dec.Token(); err != nil {
					break
				}
			}
		}
	})
	b.Run("jsontext", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			dec := jsontext.NewDecoder(bytes.NewBuffer(data))
			for {
				if _, err := dec.ReadToken(); err != nil {
					break
				}
			}
		}
	})
}

// BenchmarkRedisPropagation measures how long a change takes to be in force
// on three servers following one key set in a real redis-server: from the
// change being acknowledged by Redis to the new key set being in force on
// all three (each store here is a server's, in one process; the request
// path reads the same pointer). Each op adds one key. It reports p50 and
// p99 over the ops, in milliseconds.
func BenchmarkRedisPropagation(b *testing.B) {
	for _, n := range []int{1000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			r := startRedis(b)
			c := r.client()
			keys, _ := newRedisKeys("")
			ctx := b.Context()
			seedRedis(b, r, n)
			var fleet []*redisKeyStore
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
				if version, err = writeChanged(ctx, c, keys, doc, version, false); err != nil {
					b.Fatal(err)
				}
				acked := time.Now()
				for _, s := range fleet {
					for {
						if k, _ := s.keys.Load().Lookup(raw); k != nil {
							break
						}
						time.Sleep(50 * time.Microsecond) // not a spin: the followers need the CPU
					}
				}
				lat = append(lat, time.Since(acked))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(percentile(lat, 0.5))/1e6, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99))/1e6, "p99-ms")
			for _, s := range fleet {
				if got := s.syncs.Load(); got != 1 {
					b.Errorf("a store read the whole key set %d times; want 1 (changes come from the log)", got)
				}
			}
		})
	}
}

// seedRedis writes a key set of n records (benchRecords) straight into
// r's Redis, at the default prefix, version 1.
func seedRedis(b *testing.B, r *testRedis, n int) {
	c := r.client()
	keys, _ := newRedisKeys("")
	records := benchRecords(n)
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
			cmds = append(cmds, c.B().Hset().Key(keys.records).FieldValue().FieldValue(records[j].ID, string(js)).Build())
		}
		for _, res := range c.DoMulti(b.Context(), cmds...) {
			if err := res.Error(); err != nil {
				b.Fatal(err)
			}
		}
	}
	r.do("SET", keys.version, "1")
}

// BenchmarkRedisLoad measures a Redis store's full read of a key set of n
// keys (at start, and after a gap in the log): scanning the records,
// checking them and building the key set.
func BenchmarkRedisLoad(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			r := startRedis(b)
			seedRedis(b, r, n)
			opt, shown, _ := redisURL(r.URL)
			keys, _ := newRedisKeys("")
			s := newRedisKeyStore(opt, shown, keys, "")
			defer s.metrics.Release()
			c := r.client()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := s.fullSync(c); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if got := s.keys.Load().Len(); got != n {
				b.Fatalf("%d keys loaded, want %d", got, n)
			}
		})
	}
}

// BenchmarkLoadCacheFile measures what a Redis store that restarts reads
// first: its cache file, a snapshot of n keys (keyset/snapshot.go), from a file
// (in the page cache, as after a restart), checked and indexed; beside it,
// the key file's JSON form of the same keys streamed as readKeySet reads
// it (the cache file's form before), and the cache writer's write of the
// snapshot. It reports the heap the loaded key set keeps per key.
func BenchmarkLoadCacheFile(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		ks := benchKeySet(b, n)
		snap := keyset.Snapshot{KeySet: ks, Of: "redis:redis://bench#apikey:", Version: 7, LogID: "1-0", Written: time.Now()}
		path := filepath.Join(b.TempDir(), "cache")
		if _, err := keyfile.WriteAtomic(path, snap, nil, nil); err != nil {
			b.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("snapshot/keys=%d", n), func(b *testing.B) {
			benchLoad(b, n, data, func([]byte) (*keyset.KeySet, error) {
				f, err := os.Open(path)
				if err != nil {
					return nil, err
				}
				defer f.Close()
				s, err := keyset.DecodeSnapshot(f, int64(len(data)))
				if err != nil {
					return nil, err
				}
				return s.KeySet, nil
			})
		})
		b.Run(fmt.Sprintf("json-stream/keys=%d", n), func(b *testing.B) {
			benchLoad(b, n, testkeys.BenchKeyFile(n), func(data []byte) (*keyset.KeySet, error) {
				return keyfile.DecodeKeySet(bytes.NewReader(data), int64(len(data)))
			})
		})
		b.Run(fmt.Sprintf("write/keys=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for range b.N {
				if _, err := keyfile.WriteAtomic(path, snap, nil, nil); err != nil {
					b.Fatal(err)
				}
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
		r := startRedis(b)
		seedRedis(b, r, n)
		cache := filepath.Join(b.TempDir(), "cache")
		opt, shown, _ := redisURL(r.URL)
		keys, _ := newRedisKeys("")
		first := newRedisKeyStore(opt, shown, keys, cache)
		if err := first.open(); err != nil {
			b.Fatal(err)
		}
		first.writeCache()
		first.closeClient()
		first.metrics.Release()
		c := r.client()
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
				if version, werr = writeChanged(b.Context(), c, keys, keyfile.NewList(rec), version, false); werr != nil {
					b.Fatal(werr)
				}
			}
			b.Run(fmt.Sprintf("keys=%d/changes=%d", n, changes), func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					s := newRedisKeyStore(opt, shown, keys, cache)
					s.logger = zap.NewNop()
					if err := s.open(); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if s.syncs.Load() != 0 || s.keys.Load().Len() != n+changes {
						b.Fatalf("%d full reads, %d keys; want none, %d", s.syncs.Load(), s.keys.Load().Len(), n+changes)
					}
					s.closeClient()
					s.metrics.Release()
					runtime.GC()
					b.StartTimer()
				}
			})
		}
	}
}
