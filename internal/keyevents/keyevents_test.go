package keyevents

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

type event struct {
	name string
	data map[string]any
}

// recording gives e an emitter that records what it is given, from
// whichever goroutine: read got after synctest.Wait.
func recording(e *Events, got *[]event) {
	var mu sync.Mutex
	e.emitter = func(name string, data map[string]any) bool {
		mu.Lock()
		defer mu.Unlock()
		*got = append(*got, event{name, data})
		return true
	}
}

// apikey_rate_limited goes once per key per window of the refusing limit,
// in the background, and carries the key's id, label and prefix, never
// more of it.
func TestRateLimitedOncePerWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := testkeys.New("limited", nil)
		ks := testkeys.KeySet(t, k.Rec())
		key, _ := ks.Lookup(k.Raw)
		e := New("store-a", func() *keyset.KeySet { return ks })
		var got []event
		recording(e, &got)
		d := ratelimit.Decision{Limit: ratelimit.Limit{Requests: 5, Window: time.Minute}, RetryAfter: 30 * time.Second}
		start := time.Now().Truncate(time.Minute).UnixNano()
		for _, at := range []time.Duration{0, time.Second, 59 * time.Second, time.Minute, 61 * time.Second} {
			e.RateLimited(key, d, start+int64(at))
		}
		synctest.Wait()
		if len(got) != 2 {
			t.Fatalf("%d events for two windows: %v", len(got), got)
		}
		want := map[string]any{"id": k.ID(), "label": "limited", "key_prefix": k.Raw[:11], "store": "store-a", "limit": "5/1m", "retry_after": int64(30)}
		for _, ev := range got {
			if ev.name != RateLimited || len(ev.data) != len(want) {
				t.Fatalf("event %v, want %s with %v", ev, RateLimited, want)
			}
			for name, v := range want {
				if ev.data[name] != v {
					t.Errorf("%s = %v, want %v", name, ev.data[name], v)
				}
			}
		}
	})
}

// apikey_expiring goes once per key that expires within the notice, not
// for a revoked key nor one further away; not at all with the notice off
// or before the config's events app runs.
func TestAnnounceExpiring(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		now := time.Now()
		at := func(d time.Duration) map[string]any {
			return map[string]any{"expires_at": now.Add(d).UTC().Format("2006-01-02T15:04:05.000000+00:00")}
		}
		soon := testkeys.New("soon", at(24*time.Hour))
		later := testkeys.New("later", at(30*24*time.Hour))
		revoked := testkeys.New("revoked", map[string]any{"expires_at": at(time.Hour)["expires_at"], "revoked_at": "2000-01-01T00:00:00+00:00"})
		ks := testkeys.KeySet(t, soon.Rec(), later.Rec(), revoked.Rec())
		e := New("store-a", func() *keyset.KeySet { return ks })
		var got []event
		e.emitter = func(string, map[string]any) bool { return false } // not running yet
		if e.AnnounceExpiring(now) {
			t.Fatal("AnnounceExpiring says it looked before the config runs")
		}
		recording(e, &got)
		for range 2 {
			if !e.AnnounceExpiring(now) {
				t.Fatal("AnnounceExpiring could not look")
			}
		}
		if len(got) != 1 || got[0].name != Expiring || got[0].data["id"] != soon.ID() || got[0].data["expires_in"] != "86400s" {
			t.Fatalf("events %v, want one %s for %s, expires_in 86400s", got, Expiring, soon.ID())
		}
		e.before = -1
		e.announced = map[string]bool{}
		if !e.AnnounceExpiring(now) || len(got) != 1 {
			t.Errorf("with the notice off: events %v", got)
		}
	})
}
