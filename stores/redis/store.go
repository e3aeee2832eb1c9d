package redis

import (
	"crypto/sha256"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"github.com/redis/rueidis"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(Store{})
}

// Store keeps the keys in Redis (module
// http.handlers.apikey.stores.redis), so that a fleet of Caddy servers
// shares one key set: every server holds the whole key set in memory, as
// with a key file, and follows the key set's change log, so that an add or
// a revoke is in force on every server within milliseconds. Requests never
// wait on Redis: when it is down, the keys in force stay in force.
type Store struct {
	// The Redis server: redis://[user:password@]host:port/db, rediss://
	// for TLS. Sentinel (?master_set=name&addr=host2:port) and Cluster
	// (several addresses) as github.com/redis/rueidis reads them from the
	// URL. {env.*} placeholders are replaced. Required.
	URL string `json:"url,omitempty"`

	// The prefix of the key set's Redis keys. Default: `apikey:`. Each
	// prefix is a key set of its own.
	Prefix string `json:"prefix,omitempty"`

	// A file in which the key set in force is saved (atomically) after
	// each sync, hashes only. If Redis cannot be reached when Caddy starts,
	// the keys are taken from it, with a warning, until Redis is back.
	CacheFile string `json:"cache_file,omitempty"`

	// How often at most a key's last-used time is written to Redis, per
	// server. Default: 15m. A negative value turns usage tracking off.
	UsageInterval caddy.Duration `json:"usage_interval,omitempty"`

	store *live.Set
	lease *storecore.PoolLease
}

// CaddyModule returns the Caddy module information.
func (Store) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.apikey.stores.redis",
		New: func() caddy.Module { return new(Store) },
	}
}

// liveSets holds one live store per Redis key set (URL and prefix) for
// the whole process, across config reloads.
var liveSets = caddy.NewUsagePool()

// Provision connects to Redis and loads the key set, or takes a lease on
// the live store of this key set if a handler of this process has one.
func (r *Store) Provision(ctx caddy.Context) error {
	repl := caddy.NewReplacer()
	rawURL := repl.ReplaceAll(r.URL, "")
	opt, shown, err := parseURL(rawURL)
	if err != nil {
		return err
	}
	keys, err := keyspace.New(repl.ReplaceAll(r.Prefix, ""))
	if err != nil {
		return err
	}
	cacheFile := repl.ReplaceAll(r.CacheFile, "")
	poolKey := rawURL + "\x00" + keys.Prefix
	val, _, err := liveSets.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		s := newLiveSet(opt, shown, keys, cacheFile)
		if err := s.Open(); err != nil {
			s.ReleaseMetrics()
			return nil, err
		}
		s.Start()
		stores.Register(s)
		return s, nil
	})
	if err != nil {
		return err
	}
	s := val.(*live.Set)
	r.store = s
	r.lease = &storecore.PoolLease{Pool: liveSets, Key: poolKey, Leases: s.Leases(), Flush: s.AskFlush, ID: s.Leases().Add(storecore.Settings{
		Usage:  storecore.IntervalSetting(r.UsageInterval, storecore.DefaultUsageInterval),
		Reload: storecore.Interval{Off: true},
	})}
	return nil
}

// Cleanup writes the pending last-used times and releases the key set. The
// store stays set, for requests still in flight.
func (r *Store) Cleanup() error {
	if r.lease != nil {
		r.lease.Release()
		r.lease = nil
	}
	return nil
}

// Name is the key set's name, as the admin API and the metrics show it.
func (r *Store) Name() string { return r.store.Name() }

// KeySet returns the key set in force.
func (r *Store) KeySet() *keyset.KeySet { return r.store.KeySet() }

// MarkUsed notes a use of a key, for the usage writer.
func (r *Store) MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64) {
	if r.store.Leases().Current().Usage.Off {
		return
	}
	r.store.Usage().Mark(k, sum, now)
}

// newLiveSet makes the live store of the key set at keys on the Redis
// server opt reaches (shown: its URL without the password), its record
// store this package's Records.
func newLiveSet(opt rueidis.ClientOption, shown string, keys keyspace.Layout, cacheFile string) *live.Set {
	return live.New(opt, shown, keys, cacheFile, func(c rueidis.Client) stores.RecordStore {
		return Records{client: c, keys: keys, shown: shown, timeout: keyspace.AnswerTimeout(opt)}
	})
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Store)(nil)
	_ caddy.CleanerUpper = (*Store)(nil)
)
