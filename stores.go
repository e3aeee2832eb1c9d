package apikey

import (
	"crypto/sha256"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddyserver/caddy/v2"
)

// Store is a key store: where the handler finds the key set in force and
// notes the uses of keys. Stores are Caddy modules in the
// http.handlers.apikey.stores namespace (http.handlers.apikey.stores.file,
// http.handlers.apikey.stores.redis), so that another backend plugs in
// without touching the handler. Both methods are on the request path: they
// must not do I/O or block.
type Store interface {
	// KeySet returns the key set in force. Build one with NewKeySet.
	KeySet() *keyset.KeySet
	// MarkUsed notes that key k, whose SHA-256 is sum, admitted a request
	// at now (unix nanoseconds).
	MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64)
}

const (
	defaultUsageInterval  = 15 * time.Minute
	defaultReloadInterval = time.Second

	// tickInterval is how often background loops wake to see whether their
	// interval has passed. It bounds how finely reload_interval and
	// usage_interval are honoured.
	tickInterval = 250 * time.Millisecond

	// maxFlushPeriod bounds how long a first use waits to be written, and
	// so how often a busy server writes when new keys keep appearing: all
	// keys that fall due within one period share one write.
	maxFlushPeriod = 3 * time.Second

	// usageResolution is how stale a key's in-memory last-used time may
	// get. Updating it at most once a second keeps many cores from all
	// writing the same cache line on every request.
	usageResolution = int64(time.Second)

	// stopWait bounds how long a config unload or Caddy's stop waits for
	// a store's last usage write. A hung disk or a lock held elsewhere
	// must not hold up Caddy; the write goes on in the background.
	stopWait = 3 * time.Second
)

// interval is how often a store does a piece of background work.
type interval struct {
	every time.Duration
	off   bool
}

// intervalSetting reads a configured interval: zero means the default, a
// negative value means off.
func intervalSetting(d caddy.Duration, def time.Duration) interval {
	switch {
	case d == 0:
		return interval{every: def}
	case d < 0:
		return interval{off: true}
	}
	return interval{every: time.Duration(d)}
}

// shorter returns the shorter of two intervals, off counting as longest.
func (a interval) shorter(b interval) interval {
	switch {
	case a.off:
		return b
	case b.off:
		return a
	}
	return interval{every: min(a.every, b.every)}
}

// storeSettings are the settings one store module asks of a shared store.
type storeSettings struct {
	usage  interval // how often at most a key's last use is written
	reload interval // how often the source is checked for changes (files)
}

// leaseSet holds the settings of every store module using one shared store
// (one per key file, one per Redis key set, per process), and the settings
// in force: for each interval, the shortest one that is not off, or off if
// all are.
type leaseSet struct {
	mu       sync.Mutex
	byID     map[uint64]storeSettings
	next     uint64
	settings atomic.Pointer[storeSettings]
}

func newLeaseSet() *leaseSet {
	l := &leaseSet{byID: make(map[uint64]storeSettings)}
	l.settings.Store(&storeSettings{
		usage:  interval{every: defaultUsageInterval},
		reload: interval{every: defaultReloadInterval},
	})
	return l
}

// add takes a lease with settings s and returns its id.
func (l *leaseSet) add(s storeSettings) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	l.byID[l.next] = s
	l.apply()
	return l.next
}

// remove ends lease id. The last lease leaves the settings as they were,
// for the store's last write.
func (l *leaseSet) remove(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byID, id)
	l.apply()
}

func (l *leaseSet) apply() {
	if len(l.byID) == 0 {
		return
	}
	eff := storeSettings{usage: interval{off: true}, reload: interval{off: true}}
	for _, s := range l.byID {
		eff.usage = eff.usage.shorter(s.usage)
		eff.reload = eff.reload.shorter(s.reload)
	}
	l.settings.Store(&eff)
}

// current returns the settings in force.
func (l *leaseSet) current() *storeSettings { return l.settings.Load() }

// poolLease is one store module's use of a store shared through a
// caddy.UsagePool (one per key file, one per Redis key set).
type poolLease struct {
	pool   *caddy.UsagePool
	key    string // the store's key in pool
	leases *leaseSet
	id     uint64 // the lease's settings in leases
	flush  func() // writes the store's pending last-used times
}

// release asks for the pending usage times to be written, withdraws the
// lease's settings and drops its reference to the store; the last reference
// stops the store (its Destruct writes them as it stops). Caddy calls
// Cleanup for the modules of a config that failed to load too, so such a
// config's settings do not stay in force.
func (l *poolLease) release() {
	if refs, _ := l.pool.References(l.key); refs > 1 {
		l.flush()
	}
	l.leases.remove(l.id)
	_, _ = l.pool.Delete(l.key)
}

// liveStore is a store in use in this process, as the admin API sees it.
type liveStore interface {
	// name says where the keys are: "file:/etc/caddy/keys.json" or
	// "redis:redis://10.0.0.5:6379/0#apikey:" (the URL without its password).
	name() string
	// keySet is the key set in force.
	keySet() *keyset.KeySet
	// records is the write side, shared with `caddy apikey`.
	records() recordStore
	// refresh puts the store's records as they are now in force in this
	// process, so that a change made through records() holds before the
	// admin API answers, not at the next reload.
	refresh() error
}

// live holds the stores in use in this process, by name.
var live = struct {
	sync.Mutex
	byName map[string]liveStore
}{byName: make(map[string]liveStore)}

func registerLive(s liveStore) {
	live.Lock()
	live.byName[s.name()] = s
	live.Unlock()
}

func unregisterLive(s liveStore) {
	live.Lock()
	if live.byName[s.name()] == s {
		delete(live.byName, s.name())
	}
	live.Unlock()
}

// liveStores returns the stores in use, sorted by name.
func liveStores() []liveStore {
	live.Lock()
	defer live.Unlock()
	out := make([]liveStore, 0, len(live.byName))
	for _, s := range live.byName {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name() < out[j].name() })
	return out
}

// ask hands a request to one of a store's goroutines on ch and waits for
// its answer, at most wait in all. answered is false if none came: the
// goroutine was busy past wait, or the store stopped (stopped closed).
func ask[T any](ch chan chan T, stopped <-chan struct{}, wait time.Duration) (answer T, answered bool) {
	reply, deadline := make(chan T, 1), time.After(wait)
	select {
	case ch <- reply:
		select {
		case answer = <-reply:
			return answer, true
		case <-deadline:
		}
	case <-stopped:
	case <-deadline:
	}
	return answer, false
}

// usageWriter runs a store's usage writer until stop is closed: it calls
// write(false) every min(usage interval, maxFlushPeriod), so that the uses
// that are due share one write, and write(true), for every pending use,
// when asked on flushNow and as it stops.
func usageWriter(stop <-chan struct{}, flushNow chan chan struct{}, leases *leaseSet, now func() time.Time, write func(all bool)) {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-stop:
			write(true)
			return
		case reply := <-flushNow:
			write(true)
			reply <- struct{}{}
		case <-t.C:
			iv := leases.current().usage
			if !iv.off && now().Sub(last) >= min(iv.every, maxFlushPeriod) {
				last = now()
				write(false)
			}
		}
	}
}
