package apikey

import (
	"os"
	"path/filepath"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"

	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Benchmarks of the request path and of the key file's scale. Run them with
//
//	go test -short -run '^$' -bench . -benchmem .
//
// (-short keeps TestMain from starting the integration tests' Caddy, which
// no benchmark needs.)

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
			status int
		}{
			{name: "valid-bearer", header: "Bearer " + valid, status: 0},
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
					h := newBenchHandler(testkeys.BenchKeySet(b, n))
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

// BenchmarkLoadCacheFile measures what a Redis store that restarts reads
// first: its cache file, a snapshot of n keys (keyset/snapshot.go), from a file
// (in the page cache, as after a restart), checked and indexed; beside it,
// the key file's JSON form of the same keys streamed as readKeySet reads
// it (the cache file's form before), and the cache writer's write of the
// snapshot. It reports the heap the loaded key set keeps per key.
func BenchmarkLoadCacheFile(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		ks := testkeys.BenchKeySet(b, n)
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
