package apikey

import (
	"os"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
)

// A second handler of a config, and every config reload, registers the
// collectors again: that must neither fail nor make a second series.
func TestRegisterMetricsTwice(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for i := range 2 {
		if err := registerMetrics(reg); err != nil {
			t.Fatalf("registration %d: %v", i+1, err)
		}
	}
	if err := registerMetrics(prometheus.NewPedanticRegistry()); err != nil {
		t.Fatalf("a new config's registry: %v", err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "caddy_apikey_requests_total" && len(f.GetMetric()) != int(numResults) {
			t.Errorf("requests_total has %d series, want %d", len(f.GetMetric()), numResults)
		}
	}

	// Another collector under one of the names is a real conflict.
	other := prometheus.NewRegistry()
	other.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "caddy_apikey_requests_total", Help: "x"}, []string{"result"}))
	if err := registerMetrics(other); err == nil {
		t.Error("a conflicting collector was taken for ours")
	}
}

// Stores with one label share its series; they go with the last one.
func TestStoreMetricsShared(t *testing.T) {
	const label = "/test/shared/keys.json"
	a, b := stores.AcquireMetrics(label), stores.AcquireMetrics(label)
	a.LoadFailed()
	b.LoadFailed()
	a.Release()
	if got := countSeries(t, label); got == 0 {
		t.Fatal("the series went while a store still uses the label")
	}
	b.Release()
	if got := countSeries(t, label); got != 0 {
		t.Fatalf("%d series left once no store uses the label", got)
	}
}

func countSeries(t *testing.T, label string) int {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "store" && l.GetValue() == label {
					n++
				}
			}
		}
	}
	return n
}

// gaugeValue returns the value of the series of the gauge name whose store
// label is store, and whether there is one.
func gaugeValue(t *testing.T, name, store string) (float64, bool) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "store" && l.GetValue() == store {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// caddy_apikey_source_broken is 1 for as long as the key file cannot be
// put in force (broken, then missing), however often it is checked, and 0
// once a good version is; its series goes with the store.
func TestSourceBrokenGauge(t *testing.T) {
	a := newTestKey("a", nil)
	path := writeKeys(t, "", a)
	s, _, _ := newTestStore(t, path, time.Minute)
	s.metrics = stores.AcquireMetrics(path)
	broken := func() float64 {
		t.Helper()
		v, ok := gaugeValue(t, "caddy_apikey_source_broken", path)
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
	writeKeys(t, path, a)
	s.check()
	if got := broken(); got != 0 {
		t.Fatalf("source_broken = %g once the file is good again, want 0", got)
	}
	s.metrics.Release()
	if _, ok := gaugeValue(t, "caddy_apikey_source_broken", path); ok {
		t.Error("the series stayed once no store uses it")
	}
}

// A store's first load logs one info line naming the store and its keys by
// state; a later reload does not log it again.
func TestFirstLoadLogsKeysByState(t *testing.T) {
	path := writeKeys(t, "",
		newTestKey("a", nil), newTestKey("b", nil),
		newTestKey("expired", map[string]any{"expires_at": "2020-01-01T00:00:00Z"}),
		newTestKey("revoked", map[string]any{"revoked_at": "2026-01-01T00:00:00Z"}))
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
	writeKeys(t, path, newTestKey("c", nil))
	s.check()
	if n := logs.FilterMessage("key store loaded").Len(); n != 1 {
		t.Errorf("%d \"key store loaded\" lines after a reload, want still 1", n)
	}
}
