package redis

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
)

// clusterPrefixes are the default prefix and a custom one whose key set
// the Cluster serves from another primary, so that the tests cover two
// nodes. Each key set's Redis keys must share one slot, that of its hash
// tag "{<prefix>}".
func clusterPrefixes(t *testing.T, cl *testredis.Cluster) []string {
	t.Helper()
	slotOf := func(prefix string) int {
		keys, err := keyspace.New(prefix)
		if err != nil {
			t.Fatal(err)
		}
		slot := cl.KeySlot(t, "{"+keys.Prefix+"}")
		for _, k := range []string{keys.Records, keys.Used, keys.Version, keys.Log, keys.QuotaHash("2026-12"), keys.UsageHash(time.Now())} {
			if got := cl.KeySlot(t, k); got != slot {
				t.Fatalf("prefix %q: %s is in slot %d, %s in slot %d: a script on the key set would fail with CROSSSLOT", keys.Prefix, keys.Records, slot, k, got)
			}
		}
		return slot
	}
	def := cl.Owner(slotOf(""))
	for i := range 100 {
		custom := fmt.Sprintf("team-%d:", i)
		if cl.Owner(slotOf(custom)) != def {
			return []string{DefaultPrefix, custom}
		}
	}
	t.Fatal("no custom prefix on another primary than the default one")
	return nil
}
