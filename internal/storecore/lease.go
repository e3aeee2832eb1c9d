package storecore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Timing of the stores' background work.
const (
	// DefaultUsageInterval is how often at most a key's last use is
	// written, unless configured.
	DefaultUsageInterval = 15 * time.Minute
	// DefaultReloadInterval is how often a key file is checked for
	// changes, unless configured.
	DefaultReloadInterval = time.Second

	// TickInterval is how often background loops wake to see whether their
	// interval has passed. It bounds how finely reload_interval and
	// usage_interval are honoured.
	TickInterval = 250 * time.Millisecond

	// MaxFlushPeriod bounds how long a first use waits to be written, and
	// so how often a busy server writes when new keys keep appearing: all
	// keys that fall due within one period share one write.
	MaxFlushPeriod = 3 * time.Second

	// StopWait bounds how long a config unload or Caddy's stop waits for
	// a store's last usage write. A hung disk or a lock held elsewhere
	// must not hold up Caddy; the write goes on in the background.
	StopWait = 3 * time.Second

	// RefreshWait bounds how long a config load or the admin API waits for
	// a store's goroutine to put its source in force (it may be in the
	// middle of reading a large key file). Past it, the config load fails.
	RefreshWait = 30 * time.Second
)

// Interval is how often a store does a piece of background work.
type Interval struct {
	Every time.Duration
	Off   bool
}

// IntervalSetting reads a configured interval: zero means the default, a
// negative value means off.
func IntervalSetting(d caddy.Duration, def time.Duration) Interval {
	switch {
	case d == 0:
		return Interval{Every: def}
	case d < 0:
		return Interval{Off: true}
	}
	return Interval{Every: time.Duration(d)}
}

// Shorter returns the shorter of two intervals, off counting as longest.
func (a Interval) Shorter(b Interval) Interval {
	switch {
	case a.Off:
		return b
	case b.Off:
		return a
	}
	return Interval{Every: min(a.Every, b.Every)}
}

// Settings are the settings one store module asks of a shared store.
type Settings struct {
	Usage  Interval // how often at most a key's last use is written
	Reload Interval // how often the source is checked for changes (files)
}

// Leases holds the settings of every store module using one shared store
// (one per key file, one per Redis key set, per process), and the settings
// in force: for each interval, the shortest one that is not off, or off if
// all are.
type Leases struct {
	mu       sync.Mutex
	byID     map[uint64]Settings
	next     uint64
	settings atomic.Pointer[Settings]
}

func NewLeases() *Leases {
	l := &Leases{byID: make(map[uint64]Settings)}
	l.settings.Store(&Settings{
		Usage:  Interval{Every: DefaultUsageInterval},
		Reload: Interval{Every: DefaultReloadInterval},
	})
	return l
}

// add takes a lease with settings s and returns its id.
func (l *Leases) Add(s Settings) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	l.byID[l.next] = s
	l.apply()
	return l.next
}

// remove ends lease id. The last lease leaves the settings as they were,
// for the store's last write.
func (l *Leases) Remove(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byID, id)
	l.apply()
}

func (l *Leases) apply() {
	if len(l.byID) == 0 {
		return
	}
	eff := Settings{Usage: Interval{Off: true}, Reload: Interval{Off: true}}
	for _, s := range l.byID {
		eff.Usage = eff.Usage.Shorter(s.Usage)
		eff.Reload = eff.Reload.Shorter(s.Reload)
	}
	l.settings.Store(&eff)
}

// current returns the settings in force.
func (l *Leases) Current() *Settings { return l.settings.Load() }

// PoolLease is one store module's use of a store shared through a
// caddy.UsagePool (one per key file, one per Redis key set).
type PoolLease struct {
	Pool   *caddy.UsagePool
	Key    string // the store's key in Pool
	Leases *Leases
	ID     uint64 // the lease's settings in Leases
	Flush  func() // writes the store's pending last-used times
}

// release asks for the pending usage times to be written, withdraws the
// lease's settings and drops its reference to the store; the last reference
// stops the store (its Destruct writes them as it stops). Caddy calls
// Cleanup for the modules of a config that failed to load too, so such a
// config's settings do not stay in force.
func (l *PoolLease) Release() {
	if refs, _ := l.Pool.References(l.Key); refs > 1 {
		l.Flush()
	}
	l.Leases.Remove(l.ID)
	_, _ = l.Pool.Delete(l.Key)
}
