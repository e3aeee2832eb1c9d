package redis

import (
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
)

// A Redis store says once that its keys loaded, with their states, and
// reports on caddy_apikey_source_broken while its key set cannot be read,
// as a key file store does.
func TestRedisStoreSourceBrokenAndFirstLoad(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "m:")
	raw, _ := teststores.AddKey(t, rs, "a")
	s, logs, err := openLoggedRedisStore(t, r, "m:", "")
	if err != nil {
		t.Fatal(err)
	}
	if entries := logs.FilterMessage("key store loaded").All(); len(entries) != 1 || entries[0].ContextMap()["active"] != int64(1) {
		t.Fatalf("first load logged %d times: %v", len(entries), entries)
	}
	if v, ok := testkeys.GaugeValue(t, "caddy_apikey_source_broken", s.Name()); !ok || v != 0 {
		t.Fatalf("source_broken at start: %v (there: %v), want 0", v, ok)
	}

	k, _ := keyspace.New("m:")
	r.Do("DEL", k.Records, k.Version)
	_ = s.Refresh()
	if v, _ := testkeys.GaugeValue(t, "caddy_apikey_source_broken", s.Name()); v != 1 {
		t.Fatalf("source_broken with the key set gone: %v, want 1", v)
	}
	if !admits(s, raw) {
		t.Fatal("the keys in force were dropped")
	}

	if _, _, err := keyops.Create(rs, keyops.AddOptions{Label: "b"}, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	_ = s.Refresh()
	if v, _ := testkeys.GaugeValue(t, "caddy_apikey_source_broken", s.Name()); v != 0 {
		t.Fatalf("source_broken once the key set is back: %v, want 0", v)
	}
	if n := logs.FilterMessage("key store loaded").Len(); n != 1 {
		t.Errorf("first load logged %d times in all, want once", n)
	}
}
