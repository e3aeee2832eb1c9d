package redis

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/redis/rueidis"
)

// A key set in Redis is these Redis keys, which share one Cluster hash
// tag, "{<prefix>}", so that every script touches one slot:
//
//	{apikey:}records  hash: record id -> the record, as JSON (the key file's format)
//	{apikey:}used     hash: "<key_hash>:<id>" -> last use, unix microseconds
//	{apikey:}version  integer: +1 with every change to the records
//	{apikey:}log      stream: one entry per change: v (the new version), ids (JSON array of the ids changed),
//	                  was (JSON array: each record's key_hash before the change)
//	{apikey:}audit    stream: the audit log ({apikey:}audit:max_entries: its retention, if set)
//	{apikey:}rl:<window seconds>:<index>
//	                  hash: key id -> requests admitted in that window of the rate limits of that length,
//	                  by the fleet (ratelimit.go); expires once the next window is over
//	{apikey:}quota:<period>
//	                  hash: "u:<id>" -> units of the key's quota used in the period (taken by servers),
//	                  "g:<id>" -> units granted on top of its allowance for the period (quota.go); the
//	                  period is named as quota.Period.At names it: 2026-12-03, 2026-12, or none (a fixed
//	                  allowance); expires a day after the period ends (quota.Expired), none never
//	{apikey:}usage:<YYYYMMDDHH>
//	                  hash: "<id>:<result>" -> requests of the key with that result (usagecount.Results)
//	                  in that hour (UTC); expires once the hour is older than the retention (usage.go)
//
// Records change only through editScript, which checks the version the
// change was made from, writes the records, bumps the version and appends
// to the log in one atomic step. Last-used times live apart from the
// records, so that usage never rewrites a record (nor the members this
// plugin does not know) and never floods the log; list and export show
// the later of the record's last_used_at and its used entry. Quota state
// and usage counts live apart too, written by their own scripts and
// commands, never through the log.
type layout struct {
	prefix                      string
	tag                         string // {prefix}: every key's start, so that all are in one Cluster slot
	records, used, version, log string
	audit, auditMax             string // the audit stream, and its retention if set (see DefaultAuditMaxEntries)
	quota, usage                string // the starts of the quota hashes ({prefix}quota:) and usage hashes ({prefix}usage:)
}

// DefaultAuditMaxEntries is about how many entries a key set's audit
// stream keeps (XADD MAXLEN ~) unless its {prefix}audit:max_entries key
// says otherwise (caddy apikey audit --set-max-entries).
const DefaultAuditMaxEntries = 1000000

// DefaultPrefix is the prefix of a key set when none is given.
const DefaultPrefix = "apikey:"

// logMaxLen is about how many changes the log keeps. An instance that falls
// further behind (a long disconnect) reads the whole key set again.
const logMaxLen = 10000

// defaultTimeout bounds every Redis call but the blocking read of the log.
const defaultTimeout = 5 * time.Second

func newLayout(prefix string) (layout, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if strings.ContainsAny(prefix, "{}") {
		return layout{}, fmt.Errorf("redis prefix %q: must not hold { or }, which would break its Cluster hash tag", prefix)
	}
	tag := "{" + prefix + "}"
	return layout{prefix: prefix, tag: tag, records: tag + "records", used: tag + "used", version: tag + "version", log: tag + "log", audit: tag + "audit", auditMax: tag + "audit:max_entries", quota: tag + "quota:", usage: tag + "usage:"}, nil
}

// parseURL reads a configured Redis URL into client options. {env.*}
// placeholders are replaced first.
func parseURL(configured string) (rueidis.ClientOption, string, error) {
	raw := strings.TrimSpace(configured)
	if raw == "" {
		return rueidis.ClientOption{}, "", errors.New("redis: a URL is required, e.g. redis://127.0.0.1:6379/0")
	}
	if err := checkScheme(raw, "%s"); err != nil {
		return rueidis.ClientOption{}, "", err
	}
	opt, err := rueidis.ParseURL(raw)
	shown := redactURL(raw)
	if err != nil {
		// url.Parse's error quotes the whole URL, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return opt, shown, fmt.Errorf("redis URL %s: %v", shown, err)
	}
	// No client-side caching: every read here is a scan or a script,
	// and managed servers do not all support it.
	opt.DisableCache = true
	opt.ClientName = "caddy-apikey"
	// No retries inside the client: a call to a dead server fails at once,
	// and the store's own loop retries with backoff, logging once.
	opt.DisableRetry = true
	if opt.ConnWriteTimeout == 0 {
		opt.ConnWriteTimeout = defaultTimeout
	}
	if opt.Sentinel.MasterSet != "" {
		// rueidis follows a failover on the Sentinels' +switch-master
		// event alone, unless told to ask them again now and then: a
		// client that misses the event (its Sentinel connection down at
		// that moment, as when the Sentinel beside the old primary went
		// with it) stays on the old primary, a replica by then, until it
		// is restarted. rueidis recommends asking, every few seconds.
		opt.Sentinel.TopologyRefreshInterval = sentinelRefresh
	}
	return opt, shown, nil
}

// sentinelRefresh is how often a client on Sentinels asks them where the
// primary is, besides following their events (see parseURL): rueidis's
// advice, a few seconds. Each time costs a server four commands on its
// Sentinel connection and a ROLE to the primary.
const sentinelRefresh = 5 * time.Second

// checkScheme refuses a Redis URL that does not start with one of the
// schemes the client takes (redis, rediss, unix, valkey, valkeys), which
// the URL parser would only reject with a message about something else
// ("first path segment in URL cannot contain colon" for 127.0.0.1:6379).
// A URL that starts with a placeholder is left to be checked once it is
// replaced. The error shows the URL as it was likely meant, written as
// form says (a fmt format of one %s: "%s", or "redis %s" for the
// Caddyfile's directive), unless it may hold a password.
func checkScheme(raw, form string) error {
	u := strings.TrimSpace(raw)
	if strings.HasPrefix(u, "{") {
		return nil
	}
	scheme, _, ok := strings.Cut(u, "://")
	if ok {
		switch strings.ToLower(scheme) {
		case "redis", "rediss", "unix", "valkey", "valkeys":
			return nil
		}
	}
	msg := "the Redis URL must start with redis:// or rediss:// (TLS), or unix:// for a socket"
	switch {
	case strings.Contains(u, "@"):
		// It may hold a password: not shown.
	case strings.HasPrefix(u, "/"):
		msg += ": " + fmt.Sprintf(form, "unix://"+u)
	case !ok:
		msg += ": " + fmt.Sprintf(form, "redis://"+u)
	default:
		msg += fmt.Sprintf(", not %s://", scheme)
	}
	return errors.New(msg)
}

// answerTimeout is how long a connection made with opt waits for Redis to
// answer before it gives up: its dial time-out (dial_timeout in the URL)
// for a new connection, its write time-out (write_timeout) for one in use,
// whichever is longer.
func answerTimeout(opt rueidis.ClientOption) time.Duration {
	return max(cmp.Or(opt.Dialer.Timeout, rueidis.DefaultDialTimeout), cmp.Or(opt.ConnWriteTimeout, defaultTimeout))
}

// explainTimeout says what gave up after how long, for an error of a Redis
// call that timed out, which "context deadline exceeded" or "i/o timeout"
// alone does not: Redis not answering within answer (answerTimeout), or,
// if ctx's own deadline passed, the whole operation not done within
// budget. Other errors are returned as they are.
func explainTimeout(ctx context.Context, err error, answer, budget time.Duration) error {
	if !isTimeout(err) {
		return err
	}
	if ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("Redis did not finish within %s, the time allowed: %w", budget, err)
	}
	return fmt.Errorf("Redis did not answer within %s: %w", answer, err)
}

// isTimeout reports whether err is a Redis call's time-out: its context's
// deadline, or its connection's.
func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout())
}

// redactURL is a Redis URL as logs and messages may show it: without its
// password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a malformed URL)"
	}
	return u.Redacted()
}

// editScript applies one change to a key set. It checks, first, the
// version the change was made from (ARGV[1]): the key set must still be at
// it (0: the key set does not exist yet, which only a change that may
// create it accepts, ARGV[2], as it alone may write into a key set whose
// records are gone while its version remains; "*": any version). Then,
// for each record (ARGV[6+n...]: id, expected, JSON), what the change
// expects to replace: nothing is checked (""), there must be no record
// with that id ("-": a new record), or the record must still be the value
// read ("=" and the value: a change of named records, which conflicts
// only with changes of the same records). It then writes the records,
// bumps the version and logs the change (ARGV[3]: the log's length): the
// ids (ARGV[4]), and the key_hash each record had before ("" for a new
// record, "?" if it could not be read), so that a follower drops a
// replaced key without searching for it. Before it writes the records, it
// adds the change's n (ARGV[5]) audit entries (ARGV[6...5+n], JSON) to the
// audit stream (KEYS[4]), trimmed to about KEYS[5]'s number of entries
// (DefaultAuditMaxEntries if unset): an entry that cannot be added fails
// the script before anything is written. It returns {1, new version}, or
// {0, version now} when another writer changed the version, {2, version}
// when a record to add is there already, {3, version} when a record to
// change is no longer the one read.
var editScript = rueidis.NewLuaScript(editLua)

//go:embed lua/edit.lua
var editLua string

// usageScript records last uses: for each (id, key_hash, unix
// microseconds), if the record with that id still exists and still has that
// key_hash, and its used entry is older, the entry is set. A deleted or
// replaced record is never recreated, and a newer time never overwritten.
var usageScript = rueidis.NewLuaScript(usageLua)

//go:embed lua/usage.lua
var usageLua string

// headScript reads the version, the id of the log's last entry and whether
// the records hash exists, at once.
var headScript = rueidis.NewLuaScriptReadOnly(headLua)

//go:embed lua/head.lua
var headLua string

// errNoKeySet: the prefix holds no key set (it was never made, or Redis
// lost it).
var errNoKeySet = errors.New("no key set")

// errRecordsGone: the key set's records hash is gone while its version
// remains. No change removes every record (revoke keeps them), so Redis
// lost them: it is the key set gone (errors.Is errNoKeySet).
var errRecordsGone error = recordsGone{}

type recordsGone struct{}

func (recordsGone) Error() string {
	return "the key set's records are gone from Redis while its version and change log remain (evicted under a maxmemory-policy allkeys-*, or deleted by hand)"
}
func (recordsGone) Is(target error) bool { return target == errNoKeySet }

// unusableReply is a reply of Redis that cannot be used: Redis answered,
// with what the key set's keys should not hold.
type unusableReply string

func (e unusableReply) Error() string { return string(e) }

// redisHead is where a key set stands: its version (0: none), its log's
// last entry, and whether its records hash exists.
type redisHead struct {
	version int64
	logID   string
	records bool
}

func readHead(ctx context.Context, c rueidis.Client, k layout) (redisHead, error) {
	vals, err := headScript.Exec(ctx, c, []string{k.version, k.log, k.records}, nil).AsStrSlice()
	if err != nil {
		return redisHead{}, err
	}
	if len(vals) != 3 {
		return redisHead{}, unusableReply(fmt.Sprintf("redis: unexpected reply to the head script: %q", vals))
	}
	h := redisHead{logID: vals[1], records: vals[2] != "0"}
	if vals[0] != "" {
		if h.version, err = strconv.ParseInt(vals[0], 10, 64); err != nil {
			return h, unusableReply(fmt.Sprintf("redis: %s holds %.40q, not a version number", k.version, vals[0]))
		}
	}
	return h, nil
}

// readVersion returns the key set's version, 0 if there is none.
func readVersion(ctx context.Context, c rueidis.Client, k layout) (int64, error) {
	v, err := c.Do(ctx, c.B().Get().Key(k.version).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, nil
	}
	return v, err
}

// readState returns the key set's version and, in the same round trip,
// errNoKeySet if there is none or errRecordsGone if its records are gone.
func readState(ctx context.Context, c rueidis.Client, k layout) (int64, error) {
	res := c.DoMulti(ctx, c.B().Get().Key(k.version).Build(), c.B().Exists().Key(k.records).Build())
	v, err := res[0].AsInt64()
	switch {
	case rueidis.IsRedisNil(err):
		return 0, errNoKeySet
	case err != nil:
		return 0, err
	case v == 0:
		return 0, errNoKeySet
	}
	n, err := res[1].AsInt64()
	switch {
	case err != nil:
		return v, err
	case n == 0:
		return v, errRecordsGone
	}
	return v, nil
}

// scanCount is how many fields one HSCAN asks for.
const scanCount = 5000

// scanHash reads a whole hash with HSCAN (not HGETALL, which would hold
// Redis for the whole of a large key set), handing fn each page of fields
// and values (field, value, field, value...). HSCAN may return a field
// twice (while the hash is rehashed): fn sees it twice. The next page is
// fetched while fn works on this one, so that Redis and this process work
// at once on a large key set.
func scanHash(ctx context.Context, c rueidis.Client, key string, fn func(page []string) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type page struct {
		elems []string
		err   error
	}
	pages := make(chan page, 1)
	go func() {
		defer close(pages)
		cursor := uint64(0)
		for {
			e, err := c.Do(ctx, c.B().Hscan().Key(key).Cursor(cursor).Count(scanCount).Build()).AsScanEntry()
			select {
			case pages <- page{e.Elements[:len(e.Elements)&^1], err}:
			case <-ctx.Done():
				return
			}
			if cursor = e.Cursor; err != nil || cursor == 0 {
				return
			}
		}
	}()
	for p := range pages {
		if p.err != nil {
			return p.err
		}
		if err := fn(p.elems); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// readRecords reads a whole key set as of one version, as the commands
// edit it: it scans the records between two reads of the version, and
// scans again if they differ. sorted orders them for people (oldest first,
// then by id); the records of a hash have no order of their own.
func readRecords(ctx context.Context, c rueidis.Client, k layout, sorted bool) (*keyfile.Doc, int64, error) {
	for attempt := 1; ; attempt++ {
		before, err := readState(ctx, c, k)
		if err != nil {
			return nil, before, err
		}
		doc := keyfile.NewList()
		seen := make(map[string]bool)
		var rd keyfile.RecordReader
		err = scanHash(ctx, c, k.records, func(page []string) error {
			for i := 0; i < len(page); i += 2 {
				if seen[page[i]] {
					continue
				}
				seen[page[i]] = true
				doc.Records = append(doc.Records, keyfile.Record{})
				if err := rd.Read(page[i], page[i+1], &doc.Records[len(doc.Records)-1]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		if len(seen) == 0 { // gone while read
			return nil, before, errRecordsGone
		}
		after, err := readVersion(ctx, c, k)
		if err != nil {
			return nil, 0, err
		}
		if after != before && attempt < 5 {
			continue
		}
		if sorted {
			slices.SortFunc(doc.Records, func(a, b keyfile.Record) int {
				if c := strings.Compare(deref(a.CreatedAt), deref(b.CreatedAt)); c != 0 {
					return c
				}
				return strings.Compare(a.ID, b.ID)
			})
		}
		return doc, after, nil
	}
}

// loadKeySet reads a whole key set into a key set, page by page: only
// the key set and one page are ever in memory. A record that cannot be used
// is left out (its key refused) and named among problems; err is for Redis
// itself.
func loadKeySet(ctx context.Context, c rueidis.Client, k layout) (ks *keyset.KeySet, problems []error, err error) {
	size, err := c.Do(ctx, c.B().Hlen().Key(k.records).Build()).AsInt64()
	if err != nil {
		return nil, nil, err
	}
	if size >= bigKeySet {
		defer collectOftener()()
	}
	// Room for the keys that changes will add (see KeySet.With), so that
	// the first ones need not copy the key set.
	b := keyset.NewBuilderWithRoom(int(size), int(size/8+64))
	n, read := 0, false
	// HSCAN may return a field twice: a field seen is one whose key was
	// added (the builder holds them; not a second map of a million ids) or
	// one that could not be used (few).
	failed := make(map[string]bool)
	seen := func(field string) bool { return b.Has(field) || failed[field] }
	var rd keyfile.RecordReader
	var rec keyfile.Record
	err = scanHash(ctx, c, k.records, func(page []string) error {
		for i := 0; i < len(page); i += 2 {
			if seen(page[i]) {
				continue
			}
			read = true
			rec = keyfile.Record{}
			if err := rd.Read(page[i], page[i+1], &rec); err != nil {
				failed[strings.Clone(page[i])] = true
				problems = append(problems, err)
				continue
			}
			n++
			if err := b.Add(&rec.Record, n); err != nil {
				failed[strings.Clone(page[i])] = true
				problems = append(problems, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if !read { // its caller saw a version: the records are gone
		return nil, nil, errRecordsGone
	}
	return b.KeySet(), problems, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// editBatch is how many records one run of editScript writes. A change of
// more (an import) is written in batches, each atomic and logged, the first
// checked against the version the change was made from and each next one
// against the one before: a writer in between makes the rest fail with
// errVersionMoved, and the change is done again on what is there then.
// Batches keep any one script (and the log entry, and a follower's read)
// short, so Redis never stalls on a large import.
const editBatch = 5000

// writeChanged saves the records of doc that an edit made or changed (those
// no longer held as the bytes they were read as), if the key set is still
// at version from. It returns the new version, or errVersionMoved.
//
// With from anyVersion, the change only adds records: it is written
// whatever the version, and refused (errIDTaken) if one of its ids is
// there already.
func writeChanged(ctx context.Context, c rueidis.Client, k layout, doc *keyfile.Doc, from int64, create bool) (int64, error) {
	return writeRecords(ctx, c, k, doc, from, create, nil, nil)
}

// writeRecords is writeChanged, but for read not nil: the change is one of
// named records, written whatever the version if each record it changes is
// still the value it was read as (read[id]; none if read has no value for
// it), and refused otherwise (errRecordMoved, or errIDTaken for a record
// that was not there). Changes of other records do not hold it up.
//
// entries are the change's audit entries: each is added to the audit
// stream by the script that writes its key's record (the first for an
// entry of a key that the change writes no record of), in the same atomic
// step, before the records; a batch whose entries cannot be added writes
// nothing.
func writeRecords(ctx context.Context, c rueidis.Client, k layout, doc *keyfile.Doc, from int64, create bool, read map[string]string, entries []audit.Entry) (int64, error) {
	if read != nil {
		from = anyVersion
	}
	var writes []string // id, expected, JSON, id, expected, JSON...
	for i := range doc.Records {
		r := &doc.Records[i]
		if !r.Edited() {
			continue
		}
		// The log names ids in JSON, which cannot carry invalid UTF-8:
		// such an id would reach the servers changed.
		if !utf8.ValidString(r.ID) {
			return 0, fmt.Errorf("record %q: a Redis key set needs ids that are valid UTF-8", r.ID)
		}
		js, err := r.Compact()
		if err != nil {
			return 0, fmt.Errorf("record %q: %v", r.ID, err)
		}
		expect := ""
		switch was, ok := read[r.ID]; {
		case ok:
			expect = "=" + was
		case from == anyVersion:
			expect = "-"
		}
		writes = append(writes, r.ID, expect, string(js))
	}
	// The audit entries of each batch, in their order.
	batches := max(1, (len(writes)/3+editBatch-1)/editBatch)
	audited := make([][]string, batches)
	if len(entries) > 0 {
		batchOf := make(map[string]int, len(writes)/3)
		for i := 0; i < len(writes); i += 3 {
			if _, ok := batchOf[writes[i]]; !ok {
				batchOf[writes[i]] = i / 3 / editBatch
			}
		}
		for _, e := range entries {
			line, err := audit.Append(nil, e)
			if err != nil {
				return 0, err
			}
			b := batchOf[e.KeyID] // 0 if none
			audited[b] = append(audited[b], string(line[:len(line)-1]))
		}
	}
	version := from
	for b := 0; len(writes) > 0; b++ {
		n := min(len(writes), 3*editBatch)
		v, err := writeBatch(ctx, c, k, writes[:n], version, create, audited[b])
		if err != nil {
			return v, err
		}
		if version != anyVersion {
			version = v
		}
		writes, create = writes[n:], false
	}
	return version, nil
}

// writeBatch runs editScript once, for the records in writes (id,
// expected, JSON...).
func writeBatch(ctx context.Context, c rueidis.Client, k layout, writes []string, from int64, create bool, entries []string) (int64, error) {
	args := make([]string, 5, 5+len(entries)+len(writes))
	args[0], args[1], args[2] = strconv.FormatInt(from, 10), "0", strconv.Itoa(logMaxLen)
	if create {
		args[1] = "1"
	}
	if from == anyVersion {
		args[0] = "*"
	}
	ids := make([]string, 0, len(writes)/3)
	for i := 0; i < len(writes); i += 3 {
		ids = append(ids, writes[i])
	}
	idList, _ := json.Marshal(ids) // strings only: cannot fail
	args[3] = string(idList)
	args[4] = strconv.Itoa(len(entries))
	args = append(args, entries...)
	args = append(args, writes...)
	res, err := editScript.Exec(ctx, c, []string{k.version, k.records, k.log, k.audit, k.auditMax}, args).AsIntSlice()
	if err != nil {
		switch msg := err.Error(); {
		case strings.HasPrefix(msg, "NOKEYSET"):
			return 0, errNoKeySet
		case strings.HasPrefix(msg, "NORECORDS"):
			return 0, errRecordsGone
		}
		return 0, err
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("redis: unexpected reply to the edit script: %v", res)
	}
	switch res[0] {
	case 0:
		return res[1], errVersionMoved
	case 2:
		return res[1], errIDTaken
	case 3:
		return res[1], errRecordMoved
	}
	return res[1], nil
}

// anyVersion, as the version a change was made from, marks a change that
// only adds records (see writeChanged).
const anyVersion = -1

// errIDTaken: a record to add has the id of one already there.
var errIDTaken = errors.New("a record with this id is there already")

// errVersionMoved: another writer changed the key set between the read
// and the write; the edit is done again on the new version.
var errVersionMoved = errors.New("the key set changed meanwhile")

// errRecordMoved: another writer changed a record that a change of named
// records changes, between the read and the write; the edit is done again.
var errRecordMoved = errors.New("the record changed meanwhile")

// usedTimes reads the used hash: last use by "<key_hash>:<id>".
func usedTimes(ctx context.Context, c rueidis.Client, k layout) (map[string]time.Time, error) {
	out := make(map[string]time.Time)
	err := scanHash(ctx, c, k.used, func(page []string) error {
		for i := 0; i < len(page); i += 2 {
			if us, err := strconv.ParseInt(page[i+1], 10, 64); err == nil {
				out[page[i]] = time.UnixMicro(us)
			}
		}
		return nil
	})
	return out, err
}

// mergeUsed gives each record the later of its last_used_at and its used
// entry (see layout).
func mergeUsed(records []keyfile.Record, used map[string]time.Time) {
	for i := range records {
		r := &records[i]
		at, ok := used[strings.ToLower(r.KeyHash)+":"+r.ID]
		if !ok {
			continue
		}
		if r.LastUsedAt != nil {
			if t, err := keyset.ParseTimestamp(*r.LastUsedAt); err == nil && !t.Before(at) {
				continue
			}
		}
		s := keyset.FormatTimestamp(at)
		if r.Set("last_used_at", s) == nil {
			r.LastUsedAt = &s
		}
	}
}

// loadGCPercent is the garbage collector's target (GOGC) while a large key
// set is read whole: the read makes about as much garbage (Redis's replies)
// as the key set takes, and at Go's default of 100 the heap grows to twice
// the key set before it is collected. Set lower, the peak stays within
// 1.5 times the key set in force after the read, for a few more
// collections: the key set, allocated first, is most of the heap from the
// start.
const loadGCPercent = 25

var oftener struct {
	sync.Mutex
	n   int // reads under way
	was int // GOGC before the first of them
}

// collectOftener sets GOGC to loadGCPercent, unless it is lower (or off),
// until the function it returns is called; reads that overlap share one
// setting.
func collectOftener() (restore func()) {
	oftener.Lock()
	defer oftener.Unlock()
	if oftener.n == 0 {
		oftener.was = debug.SetGCPercent(loadGCPercent)
		if oftener.was < loadGCPercent { // lower already, or off (-1)
			debug.SetGCPercent(oftener.was)
		}
	}
	oftener.n++
	return func() {
		oftener.Lock()
		defer oftener.Unlock()
		if oftener.n--; oftener.n == 0 {
			debug.SetGCPercent(oftener.was)
		}
	}
}
