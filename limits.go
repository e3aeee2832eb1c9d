package apikey

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
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

// limiters holds one limiter per key set (by the store's name) for the
// whole process.
var limiters = caddy.NewUsagePool()

// sharedLimiter is a key set's limiter, with its sweeper and its fleet
// sync, stopped when no handler uses it.
type sharedLimiter struct {
	*ratelimit.Limiter
	stop func()
}

func (s *sharedLimiter) Destruct() error {
	s.stop()
	return nil
}

// sweepEvery is how often a limiter frees the state of idle keys.
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
		return fmt.Errorf("rate_limits: %v", err)
	}
	l.on, l.defaults, l.policy = true, parsed, policy(parsed)
	return nil
}

// useLimiter takes the limiter of the handler's key set (a store that
// says its name), or one of its own, for the request path.
func (h *Handler) useLimiter() {
	if !h.limits.on {
		return
	}
	name := fmt.Sprintf("handler %p", h)
	if named, ok := h.store.(interface{ Name() string }); ok {
		name = named.Name()
	}
	sharer, fleet := h.store.(LimiterSharer)
	val, _, _ := limiters.LoadOrNew(name, func() (caddy.Destructor, error) {
		l := ratelimit.New(ratelimit.Options{Fleet: fleet})
		done := make(chan struct{})
		go func() {
			t := time.NewTicker(sweepEvery)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case now := <-t.C:
					l.Sweep(now.UnixNano())
				}
			}
		}()
		stopSync := func() {}
		if fleet {
			stopSync = sharer.ShareLimiter(l)
		}
		return &sharedLimiter{Limiter: l, stop: func() { close(done); stopSync() }}, nil
	})
	h.limits.limiter, h.limits.name = val.(*sharedLimiter).Limiter, name
	h.logger.Debug("rate limits on", zap.String("key_store", name), zap.Int("default_limits", len(h.limits.defaults)), zap.Bool("fleet", fleet))
}

// release lets go of the limiter.
func (l *limiting) release() {
	if l.limiter != nil {
		_, _ = limiters.Delete(l.name)
		l.limiter = nil
	}
}

// of returns the limits of key: its own, or the handler's defaults.
func (l *limiting) of(key *keyset.Key) []ratelimit.Limit {
	if own, ok := key.RateLimits(); ok {
		return own
	}
	return l.defaults
}

// tell gives the rest of Caddy the limit's state as placeholders and, with
// headers, the client as response headers; a refusal carries Retry-After.
func (l *limiting) tell(w http.ResponseWriter, repl *caddy.Replacer, limits []ratelimit.Limit, d ratelimit.Decision, headers bool) {
	reset := d.ResetSeconds()
	repl.Set("http.auth.apikey.rate_limit.limit", d.Limit.Requests)
	repl.Set("http.auth.apikey.rate_limit.remaining", d.Remaining)
	repl.Set("http.auth.apikey.rate_limit.reset", reset)
	hdr := w.Header()
	if !d.Allowed {
		hdr["Retry-After"] = []string{strconv.FormatInt(d.RetryAfterSeconds(), 10)}
	}
	if !headers {
		return
	}
	p := l.policy
	if len(l.defaults) == 0 || &limits[0] != &l.defaults[0] {
		p = policy(limits)
	}
	name := ratelimit.FormatWindow(d.Limit.Window)
	hdr["Ratelimit-Policy"] = []string{p}
	hdr["Ratelimit"] = []string{`"` + name + `";r=` + strconv.FormatInt(d.Remaining, 10) + ";t=" + strconv.FormatInt(reset, 10)}
	hdr["X-Ratelimit-Limit"] = []string{strconv.FormatInt(d.Limit.Requests, 10)}
	hdr["X-Ratelimit-Remaining"] = []string{strconv.FormatInt(d.Remaining, 10)}
	hdr["X-Ratelimit-Reset"] = []string{strconv.FormatInt(reset, 10)}
}

// policy is the RateLimit-Policy header of limits (IETF httpapi draft's
// structured field): each limit named by its window, with its quota (q)
// and window in seconds (w), e.g. "1m";q=100;w=60, "1s";q=10;w=1.
func policy(limits []ratelimit.Limit) string {
	var b strings.Builder
	for i, lim := range limits {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`"` + ratelimit.FormatWindow(lim.Window) + `";q=` + strconv.FormatInt(lim.Requests, 10) + ";w=" + strconv.FormatInt(int64(lim.Window/time.Second), 10))
	}
	return b.String()
}
