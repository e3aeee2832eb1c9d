package apikey

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// stores holds one keyStore per key file (by real absolute path) for the whole
// process, across config reloads: however many handlers use a file, there
// is one key set in memory, one watcher and one usage writer for it.
var stores = caddy.NewUsagePool()

const (
	defaultUsageInterval  = 15 * time.Minute
	defaultReloadInterval = time.Second

	// tickInterval is how often the watcher and the writer wake to see
	// whether their interval has passed. It bounds how finely
	// reload_interval and usage_interval are honoured.
	tickInterval = 250 * time.Millisecond

	// maxFlushPeriod bounds how long a first use waits to be written, and
	// so how often a busy server rewrites its key file when new keys keep
	// appearing: all keys that fall due within one period share one write.
	maxFlushPeriod = 5 * time.Second

	// usageResolution is how stale a key's in-memory last-used time may
	// get. Updating it at most once a second keeps many cores from all
	// writing the same cache line on every request.
	usageResolution = int64(time.Second)
)

// usageCell holds the last-used time of one key. Requests write lastUsed;
// the writer goroutine owns the rest.
type usageCell struct {
	id   string
	hash [sha256.Size]byte

	lastUsed atomic.Int64 // unix nanoseconds of the latest use seen
	queued   atomic.Bool  // already handed to the writer

	persistedAt time.Time // when the writer last wrote this key
	written     int64     // the lastUsed value last written
}

// keyStore is the live state of one key file: the key set in force, the
// watcher that reloads it and the writer that persists last-used times.
// The watcher and the writer run in goroutines of their own, so that a long
// write never delays a reload.
type keyStore struct {
	path   string
	logger *zap.Logger // nil: Caddy's current logger (see log)
	now    func() time.Time

	keys atomic.Pointer[keySet]

	usageInterval  atomic.Int64 // nanoseconds; <0: usage is not recorded
	reloadInterval atomic.Int64 // nanoseconds; <0: the file is not watched

	// leases are the settings of the handlers that use this file, by
	// lease id; the effective settings are derived from them.
	leasesMu  sync.Mutex
	leases    map[uint64]storeSettings
	nextLease uint64

	// incoming collects cells used since the writer last looked; a cell
	// is appended once, when its queued flag goes up.
	incomingMu sync.Mutex
	incoming   []*usageCell

	// mu guards the watcher's state.
	mu         sync.Mutex
	loadedFile fs.FileInfo // what the key set in force was read from
	badFile    fs.FileInfo // the last broken version reported, to report it once
	badMissing bool        // the missing file has been reported

	// flushMu guards the writer's state, and is held for a whole write.
	flushMu      sync.Mutex
	waiting      map[*usageCell]struct{}
	writeFailing bool
	writes       atomic.Int64 // usage writes done, for tests and metrics

	stop         chan struct{}
	done         chan struct{} // closed when both goroutines have ended
	destructOnce sync.Once
}

// storeSettings are the per-file settings a handler asks for.
type storeSettings struct {
	usageInterval  time.Duration // <0: off
	reloadInterval time.Duration // <0: off
}

// storeLease is one handler's use of a key file's store.
type storeLease struct {
	store   *keyStore
	poolKey string
	id      uint64
}

// acquireStore returns a lease on the store of the key file at path (whose
// real path, through symbolic links, is poolKey), creating and loading the
// store if no handler in this process uses that file yet. The caller must release the lease in its Cleanup.
func acquireStore(path, poolKey string, settings storeSettings) (*storeLease, error) {
	val, loaded, err := stores.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		s := newKeyStore(path, nil)
		if err := s.reload(true); err != nil {
			return nil, err
		}
		s.start()
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	s := val.(*keyStore)
	if loaded {
		// A config (re)load re-reads a changed file at once and fails on a
		// broken one, as the first load does, even when watching is off.
		if err := s.reload(true); err != nil {
			_, _ = stores.Delete(poolKey)
			return nil, err
		}
	}
	s.leasesMu.Lock()
	if s.leases == nil {
		s.leases = make(map[uint64]storeSettings)
	}
	s.nextLease++
	lease := &storeLease{store: s, poolKey: poolKey, id: s.nextLease}
	s.leases[lease.id] = settings
	s.leasesMu.Unlock()
	s.applyLeases()
	return lease, nil
}

// release writes the pending usage times, withdraws the lease's settings
// and drops its reference to the store; the last reference stops the store.
// Caddy calls Cleanup for handlers of a config that failed to load too, so
// such a config's settings do not stay in force.
func (l *storeLease) release() {
	s := l.store
	s.flush(true)
	s.leasesMu.Lock()
	delete(s.leases, l.id)
	s.leasesMu.Unlock()
	s.applyLeases()
	_, _ = stores.Delete(l.poolKey)
}

// applyLeases derives the store's settings from its handlers': for each
// interval, the shortest one that is not off, or off if all are.
func (s *keyStore) applyLeases() {
	s.leasesMu.Lock()
	defer s.leasesMu.Unlock()
	if len(s.leases) == 0 {
		return // the store is going away; keep what it had
	}
	eff := storeSettings{usageInterval: -1, reloadInterval: -1}
	for _, l := range s.leases {
		eff.usageInterval = shortestOn(eff.usageInterval, l.usageInterval)
		eff.reloadInterval = shortestOn(eff.reloadInterval, l.reloadInterval)
	}
	s.configure(eff)
}

// shortestOn returns the shorter of two intervals where negative means off.
func shortestOn(a, b time.Duration) time.Duration {
	switch {
	case a < 0:
		return b
	case b < 0:
		return a
	}
	return min(a, b)
}

func newKeyStore(path string, logger *zap.Logger) *keyStore {
	s := &keyStore{
		path:    path,
		logger:  logger,
		now:     time.Now,
		waiting: make(map[*usageCell]struct{}),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.usageInterval.Store(int64(defaultUsageInterval))
	s.reloadInterval.Store(int64(defaultReloadInterval))
	return s
}

// log is the store's logger. A store outlives the config that created it,
// so it logs through Caddy's current logging, not that config's.
func (s *keyStore) log() *zap.Logger {
	if s.logger != nil {
		return s.logger
	}
	return caddy.Log().Named("http.handlers.apikey")
}

// configure sets the store's effective settings.
func (s *keyStore) configure(settings storeSettings) {
	s.usageInterval.Store(int64(settings.usageInterval))
	s.reloadInterval.Store(int64(settings.reloadInterval))
}

// start runs the watcher and the writer until Destruct.
func (s *keyStore) start() {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.every(&s.reloadInterval, func(time.Duration) time.Duration { return 0 }, func() { _ = s.reload(false) })
	}()
	go func() {
		defer wg.Done()
		s.every(&s.usageInterval, func(ui time.Duration) time.Duration { return min(ui, maxFlushPeriod) }, func() { s.flush(false) })
	}()
	go func() {
		wg.Wait()
		close(s.done)
	}()
}

// every runs work each period(interval) (or each interval, if period gives
// 0) while the interval is on, until the store stops. It wakes every
// tickInterval, so changed settings apply without restarting it.
func (s *keyStore) every(interval *atomic.Int64, period func(time.Duration) time.Duration, work func()) {
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			iv := time.Duration(interval.Load())
			if iv < 0 {
				continue
			}
			p := period(iv)
			if p == 0 {
				p = iv
			}
			if now := s.now(); now.Sub(last) >= p {
				last = now
				work()
			}
		}
	}
}

// Destruct stops the background work once no handler uses the file; pending
// usage times are written first.
func (s *keyStore) Destruct() error {
	s.destructOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.flush(true)
	})
	return nil
}

// current returns the key set in force.
func (s *keyStore) current() *keySet { return s.keys.Load() }

// reload re-reads the key file if it changed since it was last read. A
// broken or missing file keeps the key set in force: when strict, the
// problem is returned (a config load fails on it); otherwise it is logged
// once per broken version.
func (s *keyStore) reload(strict bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	fi, err := os.Stat(s.path)
	if err != nil {
		if strict {
			return fmt.Errorf("key file: %w", err)
		}
		if !s.badMissing {
			s.badMissing = true
			s.log().Error("key file cannot be read; the keys loaded before stay in force",
				zap.String("keys_file", s.path), zap.Error(err))
		}
		return err
	}
	s.badMissing = false
	if s.loadedFile != nil && sameVersion(s.loadedFile, fi) {
		return nil
	}
	if !strict && s.badFile != nil && sameVersion(s.badFile, fi) {
		return nil // already reported
	}
	ks, err := readKeySet(s.path)
	if err != nil {
		if !strict {
			s.badFile = fi
			s.log().Error("key file is broken; the keys loaded before stay in force",
				zap.String("keys_file", s.path), zap.Error(err))
		}
		return err
	}
	s.badFile = nil
	old := s.keys.Load()
	if old != nil {
		carryUsage(old, ks)
	}
	s.keys.Store(ks)
	s.loadedFile = fi
	if old != nil {
		s.log().Info("key file reloaded", zap.String("keys_file", s.path), zap.Int("keys", len(ks.keys)))
	} else if len(ks.keys) == 0 {
		s.log().Warn("key file holds no keys: every request with a key will be refused", zap.String("keys_file", s.path))
	}
	return nil
}

// sameVersion reports whether two stats of the key file show the same
// version of it: same file (a rename over it makes a new one), size and
// modification time.
func sameVersion(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// carryUsage moves the usage cells of keys that are still the same key (same
// hash, same id) into the new key set, so their throttle state survives.
func carryUsage(old, next *keySet) {
	for sum, k := range next.byHash {
		if prev := old.byHash[sum]; prev != nil && prev.ID == k.ID {
			if c := prev.usage.Load(); c != nil {
				k.usage.Store(c)
			}
		}
	}
}

// markUsed records a use of key k (whose hash is sum) at now. It never
// blocks on the disk: at worst it appends to a slice under a short lock,
// once per key per write cycle.
func (s *keyStore) markUsed(k *Key, sum [sha256.Size]byte, now int64) {
	if s.usageInterval.Load() < 0 {
		return
	}
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
		s.incomingMu.Lock()
		s.incoming = append(s.incoming, c)
		s.incomingMu.Unlock()
	}
}

// usageKey names one key for the writer: its id and key_hash (lowercase
// hex). A key whose record now has the same id but another hash was
// replaced, and its old uses are not the new key's.
type usageKey struct{ id, hash string }

// flush writes the last-used times that are due: those of keys not written
// within the usage interval, or all of them when force is set (on stop and
// config reload). One write covers every due key.
func (s *keyStore) flush(force bool) {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()

	s.incomingMu.Lock()
	for _, c := range s.incoming {
		s.waiting[c] = struct{}{}
	}
	s.incoming = s.incoming[:0]
	s.incomingMu.Unlock()
	if len(s.waiting) == 0 {
		return
	}

	interval := time.Duration(s.usageInterval.Load())
	now := s.now()
	updates := make(map[usageKey]time.Time)
	type dueCell struct {
		cell *usageCell
		used int64
	}
	var due []dueCell
	for c := range s.waiting {
		if !force && !c.persistedAt.IsZero() && now.Sub(c.persistedAt) < interval {
			continue
		}
		// Lower the flag before reading the time, so that a use after
		// the read queues the cell again instead of being missed.
		c.queued.Store(false)
		used := c.lastUsed.Load()
		if used <= c.written {
			delete(s.waiting, c)
			continue
		}
		due = append(due, dueCell{c, used})
		key := usageKey{c.id, hex.EncodeToString(c.hash[:])}
		if at := time.Unix(0, used); at.After(updates[key]) {
			updates[key] = at
		}
	}
	if len(due) == 0 {
		return
	}

	w, err := updateKeyFileStat(s.path, false, func(doc *keyDoc) error {
		return applyUsage(doc, updates)
	})
	if err != nil {
		if !s.writeFailing {
			s.writeFailing = true
			s.log().Error("cannot write last-used times to the key file; authentication goes on, and writing will be retried",
				zap.String("keys_file", s.path), zap.Error(err))
		}
		return
	}
	if s.writeFailing {
		s.writeFailing = false
		s.log().Info("writing last-used times to the key file works again", zap.String("keys_file", s.path))
	}
	for _, d := range due {
		d.cell.written = d.used
		d.cell.persistedAt = now
		delete(s.waiting, d.cell)
	}
	if w.written == nil {
		return
	}
	s.writes.Add(1)
	// If the version this write started from is the one the key set was
	// read from, the write changed only last_used_at, which the key set
	// does not hold: note the new version as loaded, so it is not parsed
	// again for nothing. Otherwise the watcher loads it as usual.
	s.mu.Lock()
	if s.loadedFile != nil && w.read != nil && sameVersion(s.loadedFile, w.read) {
		s.loadedFile = w.written
	}
	s.mu.Unlock()
}

// applyUsage sets last_used_at on the records that are still in the file with
// the same id and key_hash. A record whose last_used_at on disk is newer (set
// by another process) keeps it.
func applyUsage(doc *keyDoc, updates map[usageKey]time.Time) error {
	changed := false
	for i := range doc.records {
		rec := &doc.records[i]
		at, ok := updates[usageKey{rec.getString("id"), strings.ToLower(rec.getString("key_hash"))}]
		if !ok {
			continue
		}
		if prev := rec.getString("last_used_at"); prev != "" {
			if t, err := parseTimestamp(prev); err == nil && !t.Before(at.Truncate(time.Microsecond)) {
				continue
			}
		}
		if err := rec.set("last_used_at", formatTimestamp(at)); err != nil {
			return err
		}
		changed = true
	}
	if !changed {
		return errNoChange
	}
	return nil
}
