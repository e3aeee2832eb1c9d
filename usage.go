package apikey

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// stores holds one keyStore per key file (by absolute path) for the whole
// process, across config reloads: however many handlers use a file, there
// is one key set in memory, one watcher and one usage writer for it.
var stores = caddy.NewUsagePool()

const (
	defaultUsageInterval  = 15 * time.Minute
	defaultReloadInterval = time.Second

	// tickInterval is how often the background goroutine wakes to check the
	// file and the due usage times. It bounds how finely reload_interval
	// and usage_interval are honoured.
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
type keyStore struct {
	path   string
	logger *zap.Logger
	now    func() time.Time

	keys atomic.Pointer[keySet]

	usageInterval  atomic.Int64 // nanoseconds; <0: usage is not recorded
	reloadInterval atomic.Int64 // nanoseconds; <0: the file is not watched

	// incoming collects cells used since the writer last looked; a cell
	// is appended once, when its queued flag goes up.
	incomingMu sync.Mutex
	incoming   []*usageCell

	// mu serialises the file work: reloads, usage writes and flushes.
	mu           sync.Mutex
	loadedFile   fs.FileInfo // what the key set in force was read from
	badFile      fs.FileInfo // the last broken version reported, to report it once
	badMissing   bool        // the missing file has been reported
	waiting      map[*usageCell]struct{}
	writeFailing bool
	writes       atomic.Int64 // usage writes done, for tests and metrics
	lastCheck    time.Time
	lastFlush    time.Time
	stop         chan struct{}
	done         chan struct{}
	destructOnce sync.Once
}

// storeSettings are the per-file settings a handler asks for.
type storeSettings struct {
	usageInterval  time.Duration // <0: off
	reloadInterval time.Duration // <0: off
}

// acquireStore returns the store of the key file at path, creating and
// loading it if no handler in this process uses that file yet. The caller
// must call releaseStore(path) in its Cleanup.
func acquireStore(path string, settings storeSettings, logger *zap.Logger) (*keyStore, error) {
	val, loaded, err := stores.LoadOrNew(path, func() (caddy.Destructor, error) {
		s := newKeyStore(path, logger)
		if err := s.reload(true); err != nil {
			return nil, err
		}
		go s.loop()
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
			_, _ = stores.Delete(path)
			return nil, err
		}
	}
	s.configure(settings)
	return s, nil
}

// releaseStore flushes the pending usage times of the key file at path and
// drops one reference to its store; the last reference stops it.
func releaseStore(path string, s *keyStore) {
	s.flush(true)
	_, _ = stores.Delete(path)
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

// configure applies a handler's settings. Handlers that share a key file
// share its settings; the most recently loaded handler's apply.
func (s *keyStore) configure(settings storeSettings) {
	if old := time.Duration(s.usageInterval.Swap(int64(settings.usageInterval))); old != settings.usageInterval {
		s.logger.Debug("usage interval set", zap.String("keys_file", s.path), zap.Duration("usage_interval", settings.usageInterval))
	}
	s.reloadInterval.Store(int64(settings.reloadInterval))
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

// loop is the store's background goroutine: it watches the file and writes
// usage times until the store is destroyed.
func (s *keyStore) loop() {
	defer close(s.done)
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			now := s.now()
			if ri := time.Duration(s.reloadInterval.Load()); ri >= 0 && now.Sub(s.lastCheck) >= ri {
				s.lastCheck = now
				_ = s.reload(false)
			}
			if ui := time.Duration(s.usageInterval.Load()); ui >= 0 && now.Sub(s.lastFlush) >= min(ui, maxFlushPeriod) {
				s.lastFlush = now
				s.flush(false)
			}
		}
	}
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
			s.logger.Error("key file cannot be read; the keys loaded before stay in force",
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
			s.logger.Error("key file is broken; the keys loaded before stay in force",
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
		s.logger.Info("key file reloaded", zap.String("keys_file", s.path), zap.Int("keys", len(ks.keys)))
	} else if len(ks.keys) == 0 {
		s.logger.Warn("key file holds no keys: every request with a key will be refused", zap.String("keys_file", s.path))
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

// usageUpdate is the last-used time to write for one key.
type usageUpdate struct {
	hash string // key_hash, lowercase hex
	at   time.Time
}

// flush writes the last-used times that are due: those of keys not written
// within the usage interval, or all of them when force is set (on stop and
// config reload). One write covers every due key.
func (s *keyStore) flush(force bool) {
	s.mu.Lock()
	defer s.mu.Unlock()

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
	updates := make(map[string]usageUpdate)
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
		at := time.Unix(0, used)
		if u, ok := updates[c.id]; !ok || at.After(u.at) {
			updates[c.id] = usageUpdate{hash: hex.EncodeToString(c.hash[:]), at: at}
		}
	}
	if len(due) == 0 {
		return
	}

	// If the file on disk is still the version the key set was read from,
	// this write changes only last_used_at, which the key set does not
	// hold: note the new version as loaded so it is not parsed again.
	unchangedSinceLoad := false
	written, err := updateKeyFileStat(s.path, false, func(doc *keyDoc) error {
		if fi, err := os.Stat(s.path); err == nil && s.loadedFile != nil && sameVersion(fi, s.loadedFile) {
			unchangedSinceLoad = true
		}
		return applyUsage(doc, updates)
	})
	if err != nil {
		if !s.writeFailing {
			s.writeFailing = true
			s.logger.Error("cannot write last-used times to the key file; authentication goes on, and writing will be retried",
				zap.String("keys_file", s.path), zap.Error(err))
		}
		return
	}
	if written != nil {
		s.writes.Add(1)
	}
	if s.writeFailing {
		s.writeFailing = false
		s.logger.Info("writing last-used times to the key file works again", zap.String("keys_file", s.path))
	}
	for _, d := range due {
		d.cell.written = d.used
		d.cell.persistedAt = now
		delete(s.waiting, d.cell)
	}
	if unchangedSinceLoad && written != nil {
		s.loadedFile = written
	}
}

// applyUsage sets last_used_at on the records that are still in the file with
// the same id and key_hash. A record whose last_used_at on disk is newer (set
// by another process) keeps it.
func applyUsage(doc *keyDoc, updates map[string]usageUpdate) error {
	changed := false
	for i := range doc.records {
		rec := &doc.records[i]
		u, ok := updates[rec.getString("id")]
		if !ok || !equalFoldASCII(rec.getString("key_hash"), u.hash) {
			continue
		}
		if prev := rec.getString("last_used_at"); prev != "" {
			if t, err := parseTimestamp(prev); err == nil && !t.Before(u.at.Truncate(time.Microsecond)) {
				continue
			}
		}
		if err := rec.set("last_used_at", formatTimestamp(u.at)); err != nil {
			return err
		}
		changed = true
	}
	if !changed {
		return errNoChange
	}
	return nil
}

func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
