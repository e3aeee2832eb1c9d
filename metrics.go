package apikey

import (
	"errors"

	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/prometheus/client_golang/prometheus"
)

// The plugin's Prometheus metrics. The collectors are made once per process
// and registered with the registry of every config that uses the handler
// (Caddy makes a new registry on each config load and points the admin
// endpoint's /metrics at it), so they stay on /metrics, with their values,
// across config reloads, as Caddy's own process-wide metrics do.
//
// A request's result is counted through counters looked up once, below: the
// request path adds one atomic add, and no allocation. The stores' metrics
// are the stores package's (stores.AcquireMetrics).
// requests counts the requests seen by the apikey handler, by result.
var requests = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "apikey", Name: "requests_total",
	Help: "Requests seen by the apikey handler, by result: ok, anonymous (optional, no key sent), missing, invalid, revoked, expired, insufficient_scope, ambiguous, malformed (a key with key_format's prefix that is not well formed, refused before any lookup), rate_limited (a valid key over its rate limit), quota_exceeded (a valid key whose quota for the period is used up), quota_unavailable (a valid key with a quota refused because its server holds no units and cannot reach the quota state).",
}, []string{"result"})

// registerMetrics registers the plugin's collectors with reg, a config's
// registry. Every handler of a config calls it: the second one finds them
// registered already, which is fine as long as they are these very
// collectors. A nil reg (a context not made by Caddy) registers nothing.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	var errs []error
	for _, c := range append([]prometheus.Collector{requests}, stores.Collectors()...) {
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
	resultMalformed
	resultRateLimited
	resultQuotaExceeded
	resultQuotaUnavailable
	numResults
)

var resultNames = [numResults]string{"ok", "anonymous", "missing", "invalid", "revoked", "expired", "insufficient_scope", "ambiguous", "malformed", "rate_limited", "quota_exceeded", "quota_unavailable"}

// requestCounters are the requests_total counters by result.
type requestCounters [numResults]prometheus.Counter

// requestResults are looked up once, so that counting a request is an
// atomic add: no label lookup, no allocation. Making them also makes every
// result's series show (at 0) from the start.
var requestResults = func() *requestCounters {
	var c requestCounters
	for r, name := range resultNames {
		c[r] = requests.WithLabelValues(name)
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
