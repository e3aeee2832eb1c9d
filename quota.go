package apikey

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/shared"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// metering is a handler's quota spending: what a request costs, and the
// meter of its key set, shared by every handler of this process on that
// key set (across config reloads too).
type metering struct {
	cost    int64 // units a request spends: Cost, 1 by default
	off     bool  // QuotasOff: spend nothing, refuse nothing for quotas
	headers bool  // QuotaHeaders
	admit   bool  // QuotaOutage "admit"
	meter   *quota.Meter
}

// The values of QuotaOutage.
const (
	OutageRefuse = "refuse"
	OutageAdmit  = "admit"
)

// setup reads the handler's quota settings.
func (m *metering) setup(h *Handler) error {
	m.cost, m.off, m.headers = h.Cost, h.QuotasOff, h.QuotaHeaders
	switch {
	case h.Cost < 0:
		return fmt.Errorf("cost %d: must be 1 or more (quota off spends nothing)", h.Cost)
	case h.Cost > quota.MaxRequests:
		return fmt.Errorf("cost %d: must be at most %d", h.Cost, int64(quota.MaxRequests))
	case h.Cost == 0:
		m.cost = 1
	}
	switch h.QuotaOutage {
	case "", OutageRefuse:
		m.admit = false
	case OutageAdmit:
		m.admit = true
	default:
		return fmt.Errorf("quota_outage %q: must be %q (the default) or %q", h.QuotaOutage, OutageRefuse, OutageAdmit)
	}
	if h.UsageRetention > 0 && time.Duration(h.UsageRetention) < time.Hour {
		return fmt.Errorf("usage_retention %s: must be an hour or more (or off)", time.Duration(h.UsageRetention))
	}
	return nil
}

// spend spends the request's cost of key's quota, if it has one and the
// route spends: it returns the decision and whether there was one.
func (m *metering) spend(key *keyset.Key, now int64) (quota.Decision, bool) {
	if m.meter == nil || m.off {
		return quota.Decision{}, false
	}
	q, ok := key.Quota()
	if !ok {
		return quota.Decision{}, false
	}
	d := m.meter.SpendVia(key.QuotaSlot(), key.ID, q, m.cost, now)
	if d.Outcome == quota.Unavailable && m.admit {
		m.meter.Owe(key.ID, m.cost)
		d.Outcome = quota.Owed
	}
	return d, true
}

// admittedPlaceholders resolves the placeholders of an admitted request
// that was rate limited or metered: the key's (Key.Placeholder), its rate
// limit's state ({http.auth.apikey.rate_limit.limit}, .remaining, .reset)
// and its quota's ({http.auth.apikey.quota.limit}, .remaining, .reset).
// One function for all, so that such a request costs no more allocations
// than another; each case captures only what it needs.
func admittedPlaceholders(key *keyset.Key, rd ratelimit.Decision, limited bool, qd quota.Decision, metered bool, now int64) func(string) (any, bool) {
	switch {
	case !metered:
		return func(name string) (any, bool) {
			if v, ok := rd.Placeholder(name); ok {
				return v, true
			}
			return key.Placeholder(name)
		}
	case !limited:
		qp := qd.Placeholders(now)
		return func(name string) (any, bool) {
			if v, ok := qp.Placeholder(name); ok {
				return v, true
			}
			return key.Placeholder(name)
		}
	}
	qp := qd.Placeholders(now)
	return func(name string) (any, bool) {
		if v, ok := rd.Placeholder(name); ok {
			return v, true
		}
		if v, ok := qp.Placeholder(name); ok {
			return v, true
		}
		return key.Placeholder(name)
	}
}

// countedAs is the usage count of each handler result, or -1: the results
// of requests whose key matched a record.
var countedAs = func() (m [numResults]int8) {
	for i := range m {
		m[i] = -1
	}
	m[resultOK] = usagecount.Admitted
	m[resultRevoked] = usagecount.Revoked
	m[resultExpired] = usagecount.Expired
	m[resultInsufficientScope] = usagecount.InsufficientScope
	m[resultRateLimited] = usagecount.RateLimited
	m[resultQuotaExceeded] = usagecount.QuotaExceeded
	m[resultQuotaUnavailable] = usagecount.QuotaUnavailable
	return m
}()

// countUse counts a request of key with result r in the key's usage
// counts, if its store keeps them.
func (h *Handler) countUse(key *keyset.Key, r result) {
	if h.counts != nil {
		if i := countedAs[r]; i >= 0 {
			h.counts.Count(key, int(i))
		}
	}
}

// FlushUsage writes the pending usage counts of the key store named name
// (stores.Live.Name) now, and has its quota meter ask its bank about the
// keys it refused: the admin API calls it before it reads usage and
// quota state, so that its answers hold what this server did.
func FlushUsage(name string) { shared.Flush(name) }

// refuseQuota answers a request whose key's quota refused it: 429
// QUOTA_EXCEEDED with Retry-After until the period ends (none for a fixed
// allowance, which does not renew), or 503 QUOTA_UNAVAILABLE with
// Retry-After one sync interval away.
func (h *Handler) refuseQuota(w http.ResponseWriter, r *http.Request, key *keyset.Key, d quota.Decision, now int64) error {
	why, retry := h.quotaExceeded, d.ResetSeconds(now)
	if d.Outcome == quota.Unavailable {
		why, retry = h.quotaDown, int64(quota.SyncInterval/time.Second)
	}
	if why == h.quotaDown || d.Reset < quota.Never.UnixNano() {
		w.Header()["Retry-After"] = []string{strconv.FormatInt(retry, 10)}
	}
	if h.quota.headers {
		quota.WriteHeaders(w.Header(), d, now)
	}
	return h.refuse(w, r, why, key)
}
