package redis

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/redis/rueidis"
	"go.uber.org/zap"

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

	store *liveSet
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
		if err := s.open(); err != nil {
			s.metrics.Release()
			return nil, err
		}
		s.start()
		stores.Register(s)
		return s, nil
	})
	if err != nil {
		return err
	}
	s := val.(*liveSet)
	r.store = s
	r.lease = &storecore.PoolLease{Pool: liveSets, Key: poolKey, Leases: s.leases, Flush: s.askFlush, ID: s.leases.Add(storecore.Settings{
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
func (r *Store) KeySet() *keyset.KeySet { return r.store.keys.Load() }

// MarkUsed notes a use of a key, for the usage writer.
func (r *Store) MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64) {
	if r.store.leases.Current().Usage.Off {
		return
	}
	r.store.usage.Mark(k, sum, now)
}

// liveSet is the live state of one Redis key set in this process:
// the key set in force; the follower, which reads the change log and keeps
// the key set up to date; the usage writer; and the cache writer.
type liveSet struct {
	opt       rueidis.ClientOption
	shown     string // the URL, without password
	rk        keyspace.Layout
	cacheFile string
	logger    *zap.Logger // nil: Caddy's current logger
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
	// withTimeout makes the context of a Redis call of the follower:
	// context.WithTimeout; tests replace it (before start) to play a stall
	// of this process, a call whose deadline passed while it stood still.
	withTimeout func(context.Context, time.Duration) (context.Context, context.CancelFunc)

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

func newLiveSet(opt rueidis.ClientOption, shown string, keys keyspace.Layout, cacheFile string) *liveSet {
	s := &liveSet{
		opt: opt, shown: shown, rk: keys, cacheFile: cacheFile,
		leases:   storecore.NewLeases(),
		problems: make(map[string]bool),
		cacheNow: make(chan struct{}, 1),
		life:     storecore.NewLife(),

		withTimeout: context.WithTimeout,
	}
	s.metrics = stores.AcquireMetrics(s.Name())
	return s
}

// name, keySet and records make the store a liveStore, for the admin API.
func (s *liveSet) Name() string           { return "redis:" + s.shown + "#" + s.rk.Prefix }
func (s *liveSet) KeySet() *keyset.KeySet { return s.keys.Load() }
func (s *liveSet) Records() stores.RecordStore {
	var c rueidis.Client
	if p := s.client.Load(); p != nil {
		c = *p
	}
	return Records{client: c, keys: s.rk, shown: s.shown, timeout: keyspace.AnswerTimeout(s.opt)}
}

func (s *liveSet) log() *zap.Logger {
	if s.logger != nil {
		return s.logger
	}
	return caddy.Log().Named("http.handlers.apikey")
}

func (s *liveSet) fields(more ...zap.Field) []zap.Field {
	return append([]zap.Field{zap.String("redis", s.shown), zap.String("prefix", s.rk.Prefix)}, more...)
}

// open loads the key set. A store with a cache file that holds a snapshot
// of its key set puts the snapshot in force and catches up from the key
// set's log (startFrom); one without, or whose snapshot the log cannot
// bring up to date, reads the key set whole from Redis. If Redis cannot be
// reached or holds no key set, the cache file, if there is one, provides
// the keys until it is back; otherwise the config load fails.
func (s *liveSet) open() error {
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

// catchUpWait bounds how long a store that starts from its cache file
// waits for Redis to say where the key set stands and for the log's
// entries since the snapshot; past it, the store starts from the snapshot
// as when Redis is down, and the follower catches up when Redis answers.
const catchUpWait = time.Second

// startFrom puts the cache file's snapshot, whose head is snap, in force,
// caught up from the key set's log: the changes made since it was written
// are applied as a follower applies them. Its keys are read only once the
// log is known to cover the gap. It returns current false and no error when
// the log cannot bring the snapshot up to date (trimmed past it, the
// version gone back, another history, or more changes than a catch-up
// should read) or the snapshot cannot be read: the key set is then to be
// read whole, and nothing has been put in force. An error is Redis's, or
// keyspace.ErrNoKeySet.
func (s *liveSet) startFrom(c rueidis.Client, snap *keyset.Snapshot) (current bool, err error) {
	ctx, cancel := context.WithTimeout(s.life.Ctx, catchUpWait)
	defer cancel()
	head, err := keyspace.ReadHead(ctx, c, s.rk)
	if err != nil {
		return false, keyspace.ExplainTimeout(ctx, err, keyspace.AnswerTimeout(s.opt), catchUpWait)
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
			return false, keyspace.ExplainTimeout(ctx, err, keyspace.AnswerTimeout(s.opt), catchUpWait)
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
func (s *liveSet) logSince(ctx context.Context, c rueidis.Client, snap *keyset.Snapshot, want int64) (entries []rueidis.XRangeEntry, why string, err error) {
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

func (s *liveSet) closeClient() {
	if p := s.client.Load(); p != nil {
		(*p).Close()
	}
}

// start runs the follower, the usage writer and the cache writer until
// Destruct.
func (s *liveSet) start() {
	s.life.Go(s.closeClient, s.follow, s.writeLoop, s.cacheLoop)
}

// Destruct stops the store once no handler uses it; the usage writer writes
// the pending times as it stops, for at most stopWait.
func (s *liveSet) Destruct() error {
	stores.Unregister(s)
	if !s.life.Stop(storecore.StopWait, s.metrics.Release) {
		s.log().Warn("the last usage write to Redis is still going on; it goes on in the background", s.fields()...)
	}
	return nil
}

// askSync has the follower check the key set's version now, and catch up
// if it is behind; it returns what came of it.
func (s *liveSet) askSync() error {
	err, answered := s.life.AskRefresh()
	if !answered {
		return errors.New("the Redis follower did not answer: it is busy, or stopped")
	}
	return err
}

// refresh is askSync, for the admin API: a change made through it is in
// force here when it answers.
func (s *liveSet) Refresh() error { return s.askSync() }

// askFlush has the usage writer write every pending time now, and waits for
// it at most stopWait.
func (s *liveSet) askFlush() { s.life.AskFlush() }

// Timing of the follower.
const (
	// followBlock is how long one read of the log blocks; when it returns
	// empty, the version is checked (the safety net). So a quiet key set
	// costs two Redis calls a second per server (three with the client's ping).
	followBlock = time.Second
	// minBackoff and maxBackoff bound the wait between attempts while
	// Redis cannot be reached or used: the wait starts at minBackoff and
	// doubles up to maxBackoff. maxBackoff bounds how long a server takes
	// to notice that Redis answers again (a restart, a failover done): its
	// first attempt then checks the version at once, without blocking, so
	// that a change is in force within a second of Redis answering.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 250 * time.Millisecond
	// stallSlack is how late a Redis call may time out after its deadline
	// before the lateness says that this process stood still meanwhile (see
	// late).
	stallSlack = time.Second
)

// follow is the follower: it reads the change log with a blocking read and
// applies each change as it comes; when the log is quiet it checks the
// version; when Redis cannot be reached or used it retries with backoff,
// the keys in force staying in force.
func (s *liveSet) follow() {
	backoff := minBackoff
	for {
		select {
		case <-s.life.Ctx.Done():
			return
		case reply := <-s.life.RefreshNow:
			reply <- s.syncRound()
			continue
		default:
		}
		err := s.round()
		switch {
		case err == nil:
			backoff = minBackoff
			s.settle(nil)
		case s.settle(err):
			// Tried again at once.
		default:
			s.sleep(backoff)
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

// round is one round of the follower: a blocking read of the log, and the
// version check when it is due. After a failure, and until the key set is
// in force, the round is the check alone, which does not block: a Redis
// that answers again is caught up with at once.
func (s *liveSet) round() error {
	c, err := s.connected()
	if err != nil {
		return err
	}
	if s.version == 0 || s.fails > 0 || s.down.On() || s.unusable.On() || s.gone.On() {
		return s.check()
	}
	if err := s.readLog(c, followBlock); err != nil {
		return err
	}
	if time.Since(s.lastCheck) >= followBlock {
		return s.check()
	}
	return nil
}

// syncRound is the version check that askSync asks for, tried again at
// once when the follower's own rounds would be: it answers with what a
// failure turned out to be.
func (s *liveSet) syncRound() error {
	for {
		err := s.check()
		if !s.settle(err) {
			return err
		}
	}
}

// settle says what came of a round (err nil: it went through), once per
// change of state, and whether to try again at once. A failure to reach
// Redis is said at the second in a row (the third, if one came after a
// stall of this process), and tried again at once until then: a single
// one is most often a connection that a stall or an idle time-out broke,
// and the next attempt, on a new connection, goes through. An answer of
// Redis that cannot be used (a key of the wrong type, a version that is
// not a number) is no outage: it is said once as its own problem, and
// never as Redis unreachable, nor its end as Redis reachable again.
func (s *liveSet) settle(err error) (again bool) {
	switch {
	case err == nil:
		s.fails, s.stalled = 0, false
		s.reportUp()
		s.reportUsable()
		return false
	case s.life.Stopped():
		return false // a call cut short by Destruct is no outage
	case errors.Is(err, keyspace.ErrNoKeySet):
		// Redis answers, without the key set (said by reportGone).
		s.fails, s.stalled = 0, false
		s.reportUp()
		s.unusable.End()
		return false
	case keyspace.Answered(err):
		s.fails, s.stalled = 0, false
		s.reportUp()
		s.reportUnusable(err)
		return false
	}
	s.fails++
	if errors.As(err, new(stallError)) {
		s.stalled = true
	}
	limit := 2
	if s.stalled {
		limit = 3
	}
	if s.fails < limit {
		return true
	}
	s.reportDown(err)
	return false
}

// sleep waits d, or less if the store stops or a sync is asked for.
func (s *liveSet) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.life.Ctx.Done():
	case reply := <-s.life.RefreshNow:
		reply <- s.syncRound()
	case <-t.C:
	}
}

// connected returns the client, making it if the store started without
// Redis.
func (s *liveSet) connected() (rueidis.Client, error) {
	if p := s.client.Load(); p != nil {
		return *p, nil
	}
	c, err := rueidis.NewClient(s.opt)
	if err != nil {
		return nil, err
	}
	s.client.Store(&c)
	return c, nil
}

// reportDown logs that Redis cannot be reached, once until it can again.
func (s *liveSet) reportDown(err error) {
	if s.life.Stopped() || !s.down.Start() {
		return // logged already, or a call cut short by Destruct: no outage
	}
	s.metrics.LoadFailed()
	s.metrics.SourceBroken(true)
	s.log().Error("cannot reach Redis; the keys in force stay in force, and it is retried",
		s.fields(zap.Int64("version", s.version), zap.Error(err))...)
}

// reportUp logs that Redis is back, if it was down.
func (s *liveSet) reportUp() {
	if s.down.End() {
		s.metrics.SourceBroken(s.unusable.On() || s.gone.On())
		s.log().Info("Redis is reachable again", s.fields()...)
	}
}

// reportUnusable logs that Redis answers with what cannot be used, once
// until a round goes through.
func (s *liveSet) reportUnusable(err error) {
	if !s.unusable.Start() {
		return
	}
	s.metrics.LoadFailed()
	s.metrics.SourceBroken(true)
	s.log().Error("Redis answers, but with an error or with what the key set's keys should not hold (a key of the wrong type, a version that is not a number?); the keys in force stay in force, and it is read again until it can be",
		s.fields(zap.Int64("version", s.version), zap.Error(err))...)
}

// reportUsable logs that the key set in Redis can be read again, if it
// could not.
func (s *liveSet) reportUsable() {
	if s.unusable.End() {
		s.metrics.SourceBroken(s.down.On() || s.gone.On())
		s.log().Info("the key set in Redis can be read again", s.fields(zap.Int64("version", s.version))...)
	}
}

// stallError is a Redis call's time-out that came well after its
// deadline: this process (or its machine) stood still meanwhile (SIGSTOP,
// a suspended VM), and the deadline passed while it did, not while Redis
// was slow.
type stallError struct{ err error }

func (e stallError) Error() string {
	return "this process stood still past the call's deadline (stopped, or its machine suspended): " + e.err.Error()
}
func (e stallError) Unwrap() error { return e.err }

// late returns err, the error of a Redis call made with ctx, as a
// stallError if it is a time-out that came more than stallSlack after
// ctx's deadline, by the wall clock (which, unlike the monotonic one, goes
// on while the machine is suspended).
func late(ctx context.Context, err error) error {
	dl, ok := ctx.Deadline()
	if ok && keyspace.IsTimeout(err) && time.Now().Round(0).After(dl.Round(0).Add(stallSlack)) {
		return stallError{err}
	}
	return err
}

// readLog reads the change log from the last entry applied, blocking up to
// block (0: not at all), and applies what it finds.
func (s *liveSet) readLog(c rueidis.Client, block time.Duration) error {
	ctx, cancel := s.withTimeout(s.life.Ctx, block+keyspace.AnswerTimeout(s.opt))
	defer cancel()
	entries, err := keyspace.ReadLog(ctx, c, s.rk, s.logID, block)
	if err != nil {
		return late(ctx, err)
	}
	if len(entries) == 0 {
		return nil
	}
	return s.apply(ctx, c, entries)
}

// apply puts the changes of log entries in force: the records they name are
// read again and replace their keys. A gap in the versions (entries
// trimmed from the log, a key set made anew) means a full read instead.
func (s *liveSet) apply(ctx context.Context, c rueidis.Client, entries []rueidis.XRangeEntry) error {
	changed := make(map[string]struct{})
	was := make(map[string]string) // the hash each changed record had before the first of these changes
	version := s.version
	for _, e := range entries {
		v, err := keyspace.EntryVersion(e)
		if err != nil || v != version+1 {
			return s.resync(c)
		}
		ids, hashes, err := keyspace.EntryIDs(e) // hashes nil if not said: KeySet.with searches
		if err != nil {
			return s.resync(c)
		}
		for i, id := range ids {
			if _, seen := changed[id]; !seen && hashes != nil {
				was[id] = hashes[i]
			}
			changed[id] = struct{}{}
		}
		version = v
	}
	last := entries[len(entries)-1].ID

	ids := make([]string, 0, len(changed))
	for id := range changed {
		ids = append(ids, id)
	}
	// Every changed id loses its key; those whose record can be used get
	// their new one.
	changes, problems, err := keyspace.ReadChanged(ctx, c, s.rk, ids)
	if err != nil {
		return late(ctx, err)
	}
	ks, bad := s.keys.Load().With(changes, was)
	s.version, s.logID = version, last
	s.put(ks, false)
	s.reportProblems(append(problems, bad...))
	return nil
}

// reportProblems logs the records that cannot be used, each once while it
// stays so: their keys are refused (fail closed) and the rest of the key
// set works.
func (s *liveSet) reportProblems(problems []error) {
	if len(problems) == 0 {
		return
	}
	s.metrics.LoadFailed()
	for _, p := range problems {
		if s.problems[p.Error()] {
			continue
		}
		if len(s.problems) >= 1000 {
			clear(s.problems) // a flood: forget the old ones rather than grow
		}
		s.problems[p.Error()] = true
		s.log().Error("a record of the Redis key set cannot be used; its key is refused until the record is mended: write it back as it should be (HSET, from an export) or delete it (HDEL); the commands refuse to edit it",
			s.fields(zap.Error(p))...)
	}
}

// check compares the key set's version with the one in force, and catches
// up if they differ: from the log if it can, by a full read otherwise.
func (s *liveSet) check() error {
	c, err := s.connected()
	if err != nil {
		return err
	}
	ctx, cancel := s.withTimeout(s.life.Ctx, keyspace.AnswerTimeout(s.opt))
	defer cancel()
	head, err := keyspace.ReadHead(ctx, c, s.rk)
	if err != nil {
		return late(ctx, err)
	}
	v := head.Version
	switch {
	case v == 0:
		err = keyspace.ErrNoKeySet
	case !head.Records:
		err = keyspace.ErrRecordsGone
	}
	s.lastCheck = time.Now()
	switch {
	case err != nil:
		s.reportGone(err)
		return err
	case s.gone.On() || v < s.version || s.version == 0:
		switch {
		case s.gone.End():
			s.log().Info("the key set is back in Redis", s.fields()...)
		case v < s.version:
			s.log().Warn("the key set's version went back (Redis restored from an older snapshot, or a failover lost changes?): it is read again, and changes made after that snapshot are lost, revocations included; check them",
				s.fields(zap.Int64("version_was", s.version), zap.Int64("version", v))...)
		}
		return s.resync(c)
	case v == s.version && head.LogID != s.logID:
		// Same version, other history: changes in force here were lost
		// (a failover) and as many made since, logged under entry ids
		// that the log read cannot reach (another server's clock).
		s.log().Warn("the key set's log does not end with the last change in force here (a failover lost changes?): it is read again, and the changes lost are lost here too, revocations included; check them",
			s.fields(zap.Int64("version", v), zap.String("log_entry_was", s.logID), zap.String("log_entry", head.LogID))...)
		return s.resync(c)
	case v > s.version:
		if err := s.readLog(c, 0); err != nil {
			return err
		}
		if s.version != v {
			return s.resync(c)
		}
	}
	s.metrics.Synced(s.lastCheck)
	return nil
}

// reportGone logs that the key set is gone from Redis
// (keyspace.ErrNoKeySet) or its records are (keyspace.ErrRecordsGone),
// once until it is back.
func (s *liveSet) reportGone(err error) {
	if !s.gone.Start() {
		return
	}
	s.metrics.LoadFailed()
	s.metrics.SourceBroken(true)
	if errors.Is(err, keyspace.ErrRecordsGone) {
		s.log().Error("the key set's records are gone from Redis while its version and change log remain (evicted under a maxmemory-policy allkeys-*, or deleted by hand); the keys in force stay in force, and the cache file is kept, until it is back: restore it with caddy apikey import, from an export or a cache_file",
			s.fields(zap.Int64("version", s.version))...)
		return
	}
	s.log().Error("the key set is gone from Redis (a restart without persistence, a FLUSHALL?); the keys in force stay in force until it is back: restore it with caddy apikey import",
		s.fields(zap.Int64("version", s.version))...)
}

// resync is fullSync for the follower, which says once that the key set
// is gone if it is.
func (s *liveSet) resync(c rueidis.Client) error {
	err := s.fullSync(c)
	if errors.Is(err, keyspace.ErrNoKeySet) {
		s.reportGone(err)
	}
	return err
}

// fullSync reads the whole key set and puts it in force, then follows the
// log from where it stood before the read: changes made during the read
// are applied again, which changes nothing (KeySet.with finds the keys they
// replace). It has its own deadline, long enough for a million keys.
func (s *liveSet) fullSync(c rueidis.Client) error {
	ctx, cancel := context.WithTimeout(s.life.Ctx, keyspace.EditTimeout)
	defer cancel()
	head, err := keyspace.ReadHead(ctx, c, s.rk)
	if err != nil {
		return keyspace.ExplainTimeout(ctx, err, keyspace.AnswerTimeout(s.opt), keyspace.EditTimeout)
	}
	s.warnEviction(ctx, c)
	switch {
	case head.Version == 0:
		return keyspace.ErrNoKeySet
	case !head.Records:
		return keyspace.ErrRecordsGone
	}
	ks, problems, err := keyspace.LoadKeySet(ctx, c, s.rk)
	if err != nil {
		return keyspace.ExplainTimeout(ctx, err, keyspace.AnswerTimeout(s.opt), keyspace.EditTimeout)
	}
	s.syncs.Add(1)
	s.version, s.logID = head.Version, head.LogID
	s.put(ks, true)
	s.lastCheck = time.Now()
	clear(s.problems) // what is still wrong is reported again
	s.reportProblems(problems)
	if ks.Len() >= keyspace.BigKeySet {
		debug.FreeOSMemory() // give back what reading it took
	}
	return nil
}

// warnEviction warns, once per store, if Redis may evict the key set: its
// maxmemory-policy is one of the allkeys-* policies, which evict keys that
// have no time to live, as the key set's keys have none, when Redis is out
// of memory. A Redis that does not let this user ask (an ACL, a managed
// Redis without CONFIG) says nothing.
func (s *liveSet) warnEviction(ctx context.Context, c rueidis.Client) {
	if s.policyChecked {
		return
	}
	s.policyChecked = true
	conf, err := c.Do(ctx, c.B().ConfigGet().Parameter("maxmemory*").Build()).AsStrMap()
	if err != nil {
		s.log().Debug("cannot read Redis's maxmemory-policy (CONFIG GET refused?); not checked whether Redis may evict the key set", s.fields(zap.Error(err))...)
		return
	}
	if policy := conf["maxmemory-policy"]; strings.HasPrefix(policy, "allkeys-") {
		s.log().Warn("Redis may evict the key set: its maxmemory-policy evicts any key when memory runs out, and a key set whose records are evicted refuses every change until it is restored; set maxmemory-policy to noeviction (or a volatile-* policy)",
			s.fields(zap.String("maxmemory_policy", policy), zap.String("maxmemory", conf["maxmemory"]))...)
	}
}

// put puts ks in force. A key set read whole gets the usage cells of the
// keys that stay the same (one that KeySet.with made has them already).
func (s *liveSet) put(ks *keyset.KeySet, whole bool) {
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
func (s *liveSet) writeLoop() {
	storecore.UsageWriter(s.life.Ctx.Done(), s.life.FlushNow, s.leases, time.Now, s.writeUsage)
}

// writeUsage writes the due last-used times to Redis in one round trip.
func (s *liveSet) writeUsage(all bool) {
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

func (s *liveSet) sendUsage(c rueidis.Client, batch *keyset.UsageBatch) error {
	// Not the stop context: the last write runs as the store stops.
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.DefaultTimeout)
	defer cancel()
	return keyspace.WriteLastUsed(ctx, c, s.rk, batch)
}

// cacheLoop is the cache writer: it saves each new key set in force to the
// cache file. A key set that changes while one is written is saved next.
func (s *liveSet) cacheLoop() {
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

func (s *liveSet) writeCache() {
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
	_, err := keyfile.WriteAtomic(s.cacheFile, keyset.Snapshot{KeySet: ks, Of: s.Name(), Version: p.version, LogID: p.logID, Written: time.Now()}, nil, nil)
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
func (s *liveSet) readSnapshot(keys bool) (*keyset.Snapshot, error) {
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
func (s *liveSet) readCache() (*keyset.Snapshot, error) {
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
var (
	_ caddy.Provisioner  = (*Store)(nil)
	_ caddy.CleanerUpper = (*Store)(nil)
	_ stores.Live        = (*liveSet)(nil)
)
