package live

import (
	"context"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// What the tests of package stores/redis, which drive a Set from outside
// this package, see of it beyond its API; nothing else uses these.

// Syncs is how many times the set read its key set whole.
func (s *Set) Syncs() int64 { return s.syncs.Load() }

// Writes is how many writes of last-used times the usage writer made.
func (s *Set) Writes() int64 { return s.writes.Load() }

// Connect returns the set's client, making it if it has none (without
// loading the key set).
func (s *Set) Connect() (rueidis.Client, error) { return s.connected() }

// CloseClient closes the set's client, of a set that is not started.
func (s *Set) CloseClient() { s.closeClient() }

// FullSync reads the key set whole through c and puts it in force.
func (s *Set) FullSync(c rueidis.Client) error { return s.fullSync(c) }

// StartFrom puts the cache file's snapshot in force, caught up from the
// key set's log through c (see Open).
func (s *Set) StartFrom(c rueidis.Client, snap *keyset.Snapshot) (current bool, err error) {
	return s.startFrom(c, snap)
}

// WriteCache writes the key set in force to the cache file now.
func (s *Set) WriteCache() { s.writeCache() }

// SetKeySet puts ks in force as if it had been read from Redis, without
// telling the metrics or the cache writer.
func (s *Set) SetKeySet(ks *keyset.KeySet) { s.keys.Store(ks) }

// Exchange returns one round of the exchange of l's counts with the
// fleet, as ShareLimiter runs every RateSyncInterval.
func (s *Set) Exchange(l *ratelimit.Limiter) (round func(context.Context) error) {
	return (&rateExchange{s: s, l: l}).round
}
