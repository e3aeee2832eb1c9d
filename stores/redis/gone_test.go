package redis

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The key set's records alone gone (evicted under maxmemory-policy
// allkeys-lru, or deleted by hand) while its version and log remain: it is
// the key set gone, as after a FLUSHALL. Running servers keep their keys and
// say so once; the cache file is never overwritten with the empty set; a
// server that starts then starts from its cache file, or refuses to start,
// naming the cause; the commands refuse to build on the empty hash, naming
// the cause and the way back; and the edit script refuses to write into it,
// so that no add races a restore into a one-key set.
func TestRedisRecordsGone(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	rs := records(t, r, "ev:")
	k, _ := keyspace.New("ev:")
	rawA, recA := teststores.AddKey(t, rs, "a")
	rawB, _ := teststores.AddKey(t, rs, "b")
	cache := filepath.Join(t.TempDir(), "cache.json")
	s, logs, err := openLoggedRedisStore(t, r, "ev:", cache)
	if err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 5*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })
	cached := testkeys.ReadFile(t, cache)

	r.Do("DEL", k.Records)

	// The running server keeps its keys, and says so once.
	for range 3 {
		if err := s.Refresh(); !errors.Is(err, keyspace.ErrRecordsGone) {
			t.Fatalf("check with the records gone: %v, want keyspace.ErrRecordsGone", err)
		}
	}
	if !admits(s, rawA) || !admits(s, rawB) {
		t.Fatal("the running server lost its keys")
	}
	if n := logs.FilterMessageSnippet("records are gone").Len(); n != 1 {
		t.Errorf("the loss was logged %d times, want once", n)
	}
	if got := testkeys.ReadFile(t, cache); got != cached {
		t.Errorf("the cache file was rewritten:\n%s", got)
	}

	// A server that starts now: from its cache file, or not at all.
	s2, logs2, err := openLoggedRedisStore(t, r, "ev:", cache)
	if err != nil {
		t.Fatalf("start with a cache file: %v", err)
	}
	if !admits(s2, rawA) || !admits(s2, rawB) {
		t.Fatal("the server started from its cache file does not admit its keys")
	}
	if n := logs2.FilterMessageSnippet("cache file").FilterFieldKey("error").Len(); n != 1 {
		t.Errorf("the start from the cache file was logged %d times, want once", n)
	}
	if logs2.FilterMessageSnippet("records are gone").Len() != 0 {
		t.Error("the start from the cache file logged the loss a second time")
	}
	_ = s2.Refresh()
	if got := testkeys.ReadFile(t, cache); got != cached {
		t.Errorf("the cache file was rewritten by the server started from it:\n%s", got)
	}
	_, err = openRedisStore(t, r, "ev:", "", time.Hour)
	if err == nil || !strings.Contains(err.Error(), "records") || !strings.Contains(err.Error(), "maxmemory-policy") {
		t.Fatalf("start without a cache file: %v, want an error naming the cause", err)
	}

	// The commands refuse, naming the cause and the way back.
	saysHow := func(what string, err error) {
		t.Helper()
		if err == nil || !errors.Is(err, keyspace.ErrRecordsGone) || !strings.Contains(err.Error(), "import") || !strings.Contains(err.Error(), "cache_file") {
			t.Errorf("%s: %v, want an error naming the cause and how to restore", what, err)
		}
	}
	_, _, err = keyops.Revoke(rs, recA.ID, time.Now(), nil)
	saysHow("revoke by id", err)
	_, _, err = keyops.Revoke(rs, recA.KeyPrefix, time.Now(), nil)
	saysHow("revoke by key_prefix", err)
	_, _, err = rs.Read()
	saysHow("list", err)
	noCreate := rs
	noCreate.mayCreate = false
	_, _, err = keyops.Create(noCreate, keyops.AddOptions{Label: "x"}, time.Now(), nil)
	saysHow("add without --create", err)
	// Nor does the script write into it, whatever a writer read before.
	doc := keyfile.NewList(mustDocRecord(t, testkeys.New("racer", nil)))
	if _, err := keyspace.WriteChanged(t.Context(), rs.client, k, doc, keyspace.AnyVersion, false); !errors.Is(err, keyspace.ErrRecordsGone) {
		t.Errorf("the edit script into a key set without records: %v", err)
	}
	if n, _ := r.Do("EXISTS", k.Records).AsInt64(); n != 0 {
		t.Fatal("a refused write made the records hash anew")
	}

	// Restored from the cache file: every server catches up, once.
	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatalf("import of the cache file: %v", err)
	}
	rawC, _ := teststores.AddKey(t, noCreate, "after the restore")
	for _, st := range []*live.Set{s, s2} {
		testredis.Eventually(t, 5*time.Second, "a server did not catch up after the restore", func() bool {
			return admits(st, rawA) && admits(st, rawB) && admits(st, rawC)
		})
	}
	for _, st := range []*live.Set{s, s2} {
		if err := st.Refresh(); err != nil {
			t.Fatalf("check after the restore: %v", err)
		}
	}
	if n := logs.FilterMessageSnippet("is back in Redis").Len(); n != 1 {
		t.Errorf("the restore was logged %d times, want once", n)
	}
}

// mustDocRecord is a test key's record as a new record to write.
func mustDocRecord(t testing.TB, k testkeys.Key) keyfile.Record {
	t.Helper()
	d, err := keyfile.NewRecord(k.Rec())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A server warns at start when Redis may evict the key set
// (maxmemory-policy allkeys-*) or its keys that expire (volatile-*: the
// quota state, usage and rate-limit counts), and says nothing when it may
// not, or when it may not ask (CONFIG refused by an ACL).
func TestRedisWarnsOfEviction(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	teststores.AddKey(t, records(t, r, ""), "a")
	for _, tc := range []struct {
		policy string
		warns  bool
	}{{"allkeys-lru", true}, {"allkeys-random", true}, {"noeviction", false}, {"volatile-lru", true}} {
		r.Do("CONFIG", "SET", "maxmemory-policy", tc.policy)
		_, logs, err := openLoggedRedisStore(t, r, "", "")
		if err != nil {
			t.Fatal(err)
		}
		warned := logs.FilterMessageSnippet("maxmemory-policy").FilterField(zapString("maxmemory_policy", tc.policy)).Len()
		if (warned == 1) != tc.warns || warned > 1 {
			t.Errorf("maxmemory-policy %s: warned %d times, want warned %v", tc.policy, warned, tc.warns)
		}
	}

	// A user that may not run CONFIG: no warning, no error.
	r.Do("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
	r.Do("ACL", "SETUSER", "limited", "on", ">limited-pass", "~*", "&*", "+@all", "-config")
	limited := &testredis.Server{T: t, Port: r.Port, URL: strings.Replace(r.URL, "redis://", "redis://limited:limited-pass@", 1)}
	s, logs, err := openLoggedRedisStore(t, limited, "", "")
	if err != nil {
		t.Fatalf("open as a user without CONFIG: %v", err)
	}
	if n := logs.FilterLevelExact(zapWarn).Len() + logs.FilterLevelExact(zapError).Len(); n != 0 {
		t.Errorf("as a user without CONFIG: %d warnings or errors: %v", n, logs.All())
	}
	if err := s.Refresh(); err != nil {
		t.Fatal(err)
	}
}

var (
	zapWarn  = zapcore.WarnLevel
	zapError = zapcore.ErrorLevel
)

func zapString(k, v string) zapcore.Field { return zap.String(k, v) }

// A server that starts from its cache file because Redis holds no key set
// (wiped) says so once: the follower does not log the loss again, nor that
// Redis is "reachable again"; the key set back, it says that once.
func TestRedisStartWithoutKeySetSaysSoOnce(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	raw, _ := teststores.AddKey(t, rs, "a")
	cache := filepath.Join(t.TempDir(), "cache.json")
	s, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 5*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })
	_ = s.Destruct()

	r.Do("FLUSHALL")
	s2, logs, err := openLoggedRedisStore(t, r, "", cache)
	if err != nil || !admits(s2, raw) {
		t.Fatalf("start from the cache file: %v", err)
	}
	for range 2 {
		if err := s2.Refresh(); !errors.Is(err, keyspace.ErrNoKeySet) {
			t.Fatalf("check: %v", err)
		}
	}
	if n := logs.FilterLevelExact(zapError).Len() + logs.FilterMessageSnippet("reachable again").Len(); n != 0 {
		t.Errorf("%d more lines about the start: %v", n, logs.All())
	}
	if n := logs.FilterMessageSnippet("cache file").Len(); n != 1 {
		t.Errorf("the start from the cache file was logged %d times, want once", n)
	}
	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	if err := s2.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessageSnippet("is back in Redis").Len(); n != 1 {
		t.Errorf("the key set's return was logged %d times, want once", n)
	}
}
