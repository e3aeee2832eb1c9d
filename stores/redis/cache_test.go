package redis

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
)

// A cache file names the key set it is a snapshot of; a store that starts
// without Redis takes only its own key set's, never another's (another
// prefix, another Redis), and then fails as if it had none, naming both.
func TestRedisCacheFileOfAnotherKeySet(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "one:")
	raw, _ := teststores.AddKey(t, rs, "a")
	cache := filepath.Join(t.TempDir(), "cache.json")
	s, err := openRedisStore(t, r, "one:", cache, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 5*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })
	ours := s.Name()
	_ = s.Destruct()
	r.Kill()

	other := &testredis.Server{T: t, Port: testredis.FreePort(t)}
	other.URL = strings.Replace(r.URL, ":"+strconv.Itoa(r.Port)+"/", ":"+strconv.Itoa(other.Port)+"/", 1)
	for _, tc := range []struct {
		name   string
		r      *testredis.Server
		prefix string
	}{{"another prefix", r, "two:"}, {"another Redis", other, "one:"}} {
		_, err := openRedisStore(t, tc.r, tc.prefix, cache, time.Hour)
		if err == nil {
			t.Fatalf("%s: a store started from the cache file of %s", tc.name, ours)
		}
		for _, want := range []string{ours, "redis:" + tc.r.URL + "#" + tc.prefix, "cache file", "connect"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, want)
			}
		}
	}

	// Its own key set's: taken.
	s2, err := openRedisStore(t, r, "one:", cache, time.Hour)
	if err != nil || !admits(s2, raw) {
		t.Fatalf("the store's own cache file: %v", err)
	}
	// A key file that names no key set (an export put there by hand):
	// taken.
	plain := testkeys.WriteKeys(t, "", testkeys.New("plain", nil))
	if _, err := openRedisStore(t, r, "two:", plain, time.Hour); err != nil {
		t.Fatalf("a key file that names no key set as cache file: %v", err)
	}
}

// A key set restored from a cache file keeps its records' created_at (the
// same instant, written as the commands write times); what the cache file
// does not hold (last_used_at, rotated_from, members this plugin does not
// know) is lost.
func TestRedisRestoreFromCacheFileKeepsCreatedAt(t *testing.T) {
	r := testredis.Start(t)
	rs := records(t, r, "")
	_, added := teststores.AddKey(t, rs, "added")
	spelled := testkeys.New("spelled", map[string]any{"created_at": "2026-11-25T21:14:31+01:00"})
	none := testkeys.New("none", map[string]any{"created_at": nil})
	if _, err := keyops.Import(testkeys.WriteKeys(t, "", spelled, none), rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(t.TempDir(), "cache.json")
	if _, err := openRedisStore(t, r, "", cache, time.Hour); err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 5*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })

	r.Do("FLUSHALL")
	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	records, _, err := rs.Read()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		added.ID:                      *added.CreatedAt,
		spelled.Record["id"].(string): "2026-11-25T20:14:31.000000+00:00",
		none.Record["id"].(string):    "",
	}
	for _, rec := range records {
		got := ""
		if rec.CreatedAt != nil {
			got = *rec.CreatedAt
		}
		if got != want[rec.ID] {
			t.Errorf("record %s (%s): created_at %q after the restore, want %q", rec.ID, rec.Label, got, want[rec.ID])
		}
	}
	if len(records) != 3 {
		t.Errorf("%d records restored, want 3", len(records))
	}
}
