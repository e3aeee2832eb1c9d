package redis

import (
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
)

// RateSyncInterval is how often each server adds its rate-limit counts to
// the fleet's in Redis and takes back the fleet's: every 100 ms. Each
// server decides on its own, from its counts and the others' as of its
// last exchange, so a fleet of N servers may admit, over a window, up to
// the limit plus what the other N-1 servers admitted in the last interval
// (see the ratelimit package).
const RateSyncInterval = live.RateSyncInterval

// ShareLimiter adds this server's rate-limit counts to the fleet's, in the
// key set's Redis, every RateSyncInterval, and gives the limiter the
// fleet's totals back, until stop is called. Each window of a limit is a
// hash ({prefix}rl:<window seconds>:<index>) of counts by key id, which
// expires once the window and the next are over. Redis down, each server
// goes on limiting from what it has, logged once, counted in
// caddy_apikey_rate_limit_syncs_total{result="error"}; the next exchange
// sends what failed.
func (r *Store) ShareLimiter(l *ratelimit.Limiter) (stop func()) { return r.store.ShareLimiter(l) }
