package apikey

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"sync"
	"sync/atomic"
	"time"

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
	KeySet() *KeySet
	// MarkUsed notes that key k, whose SHA-256 is sum, admitted a request
	// at now (unix nanoseconds).
	MarkUsed(k *Key, sum [sha256.Size]byte, now int64)
}

// NewKeySet checks records as a key file's are checked (unique ids and
// key hashes, well-formed times and scopes) and builds their key set.
func NewKeySet(records []Record) (*KeySet, error) {
	b := newKeySetBuilder(len(records))
	for i := range records {
		if err := b.add(&records[i], i+1); err != nil {
			return nil, err
		}
	}
	return b.ks, nil
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

// usageCell holds the last-used time of one key. Requests write lastUsed;
// the store's writer owns the rest.
type usageCell struct {
	id   string
	hash [sha256.Size]byte

	lastUsed atomic.Int64 // unix nanoseconds of the latest use seen
	queued   atomic.Bool  // already handed to the writer

	persistedAt time.Time // when the writer last wrote this key
	written     int64     // the lastUsed value last written
}

// usageKey names one key for a usage write: its id and key_hash (lowercase
// hex). A key whose record now has the same id but another hash was
// replaced, and its old uses are not the new key's.
type usageKey struct{ id, hash string }

// usageTracker notes uses on the request path and hands the due ones to a
// store's writer, which is the only goroutine to call collect and done.
type usageTracker struct {
	// incoming collects cells used since the writer last looked; a cell
	// is appended once, when its queued flag goes up.
	incomingMu sync.Mutex
	incoming   []*usageCell

	waiting map[*usageCell]struct{} // the writer's
}

// mark records a use of key k (whose hash is sum) at now. At worst it
// appends to a slice under a short lock, once per key per write cycle.
func (u *usageTracker) mark(k *Key, sum [sha256.Size]byte, now int64) {
	c := k.usage.Load()
	if c == nil {
		c = &usageCell{id: k.ID, hash: sum}
		if !k.usage.CompareAndSwap(nil, c) {
			c = k.usage.Load()
		}
	}
	if now-c.lastUsed.Load() >= usageResolution {
		c.lastUsed.Store(now)
	}
	if !c.queued.Load() && c.queued.CompareAndSwap(false, true) {
		u.incomingMu.Lock()
		u.incoming = append(u.incoming, c)
		u.incomingMu.Unlock()
	}
}

// usageBatch is one usage write: the latest use of each due key.
type usageBatch struct {
	updates map[usageKey]time.Time
	due     []dueCell
	at      time.Time
}

type dueCell struct {
	cell *usageCell
	used int64
}

// collect returns the uses due for writing at now: those of keys not
// written within iv, or all of them; nil when none is due.
func (u *usageTracker) collect(all bool, iv time.Duration, now time.Time) *usageBatch {
	u.incomingMu.Lock()
	if u.waiting == nil {
		u.waiting = make(map[*usageCell]struct{})
	}
	for _, c := range u.incoming {
		u.waiting[c] = struct{}{}
	}
	u.incoming = u.incoming[:0]
	u.incomingMu.Unlock()
	if len(u.waiting) == 0 {
		return nil
	}
	b := &usageBatch{updates: make(map[usageKey]time.Time), at: now}
	for c := range u.waiting {
		if !all && !c.persistedAt.IsZero() && now.Sub(c.persistedAt) < iv {
			continue
		}
		// Lower the flag before reading the time, so that a use after
		// the read queues the cell again instead of being missed.
		c.queued.Store(false)
		used := c.lastUsed.Load()
		if used <= c.written {
			delete(u.waiting, c)
			continue
		}
		b.due = append(b.due, dueCell{c, used})
		key := usageKey{c.id, hex.EncodeToString(c.hash[:])}
		if at := time.Unix(0, used); at.After(b.updates[key]) {
			b.updates[key] = at
		}
	}
	if len(b.due) == 0 {
		return nil
	}
	return b
}

// done marks a batch written.
func (u *usageTracker) done(b *usageBatch) {
	for _, d := range b.due {
		d.cell.written = d.used
		d.cell.persistedAt = b.at
		delete(u.waiting, d.cell)
	}
}

// carryUsage moves the usage cells of keys that are still the same key (same
// hash, same id) into the new key set, so their throttle state survives a
// reload.
func carryUsage(old, next *KeySet) {
	for sum, i := range next.byHash {
		k := &next.keys[i]
		if prev := old.find(sum); prev != nil && prev.ID == k.ID {
			if c := prev.usage.Load(); c != nil {
				k.usage.Store(c)
			}
		}
	}
}

// liveStore is a store in use in this process, as the admin API sees it.
type liveStore interface {
	// name says where the keys are: "file:/etc/caddy/keys.json" or
	// "redis:redis://10.0.0.5:6379/0#apikey:" (the URL without its password).
	name() string
	// keySet is the key set in force.
	keySet() *KeySet
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
