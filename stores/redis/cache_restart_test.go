package redis

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"go.uber.org/zap"
)

// waitForSnapshot waits until the cache file holds a snapshot of the key
// set at its version now, and returns it.
func waitForSnapshot(t *testing.T, r *testredis.Server, prefix, cache string) *keyset.Snapshot {
	t.Helper()
	k, _ := keyspace.New(prefix)
	want, err := keyspace.ReadVersion(context.Background(), r.Client(), k)
	if err != nil {
		t.Fatal(err)
	}
	var snap *keyset.Snapshot
	testredis.Eventually(t, 5*time.Second, "the cache file does not hold the key set as it is now", func() bool {
		snap, err = keyfile.ReadSnapshot(cache)
		return err == nil && snap.Version == want
	})
	return snap
}

// A server that restarts with a cache file starts from it and catches up
// from the key set's log before its config load ends: a key revoked while
// it was down is refused, one added is admitted, and the key set is not
// read whole. The cache file names where the key set stood.
func TestRedisRestartCatchesUpFromTheLog(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	rawA, recA := teststores.AddKey(t, rs, "revoked while down")
	rawK, _ := teststores.AddKey(t, rs, "kept")
	cache := filepath.Join(t.TempDir(), "cache")
	s, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	snap := waitForSnapshot(t, r, "", cache)
	k, _ := keyspace.New("")
	head, err := keyspace.ReadHead(context.Background(), r.Client(), k)
	if err != nil {
		t.Fatal(err)
	}
	if snap.LogID != head.LogID || snap.Of != s.Name() || snap.KeySet.Len() != 2 {
		t.Errorf("the cache file names log entry %q of %s with %d keys; want %q of %s with 2", snap.LogID, snap.Of, snap.KeySet.Len(), head.LogID, s.Name())
	}
	if fi, err := os.Stat(cache); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("the cache file's mode is %v, want 0600", fi.Mode())
	}
	_ = s.Destruct()

	if _, _, err := keyops.Revoke(rs, recA.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	rawB, _ := teststores.AddKey(t, rs, "added while down")

	s2, logs, err := openLoggedRedisStore(t, r, "", cache)
	if err != nil {
		t.Fatal(err)
	}
	// In force as the config load ends: no window for the revoked key.
	if admits(s2, rawA) {
		t.Error("the key revoked while the server was down is admitted after its start")
	}
	if !admits(s2, rawB) || !admits(s2, rawK) {
		t.Error("a key added while the server was down, or one kept, is refused after its start")
	}
	if n := s2.Syncs(); n != 0 {
		t.Errorf("the restarted server read the key set whole %d times; want none (the log covers the gap)", n)
	}
	if n := logs.FilterMessageSnippet("started from the cache file").FilterField(zap.Int("changes", 2)).Len(); n != 1 {
		t.Errorf("the start from the cache file with 2 changes was logged %d times, want once: %v", n, logs.All())
	}
	// The follower goes on from there, and the cache file follows.
	rawC, _ := teststores.AddKey(t, rs, "added after")
	testredis.Eventually(t, 5*time.Second, "a key added after the restart is not in force", func() bool { return admits(s2, rawC) })
	waitForSnapshot(t, r, "", cache)
	if err := s2.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n := s2.Syncs(); n != 0 {
		t.Errorf("full reads after the catch-up: %d, want none", n)
	}
}

// A server that starts from its cache file while Redis is down serves the
// snapshot, the last good key set; when Redis is back it catches up from
// the log, without reading the key set whole.
func TestRedisStartWithRedisDownCatchesUpFromTheLog(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	rawA, recA := teststores.AddKey(t, rs, "revoked while down")
	cache := filepath.Join(t.TempDir(), "cache")
	s, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitForSnapshot(t, r, "", cache)
	_ = s.Destruct()
	if _, _, err := keyops.Revoke(rs, recA.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	rawB, _ := teststores.AddKey(t, rs, "added while down")
	r.Do("SAVE") // kept in r's folder: the next start reads it
	r.Kill()

	s2, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatalf("start with Redis down and a cache file: %v", err)
	}
	if !admits(s2, rawA) {
		t.Fatal("the snapshot is not in force while Redis is down")
	}
	r.Restart()
	testredis.Eventually(t, 10*time.Second, "the server did not catch up when Redis came back", func() bool { return !admits(s2, rawA) && admits(s2, rawB) })
	if n := s2.Syncs(); n != 0 {
		t.Errorf("the server read the key set whole %d times; want none (the log covers the gap)", n)
	}
}

// A restart whose cache file the log cannot bring up to date reads the key
// set whole, and is as right as a first start: the log trimmed past the
// snapshot, the version gone back (Redis restored from an older state),
// another history at the same version, more changes than a catch-up reads.
func TestRedisRestartReadsWholeWhenTheLogCannotCover(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis restarts")
	r := testredis.Start(t)
	for _, tc := range []struct {
		name, prefix string
		change       func(t *testing.T, rs Records, k keyspace.Layout, revoke keyset.Record, kept []testkeys.Key) (added string)
		says         string
	}{
		{"log trimmed", "trim:", func(t *testing.T, rs Records, k keyspace.Layout, revoke keyset.Record, _ []testkeys.Key) string {
			if _, _, err := keyops.Revoke(rs, revoke.ID, time.Now(), nil); err != nil {
				t.Fatal(err)
			}
			r.Do("XTRIM", k.Log, "MAXLEN", "0")
			raw, _ := teststores.AddKey(t, rs, "added")
			return raw
		}, "no longer reaches back"},
		{"version gone back", "back:", func(t *testing.T, rs Records, k keyspace.Layout, _ keyset.Record, kept []testkeys.Key) string {
			// As restored from a state before the revoked key was
			// made: a key set of version 1.
			r.Do("DEL", k.Records, k.Version, k.Log)
			added := testkeys.New("added", nil)
			if _, err := keyops.Import(testkeys.WriteKeys(t, "", append(kept, added)...), rs, keyops.ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			return added.Raw
		}, "older than the cache file"},
		{"another history", "other:", func(t *testing.T, rs Records, k keyspace.Layout, _ keyset.Record, kept []testkeys.Key) string {
			v, _ := r.Do("GET", k.Version).AsInt64()
			r.Do("DEL", k.Records, k.Version, k.Log)
			added := testkeys.New("added", nil)
			if _, err := keyops.Import(testkeys.WriteKeys(t, "", append(kept, added)...), rs, keyops.ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			for now := int64(1); now < v; now++ { // the same version, by other changes
				teststores.AddKey(t, rs, "filler")
			}
			return added.Raw
		}, "does not end with the cache file's last change"},
		{"many changes", "many:", func(t *testing.T, rs Records, _ keyspace.Layout, revoke keyset.Record, _ []testkeys.Key) string {
			if _, _, err := keyops.Revoke(rs, revoke.ID, time.Now(), nil); err != nil {
				t.Fatal(err)
			}
			many := make([]testkeys.Key, 1001)
			for i := range many {
				many[i] = testkeys.New("bulk", nil)
			}
			if _, err := keyops.Import(testkeys.WriteKeys(t, "", many...), rs, keyops.ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			return many[1000].Raw
		}, "more changes since"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := records(t, r, tc.prefix)
			k, _ := keyspace.New(tc.prefix)
			kept := []testkeys.Key{testkeys.New("kept", nil), testkeys.New("kept too", nil)}
			if _, err := keyops.Import(testkeys.WriteKeys(t, "", kept...), rs, keyops.ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			rawA, recA := teststores.AddKey(t, rs, "revoked while down")
			teststores.AddKey(t, rs, "one more change")
			cache := filepath.Join(t.TempDir(), "cache")
			s, err := openRedisStore(t, r, tc.prefix, cache, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			waitForSnapshot(t, r, tc.prefix, cache)
			_ = s.Destruct()

			rawB := tc.change(t, rs, k, recA, kept)

			s2, logs, err := openLoggedRedisStore(t, r, tc.prefix, cache)
			if err != nil {
				t.Fatal(err)
			}
			if admits(s2, rawA) {
				t.Error("the key revoked while the server was down is admitted after its start")
			}
			if !admits(s2, rawB) || !admits(s2, kept[0].Raw) {
				t.Error("a key added while the server was down, or one kept, is refused after its start")
			}
			if n := s2.Syncs(); n != 1 {
				t.Errorf("full reads at the start: %d, want 1", n)
			}
			if n := logs.FilterMessageSnippet(tc.says).Len(); n != 1 {
				t.Errorf("%q logged %d times, want once: %v", tc.says, n, logs.All())
			}
			// The cache file is written anew, where the key set stands.
			waitForSnapshot(t, r, tc.prefix, cache)
		})
	}
}

// A cache file that cannot be used (cut short, changed, a snapshot of
// another key set) is refused naming the file and the problem: with Redis
// up, the key set is read whole and the cache file written anew; with
// Redis down, the start fails, saying why the cache file could not serve.
func TestRedisDamagedCacheFileIsRefused(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis restarts")
	r := testredis.Start(t)
	rs := records(t, r, "")
	raw, _ := teststores.AddKey(t, rs, "a")
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	s, err := openRedisStore(t, r, "", good, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitForSnapshot(t, r, "", good)
	_ = s.Destruct()
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	other := records(t, r, "other:")
	teststores.AddKey(t, other, "b")
	otherCache := filepath.Join(dir, "other")
	so, err := openRedisStore(t, r, "other:", otherCache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitForSnapshot(t, r, "other:", otherCache)
	_ = so.Destruct()
	otherData, err := os.ReadFile(otherCache)
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Clone(data)
	changed[len(changed)-1] ^= 0x10 // its checksum

	cases := []struct {
		name string
		data []byte
		says string
	}{
		{"cut short", data[:len(data)*2/3], "cut short"},
		{"a byte changed", changed, "damaged"},
		{"another key set's", otherData, "not of this store's key set"},
	}
	for _, tc := range cases {
		t.Run(tc.name+", Redis up", func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "cache")
			if err := os.WriteFile(cache, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, logs, err := openLoggedRedisStore(t, r, "", cache)
			if err != nil {
				t.Fatal(err)
			}
			if !admits(s, raw) || s.Syncs() != 1 {
				t.Errorf("not read whole from Redis: %d full reads", s.Syncs())
			}
			warned := logs.FilterMessageSnippet("cache file cannot be used").All()
			if len(warned) != 1 || !strings.Contains(warned[0].ContextMap()["error"].(string), tc.says) || !strings.Contains(warned[0].ContextMap()["error"].(string), cache) {
				t.Errorf("warnings %v, want one naming %s and %q", warned, cache, tc.says)
			}
			waitForSnapshot(t, r, "", cache)
		})
	}
	r.Kill()
	for _, tc := range cases {
		t.Run(tc.name+", Redis down", func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "cache")
			if err := os.WriteFile(cache, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := openRedisStore(t, r, "", cache, time.Hour)
			if err == nil || !strings.Contains(err.Error(), "cache file") || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), cache) {
				t.Errorf("start: %v, want an error naming the cache file and %q", err, tc.says)
			}
		})
	}
}

// The catch-up at start waits for Redis at most live.CatchUpWait: a Redis that
// does not answer leaves the snapshot in force, and the start goes on.
func TestRedisCatchUpIsBounded(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	teststores.AddKey(t, rs, "a")
	cache := filepath.Join(t.TempDir(), "cache")
	s, err := openRedisStore(t, r, "", cache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	waitForSnapshot(t, r, "", cache)
	_ = s.Destruct()
	snap, err := keyfile.ReadSnapshot(cache)
	if err != nil {
		t.Fatal(err)
	}

	opt, shown, _ := parseURL(r.URL)
	k, _ := keyspace.New("")
	s2 := newLiveSet(opt, shown, k, cache)
	s2.Logger = zap.NewNop()
	defer s2.ReleaseMetrics()
	c := r.Client()
	if err := c.Do(context.Background(), c.B().Ping().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	// Longer than the wait; the test's end kills Redis, paused or not.
	r.Do("CLIENT", "PAUSE", strconv.Itoa(int((live.CatchUpWait + 2*time.Second).Milliseconds())), "ALL")
	start := time.Now()
	current, err := s2.StartFrom(c, snap)
	took := time.Since(start)
	r.Kill() // not to wait for the pause to end
	if current || err == nil || !strings.Contains(err.Error(), "did not") {
		t.Errorf("catch-up from a Redis that does not answer: %v, %v; want an error saying it did not answer", current, err)
	}
	if took > live.CatchUpWait+500*time.Millisecond {
		t.Errorf("the catch-up took %s, more than its %s", took, live.CatchUpWait)
	}
}
