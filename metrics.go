package apikey

import (
	"errors"
	"sync"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// The plugin's Prometheus metrics. The collectors are made once per process
// and registered with the registry of every config that uses the handler
// (Caddy makes a new registry on each config load and points the admin
// endpoint's /metrics at it), so they stay on /metrics, with their values,
// across config reloads, as Caddy's own process-wide metrics do.
//
// A request's result is counted through counters looked up once, below: the
// request path adds one atomic add, and no allocation. The store-side
// metrics are kept by a store through its storeMetrics (acquireStoreMetrics),
// under its store label: the key file store's label is the file's path, a
// Redis store's its name (redis:<url>#<prefix>).
var metrics = struct {
	requests    *prometheus.CounterVec
	keys        *prometheus.GaugeVec
	reloads     *prometheus.CounterVec
	usageWrites *prometheus.CounterVec
	lastLoad    *prometheus.GaugeVec
	lastSync    *prometheus.GaugeVec
	broken      *prometheus.GaugeVec
}{
	requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "apikey", Name: "requests_total",
		Help: "Requests seen by the apikey handler, by result: ok, anonymous (optional, no key sent), missing, invalid, revoked, expired, insufficient_scope, ambiguous.",
	}, []string{"result"}),
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
}

// registerMetrics registers the plugin's collectors with reg, a config's
// registry. Every handler of a config calls it: the second one finds them
// registered already, which is fine as long as they are these very
// collectors. A nil reg (a context not made by Caddy) registers nothing.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{metrics.requests, metrics.keys, metrics.reloads, metrics.usageWrites, metrics.lastLoad, metrics.lastSync, metrics.broken} {
		err := reg.Register(c)
		var already prometheus.AlreadyRegisteredError
		if err == nil || errors.As(err, &already) && already.ExistingCollector == c {
			continue
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// result is what became of a request, a label value of requests_total.
type result uint8

const (
	resultOK result = iota
	resultAnonymous
	resultMissing
	resultInvalid
	resultRevoked
	resultExpired
	resultInsufficientScope
	resultAmbiguous
	numResults
)

var resultNames = [numResults]string{"ok", "anonymous", "missing", "invalid", "revoked", "expired", "insufficient_scope", "ambiguous"}

// requestCounters are the requests_total counters by result.
type requestCounters [numResults]prometheus.Counter

// requestResults are looked up once, so that counting a request is an
// atomic add: no label lookup, no allocation. Making them also makes every
// result's series show (at 0) from the start.
var requestResults = func() *requestCounters {
	var c requestCounters
	for r, name := range resultNames {
		c[r] = metrics.requests.WithLabelValues(name)
	}
	return &c
}()

// count counts a request's result, if the handler counts (Provision turns
// it on; handlers set up without Caddy, in tests and benchmarks, do not).
func (h *Handler) count(r result) {
	if h.results != nil {
		h.results[r].Inc()
	}
}

// storeMetrics are the metrics of one store, under its store label, with
// their series looked up once. Its methods do nothing on a nil
// *storeMetrics, a store made outside Caddy (tests).
type storeMetrics struct {
	label       string
	refs        int // stores using the label; under storeMetricsMu
	keys        [keyset.NumStates]prometheus.Gauge
	reloadOK    prometheus.Counter
	reloadError prometheus.Counter
	writeOK     prometheus.Counter
	writeError  prometheus.Counter
	lastLoad    prometheus.Gauge
	lastSync    prometheus.Gauge // made on first use: only a syncing store has it
	broken      prometheus.Gauge // made on first use: by a store that reports it
}

// storeMetricsByLabel holds the storeMetrics in use. Stores with one label
// share them: a store for a path can be made while the one it replaces is
// still going away, and the going one must not delete the new one's series.
var (
	storeMetricsMu      sync.Mutex
	storeMetricsByLabel = map[string]*storeMetrics{}
)

// acquireStoreMetrics returns the metrics of the store labeled label, their
// series made (at 0) if no store has that label yet. The store calls
// release when it goes away.
func acquireStoreMetrics(label string) *storeMetrics {
	storeMetricsMu.Lock()
	defer storeMetricsMu.Unlock()
	m := storeMetricsByLabel[label]
	if m == nil {
		m = &storeMetrics{
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
		storeMetricsByLabel[label] = m
	}
	m.refs++
	return m
}

// release drops a store's use of its metrics. When no store has the label
// any more, its series are deleted, so that a store no config uses does not
// linger on /metrics.
func (m *storeMetrics) release() {
	if m == nil {
		return
	}
	storeMetricsMu.Lock()
	defer storeMetricsMu.Unlock()
	if m.refs--; m.refs > 0 {
		return
	}
	delete(storeMetricsByLabel, m.label)
	labels := prometheus.Labels{"store": m.label}
	metrics.keys.DeletePartialMatch(labels)
	metrics.reloads.DeletePartialMatch(labels)
	metrics.usageWrites.DeletePartialMatch(labels)
	metrics.lastLoad.DeletePartialMatch(labels)
	metrics.lastSync.DeletePartialMatch(labels)
	metrics.broken.DeletePartialMatch(labels)
}

// sourceBroken records whether the store's source can be loaded: broken
// (1) from the first version that cannot (a key file missing, unreadable
// or broken; a Redis key set that cannot be read), until a good version is
// in force (0). A store calls it on each load, the first one included.
func (m *storeMetrics) sourceBroken(broken bool) {
	if m == nil {
		return
	}
	storeMetricsMu.Lock()
	if m.broken == nil {
		m.broken = metrics.broken.WithLabelValues(m.label)
	}
	g := m.broken
	storeMetricsMu.Unlock()
	if broken {
		g.Set(1)
	} else {
		g.Set(0)
	}
}

// synced records that a syncing store confirmed at time at that its key
// set in force is the latest.
func (m *storeMetrics) synced(at time.Time) {
	if m == nil {
		return
	}
	storeMetricsMu.Lock()
	if m.lastSync == nil {
		m.lastSync = metrics.lastSync.WithLabelValues(m.label)
	}
	g := m.lastSync
	storeMetricsMu.Unlock()
	g.Set(float64(at.UnixNano()) / 1e9)
}

// loaded records that the key set ks was put in force at time at: its keys
// by state, expiry judged at that time.
func (m *storeMetrics) loaded(ks *keyset.KeySet, at time.Time) {
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

// logFirstLoad logs, at info level, that a store put its first key set in
// force, with the store's name and its keys by state at time at, so that an
// operator sees that the keys loaded. Every store calls it once, for its
// first load; fields are added to the line (the file store's keys_file).
func logFirstLoad(log *zap.Logger, store string, ks *keyset.KeySet, at time.Time, fields ...zap.Field) {
	n := ks.Counts(at)
	log.Info("key store loaded", append([]zap.Field{
		zap.String("store", store),
		zap.Int("keys", n[keyset.Active]+n[keyset.Expired]+n[keyset.Revoked]),
		zap.Int("active", n[keyset.Active]),
		zap.Int("expired", n[keyset.Expired]),
		zap.Int("revoked", n[keyset.Revoked]),
	}, fields...)...)
}

// loadFailed records a version of the keys that could not be put in force.
func (m *storeMetrics) loadFailed() {
	if m != nil {
		m.reloadError.Inc()
	}
}

// usageWritten records a write of last-used times, failed if err is set.
func (m *storeMetrics) usageWritten(err error) {
	switch {
	case m == nil:
	case err != nil:
		m.writeError.Inc()
	default:
		m.writeOK.Inc()
	}
}
