package apikey

import (
	"testing"

	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/prometheus/client_golang/prometheus"
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
