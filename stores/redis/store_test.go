package redis

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"github.com/redis/rueidis"

	"go.uber.org/zap"
)

// records is the test's record store on r at prefix.
func records(t testing.TB, r *testredis.Server, prefix string) Records {
	t.Helper()
	rs, err := Open(Target{URL: r.URL, Prefix: prefix, Create: true}) // the tests make their key sets with add
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Close)
	return rs
}

// openRedisStore opens a live store on r's key set at prefix, with the
// usage interval given, as Provision does; it is stopped when the test
// ends.
func openRedisStore(t testing.TB, r *testredis.Server, prefix, cacheFile string, usage time.Duration) (*live.Set, error) {
	t.Helper()
	return openRedisStoreWith(t, r, prefix, cacheFile, usage, zap.NewNop())
}

// openRedisStoreWith is openRedisStore, the store logging to logger.
func openRedisStoreWith(t testing.TB, r *testredis.Server, prefix, cacheFile string, usage time.Duration, logger *zap.Logger) (*live.Set, error) {
	t.Helper()
	opt, shown, err := parseURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := keyspace.New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	s := newLiveSet(opt, shown, keys, cacheFile)
	s.Logger = logger
	s.Leases().Add(storecore.Settings{Usage: storecore.Interval{Every: usage}, Reload: storecore.Interval{Off: true}})
	if err := s.Open(); err != nil {
		return nil, err
	}
	s.Start()
	t.Cleanup(func() { _ = s.Destruct() })
	return s, nil
}

func mustOpenRedisStore(t testing.TB, r *testredis.Server, prefix string) *live.Set {
	t.Helper()
	s, err := openRedisStore(t, r, prefix, "", time.Hour)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

// admits reports whether the store's key set in force admits raw.
func admits(s *live.Set, raw string) bool {
	k, _ := s.KeySet().Lookup(raw)
	return k != nil && !k.Revoked() && !k.Expired(time.Now().UnixNano())
}

func TestRedisStoreFollowsChanges(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	rawA, _ := teststores.AddKey(t, rs, "a")
	s := mustOpenRedisStore(t, r, "")
	if !admits(s, rawA) {
		t.Fatal("the key added before the store opened is not in force")
	}

	rawB, recB := teststores.AddKey(t, rs, "b")
	testredis.Eventually(t, time.Second, "the new key is not in force", func() bool { return admits(s, rawB) })

	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, time.Second, "the revoked key is still admitted", func() bool { return !admits(s, rawB) })
	if !admits(s, rawA) {
		t.Fatal("an unrelated key was lost")
	}
	if got := s.Syncs(); got != 1 {
		t.Errorf("the store read the whole key set %d times, want 1 (the changes come from the log)", got)
	}
	if err := s.Refresh(); err != nil {
		t.Fatalf("version check: %v", err)
	}
}

func TestRedisStoreResyncsOnAGap(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	teststores.AddKey(t, rs, "a")
	s := mustOpenRedisStore(t, r, "")

	// The log loses entries (trimmed while the store was away): the
	// versions jump, and the store reads the whole key set.
	keys, _ := keyspace.New("")
	r.Do("INCR", keys.Version)
	r.Do("XTRIM", keys.Log, "MAXLEN", "0")
	rawB, _ := teststores.AddKey(t, rs, "b")
	testredis.Eventually(t, 2*time.Second, "the key added after the gap is not in force", func() bool { return admits(s, rawB) })
	if got := s.Syncs(); got != 2 {
		t.Errorf("full reads = %d, want 2", got)
	}
}

func TestRedisStoreKeepsKeysWhenRedisIsDownOrWiped(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	raw, _ := teststores.AddKey(t, rs, "a")
	s := mustOpenRedisStore(t, r, "")

	// Wiped: the key set is gone, as after a restart without persistence.
	r.Do("FLUSHALL")
	if err := s.Refresh(); !errors.Is(err, keyspace.ErrNoKeySet) {
		t.Fatalf("check after FLUSHALL: %v, want keyspace.ErrNoKeySet", err)
	}
	if !admits(s, raw) {
		t.Fatal("a wiped key set took the keys in force with it")
	}

	// Down: kill -9. The keys stay in force.
	r.Kill()
	if err := s.Refresh(); err == nil {
		t.Fatal("check with Redis down: no error")
	}
	if !admits(s, raw) {
		t.Fatal("Redis down took the keys in force with it")
	}

	// Back, empty: restore from a key file; the store catches up.
	r.Restart()
	rs2 := records(t, r, "")
	raw2, _ := teststores.AddKey(t, rs2, "after")
	testredis.Eventually(t, 10*time.Second, "the store did not catch up after Redis came back", func() bool { return admits(s, raw2) })
	if admits(s, raw) {
		t.Error("a key of the lost key set is still in force after the new key set was read")
	}
}

func TestRedisStoreStartsFromCacheFile(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	raw, _ := teststores.AddKey(t, rs, "a")
	cache := filepath.Join(t.TempDir(), "cache.json")
	s, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 5*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })
	if snap, err := keyfile.ReadSnapshot(cache); err != nil || snap.KeySet.Len() != 1 {
		t.Fatalf("cache file: %v", err)
	}
	_ = s.Destruct()
	r.Kill()

	// Without a cache file, a start with Redis down fails, naming the URL.
	if _, err := openRedisStore(t, r, "", "", time.Hour); err == nil || !strings.Contains(err.Error(), r.URL) {
		t.Fatalf("start with Redis down and no cache: %v, want an error naming %s", err, r.URL)
	}
	// With one, it starts from it.
	s2, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatalf("start with Redis down and a cache file: %v", err)
	}
	if !admits(s2, raw) {
		t.Fatal("the key from the cache file is not in force")
	}
	r.Restart()
	rs2 := records(t, r, "")
	if _, err := keyops.Import(cache, rs2, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	raw2, _ := teststores.AddKey(t, rs2, "b")
	testredis.Eventually(t, 10*time.Second, "the store did not catch up when Redis came back", func() bool { return admits(s2, raw2) && admits(s2, raw) })
}

func TestRedisUsageIsMergedAndNeverResurrects(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	rawA, recA := teststores.AddKey(t, rs, "a")
	rawB, recB := teststores.AddKey(t, rs, "b")
	s1 := mustOpenRedisStore(t, r, "")
	s2 := mustOpenRedisStore(t, r, "")

	use := func(s *live.Set, raw string, at time.Time) {
		k, sum := s.KeySet().Lookup(raw)
		s.Usage().Mark(k, sum, at.UnixNano())
	}
	t1 := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	t2 := t1.Add(time.Minute)
	use(s1, rawA, t2)
	s1.AskFlush()
	use(s2, rawA, t1) // older: must not overwrite
	s2.AskFlush()

	// B is deleted (by hand) before its use is written: never recreated.
	keys, _ := keyspace.New("")
	r.Do("HDEL", keys.Records, recB.ID)
	use(s1, rawB, t2)
	s1.AskFlush()

	records, _, err := rs.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 1 || records[0].ID != recA.ID {
		t.Fatalf("records after the usage writes: %d, want only A", len(records))
	}
	if got := records[0].LastUsedAt; got == nil || *got != keyset.FormatTimestamp(t2) {
		t.Errorf("A's last_used_at = %v, want %s (the later use)", got, keyset.FormatTimestamp(t2))
	}
	if n, _ := r.Do("HLEN", keys.Used).AsInt64(); n != 1 {
		t.Errorf("used entries = %d, want 1", n)
	}
	if s1.Writes() == 0 || s2.Writes() == 0 {
		t.Error("a usage write did not happen")
	}
}

func TestRedisImportIsIdempotentAndReportsConflicts(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "imp:")
	a, b := testkeys.New("a", nil), testkeys.New("b", map[string]any{"x-team": "ops"})
	path := testkeys.WriteKeys(t, "", a, b)

	res, err := keyops.Import(path, rs, keyops.ImportOptions{Waiting: nil})
	if err != nil || res.Added != 2 || res.Present != 0 || len(res.Conflicts) != 0 {
		t.Fatalf("first import: %+v, %v", res, err)
	}
	res, err = keyops.Import(path, rs, keyops.ImportOptions{Waiting: nil})
	if err != nil || res.Added != 0 || res.Present != 2 {
		t.Fatalf("second import: %+v, %v", res, err)
	}
	// The unknown member came along.
	keys, _ := keyspace.New("imp:")
	js, _ := r.Do("HGET", keys.Records, b.Record["id"].(string)).ToString()
	if !strings.Contains(js, `"x-team":"ops"`) {
		t.Errorf("record in Redis: %s; the unknown member was lost", js)
	}

	// Same id, other label: reported, not overwritten.
	changed := testkeys.New("other", map[string]any{"id": a.Record["id"]})
	res, err = keyops.Import(testkeys.WriteKeys(t, "", changed), rs, keyops.ImportOptions{Waiting: nil})
	if err != nil || res.Added != 0 || len(res.Conflicts) != 1 || !strings.Contains(res.Conflicts[0], "other content") {
		t.Fatalf("conflicting import: %+v, %v", res, err)
	}
	records, _, _ := rs.Read()
	for _, rec := range records {
		if rec.ID == a.Record["id"] && rec.Label != "a" {
			t.Error("a conflicting import overwrote a record")
		}
	}

	// Export writes a key file the file store loads, with the same keys.
	out := filepath.Join(t.TempDir(), "export.json")
	if n, err := keyops.Export(rs, out, nil); err != nil || n != 2 {
		t.Fatalf("export: %d, %v", n, err)
	}
	ks, err := keyfile.ReadKeySet(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []testkeys.Key{a, b} {
		if got, _ := ks.Lookup(k.Raw); got == nil {
			t.Errorf("key %s is missing from the export", k.Record["id"])
		}
	}
	if _, err := keyops.Export(rs, out, nil); err == nil {
		t.Error("export over an existing file: no error")
	}
	var buf bytes.Buffer
	if _, err := keyops.Export(rs, "", &buf); err != nil || !strings.Contains(buf.String(), `"api_keys"`) {
		t.Errorf("export to stdout: %v\n%s", err, buf.String())
	}
}

func TestRedisCommandsRefuseWithoutAKeySet(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "none:")
	_, _, err := keyops.Revoke(rs, "abcd", time.Now(), nil)
	if err == nil || !strings.Contains(err.Error(), "holds no key set") || !strings.Contains(err.Error(), "--redis "+r.URL) {
		t.Fatalf("revoke on an empty prefix: %v", err)
	}
	if _, err := openRedisStore(t, r, "none:", "", time.Hour); err == nil || !strings.Contains(err.Error(), "holds no key set") {
		t.Fatalf("store on an empty prefix: %v", err)
	}
}

func TestRedisURLIsRedacted(t *testing.T) {
	_, shown, err := parseURL("redis://user:s3cret@127.0.0.1:1/0")
	if err != nil || strings.Contains(shown, "s3cret") || !strings.Contains(shown, "user:xxxxx@") {
		t.Fatalf("shown = %q, %v", shown, err)
	}
	if _, _, err := parseURL("http://127.0.0.1"); err == nil {
		t.Error("an http:// URL was taken")
	}
	if _, err := keyspace.New("a{b"); err == nil {
		t.Error("a prefix with { was taken")
	}
}

func TestRedisLargeImportInBatches(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "big:")
	teststores.AddKey(t, rs, "first")
	s := mustOpenRedisStore(t, r, "big:")
	keys := make([]testkeys.Key, 2*keyspace.EditBatch+10)
	for i := range keys {
		keys[i] = testkeys.New(fmt.Sprintf("k%d", i), nil)
	}
	res, err := keyops.Import(testkeys.WriteKeys(t, "", keys...), rs, keyops.ImportOptions{Waiting: nil})
	if err != nil || res.Added != len(keys) {
		t.Fatalf("import: %+v, %v", res, err)
	}
	rk, _ := keyspace.New("big:")
	if v, _ := r.Do("GET", rk.Version).AsInt64(); v != 1+3 {
		t.Errorf("version %d after an import of %d records, want %d (one per batch of %d)", v, len(keys), 4, keyspace.EditBatch)
	}
	testredis.Eventually(t, 10*time.Second, "the imported keys are not all in force", func() bool { return s.KeySet().Len() == len(keys)+1 })
	if !admits(s, keys[len(keys)-1].Raw) {
		t.Error("the last imported key is not admitted")
	}
}

func TestRedisRecordsWithoutConnection(t *testing.T) {
	keys, _ := keyspace.New("")
	s := newLiveSet(rueidis.ClientOption{}, "redis://127.0.0.1:1/0", keys, "")
	defer s.ReleaseMetrics()
	st := s.Records()
	if _, _, err := st.Read(); !errors.Is(err, keyspace.ErrNotConnected) {
		t.Errorf("read: %v", err)
	}
	if _, _, err := keyops.Create(st, keyops.AddOptions{Label: "x"}, time.Now(), nil); !errors.Is(err, keyspace.ErrNotConnected) {
		t.Errorf("add: %v", err)
	}
}

// Revoke reads the one record when named by its id, the whole key set
// otherwise; both find the same key, and a name that matches none is
// refused.
func TestRedisRevokeByIDAndByPrefix(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "rv:")
	_, a := teststores.AddKey(t, rs, "a")
	_, b := teststores.AddKey(t, rs, "b")
	if _, _, err := keyops.Revoke(rs, a.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke by id: %v", err)
	}
	if _, _, err := keyops.Revoke(rs, b.KeyPrefix, time.Now(), nil); err != nil {
		t.Fatalf("revoke by key_prefix: %v", err)
	}
	_, already, err := keyops.Revoke(rs, strings.ToUpper(a.ID), time.Now(), nil)
	if err != nil || already == "" {
		t.Fatalf("revoke by id in capitals: already %q, %v", already, err)
	}
	var re *keyops.RefError
	if _, _, err := keyops.Revoke(rs, "00000000-0000-4000-8000-000000000000", time.Now(), nil); !errors.As(err, &re) || re.Code != "KEY_NOT_FOUND" {
		t.Fatalf("revoke of no key: %v", err)
	}
	records, _, err := rs.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range records {
		if rec.RevokedAt == nil {
			t.Errorf("key %s is not revoked", rec.Label)
		}
	}
}

// Records changed by other means than the commands: a broken one leaves
// its key refused and holds up nothing else; a key_hash changed in place
// does not leave the old key in force once the record changes again.
func TestRedisStoreToleratesRecordsChangedByHand(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	rawA, recA := teststores.AddKey(t, rs, "a")
	rawB, recB := teststores.AddKey(t, rs, "b")
	rawC, recC := teststores.AddKey(t, rs, "c")
	keys, _ := keyspace.New("")

	// A broken record written by hand, seen at the start.
	r.Do("HSET", keys.Records, recC.ID, `{"id": "`+recC.ID+`", "key_hash": "nope"`)
	s := mustOpenRedisStore(t, r, "")
	if admits(s, rawC) {
		t.Fatal("the key of a broken record is admitted")
	}
	if !admits(s, rawA) || !admits(s, rawB) {
		t.Fatal("a broken record took the other keys with it")
	}

	// Revocations still reach the store, one by one, past the broken record.
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 2*time.Second, "a revocation did not reach the store while another record is broken", func() bool { return !admits(s, rawB) })

	// key_hash changed by hand (no log entry), then a change through the
	// script: the key the store held for that id is dropped all the same.
	other, _ := keyops.GenerateKey()
	js, _ := r.Do("HGET", keys.Records, recA.ID).ToString()
	r.Do("HSET", keys.Records, recA.ID, strings.Replace(js, recA.KeyHash, keyset.HashKey(other), 1))
	if _, _, err := keyops.Revoke(rs, recA.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 2*time.Second, "the key of a record re-keyed by hand stayed in force after its revocation", func() bool { return !admits(s, rawA) })
	if admits(s, other) {
		t.Error("the revoked record's new key is admitted")
	}
	if err := s.Refresh(); err != nil {
		t.Fatalf("version check: %v", err)
	}
}

func TestRedisRefusesIDsThatAreNotUTF8(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	k := testkeys.New("bad id", map[string]any{"id": "k\xff1"})
	path := filepath.Join(t.TempDir(), "keys.json")
	rec, _ := json.Marshal(k.Record) // json.Marshal mangles \xff: write it by hand
	data := strings.Replace(string(rec), `k\ufffd1`, "k\xff1", 1)
	if err := os.WriteFile(path, []byte(`{"api_keys": [`+data+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keyops.Import(path, rs, keyops.ImportOptions{Waiting: nil}); err == nil || !strings.Contains(err.Error(), "valid UTF-8") {
		t.Fatalf("import of an id that is not UTF-8: %v", err)
	}
}

func TestRedisURLErrorsHideThePassword(t *testing.T) {
	_, _, err := parseURL("redis://:S3cr%tpass@127.0.0.1:6379/0")
	if err == nil || strings.Contains(err.Error(), "S3cr") {
		t.Fatalf("error %v shows the password", err)
	}
}

// After a wipe, add does not make a key set of one key unless told to:
// every server would put it in force and refuse all other keys.
func TestRedisAddDoesNotCreateUnlessTold(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "wiped:")
	rs.mayCreate = false
	if _, _, err := keyops.Create(rs, keyops.AddOptions{Label: "x"}, time.Now(), nil); err == nil || !strings.Contains(err.Error(), "--create") {
		t.Fatalf("add on an empty prefix without --create: %v", err)
	}
	if n, _ := r.Do("EXISTS", "{wiped:}version").AsInt64(); n != 0 {
		t.Fatal("a refused add made a key set")
	}
	rs.mayCreate = true
	if _, _, err := keyops.Create(rs, keyops.AddOptions{Label: "x"}, time.Now(), nil); err != nil {
		t.Fatalf("add --create: %v", err)
	}
}
