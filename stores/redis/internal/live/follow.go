package live

import (
	"context"
	"errors"
	"runtime/debug"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

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
func (s *Set) follow() {
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
func (s *Set) round() error {
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
func (s *Set) syncRound() error {
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
func (s *Set) settle(err error) (again bool) {
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
func (s *Set) sleep(d time.Duration) {
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
func (s *Set) connected() (rueidis.Client, error) {
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
func (s *Set) reportDown(err error) {
	if s.life.Stopped() || !s.down.Start() {
		return // logged already, or a call cut short by Destruct: no outage
	}
	s.metrics.LoadFailed()
	s.metrics.SourceBroken(true)
	s.log().Error("cannot reach Redis; the keys in force stay in force, and it is retried",
		s.fields(zap.Int64("version", s.version), zap.Error(err))...)
}

// reportUp logs that Redis is back, if it was down.
func (s *Set) reportUp() {
	if s.down.End() {
		s.metrics.SourceBroken(s.unusable.On() || s.gone.On())
		s.log().Info("Redis is reachable again", s.fields()...)
	}
}

// reportUnusable logs that Redis answers with what cannot be used, once
// until a round goes through.
func (s *Set) reportUnusable(err error) {
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
func (s *Set) reportUsable() {
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
func (s *Set) readLog(c rueidis.Client, block time.Duration) error {
	ctx, cancel := s.WithTimeout(s.life.Ctx, block+keyspace.AnswerTimeout(s.opt))
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
func (s *Set) apply(ctx context.Context, c rueidis.Client, entries []rueidis.XRangeEntry) error {
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
func (s *Set) reportProblems(problems []error) {
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
func (s *Set) check() error {
	c, err := s.connected()
	if err != nil {
		return err
	}
	ctx, cancel := s.WithTimeout(s.life.Ctx, keyspace.AnswerTimeout(s.opt))
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
		from := s.version
		if err := s.readLog(c, 0); err != nil {
			return err
		}
		if s.version == from {
			// A newer version, and nothing in the log after the last
			// change in force here: this history does not go through
			// it (a failover lost it, and more changes were made since).
			s.log().Warn("the key set's log does not go on from the last change in force here (a failover lost changes?): it is read again, and the changes lost are lost here too, revocations included; check them",
				s.fields(zap.Int64("version_was", from), zap.Int64("version", v), zap.String("log_entry_was", s.logID))...)
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
func (s *Set) reportGone(err error) {
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
func (s *Set) resync(c rueidis.Client) error {
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
func (s *Set) fullSync(c rueidis.Client) error {
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
func (s *Set) warnEviction(ctx context.Context, c rueidis.Client) {
	if s.policyChecked {
		return
	}
	s.policyChecked = true
	conf, err := c.Do(ctx, c.B().ConfigGet().Parameter("maxmemory*").Build()).AsStrMap()
	if err != nil {
		s.log().Debug("cannot read Redis's maxmemory-policy (CONFIG GET refused?); not checked whether Redis may evict the key set", s.fields(zap.Error(err))...)
		return
	}
	switch policy := conf["maxmemory-policy"]; {
	case strings.HasPrefix(policy, "allkeys-"):
		s.log().Warn("Redis may evict the key set: its maxmemory-policy evicts any key when memory runs out, and a key set whose records are evicted refuses every change until it is restored; set maxmemory-policy to noeviction",
			s.fields(zap.String("maxmemory_policy", policy), zap.String("maxmemory", conf["maxmemory"]))...)
	case strings.HasPrefix(policy, "volatile-"):
		s.log().Warn("Redis may evict the key set's keys that expire when memory runs out: the quota state (a period's quota could then be spent again), the usage counts and the rate-limit counts; set maxmemory-policy to noeviction",
			s.fields(zap.String("maxmemory_policy", policy), zap.String("maxmemory", conf["maxmemory"]))...)
	}
}
