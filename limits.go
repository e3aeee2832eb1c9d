package apikey

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/shared"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// limiting is a handler's rate limiting: the limits of keys without their
// own, and the limiter of its key set, shared by every handler of this
// process on that key set (across config reloads too).
type limiting struct {
	on       bool              // RateLimitsOff not given
	defaults []ratelimit.Limit // the handler's RateLimits, parsed
	policy   string            // the RateLimit-Policy of defaults
	limiter  *ratelimit.Limiter
	name     string // the key set's name in package shared, while the handler holds its state
}

// LimiterSharer is a store whose key set is shared by several servers and
// that shares rate-limit counts among them too (the Redis store): it adds
// this server's counts to the fleet's and hands back the fleet's, in the
// background, until stop is called. A limiter it shares is made with
// ratelimit.Options.Fleet (package shared, which looks for this method).
type LimiterSharer interface {
	ShareLimiter(l *ratelimit.Limiter) (stop func())
}

// setup reads the handler's limits.
func (l *limiting) setup(limits []keyset.RateLimit, off bool) error {
	l.on, l.defaults, l.policy = false, nil, ""
	if off {
		if len(limits) > 0 {
			return fmt.Errorf("rate_limits and rate_limits_off are both given; give one")
		}
		return nil
	}
	parsed, err := keyset.ParseRateLimits(limits)
	if err != nil {
		return err // it names rate_limits
	}
	l.on, l.defaults, l.policy = true, parsed, ratelimit.Policy(parsed)
	return nil
}

// useShared takes what the handlers of the handler's key set share
// (package shared: the limiter, the quota meter, the usage counts and the
// events), by the name of a store that says it, or one of its own.
func (h *Handler) useShared(ctx caddy.Context) {
	name := fmt.Sprintf("handler %p", h)
	if named, ok := h.store.(interface{ Name() string }); ok {
		name = named.Name()
	}
	_, fleet := h.store.(LimiterSharer)
	sh := shared.Acquire(name, h.store)
	h.limits.name, h.events = name, sh.Events
	h.quota.meter, h.counts = sh.Meter, nil
	if sh.Counts != nil && h.UsageRetention >= 0 {
		h.counts = sh.Counts
		keep := usagecount.DefaultRetention
		if h.UsageRetention > 0 {
			keep = time.Duration(h.UsageRetention)
		}
		sh.Counts.SetRetention(keep)
	}
	if _, ok := h.store.(quota.Bank); !ok && hasQuotas(h.store.KeySet()) {
		h.logger.Warn("the key store keeps no quota state: keys with a quota are refused (503 QUOTA_UNAVAILABLE)", zap.String("key_store", name))
	}
	sh.Events.Use(ctx, h.ExpiryNotice, h.store.KeySet)
	if h.limits.on {
		h.limits.limiter = sh.Limiter
	}
	h.logger.Debug("key store shared state", zap.String("key_store", name), zap.Bool("rate_limits", h.limits.on), zap.Int("default_limits", len(h.limits.defaults)), zap.Bool("fleet", fleet))
}

// release lets go of what the handlers of the key set share.
func (l *limiting) release() {
	if l.name != "" {
		shared.Release(l.name)
		l.name, l.limiter = "", nil
	}
}

// hasQuotas reports whether a key of ks has a quota.
func hasQuotas(ks *keyset.KeySet) bool {
	for _, k := range ks.All() {
		if _, ok := k.Quota(); ok {
			return true
		}
	}
	return false
}

// of returns the limits of key: its own, or the handler's defaults.
func (l *limiting) of(key *keyset.Key) []ratelimit.Limit {
	if own, ok := key.RateLimits(); ok {
		return own
	}
	return l.defaults
}

// policyOf is the RateLimit-Policy header of the limits of key (of), made
// once: for the defaults when the handler is provisioned, for a key's own
// limits on its first request.
func (l *limiting) policyOf(key *keyset.Key) string {
	if _, own := key.RateLimits(); own {
		return key.RateLimitPolicy()
	}
	return l.policy
}
