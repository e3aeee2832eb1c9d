package stores

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// The stores' Prometheus metrics, under a store label: a key file store's
// is the file's path, a Redis store's its name (redis:<url>#<prefix>). The
// collectors are made once per process; the handler registers them (with
// Collectors) with the registry of every config that uses it, so they stay
// on /metrics, with their values, across config reloads.
var metrics = struct {
	keys        *prometheus.GaugeVec
	reloads     *prometheus.CounterVec
	usageWrites *prometheus.CounterVec
	lastLoad    *prometheus.GaugeVec
	lastSync    *prometheus.GaugeVec
	broken      *prometheus.GaugeVec
	rateSyncs   *prometheus.CounterVec
}{
	keys: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "keys",
		Help: "Keys in the key set in force, by store and state (active, expired, revoked); expiry is judged when the key set is loaded.",
	}, []string{"store", "state"}),
	reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "reloads_total",
		Help: "Loads of a new version of a store's keys, by result: ok (put in force, the first load included) or error (refused: broken, or unreadable; the keys in force stay).",
	}, []string{"store", "result"}),
	usageWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "usage_writes_total",
		Help: "Writes of last-used times to a store, by result: ok or error (retried later).",
	}, []string{"store", "result"}),
	lastLoad: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "last_load_timestamp_seconds",
		Help: "Unix time at which the key set in force was loaded from the store.",
	}, []string{"store"}),
	lastSync: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "last_sync_timestamp_seconds",
		Help: "Unix time at which a store that syncs from elsewhere (Redis) last confirmed that its key set in force is the latest; time() minus it is the sync's age.",
	}, []string{"store"}),
	broken: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "source_broken",
		Help: "1 while a store's source cannot be loaded (a key file missing, unreadable or broken; the keys loaded before stay in force), 0 once a good version is in force. Alert on it rather than on reloads_total{result=\"error\"}, which counts each broken version once.",
	}, []string{"store"}),
	rateSyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "rate_limit_syncs_total",
		Help: "Exchanges of rate-limit counts with the fleet through a store (Redis), by result: ok, or error (each server then limits from the counts it has, and the next exchange sends what this one could not).",
	}, []string{"store", "result"}),
}

// Metrics are the metrics of one store, under its store label, with
// their series looked up once. Its methods do nothing on a nil
// *Metrics, a store made outside Caddy (tests).
type Metrics struct {
	label       string
	refs        int // stores using the label; under metricsMu
	keys        [keyset.NumStates]prometheus.Gauge
	reloadOK    prometheus.Counter
	reloadError prometheus.Counter
	writeOK     prometheus.Counter
	writeError  prometheus.Counter
	lastLoad    prometheus.Gauge
	lastSync    prometheus.Gauge   // made on first use: only a syncing store has it
	broken      prometheus.Gauge   // made on first use: by a store that reports it
	rateSyncOK  prometheus.Counter // made on first use: by a store that shares rate limits
	rateSyncErr prometheus.Counter
}

// metricsByLabel holds the Metrics in use. Stores with one label
// share them: a store for a path can be made while the one it replaces is
// still going away, and the going one must not delete the new one's series.
var (
	metricsMu      sync.Mutex
	metricsByLabel = map[string]*Metrics{}
)

// AcquireMetrics returns the metrics of the store labeled label, their
// series made (at 0) if no store has that label yet. The store calls
// Release when it goes away.
func AcquireMetrics(label string) *Metrics {
	metricsMu.Lock()
	defer metricsMu.Unlock()
	m := metricsByLabel[label]
	if m == nil {
		m = &Metrics{
			label:       label,
			reloadOK:    metrics.reloads.WithLabelValues(label, "ok"),
			reloadError: metrics.reloads.WithLabelValues(label, "error"),
			writeOK:     metrics.usageWrites.WithLabelValues(label, "ok"),
			writeError:  metrics.usageWrites.WithLabelValues(label, "error"),
			lastLoad:    metrics.lastLoad.WithLabelValues(label),
		}

		for st := range keyset.NumStates {
			m.keys[st] = metrics.keys.WithLabelValues(label, st.String())
		}
		metricsByLabel[label] = m
	}
	m.refs++
	return m
}

// Release drops a store's use of its metrics. When no store has the label
// any more, its series are deleted, so that a store no config uses does not
// linger on /metrics.
func (m *Metrics) Release() {
	if m == nil {
		return
	}
	metricsMu.Lock()
	defer metricsMu.Unlock()
	if m.refs--; m.refs > 0 {
		return
	}
	delete(metricsByLabel, m.label)
	labels := prometheus.Labels{"store": m.label}
	metrics.keys.DeletePartialMatch(labels)
	metrics.reloads.DeletePartialMatch(labels)
	metrics.usageWrites.DeletePartialMatch(labels)
	metrics.lastLoad.DeletePartialMatch(labels)
	metrics.lastSync.DeletePartialMatch(labels)
	metrics.broken.DeletePartialMatch(labels)
	metrics.rateSyncs.DeletePartialMatch(labels)
}

// RateSynced records an exchange of rate-limit counts with the fleet,
// failed if err is set.
func (m *Metrics) RateSynced(err error) {
	if m == nil {
		return
	}
	metricsMu.Lock()
	if m.rateSyncOK == nil {
		m.rateSyncOK = metrics.rateSyncs.WithLabelValues(m.label, "ok")
		m.rateSyncErr = metrics.rateSyncs.WithLabelValues(m.label, "error")
	}
	ok, failed := m.rateSyncOK, m.rateSyncErr
	metricsMu.Unlock()
	if err != nil {
		failed.Inc()
	} else {
		ok.Inc()
	}
}

// SourceBroken records whether the store's source can be loaded: broken
// (1) from the first version that cannot (a key file missing, unreadable
// or broken; a Redis key set that cannot be read), until a good version is
// in force (0). A store calls it on each load, the first one included.
func (m *Metrics) SourceBroken(broken bool) {
	if m == nil {
		return
	}
	metricsMu.Lock()
	if m.broken == nil {
		m.broken = metrics.broken.WithLabelValues(m.label)
	}
	g := m.broken
	metricsMu.Unlock()
	if broken {
		g.Set(1)
	} else {
		g.Set(0)
	}
}

// Synced records that a syncing store confirmed at time at that its key
// set in force is the latest.
func (m *Metrics) Synced(at time.Time) {
	if m == nil {
		return
	}
	metricsMu.Lock()
	if m.lastSync == nil {
		m.lastSync = metrics.lastSync.WithLabelValues(m.label)
	}
	g := m.lastSync
	metricsMu.Unlock()
	g.Set(float64(at.UnixNano()) / 1e9)
}

// Loaded records that the key set ks was put in force at time at: its keys
// by state, expiry judged at that time.
func (m *Metrics) Loaded(ks *keyset.KeySet, at time.Time) {
	if m == nil {
		return
	}
	n := ks.Counts(at)
	for st := range n {
		m.keys[st].Set(float64(n[st]))
	}
	m.reloadOK.Inc()
	m.lastLoad.Set(float64(at.UnixNano()) / 1e9)
}

// LogFirstLoad logs, at info level, that a store put its first key set in
// force, with the store's name and its keys by state at time at, so that an
// operator sees that the keys loaded. Every store calls it once, for its
// first load; fields are added to the line (the file store's keys_file).
func LogFirstLoad(log *zap.Logger, store string, ks *keyset.KeySet, at time.Time, fields ...zap.Field) {
	n := ks.Counts(at)
	log.Info("key store loaded", append([]zap.Field{
		zap.String("store", store),
		zap.Int("keys", n[keyset.Active]+n[keyset.Expired]+n[keyset.Revoked]),
		zap.Int("active", n[keyset.Active]),
		zap.Int("expired", n[keyset.Expired]),
		zap.Int("revoked", n[keyset.Revoked]),
	}, fields...)...)
}

// LoadFailed records a version of the keys that could not be put in force.
func (m *Metrics) LoadFailed() {
	if m != nil {
		m.reloadError.Inc()
	}
}

// UsageWritten records a write of last-used times, failed if err is set.
func (m *Metrics) UsageWritten(err error) {
	switch {
	case m == nil:
	case err != nil:
		m.writeError.Inc()
	default:
		m.writeOK.Inc()
	}
}

// Collectors are the stores' collectors, for the handler to register.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metrics.keys, metrics.reloads, metrics.usageWrites, metrics.lastLoad, metrics.lastSync, metrics.broken, metrics.rateSyncs}
}
