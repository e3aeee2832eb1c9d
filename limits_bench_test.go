package apikey

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// BenchmarkRateLimit measures what rate limits add to an admitted request
// (valid keys of a set of 10 000, limits too large to refuse): none, one
// limit and three, with the headers on (the default) and off, for one key
// sending every request (keys=1) and for 4096 keys in turn (keys=4096: the
// limiter's state out of the CPU caches). Requests are prepared as
// BenchmarkServeHTTP prepares them.
func BenchmarkRateLimit(b *testing.B) {
	for _, sending := range []int{1, 4096} {
		benchRateLimit(b, sending)
	}
}

func benchRateLimit(b *testing.B, sending int) {
	const n = 10_000
	ks := testkeys.BenchKeySet(b, n)
	spread := make([]string, sending)
	for i := range spread {
		spread[i] = "Bearer " + testkeys.BenchRawKey(i*n/len(spread))
	}
	one := []keyset.RateLimit{{Requests: 1_000_000_000, Window: "1h"}}
	three := []keyset.RateLimit{{Requests: 1_000_000_000, Window: "1s"}, {Requests: 1_000_000_000, Window: "1m"}, {Requests: 1_000_000_000, Window: "1h"}}
	// The same key set, each key with the one limit of its own (in its
	// record) instead of the handler's default.
	recs := testkeys.BenchRecords(n)
	for i := range recs {
		recs[i].RateLimits = one
	}
	own, err := keyfile.BuildKeySet(recs)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		limits     []keyset.RateLimit
		headersOff bool
		keys       *keyset.KeySet
	}{
		{"none", nil, false, ks},
		{"1-limit/headers=on", one, false, ks},
		{"1-limit/headers=off", one, true, ks},
		{"3-limits/headers=on", three, false, ks},
		{"3-limits/headers=off", three, true, ks},
		{"1-own-limit/headers=on", nil, false, own},
	} {
		b.Run(fmt.Sprintf("keys=%d/%s", sending, c.name), func(b *testing.B) {
			h := newMemoryHandler(&Handler{KeysFile: "bench-keys.json", RateLimits: c.limits, RateLimitHeadersOff: c.headersOff}, c.keys)
			serveBatches(b, h, spread, nil)
		})
	}
}

// serveBatches runs b.N requests through h, their Authorization headers
// taken in turn from spread, prepared as BenchmarkServeHTTP prepares them
// (in batches, off the clock). Every key is used once before the timer
// starts (its first use), then warm is called, if set; every request must
// be admitted.
func serveBatches(b *testing.B, h *Handler, spread []string, warm func()) {
	w := &discardWriter{hdr: make(http.Header)}
	reqs := make([]*http.Request, benchBatch)
	prepare := func(offset int) {
		for j := range reqs {
			u := &url.URL{Path: "/api/items"}
			r := &http.Request{Method: "GET", URL: u, Header: http.Header{"Authorization": {spread[(offset+j)%len(spread)]}}, RemoteAddr: "192.0.2.1:51234", RequestURI: u.RequestURI()}
			reqs[j] = caddyhttp.PrepareRequest(r.WithContext(b.Context()), caddy.NewReplacer(), w, nil)
		}
	}
	for off := 0; off < len(spread); off += benchBatch { // every key's first use: limiter state, quota blocks
		prepare(off)
		for _, r := range reqs {
			_ = h.ServeHTTP(w, r, noopNext)
		}
	}
	if warm != nil {
		warm()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += benchBatch {
		b.StopTimer()
		prepare(i)
		b.StartTimer()
		for _, r := range reqs[:min(benchBatch, b.N-i)] {
			if err := h.ServeHTTP(w, r, noopNext); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	if w.status != 0 {
		b.Fatal(fmt.Sprintf("status %d", w.status))
	}
}
