// Package live is the live state of one Redis key set in a process
// (Set), shared by every handler that uses it, across config reloads: the
// key set in force, loaded from Redis or the cache file; the follower,
// which reads the key set's change log and keeps it up to date; the usage
// writer; the cache writer; and what the request path asks of Redis
// besides (the quota bank, usage counts, the fleet's rate-limit counts).
// Package stores/redis is the Caddy module that takes a lease on it, and
// the record store the commands edit; package keyspace is the Redis keys
// and commands it runs.
package live

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/safefile"
	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/redis/rueidis"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// Set is the live state of one Redis key set in this process:
// the key set in force; the follower, which reads the change log and keeps
// the key set up to date; the usage writer; and the cache writer.
type Set struct {
	opt       rueidis.ClientOption
	shown     string // the URL, without password
	rk        keyspace.Layout
	cacheFile string
	records   func(rueidis.Client) stores.RecordStore // the record store on a client (nil: not connected)
	Logger    *zap.Logger                             // nil: Caddy's current logger
	metrics   *stores.Metrics

	client atomic.Pointer[rueidis.Client] // nil until connected
	keys   atomic.Pointer[keyset.KeySet]
	leases *storecore.Leases
	usage  keyset.UsageTracker

	// The follower's state.
	version       int64             // the version of the key set in force
	logID         string            // the last log entry applied
	problems      map[string]bool   // the records that cannot be used, as logged
	down          storecore.Trouble // Redis cannot be reached
	unusable      storecore.Trouble // Redis answers with what cannot be used
	fails         int               // failures to reach Redis in a row (see settle)
	stalled       bool              // one of them came after a stall of this process
	gone          storecore.Trouble // the key set vanished from Redis, or its records did
	policyChecked bool              // maxmemory-policy was looked at (see warnEviction)
	lastCheck     time.Time
	syncs         atomic.Int64 // full reads of the key set, for tests
	// WithTimeout makes the context of a Redis call of the follower:
	// context.WithTimeout; tests replace it (before Start) to play a stall
	// of this process, a call whose deadline passed while it stood still.
	WithTimeout func(context.Context, time.Duration) (context.Context, context.CancelFunc)

	// The writers' state.
	writeFailing storecore.Trouble // usage writes fail
	cacheFailing storecore.Trouble // the cache file cannot be written
	cached       *keyset.KeySet
	inForce      atomic.Pointer[keySetPoint] // set by put: what the cache writer writes
	writes       atomic.Int64                // usage writes done, for tests

	cacheNow chan struct{} // tells the cache writer that the key set changed
	// The follower, the usage writer and the cache writer: a refresh is a
	// version check (and catch-up) of the follower.
	life *storecore.Life
}

// keySetPoint is a key set put in force and where the key set stood in
// Redis then: the version and the log's last entry applied.
type keySetPoint struct {
	ks      *keyset.KeySet
	version int64
	logID   string
}

// New makes the live state of the key set at keys on the Redis server
// that opt reaches (shown: its URL without the password), with its cache
// file if not "". records makes the key set's record store on a client
// (nil until connected), for the admin API. Open loads it, Start runs it.
func New(opt rueidis.ClientOption, shown string, keys keyspace.Layout, cacheFile string, records func(rueidis.Client) stores.RecordStore) *Set {
	s := &Set{
		opt: opt, shown: shown, rk: keys, cacheFile: cacheFile, records: records,
		leases:   storecore.NewLeases(),
		problems: make(map[string]bool),
		cacheNow: make(chan struct{}, 1),
		life:     storecore.NewLife(),

		WithTimeout: context.WithTimeout,
	}
	s.metrics = stores.AcquireMetrics(s.Name())
	return s
}

// Name, KeySet, Records and Refresh make the store a stores.Live, for the
// admin API.
func (s *Set) Name() string           { return "redis:" + s.shown + "#" + s.rk.Prefix }
func (s *Set) KeySet() *keyset.KeySet { return s.keys.Load() }
func (s *Set) Records() stores.RecordStore {
	var c rueidis.Client
	if p := s.client.Load(); p != nil {
		c = *p
	}
	return s.records(c)
}

// Leases are the settings of the handlers that use the set.
func (s *Set) Leases() *storecore.Leases { return s.leases }

// Usage is the uses of keys noted for the usage writer (unless the
// leases turn usage tracking off).
func (s *Set) Usage() *keyset.UsageTracker { return &s.usage }

// ReleaseMetrics gives back the set's metrics, for a set that is not
// started (Destruct does it for one that is).
func (s *Set) ReleaseMetrics() { s.metrics.Release() }

func (s *Set) log() *zap.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return caddy.Log().Named("http.handlers.apikey")
}

func (s *Set) fields(more ...zap.Field) []zap.Field {
	return append([]zap.Field{zap.String("redis", s.shown), zap.String("prefix", s.rk.Prefix)}, more...)
}

// Open loads the key set. A store with a cache file that holds a snapshot
// of its key set puts the snapshot in force and catches up from the key
// set's log (startFrom); one without, or whose snapshot the log cannot
// bring up to date, reads the key set whole from Redis. If Redis cannot be
// reached or holds no key set, the cache file, if there is one, provides
// the keys until it is back; otherwise the config load fails.
func (s *Set) Open() error {
	// Its head first: its keys are read only if the log can bring them up
	// to date, or if Redis cannot be reached.
	snap, snapErr := s.readSnapshot(false)
	c, err := rueidis.NewClient(s.opt)
	err = keyspace.ExplainTimeout(nil, err, keyspace.AnswerTimeout(s.opt), 0)
	if err == nil {
		s.client.Store(&c)
		if snapErr != nil {
			s.log().Warn("the cache file cannot be used; the key set is read whole from Redis, and the cache file written anew",
				s.fields(zap.String("cache_file", s.cacheFile), zap.Error(snapErr))...)
		}
		if snap != nil {
			var current bool
			if current, err = s.startFrom(c, snap); current {
				return nil
			}
		}
		if err == nil {
			if err = s.fullSync(c); err == nil {
				return nil
			}
		}
	}
	gone := errors.Is(err, keyspace.ErrNoKeySet) // Redis answers, without the key set
	switch {
	case errors.Is(err, keyspace.ErrRecordsGone):
		err = fmt.Errorf("redis %s, prefix %q: %w; restore it with caddy apikey import --redis %s --prefix %s --file <keys.json>, from an export or a server's cache_file", s.shown, s.rk.Prefix, err, s.shown, s.rk.Prefix)
	case errors.Is(err, keyspace.ErrNoKeySet):
		err = fmt.Errorf("redis %s holds no key set at prefix %q: make one with caddy apikey import --redis %s --prefix %s --file <keys.json>, or caddy apikey add --redis %s --prefix %s --create", s.shown, s.rk.Prefix, s.shown, s.rk.Prefix, s.shown, s.rk.Prefix)
	default:
		err = fmt.Errorf("redis %s (prefix %q): %v", s.shown, s.rk.Prefix, err)
	}
	if s.cacheFile == "" {
		s.closeClient()
		if !gone {
			err = fmt.Errorf("%v; with a cache_file (redis <url> { cache_file <path> }), a server starts without Redis, from the keys it saved there while it last ran with Redis", err)
		}
		return err
	}
	cerr := snapErr
	if cerr == nil {
		snap, cerr = s.readCache()
	}
	if cerr != nil {
		s.closeClient()
		return fmt.Errorf("%v; and the cache file cannot be used: %v", err, cerr)
	}
	ks := snap.KeySet
	s.keys.Store(ks)
	s.cached = ks // what the cache file holds
	// The follower takes the log up from where the snapshot stands (a key
	// file put there by hand says nothing: it reads the key set whole).
	s.version, s.logID = snap.Version, snap.LogID
	s.metrics.Loaded(ks, time.Now())
	// Said here, once: the follower does not say it again.
	if gone {
		s.gone.Start()
	} else {
		s.down.Start()
	}
	s.log().Warn("Redis key set unavailable: starting from the cache file; will catch up when Redis is back",
		s.fields(zap.String("cache_file", s.cacheFile), zap.Int("keys", ks.Len()), zap.Error(err))...)
	return nil
}

// CatchUpWait bounds how long a store that starts from its cache file
// waits for Redis to say where the key set stands and for the log's
// entries since the snapshot; past it, the store starts from the snapshot
// as when Redis is down, and the follower catches up when Redis answers.
const CatchUpWait = time.Second

// startFrom puts the cache file's snapshot, whose head is snap, in force,
// caught up from the key set's log: the changes made since it was written
// are applied as a follower applies them. Its keys are read only once the
// log is known to cover the gap. It returns current false and no error when
// the log cannot bring the snapshot up to date (trimmed past it, the
// version gone back, another history, or more changes than a catch-up
// should read) or the snapshot cannot be read: the key set is then to be
// read whole, and nothing has been put in force. An error is Redis's, or
// keyspace.ErrNoKeySet.
func (s *Set) startFrom(c rueidis.Client, snap *keyset.Snapshot) (current bool, err error) {
	ctx, cancel := context.WithTimeout(s.life.Ctx, CatchUpWait)
	defer cancel()
	head, err := keyspace.ReadHead(ctx, c, s.rk)
	if err != nil {
		return false, keyspace.ExplainTimeout(ctx, err, keyspace.AnswerTimeout(s.opt), CatchUpWait)
	}
	s.warnEviction(ctx, c)
	fields := func(more ...zap.Field) []zap.Field {
		return s.fields(append([]zap.Field{zap.String("cache_file", s.cacheFile),
			zap.Int64("cache_version", snap.Version), zap.Int64("version", head.Version)}, more...)...)
	}
	switch {
	case head.Version == 0:
		return false, keyspace.ErrNoKeySet
	case !head.Records:
		return false, keyspace.ErrRecordsGone
	case snap.Version == 0:
		return false, nil
	case head.Version < snap.Version:
		s.log().Warn("the key set's version is older than the cache file's (Redis restored from an older snapshot, or a failover lost changes?): it is read whole, and changes made after that snapshot are lost, revocations included; check them", fields()...)
		return false, nil
	case head.Version == snap.Version && head.LogID != snap.LogID:
		s.log().Warn("the key set's log does not end with the cache file's last change (a failover lost changes?): it is read whole, and the changes lost are lost here too, revocations included; check them",
			fields(zap.String("cache_log_entry", snap.LogID), zap.String("log_entry", head.LogID))...)
		return false, nil
	}
	var entries []rueidis.XRangeEntry
	if head.Version > snap.Version {
		var why string
		if entries, why, err = s.logSince(ctx, c, snap, head.Version); err != nil {
			return false, keyspace.ExplainTimeout(ctx, err, keyspace.AnswerTimeout(s.opt), CatchUpWait)
		}
		if why != "" {
			s.log().Info("the cache file is too old to catch up from the key set's log ("+why+"): the key set is read whole", fields()...)
			return false, nil
		}
	}
	head0 := snap
	if snap, err = s.readSnapshot(true); err != nil {
		s.log().Warn("the cache file cannot be used; the key set is read whole from Redis, and the cache file written anew",
			s.fields(zap.String("cache_file", s.cacheFile), zap.Error(err))...)
		return false, nil
	}
	if snap.Version != head0.Version || snap.LogID != head0.LogID {
		return false, nil // replaced meanwhile: by another server sharing it?
	}
	s.keys.Store(snap.KeySet)
	s.cached = snap.KeySet
	s.version, s.logID = snap.Version, snap.LogID
	if len(entries) > 0 {
		// The records the changes name, in one call that has a call's
		// time-out: Redis has answered, and there may be many.
		actx, cancel := context.WithTimeout(s.life.Ctx, keyspace.DefaultTimeout)
		defer cancel()
		if err := s.apply(actx, c, entries); err != nil {
			return false, keyspace.ExplainTimeout(actx, err, keyspace.AnswerTimeout(s.opt), keyspace.DefaultTimeout)
		}
		// The snapshot's index is garbage now (the cache file is written
		// anew): given back in the background, not to hold up the start.
		s.cached = nil
		if snap.KeySet.Len() >= keyspace.BigKeySet {
			go debug.FreeOSMemory()
		}
	} else {
		s.metrics.Loaded(snap.KeySet, time.Now())
	}
	s.lastCheck = time.Now()
	s.metrics.Synced(s.lastCheck)
	s.log().Info("started from the cache file, caught up from the key set's log",
		fields(zap.Int("keys", s.keys.Load().Len()), zap.Int("changes", len(entries)), zap.Time("cache_written", snap.Written))...)
	return true, nil
}

// logSince reads the key set's log from the snapshot's last entry to its
// end, want being the version there. It returns why not ("" if it can)
// when the log cannot bring the snapshot up to date: it no longer reaches
// back to the snapshot (trimmed, or another history), it ends short of
// want, or it names more records than a catch-up should read (a tenth of
// the key set, at least 1 000: beyond, the records the changes name and
// the copy of the key set they make take memory a full read does not).
func (s *Set) logSince(ctx context.Context, c rueidis.Client, snap *keyset.Snapshot, want int64) (entries []rueidis.XRangeEntry, why string, err error) {
	id, v := snap.LogID, snap.Version
	named, most := 0, max(1000, snap.Size/10)
	for {
		got, err := keyspace.ReadLog(ctx, c, s.rk, id, 0)
		if err != nil {
			return nil, "", err
		}
		for _, e := range got {
			n, err := keyspace.EntryVersion(e)
			if err != nil || n != v+1 {
				return nil, "the log no longer reaches back to it", nil
			}
			ids, _, err := keyspace.EntryIDs(e)
			if err != nil {
				return nil, "an entry of the log cannot be read", nil
			}
			if named += len(ids); named > most {
				return nil, "more changes since than a catch-up reads", nil
			}
			v = n
		}
		entries = append(entries, got...)
		if len(got) < keyspace.LogPage {
			break
		}
		id = got[len(got)-1].ID
	}
	if v < want {
		return nil, "the log no longer reaches back to it", nil
	}
	return entries, "", nil
}

func (s *Set) closeClient() {
	if p := s.client.Load(); p != nil {
		(*p).Close()
	}
}

// Start runs the follower, the usage writer and the cache writer until
// Destruct.
func (s *Set) Start() {
	s.life.Go(s.closeClient, s.follow, s.writeLoop, s.cacheLoop)
}

// Destruct stops the store once no handler uses it; the usage writer writes
// the pending times as it stops, for at most stopWait.
func (s *Set) Destruct() error {
	stores.Unregister(s)
	if !s.life.Stop(storecore.StopWait, s.metrics.Release) {
		s.log().Warn("the last usage write to Redis is still going on; it goes on in the background", s.fields()...)
	}
	return nil
}

// askSync has the follower check the key set's version now, and catch up
// if it is behind; it returns what came of it.
func (s *Set) askSync() error {
	err, answered := s.life.AskRefresh()
	if !answered {
		return errors.New("the Redis follower did not answer: it is busy, or stopped")
	}
	return err
}

// refresh is askSync, for the admin API: a change made through it is in
// force here when it answers.
func (s *Set) Refresh() error { return s.askSync() }

// AskFlush has the usage writer write every pending time now, and waits for
// it at most stopWait.
func (s *Set) AskFlush() { s.life.AskFlush() }

// put puts ks in force. A key set read whole gets the usage cells of the
// keys that stay the same (one that KeySet.with made has them already).
func (s *Set) put(ks *keyset.KeySet, whole bool) {
	old := s.keys.Load()
	if old != nil && whole {
		keyset.CarryUsage(old, ks)
	}
	s.keys.Store(ks)
	s.inForce.Store(&keySetPoint{ks: ks, version: s.version, logID: s.logID})
	now := time.Now()
	s.metrics.Loaded(ks, now)
	s.metrics.Synced(now)
	s.metrics.SourceBroken(false)
	if old == nil {
		stores.LogFirstLoad(s.log(), s.Name(), ks, now)
	}
	select {
	case s.cacheNow <- struct{}{}:
	default:
	}
}

// writeLoop is the usage writer: it writes the last-used times that are due
// every min(usage interval, maxFlushPeriod), all of them when asked, and
// all of them as it stops.
func (s *Set) writeLoop() {
	storecore.UsageWriter(s.life.Ctx.Done(), s.life.FlushNow, s.leases, time.Now, s.writeUsage)
}

// writeUsage writes the due last-used times to Redis in one round trip.
func (s *Set) writeUsage(all bool) {
	batch := s.usage.Collect(all, s.leases.Current().Usage.Every, time.Now())
	if batch == nil {
		return
	}
	err := errors.New("not connected")
	if p := s.client.Load(); p != nil {
		err = s.sendUsage(*p, batch)
	}
	s.metrics.UsageWritten(err)
	if err != nil {
		if s.writeFailing.Start() {
			s.log().Error("cannot write last-used times to Redis; authentication goes on, and writing will be retried", s.fields(zap.Error(err))...)
		}
		return
	}
	if s.writeFailing.End() {
		s.log().Info("writing last-used times to Redis works again", s.fields()...)
	}
	s.usage.Done(batch)
	s.writes.Add(1)
}

func (s *Set) sendUsage(c rueidis.Client, batch *keyset.UsageBatch) error {
	// Not the stop context: the last write runs as the store stops.
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.DefaultTimeout)
	defer cancel()
	return keyspace.WriteLastUsed(ctx, c, s.rk, batch)
}

// cacheLoop is the cache writer: it saves each new key set in force to the
// cache file. A key set that changes while one is written is saved next.
func (s *Set) cacheLoop() {
	if s.cacheFile == "" {
		<-s.life.Ctx.Done()
		return
	}
	for {
		select {
		case <-s.life.Ctx.Done():
			return
		case <-s.cacheNow:
			s.writeCache()
		}
	}
}

func (s *Set) writeCache() {
	p := s.inForce.Load()
	if p == nil || p.ks == s.cached {
		return
	}
	ks := p.ks
	if ks.Len() == 0 {
		// An empty key set (every record unusable) is never written: a
		// server that starts from its cache would refuse every key.
		return
	}
	_, err := safefile.Replace(s.cacheFile, "cache file", keyset.Snapshot{KeySet: ks, Of: s.Name(), Version: p.version, LogID: p.logID, Written: time.Now()}, nil, nil)
	if err != nil {
		if s.cacheFailing.Start() {
			s.log().Error("cannot write the cache file", s.fields(zap.String("cache_file", s.cacheFile), zap.Error(err))...)
		}
		return
	}
	s.cacheFailing.End()
	s.cached = ks
}

// readSnapshot reads the cache file, if it is a snapshot of this store's
// key set: its keys too if keys, its head alone otherwise. It returns nil
// and no error if there is no cache file, or if it is a key file (one of an
// older version, or an export put there by hand), which readCache reads
// only when Redis cannot be reached. A snapshot of another key set
// (another prefix, another Redis, a file copied from another server) is
// refused, never put in force, as is one that is damaged or cut short.
func (s *Set) readSnapshot(keys bool) (*keyset.Snapshot, error) {
	if s.cacheFile == "" {
		return nil, nil
	}
	snap, err := keyfile.ReadSnapshotIf(s.cacheFile, keys)
	if err != nil {
		return nil, fmt.Errorf("cache file %s: %w", s.cacheFile, err)
	}
	if snap != nil && snap.Of != s.Name() {
		return nil, fmt.Errorf("cache file %s is a snapshot of %s, not of this store's key set %s", s.cacheFile, snap.Of, s.Name())
	}
	return snap, nil
}

// readCache reads the cache file, of either form, if it is a snapshot of
// this store's key set: a cache file of another key set is refused. A key
// file that names no key set (an export put there by hand) is taken; it
// says nothing of where the key set stood (version 0).
func (s *Set) readCache() (*keyset.Snapshot, error) {
	snap, err := s.readSnapshot(true)
	if snap != nil || err != nil {
		return snap, err
	}
	of, err := keyfile.SnapshotOf(s.cacheFile)
	if err != nil {
		return nil, &keyfile.Error{Path: s.cacheFile, Err: err}
	}
	if of != "" && of != s.Name() {
		return nil, fmt.Errorf("cache file %s is a snapshot of %s, not of this store's key set %s", s.cacheFile, of, s.Name())
	}
	ks, err := keyfile.ReadKeySet(s.cacheFile)
	if err != nil {
		return nil, err
	}
	return &keyset.Snapshot{KeySet: ks, Size: ks.Len()}, nil
}

// Interface guards
var _ stores.Live = (*Set)(nil)
