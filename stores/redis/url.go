package redis

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
)

// parseURL reads a configured Redis URL into client options. {env.*}
// placeholders are replaced first.
func parseURL(configured string) (rueidis.ClientOption, string, error) {
	raw := strings.TrimSpace(configured)
	if raw == "" {
		return rueidis.ClientOption{}, "", errors.New("redis: a URL is required, e.g. redis://127.0.0.1:6379/0")
	}
	if err := checkScheme(raw, "%s"); err != nil {
		return rueidis.ClientOption{}, "", err
	}
	opt, err := rueidis.ParseURL(raw)
	shown := redactURL(raw)
	if err != nil {
		// url.Parse's error quotes the whole URL, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return opt, shown, fmt.Errorf("redis URL %s: %v", shown, err)
	}
	// No client-side caching: every read here is a scan or a script,
	// and managed servers do not all support it.
	opt.DisableCache = true
	opt.ClientName = "caddy-apikey"
	// No retries inside the client: a call to a dead server fails at once,
	// and the store's own loop retries with backoff, logging once.
	opt.DisableRetry = true
	if opt.ConnWriteTimeout == 0 {
		opt.ConnWriteTimeout = keyspace.DefaultTimeout
	}
	if opt.Sentinel.MasterSet != "" {
		// rueidis follows a failover on the Sentinels' +switch-master
		// event alone, unless told to ask them again now and then: a
		// client that misses the event (its Sentinel connection down at
		// that moment, as when the Sentinel beside the old primary went
		// with it) stays on the old primary, a replica by then, until it
		// is restarted. rueidis recommends asking, every few seconds.
		opt.Sentinel.TopologyRefreshInterval = sentinelRefresh
	}
	return opt, shown, nil
}

// sentinelRefresh is how often a client on Sentinels asks them where the
// primary is, besides following their events (see parseURL): rueidis's
// advice, a few seconds. Each time costs a server four commands on its
// Sentinel connection and a ROLE to the primary.
const sentinelRefresh = 5 * time.Second

// checkScheme refuses a Redis URL that does not start with one of the
// schemes the client takes (redis, rediss, unix, valkey, valkeys), which
// the URL parser would only reject with a message about something else
// ("first path segment in URL cannot contain colon" for 127.0.0.1:6379).
// A URL that starts with a placeholder is left to be checked once it is
// replaced. The error shows the URL as it was likely meant, written as
// form says (a fmt format of one %s: "%s", or "redis %s" for the
// Caddyfile's directive), unless it may hold a password.
func checkScheme(raw, form string) error {
	u := strings.TrimSpace(raw)
	if strings.HasPrefix(u, "{") {
		return nil
	}
	scheme, _, ok := strings.Cut(u, "://")
	if ok {
		switch strings.ToLower(scheme) {
		case "redis", "rediss", "unix", "valkey", "valkeys":
			return nil
		}
	}
	msg := "the Redis URL must start with redis:// or rediss:// (TLS), or unix:// for a socket"
	switch {
	case strings.Contains(u, "@"):
		// It may hold a password: not shown.
	case strings.HasPrefix(u, "/"):
		msg += ": " + fmt.Sprintf(form, "unix://"+u)
	case !ok:
		msg += ": " + fmt.Sprintf(form, "redis://"+u)
	default:
		msg += fmt.Sprintf(", not %s://", scheme)
	}
	return errors.New(msg)
}

// redactURL is a Redis URL as logs and messages may show it: without its
// password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a malformed URL)"
	}
	return u.Redacted()
}
