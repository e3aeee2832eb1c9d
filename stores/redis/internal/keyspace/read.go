package keyspace

import (
	"context"
	_ "embed"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// headScript reads the version, the id of the log's last entry and whether
// the records hash exists, at once.
var headScript = rueidis.NewLuaScriptReadOnly(headLua)

//go:embed lua/head.lua
var headLua string

// Head is where a key set stands: its version (0: none), its log's last
// entry, and whether its records hash exists.
type Head struct {
	Version int64
	LogID   string
	Records bool
}

// ReadHead reads where the key set stands, in one round trip.
func ReadHead(ctx context.Context, c rueidis.Client, k Layout) (Head, error) {
	vals, err := headScript.Exec(ctx, c, []string{k.Version, k.Log, k.Records}, nil).AsStrSlice()
	if err != nil {
		return Head{}, err
	}
	if len(vals) != 3 {
		return Head{}, unusableReply(fmt.Sprintf("redis: unexpected reply to the head script: %q", vals))
	}
	h := Head{LogID: vals[1], Records: vals[2] != "0"}
	if vals[0] != "" {
		if h.Version, err = strconv.ParseInt(vals[0], 10, 64); err != nil {
			return h, unusableReply(fmt.Sprintf("redis: %s holds %.40q, not a version number", k.Version, vals[0]))
		}
	}
	return h, nil
}

// ReadVersion returns the key set's version, 0 if there is none.
func ReadVersion(ctx context.Context, c rueidis.Client, k Layout) (int64, error) {
	v, err := c.Do(ctx, c.B().Get().Key(k.Version).Build()).AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0, nil
	}
	return v, err
}

// ReadState returns the key set's version and, in the same round trip,
// ErrNoKeySet if there is none or ErrRecordsGone if its records are gone.
func ReadState(ctx context.Context, c rueidis.Client, k Layout) (int64, error) {
	res := c.DoMulti(ctx, c.B().Get().Key(k.Version).Build(), c.B().Exists().Key(k.Records).Build())
	v, err := res[0].AsInt64()
	switch {
	case rueidis.IsRedisNil(err):
		return 0, ErrNoKeySet
	case err != nil:
		return 0, err
	case v == 0:
		return 0, ErrNoKeySet
	}
	n, err := res[1].AsInt64()
	switch {
	case err != nil:
		return v, err
	case n == 0:
		return v, ErrRecordsGone
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

// ReadRecords reads a whole key set as of one version, as the commands
// edit it: it scans the records between two reads of the version, and
// scans again if they differ. sorted orders them for people (oldest first,
// then by id); the records of a hash have no order of their own.
func ReadRecords(ctx context.Context, c rueidis.Client, k Layout, sorted bool) (*keyfile.Doc, int64, error) {
	for attempt := 1; ; attempt++ {
		before, err := ReadState(ctx, c, k)
		if err != nil {
			return nil, before, err
		}
		doc := keyfile.NewList()
		seen := make(map[string]bool)
		var rd keyfile.RecordReader
		err = scanHash(ctx, c, k.Records, func(page []string) error {
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
			return nil, before, ErrRecordsGone
		}
		after, err := ReadVersion(ctx, c, k)
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

// ReadRecord reads the record with that id, as a document of that one
// record: nil and no error if there is none.
func ReadRecord(ctx context.Context, c rueidis.Client, k Layout, id string) (*keyfile.Doc, error) {
	js, err := c.Do(ctx, c.B().Hget().Key(k.Records).Field(id).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	doc := keyfile.NewList(keyfile.Record{})
	var rd keyfile.RecordReader
	if err := rd.Read(id, js, &doc.Records[0]); err != nil {
		return nil, err
	}
	return doc, nil
}

// LoadKeySet reads a whole key set into a key set, page by page: only
// the key set and one page are ever in memory. A record that cannot be used
// is left out (its key refused) and named among problems; err is for Redis
// itself.
func LoadKeySet(ctx context.Context, c rueidis.Client, k Layout) (ks *keyset.KeySet, problems []error, err error) {
	size, err := c.Do(ctx, c.B().Hlen().Key(k.Records).Build()).AsInt64()
	if err != nil {
		return nil, nil, err
	}
	if size >= BigKeySet {
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
	err = scanHash(ctx, c, k.Records, func(page []string) error {
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
		return nil, nil, ErrRecordsGone
	}
	return b.KeySet(), problems, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// UsedTimes reads the used hash: last use by "<key_hash>:<id>".
func UsedTimes(ctx context.Context, c rueidis.Client, k Layout) (map[string]time.Time, error) {
	out := make(map[string]time.Time)
	err := scanHash(ctx, c, k.Used, func(page []string) error {
		for i := 0; i < len(page); i += 2 {
			if us, err := strconv.ParseInt(page[i+1], 10, 64); err == nil {
				out[page[i]] = time.UnixMicro(us)
			}
		}
		return nil
	})
	return out, err
}

// MergeUsed gives each record the later of its last_used_at and its used
// entry (see Layout).
func MergeUsed(records []keyfile.Record, used map[string]time.Time) {
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

// BigKeySet is the size from which a full read collects its garbage more
// often (collectOftener), and gives the memory it no longer needs back to
// the system at once (as the file store does for a big file).
const BigKeySet = 100_000

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
