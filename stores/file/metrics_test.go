package file

import (
	"os"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"go.uber.org/zap/zapcore"
)

// caddy_apikey_source_broken is 1 for as long as the key file cannot be
// put in force (broken, then missing), however often it is checked, and 0
// once a good version is; its series goes with the store.
func TestSourceBrokenGauge(t *testing.T) {
	a := testkeys.New("a", nil)
	path := testkeys.WriteKeys(t, "", a)
	s, _, _ := newTestStore(t, path, time.Minute)
	s.metrics = stores.AcquireMetrics(path)
	broken := func() float64 {
		t.Helper()
		v, ok := testkeys.GaugeValue(t, "caddy_apikey_source_broken", path)
		if !ok {
			t.Fatal("no caddy_apikey_source_broken series for the store")
		}
		return v
	}
	s.check()
	if got := broken(); got != 0 {
		t.Fatalf("source_broken = %g with a good file in force, want 0", got)
	}
	if err := os.WriteFile(path, []byte(`{"api_keys": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		s.check()
		if got := broken(); got != 1 {
			t.Fatalf("source_broken = %g with the file broken, want 1", got)
		}
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s.check()
	if got := broken(); got != 1 {
		t.Fatalf("source_broken = %g with the file missing, want 1", got)
	}
	testkeys.WriteKeys(t, path, a)
	s.check()
	if got := broken(); got != 0 {
		t.Fatalf("source_broken = %g once the file is good again, want 0", got)
	}
	s.metrics.Release()
	if _, ok := testkeys.GaugeValue(t, "caddy_apikey_source_broken", path); ok {
		t.Error("the series stayed once no store uses it")
	}
}

// A store's first load logs one info line naming the store and its keys by
// state; a later reload does not log it again.
func TestFirstLoadLogsKeysByState(t *testing.T) {
	path := testkeys.WriteKeys(t, "",
		testkeys.New("a", nil), testkeys.New("b", nil),
		testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00Z"}),
		testkeys.New("revoked", map[string]any{"revoked_at": "2026-01-01T00:00:00Z"}))
	s, _, logs := newTestStore(t, path, time.Minute)
	entries := logs.FilterMessage("key store loaded").All()
	if len(entries) != 1 {
		t.Fatalf("%d \"key store loaded\" lines at the first load, want 1", len(entries))
	}
	if entries[0].Level != zapcore.InfoLevel {
		t.Errorf("logged at %s, want info", entries[0].Level)
	}
	fields := entries[0].ContextMap()
	want := map[string]any{"store": "file:" + path, "keys_file": path, "keys": int64(4), "active": int64(2), "expired": int64(1), "revoked": int64(1)}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, fields[k], v, fields)
		}
	}
	testkeys.WriteKeys(t, path, testkeys.New("c", nil))
	s.check()
	if n := logs.FilterMessage("key store loaded").Len(); n != 1 {
		t.Errorf("%d \"key store loaded\" lines after a reload, want still 1", n)
	}
}
