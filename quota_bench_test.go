package apikey

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
)

// quotaStore is a memoryStore whose quota state is a quota.MemoryBank.
type quotaStore struct {
	memoryStore
	*quota.MemoryBank
}

// newQuotaHandler is newMemoryHandler on a store that keeps quota state
// in memory.
func newQuotaHandler(h *Handler, ks *keyset.KeySet, bank *quota.MemoryBank) *Handler {
	if err := h.setup(); err != nil {
		panic(err)
	}
	h.logger = zap.NewNop()
	h.store = &quotaStore{memoryStore{keys: ks, name: memoryStoreName()}, bank}
	h.useShared(caddy.Context{})
	return h
}

// BenchmarkQuota measures what a quota adds to an admitted request (valid
// keys of a set of 10 000, each with a quota too large to run out): keys
// without a quota, and with one, for one key sending every request
// (keys=1) and for 4096 keys in turn (keys=4096: the meter's state out of
// the CPU caches). The quota headers are off, as by default. Requests are
// prepared as BenchmarkServeHTTP prepares them.
func BenchmarkQuota(b *testing.B) {
	const n = 10_000
	plain := testkeys.BenchKeySet(b, n)
	recs := testkeys.BenchRecords(n)
	for i := range recs {
		recs[i].Quota = keyset.QuotaSpecOf(quota.Quota{Requests: 1 << 40, Period: quota.Month})
	}
	metered, err := keyfile.BuildKeySet(recs)
	if err != nil {
		b.Fatal(err)
	}
	for _, sending := range []int{1, 4096} {
		spread := make([]string, sending)
		for i := range spread {
			spread[i] = "Bearer " + testkeys.BenchRawKey(i*n/len(spread))
		}
		for _, c := range []struct {
			name string
			ks   *keyset.KeySet
		}{{"none", plain}, {"quota", metered}} {
			b.Run(fmt.Sprintf("keys=%d/%s", sending, c.name), func(b *testing.B) {
				h := newQuotaHandler(&Handler{KeysFile: "bench-keys.json"}, c.ks, quota.NewMemoryBank())
				defer h.Cleanup()
				w := &discardWriter{hdr: make(http.Header)}
				reqs := make([]*http.Request, benchBatch)
				prepare := func(offset int) {
					for j := range reqs {
						u := &url.URL{Path: "/api/items"}
						r := &http.Request{Method: "GET", URL: u, Header: http.Header{"Authorization": {spread[(offset+j)%len(spread)]}}, RemoteAddr: "192.0.2.1:51234", RequestURI: u.RequestURI()}
						reqs[j] = caddyhttp.PrepareRequest(r.WithContext(b.Context()), caddy.NewReplacer(), w, nil)
					}
				}
				prepare(0)
				for _, r := range reqs { // the keys' first uses: their blocks taken
					_ = h.ServeHTTP(w, r, noopNext)
				}
				h.quota.meter.Sync()
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
			})
		}
	}
}
