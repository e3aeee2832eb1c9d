package file

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(Store{})
}

// Store keeps the keys in a JSON key file (module
// http.handlers.apikey.stores.file). The handler's keys_file is the
// shorthand for it. The file is watched: changes take effect within
// reload_interval, without a config reload. Last-used times are written
// back to it in the background, at most once per key per usage_interval.
type Store struct {
	// Path to the JSON key file. Required. Relative paths are relative to
	// Caddy's working directory; {env.*} placeholders are replaced.
	Path string `json:"path,omitempty"`

	// How often at most a key's last-used time is written to the key
	// file. Default: 15m. A negative value turns usage tracking off.
	UsageInterval caddy.Duration `json:"usage_interval,omitempty"`

	// How often the key file is checked for changes. Default: 1s. A
	// negative value turns watching off; the file is then read on config
	// loads only.
	ReloadInterval caddy.Duration `json:"reload_interval,omitempty"`

	store *keyFile
	lease *storeLease
}

// CaddyModule returns the Caddy module information.
func (Store) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.apikey.stores.file",
		New: func() caddy.Module { return new(Store) },
	}
}

// Provision takes a lease on the live store of the key file, shared with
// every other handler of this process that uses the same file, and loads it
// if it is the first.
func (f *Store) Provision(ctx caddy.Context) error {
	if f.Path == "" {
		return errors.New("file store: path (keys_file) is required")
	}
	path, poolKey, err := keyFilePath(f.Path)
	if err != nil {
		return err
	}
	lease, err := acquireStore(path, poolKey, storecore.Settings{
		Usage:  storecore.IntervalSetting(f.UsageInterval, storecore.DefaultUsageInterval),
		Reload: storecore.IntervalSetting(f.ReloadInterval, storecore.DefaultReloadInterval),
	})
	if err != nil {
		return err
	}
	f.lease, f.store = lease, lease.store
	return nil
}

// Cleanup writes the pending last-used times and releases the key file. The
// store stays set: a request still in flight (past the grace period) goes
// on authenticating against the last key set instead of crashing.
func (f *Store) Cleanup() error {
	if f.lease != nil {
		f.lease.Release()
		f.lease = nil
	}
	return nil
}

// Flush writes the pending last-used times now, as a config unload does,
// and waits for that at most storecore.StopWait.
func (f *Store) Flush() { f.store.askFlush() }

// Refresh re-reads the key file now, if it changed, and puts it in force.
func (f *Store) Refresh() error { return f.store.askReload() }

// KeySet returns the key set in force.
func (f *Store) KeySet() *keyset.KeySet { return f.store.keys.Load() }

// Name is the store's name in the admin API (stores.Live.Name), by which
// the handler tells the admin API its key format.
func (f *Store) Name() string { return f.store.Name() }

// MarkUsed notes a use of a key, for the usage writer.
func (f *Store) MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64) {
	f.store.MarkUsed(k, sum, now)
}

// keyFilePath turns the configured path into the path to watch and the key
// of its store. Global placeholders ({env.*}) are replaced. The path stays
// as configured (made absolute), so that the watcher follows a symbolic
// link that is later pointed elsewhere (a Kubernetes ConfigMap, a `ln -sfn`
// deploy); the store key goes through the links, so that two spellings of
// one file share one store.
func keyFilePath(configured string) (path, poolKey string, err error) {
	replaced := caddy.NewReplacer().ReplaceAll(configured, "")
	if replaced == "" {
		return "", "", fmt.Errorf("keys_file %q is empty once its placeholders are replaced", configured)
	}
	if path, err = filepath.Abs(replaced); err != nil {
		return "", "", fmt.Errorf("keys_file: %v", err)
	}
	poolKey = path
	if real, err := filepath.EvalSymlinks(path); err == nil {
		poolKey = real
	}
	return path, poolKey, nil
}

// keyFiles holds one keyFile per key file (by real absolute path) for the
// whole process, across config reloads: however many handlers use a file,
// there is one key set in memory, one watcher and one usage writer for it.
var keyFiles = caddy.NewUsagePool()

// keyFile is the live state of one key file: the key set in force, the
// watcher that reloads it and the writer that persists last-used times.
// Each runs in a goroutine of its own, so that a long write never delays a
// reload, and each is the only one to do its work: a config load asks the
// watcher for a reload, a config unload asks the writer for a write.
type keyFile struct {
	path    string
	logger  *zap.Logger // nil: Caddy's current logger (see log)
	now     func() time.Time
	keys    atomic.Pointer[keyset.KeySet]
	leases  *storecore.Leases
	usage   keyset.UsageTracker
	metrics *stores.Metrics // nil: a store made outside Caddy, not counted

	// The watcher's state.
	loaded    fs.FileInfo                 // what the key set in force was read from
	inForce   atomic.Pointer[fs.FileInfo] // loaded, for the writer
	broken    fs.FileInfo                 // the last broken version read, not to parse it again
	brokenErr error
	statErr   storecore.Trouble // the file cannot be stat'ed (counted once)
	problem   storecore.Trouble // the file cannot be put in force (logged once a problem)

	// The writer's state.
	writeFailing storecore.Trouble             // usage writes fail (logged once)
	lastWrite    atomic.Pointer[keyfile.Write] // the writer's last write, for the watcher
	stateSeen    atomic.Bool                   // the state file was there (see Records.seen)
	writes       atomic.Int64                  // usage writes done, for tests

	// The watcher and the writer: a refresh is a reload of the file.
	life *storecore.Life
}

// storeLease is one store module's use of a key file's store.
type storeLease struct {
	storecore.PoolLease
	store *keyFile
}

// acquireStore returns a lease on the store of the key file at path (whose
// real path, through symbolic links, is poolKey), creating and loading the
// store if no handler in this process uses that file yet. A store already
// in use re-reads a changed file at once, and a broken one fails the config
// load, as the first load does. The caller releases the lease in Cleanup.
func acquireStore(path, poolKey string, settings storecore.Settings) (*storeLease, error) {
	val, loaded, err := keyFiles.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		s := newKeyFile(path, nil)
		s.metrics = stores.AcquireMetrics(path)
		if err := s.load(); err != nil {
			s.metrics.Release()
			return nil, err
		}
		s.start()
		stores.Register(s)
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	s := val.(*keyFile)
	if loaded {
		if err := s.askReload(); err != nil {
			_, _ = keyFiles.Delete(poolKey)
			return nil, err
		}
	}
	return &storeLease{
		PoolLease: storecore.PoolLease{Pool: keyFiles, Key: poolKey, Leases: s.leases, ID: s.leases.Add(settings), Flush: s.askFlush},
		store:     s,
	}, nil
}

func newKeyFile(path string, logger *zap.Logger) *keyFile {
	return &keyFile{
		path:   path,
		logger: logger,
		now:    time.Now,
		leases: storecore.NewLeases(),
		life:   storecore.NewLife(),
	}
}

// Name, Records and Refresh (with KeySet) make the store a stores.Live,
// for the admin API.
func (s *keyFile) Name() string                { return "file:" + s.path }
func (s *keyFile) Records() stores.RecordStore { return Records{Path: s.path} }
func (s *keyFile) Refresh() error              { return s.askReload() }

// log is the store's logger. A store outlives the config that created it,
// so it logs through Caddy's current logging, not that config's.
func (s *keyFile) log() *zap.Logger {
	if s.logger != nil {
		return s.logger
	}
	return caddy.Log().Named("http.handlers.apikey")
}

// start runs the watcher and the writer until Destruct.
func (s *keyFile) start() { s.life.Go(nil, s.watch, s.write) }

// Destruct stops the background work once no handler uses the file; the
// writer writes the pending usage times as it stops. It waits for that at
// most stopWait.
func (s *keyFile) Destruct() error {
	stores.Unregister(s)
	if !s.life.Stop(storecore.StopWait, func() { s.metrics.Release() }) {
		s.log().Warn("the key file's last usage write is still going on; it goes on in the background", zap.String("keys_file", s.path))
	}
	return nil
}

// askReload has the watcher re-read the key file now, if it changed, and
// returns what came of it. A store that has stopped (the admin API may hold
// one that a config unload just let go) has no key set in force to update:
// it does not wait for a watcher that is gone.
func (s *keyFile) askReload() error {
	err, answered := s.life.AskRefresh()
	if s.life.Stopped() {
		return nil // stopped: nothing to put in force any more
	}
	if !answered {
		return fmt.Errorf("key file %s: still being read after %s", s.path, storecore.RefreshWait)
	}
	return err
}

// askFlush has the writer write every pending last-used time now, and waits
// for it at most stopWait.
func (s *keyFile) askFlush() { s.life.AskFlush() }

// due reports whether work that runs every iv and last ran at last is due.
func (s *keyFile) due(iv storecore.Interval, last time.Time) bool {
	return !iv.Off && s.now().Sub(last) >= iv.Every
}

// watch is the watcher: it reloads the key file every reload interval and
// when asked.
func (s *keyFile) watch() {
	t := time.NewTicker(storecore.TickInterval)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-s.life.Ctx.Done():
			return
		case reply := <-s.life.RefreshNow:
			reply <- s.load()
		case <-t.C:
			if s.due(s.leases.Current().Reload, last) {
				last = s.now()
				s.check()
			}
		}
	}
}

// check reloads the key file if it changed, and logs each new problem with
// it once: a broken or missing file is not one error a second.
func (s *keyFile) check() {
	err := s.load()
	switch {
	case err == nil:
		s.problem.End()
	case !s.problem.Meet(err):
	case errors.As(err, new(*fs.PathError)):
		s.log().Error("key file cannot be read; the keys loaded before stay in force",
			zap.String("keys_file", s.path), zap.Error(err))
	default:
		s.log().Error("key file is broken; the keys loaded before stay in force",
			zap.String("keys_file", s.path), zap.Error(err))
	}
}

// load re-reads the key file if it changed since the key set in force was
// read, and puts the new key set in force. A missing or broken file keeps
// the key set in force; a broken version is parsed once. Each load sets
// the source_broken gauge: 1 while the file on disk cannot be put in force
// (set before reloads_total counts, so that a scrape that sees the count
// sees the gauge too).
func (s *keyFile) load() (err error) {
	defer func() { s.metrics.SourceBroken(err != nil) }()
	fi, err := os.Stat(s.path)
	if err != nil {
		s.metrics.SourceBroken(true)
		if s.statErr.Start() {
			s.metrics.LoadFailed()
		}
		return &keyfile.Error{Path: s.path, Err: err}
	}
	s.statErr.End()
	if s.loaded != nil && keyfile.SameVersion(s.loaded, fi) {
		return nil
	}
	if s.broken != nil && keyfile.SameVersion(s.broken, fi) {
		return s.brokenErr
	}
	// A usage write changes only last_used_at, which the key set does not
	// hold: the version it wrote from the one in force need not be read.
	if w := s.lastWrite.Load(); w != nil && s.loaded != nil && keyfile.SameVersion(w.Read, s.loaded) && keyfile.SameVersion(w.Written, fi) {
		s.setLoaded(fi)
		return nil
	}
	ks, err := keyfile.ReadKeySet(s.path)
	if err != nil {
		s.broken, s.brokenErr = fi, err
		s.metrics.SourceBroken(true)
		s.metrics.LoadFailed()
		return err
	}
	s.broken, s.brokenErr = nil, nil
	old := s.keys.Load()
	if old != nil {
		keyset.CarryUsage(old, ks)
	}
	s.keys.Store(ks)
	s.setLoaded(fi)
	s.metrics.SourceBroken(false)
	s.metrics.Loaded(ks, s.now())
	if fi.Size() > bigKeyFile {
		debug.FreeOSMemory() // give back the memory the file and the old key set held
	}
	if old != nil {
		s.log().Info("key file reloaded", zap.String("keys_file", s.path), zap.Int("keys", ks.Len()))
		return nil
	}
	stores.LogFirstLoad(s.log(), s.Name(), ks, s.now(), zap.String("keys_file", s.path))
	if ks.Len() == 0 {
		s.log().Warn("key file holds no keys: every request with a key will be refused", zap.String("keys_file", s.path))
	}
	return nil
}

// setLoaded notes the version of the key file that the key set in force
// holds.
func (s *keyFile) setLoaded(fi fs.FileInfo) {
	s.loaded = fi
	s.inForce.Store(&fi)
}

// bigKeyFile is the size from which a load or a usage write gives the
// memory it no longer needs back to the system at once, rather than over the
// next minutes.
const bigKeyFile = 32 << 20

// KeySet returns the key set in force.
func (s *keyFile) KeySet() *keyset.KeySet { return s.keys.Load() }

// MarkUsed records a use of key k (whose hash is sum) at now. It never
// blocks on the disk.
func (s *keyFile) MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64) {
	if s.leases.Current().Usage.Off {
		return
	}
	s.usage.Mark(k, sum, now)
}

// write is the writer: it writes the last-used times that are due every
// min(usage interval, maxFlushPeriod), all of them when asked, and all of
// them as it stops.
func (s *keyFile) write() {
	storecore.UsageWriter(s.life.Ctx.Done(), s.life.FlushNow, s.leases, s.now, s.writeUsage)
}

// writeUsage writes the last-used times that are due: those of keys not
// written within the usage interval, or all of them. One write covers every
// due key.
func (s *keyFile) writeUsage(all bool) {
	batch := s.usage.Collect(all, s.leases.Current().Usage.Every, s.now())
	if batch == nil {
		return
	}

	// The version in force was checked whole when it was loaded: a write
	// to it need not check it again.
	var checked fs.FileInfo
	if fi := s.inForce.Load(); fi != nil {
		checked = *fi
	}
	w, err := keyfile.Edit(s.path, keyfile.EditOptions{Checked: checked, Edit: func(doc *keyfile.Doc) error {
		return applyUsage(doc, batch.Updates)
	}})
	if err != nil {
		s.metrics.UsageWritten(err)
		if s.watcherReports(err) {
			return // the uses stay pending: written once the file is good again
		}
		if s.writeFailing.Start() {
			s.log().Error("cannot write last-used times to the key file; authentication goes on, and writing will be retried",
				zap.String("keys_file", s.path), zap.Error(err))
		}
		return
	}
	if s.writeFailing.End() {
		s.log().Info("writing last-used times to the key file works again", zap.String("keys_file", s.path))
	}
	s.usage.Done(batch)
	if w.Written != nil { // nil: nothing left to change (keys deleted meanwhile)
		s.writes.Add(1)
		s.lastWrite.Store(&w)
		s.metrics.UsageWritten(nil) // after lastWrite: the watcher need not read what it wrote
		if w.Written.Size() > bigKeyFile {
			debug.FreeOSMemory() // give back what reading and writing the file took
		}
	}
}

// watcherReports reports whether err, a usage write's failure, is one that
// the watcher reports itself, once: the key file missing, unreadable or
// broken (a keyFileError), while the watcher checks the file. The writer
// then says nothing, so that a broken edit is logged once, not once by
// each. With watching off, the writer is the one to log it.
func (s *keyFile) watcherReports(err error) bool {
	var kfe *keyfile.Error
	return errors.As(err, &kfe) && !s.leases.Current().Reload.Off
}

// applyUsage sets last_used_at on the records that are still in the file with
// the same id and key_hash. A record whose last_used_at on disk is newer (set
// by another process) keeps it.
func applyUsage(doc *keyfile.Doc, updates map[keyset.UsageKey]time.Time) error {
	changed := false
	for i := range doc.Records {
		rec := &doc.Records[i]
		at, ok := updates[keyset.UsageKey{ID: rec.ID, Hash: strings.ToLower(rec.KeyHash)}]
		if !ok {
			continue
		}
		if rec.LastUsedAt != nil {
			if t, err := keyset.ParseTimestamp(*rec.LastUsedAt); err == nil && !t.Before(at.Truncate(time.Microsecond)) {
				continue
			}
		}
		if err := rec.Set("last_used_at", keyset.FormatTimestamp(at)); err != nil {
			return err
		}
		changed = true
	}
	if !changed {
		return keyfile.ErrNoChange
	}
	return nil
}
