package apikey

import (
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
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
				serveBatches(b, h, spread, h.quota.meter.Sync)
			})
		}
	}
}
