package apikey

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/keyevents"
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
	name     string // the limiter's key in limiters
}

// LimiterSharer is a store whose key set is shared by several servers and
// that shares rate-limit counts among them too (the Redis store): it adds
// this server's counts to the fleet's and hands back the fleet's, in the
// background, until stop is called. A limiter it shares is made with
// ratelimit.Options.Fleet.
type LimiterSharer interface {
	ShareLimiter(l *ratelimit.Limiter) (stop func())
}

// shared holds, for the whole process, what the handlers of one key set
// (by the store's name) share across routes and config reloads: the rate
// limiter, the quota meter, the usage counts and the events about its
// keys.
var shared = caddy.NewUsagePool()

// storeShared is what the handlers of one key set share, stopped when no
// handler uses it.
type storeShared struct {
	limiter *ratelimit.Limiter // nil until a handler limits
	meter   *quota.Meter
	counts  *usagecount.Flusher // nil: the store keeps no usage counts
	events  *keyevents.Events
	stop    func()
}

func (s *storeShared) Destruct() error {
	s.stop()
	return nil
}

// sweepEvery is how often a limiter frees the state of idle keys, and the
// expiring keys are looked for.
const sweepEvery = time.Minute

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

// useShared takes what the handlers of the handler's key set share (a
// store that says its name; one of its own otherwise): the limiter, for
// the request path, and the events.
func (h *Handler) useShared(ctx caddy.Context) {
	name := fmt.Sprintf("handler %p", h)
	if named, ok := h.store.(interface{ Name() string }); ok {
		name = named.Name()
	}
	sharer, fleet := h.store.(LimiterSharer)
	store := h.store
	val, _, _ := shared.LoadOrNew(name, func() (caddy.Destructor, error) {
		l := ratelimit.New(ratelimit.Options{Fleet: fleet})
		ev := keyevents.New(name, store.KeySet)
		done := make(chan struct{})
		go func() {
			// Every second until the config runs and the expiring
			// keys have been looked at, then every sweepEvery.
			t := time.NewTicker(time.Second)
			defer t.Stop()
			var looked, swept time.Time
			for {
				select {
				case <-done:
					return
				case now := <-t.C:
					if now.Sub(swept) >= sweepEvery {
						l.Sweep(now.UnixNano())
						swept = now
					}
					if now.Sub(looked) >= sweepEvery && ev.AnnounceExpiring(now) {
						looked = now
					}
				}
			}
		}()
		stopSync := func() {}
		if fleet {
			stopSync = sharer.ShareLimiter(l)
		}
		sh := &storeShared{limiter: l, events: ev, meter: newMeter(name, store)}
		if w, ok := store.(usagecount.Writer); ok {
			sh.counts = usagecount.NewFlusher(name, w)
		}
		sh.stop = func() {
			close(done)
			stopSync()
			sh.meter.Close()
			if sh.counts != nil {
				sh.counts.Stop()
			}
		}
		return sh, nil
	})
	sh := val.(*storeShared)
	h.limits.name, h.events = name, sh.events
	h.quota.meter, h.counts = sh.meter, nil
	if sh.counts != nil && h.UsageRetention >= 0 {
		h.counts = sh.counts
		keep := usagecount.DefaultRetention
		if h.UsageRetention > 0 {
			keep = time.Duration(h.UsageRetention)
		}
		sh.counts.SetRetention(keep)
	}
	if _, ok := h.store.(quota.Bank); !ok && hasQuotas(h.store.KeySet()) {
		h.logger.Warn("the key store keeps no quota state: keys with a quota are refused (503 QUOTA_UNAVAILABLE)", zap.String("key_store", name))
	}
	sh.events.Use(ctx, h.ExpiryNotice, h.store.KeySet)
	if h.limits.on {
		h.limits.limiter = sh.limiter
	}
	h.logger.Debug("key store shared state", zap.String("key_store", name), zap.Bool("rate_limits", h.limits.on), zap.Int("default_limits", len(h.limits.defaults)), zap.Bool("fleet", fleet))
}

// release lets go of what the handlers of the key set share.
func (l *limiting) release() {
	if l.name != "" {
		_, _ = shared.Delete(l.name)
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

// newMeter makes the quota meter of the key store named name: on the
// store's quota state if it keeps one (a quota.Bank), logging each outage
// of it once; on none otherwise, so that keys with a quota are refused.
func newMeter(name string, store Store) *quota.Meter {
	bank, ok := store.(quota.Bank)
	if !ok {
		return quota.NewMeter(noBank{}, quota.Options{})
	}
	return quota.NewMeter(bank, quota.Options{Trouble: func(err error) {
		log := caddy.Log().Named("http.handlers.apikey")
		if err != nil {
			log.Error("cannot reach the quota state of the key store: each server spends the units it holds, then refuses keys with a quota (503 QUOTA_UNAVAILABLE, or admits them with quota_outage admit) until it is back; check the store",
				zap.String("key_store", name), zap.Error(err))
			return
		}
		log.Info("the quota state of the key store can be reached again", zap.String("key_store", name))
	}})
}

// of returns the limits of key: its own, or the handler's defaults.
func (l *limiting) of(key *keyset.Key) []ratelimit.Limit {
	if own, ok := key.RateLimits(); ok {
		return own
	}
	return l.defaults
}

// policyOf is the RateLimit-Policy header of limits, made once for the
// defaults.
func (l *limiting) policyOf(limits []ratelimit.Limit) string {
	if len(l.defaults) > 0 && &limits[0] == &l.defaults[0] {
		return l.policy
	}
	return ratelimit.Policy(limits)
}
