package file

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is a settable clock for the store's writer.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestStore loads the key file at path into a store whose writer runs on
// a fake clock and is driven by hand (no background goroutine).
func newTestStore(t *testing.T, path string, usageInterval time.Duration) (*keyFile, *fakeClock, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	s := newKeyFile(path, zap.New(core))
	clock := &fakeClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	s.now = clock.now
	if err := s.load(); err != nil {
		t.Fatal(err)
	}
	setUsageInterval(s, usageInterval)
	return s, clock, logs
}

// use records a use of raw at the clock's time, as the handler does.
func use(t *testing.T, s *keyFile, clock *fakeClock, raw string) {
	t.Helper()
	k, sum := s.KeySet().Lookup(raw)
	if k == nil {
		t.Fatalf("key %s… not in the key set", raw[:11])
	}
	s.MarkUsed(k, sum, clock.now().UnixNano())
}

func TestUsageThrottle(t *testing.T) {
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	path := testkeys.WriteKeys(t, "", a, b)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)
	idA, idB := a.Record["id"].(string), b.Record["id"].(string)
	t0 := clock.now()

	// First use is written at the next flush.
	use(t, s, clock, a.Raw)
	s.writeUsage(false)
	if got, want := testkeys.LastUsed(t, path, idA), keyset.FormatTimestamp(t0); got != want {
		t.Fatalf("after first use: last_used_at = %q, want %q", got, want)
	}
	if got := testkeys.LastUsed(t, path, idB); got != "" {
		t.Fatalf("unused key b got last_used_at %q", got)
	}

	// A second use within the interval is not written...
	clock.advance(time.Minute)
	use(t, s, clock, a.Raw)
	s.writeUsage(false)
	if got := testkeys.LastUsed(t, path, idA); got != keyset.FormatTimestamp(t0) {
		t.Fatalf("second use within the interval was written: %q", got)
	}

	// ...but another key is independent: its first use is written now.
	use(t, s, clock, b.Raw)
	s.writeUsage(false)
	if got := testkeys.LastUsed(t, path, idB); got != keyset.FormatTimestamp(t0.Add(time.Minute)) {
		t.Fatalf("key b: last_used_at = %q", got)
	}
	if got := testkeys.LastUsed(t, path, idA); got != keyset.FormatTimestamp(t0) {
		t.Fatalf("key a written early, with key b: %q", got)
	}

	// Once the interval has passed, a's latest use is written.
	clock.advance(15 * time.Minute)
	s.writeUsage(false)
	if got := testkeys.LastUsed(t, path, idA); got != keyset.FormatTimestamp(t0.Add(time.Minute)) {
		t.Fatalf("after the interval: last_used_at = %q, want the second use", got)
	}
	if w := s.writes.Load(); w != 3 {
		t.Fatalf("%d writes, want 3", w)
	}

	// Nothing new: no write.
	clock.advance(time.Hour)
	s.writeUsage(false)
	if w := s.writes.Load(); w != 3 {
		t.Fatalf("%d writes after an idle flush, want 3", w)
	}
}

func TestUsageConcurrentUsesMakeOneWrite(t *testing.T) {
	k := testkeys.New("busy", nil)
	path := testkeys.WriteKeys(t, "", k)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)

	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				use(t, s, clock, k.Raw)
			}
		}()
	}
	// The writer runs while the requests go on.
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			default:
				s.writeUsage(false)
			}
		}
	}()
	wg.Wait()
	close(done)
	<-stopped // one writer at a time, as the store has
	s.writeUsage(false)
	if w := s.writes.Load(); w != 1 {
		t.Fatalf("16 000 uses of one key within the interval made %d writes, want 1", w)
	}
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got != keyset.FormatTimestamp(clock.now()) {
		t.Fatalf("last_used_at = %q", got)
	}
}

func TestUsageWriteMergesWithDisk(t *testing.T) {
	kept, edited, removed := testkeys.New("kept", nil), testkeys.New("edited", nil), testkeys.New("removed", nil)
	path := filepath.Join(t.TempDir(), "keys.json")
	// A file as another program might keep it: other top-level members
	// around the list, unknown members inside records.
	kept.Record["owner"] = map[string]any{"team": "payments", "tags": []any{"x", 1.5}}
	writeRaw := func(recs ...map[string]any) {
		doc := map[string]any{"app_name": "soulsync", "api_keys": recs, "zz_settings": map[string]any{"debug": true}}
		data, _ := json.MarshalIndent(doc, "", "    ")
		if err := os.WriteFile(path, data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	writeRaw(kept.Record, edited.Record, removed.Record)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)

	for _, k := range []testkeys.Key{kept, edited, removed} {
		use(t, s, clock, k.Raw)
	}

	// Between the uses and the write, someone edits the file: a label
	// changed, a key removed, a key added.
	added := testkeys.New("added", map[string]any{"scopes": []any{"read"}})
	edited.Record["label"] = "edited by hand"
	writeRaw(kept.Record, edited.Record, added.Record)

	s.writeUsage(false)

	doc := testkeys.ReadDoc(t, path)
	if len(doc.Records) != 3 {
		t.Fatalf("file holds %d records, want 3 (kept, edited, added):\n%s", len(doc.Records), testkeys.ReadFile(t, path))
	}
	for _, r := range doc.Records {
		if r.ID == removed.Record["id"] {
			t.Fatal("the removed key was brought back by the usage write")
		}
	}
	if got := testkeys.FileRecord(t, path, edited.Record["id"].(string)); got.Label != "edited by hand" {
		t.Fatalf("edited label lost: %v", got.Label)
	}
	if got := testkeys.LastUsed(t, path, edited.Record["id"].(string)); got != keyset.FormatTimestamp(clock.now()) {
		t.Fatalf("edited key's use not written: %q", got)
	}
	if got := testkeys.FileRecord(t, path, added.Record["id"].(string)); got.Label != "added" || got.LastUsedAt != nil || len(got.Scopes) == 0 || got.Scopes[0] != "read" {
		t.Fatalf("added key changed by the usage write: %s", testkeys.MustJSON(t, testkeys.Members(got)))
	}
	keptRec := testkeys.Members(testkeys.FileRecord(t, path, kept.Record["id"].(string)))
	var owner map[string]any
	if err := json.Unmarshal(keptRec.Get("owner"), &owner); err != nil || owner["team"] != "payments" {
		t.Fatalf("unknown record member lost: %s", testkeys.MustJSON(t, keptRec))
	}
	if top := testkeys.Object(doc.TopMembers()); top.GetString("app_name") != "soulsync" || top.Get("zz_settings") == nil || string(top.Get("zz_settings")) == "null" {
		t.Fatalf("top-level members lost: %s", testkeys.MustJSON(t, top))
	}
	// Order of top-level members and of record members is kept.
	data, _ := os.ReadFile(path)
	text := string(data)
	if !(strings.Index(text, `"api_keys"`) < strings.Index(text, `"app_name"`) && strings.Index(text, `"app_name"`) < strings.Index(text, `"zz_settings"`)) {
		// json.MarshalIndent above sorted them: api_keys, app_name, zz_settings.
		t.Fatalf("top-level member order changed:\n%s", text)
	}
	if i, j := strings.Index(text, `"created_at"`), strings.Index(text, `"owner"`); i > j {
		t.Fatalf("record member order changed:\n%s", text)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("file mode changed to %v", fi.Mode().Perm())
	}
}

func TestUsageWriteKeepsNewerTimeOnDisk(t *testing.T) {
	later := "2030-01-01T00:00:00.000000+00:00"
	k := testkeys.New("k", map[string]any{"last_used_at": later})
	path := testkeys.WriteKeys(t, "", k)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)
	use(t, s, clock, k.Raw)
	s.writeUsage(false)
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got != later {
		t.Fatalf("a newer last_used_at on disk was moved back to %q", got)
	}
}

func TestUsageWriteSkipsRotatedKey(t *testing.T) {
	// Same id, new hash: the key was replaced; the old key's use is not
	// the new key's.
	k := testkeys.New("k", nil)
	path := testkeys.WriteKeys(t, "", k)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)
	use(t, s, clock, k.Raw)
	rotated := testkeys.New("k", map[string]any{"id": k.Record["id"]})
	testkeys.WriteKeys(t, path, rotated)
	s.writeUsage(false)
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got != "" {
		t.Fatalf("the old key's use was written on the new key: %q", got)
	}
}

func TestUsageUnwritableIsLoggedOnceAndResumes(t *testing.T) {
	k := testkeys.New("k", nil)
	path := testkeys.WriteKeys(t, "", k)
	s, clock, logs := newTestStore(t, path, time.Minute)

	// Make writing impossible: the lock file's place is taken by a folder
	// (permissions would not stop root, which CI runs as).
	lockPath := path + ".lock"
	if err := os.Mkdir(lockPath, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		use(t, s, clock, k.Raw)
		s.writeUsage(true)
		clock.advance(time.Minute)
	}
	if n := logs.FilterMessageSnippet("cannot write last-used times").Len(); n != 1 {
		t.Fatalf("write failure logged %d times over 5 flushes, want once", n)
	}
	if lk, _ := s.KeySet().Lookup(k.Raw); lk == nil {
		t.Fatal("authentication stopped working when the file could not be written")
	}
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got != "" {
		t.Fatalf("file written despite the failure: %q", got)
	}

	if err := os.Remove(lockPath); err != nil {
		t.Fatal(err)
	}
	s.writeUsage(false)
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got == "" {
		t.Fatal("writing did not resume, or the pending use was lost")
	}
	if n := logs.FilterMessageSnippet("works again").Len(); n != 1 {
		t.Fatalf("recovery logged %d times, want once", n)
	}
}

func TestReloadKeepsLastGoodKeysAndLogsOnce(t *testing.T) {
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	path := testkeys.WriteKeys(t, "", a)
	s, _, logs := newTestStore(t, path, -1)
	admits := func(raw string) bool { k, _ := s.KeySet().Lookup(raw); return k != nil && !k.Revoked() }

	// A good change is picked up.
	testkeys.WriteKeys(t, path, a, b)
	if err := s.load(); err != nil || !admits(b.Raw) {
		t.Fatalf("added key not admitted after reload (err %v)", err)
	}

	// Broken JSON: the keys in force stay, one error is logged however
	// often the file is checked.
	if err := os.WriteFile(path, []byte(`{"api_keys": [ {"id": "x", `), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		s.check()
	}
	if !admits(a.Raw) || !admits(b.Raw) {
		t.Fatal("a broken file emptied the key set")
	}
	entries := logs.FilterMessageSnippet("key file is broken").All()
	if len(entries) != 1 {
		t.Fatalf("broken file logged %d times, want once", len(entries))
	}
	if msg := entries[0].ContextMap()["error"].(string); !strings.Contains(msg, path) || !strings.Contains(msg, "line 1") {
		t.Fatalf("error does not name the file and the position: %q", msg)
	}

	// A validation failure is a new broken version: logged once more.
	bad := testkeys.New("bad", map[string]any{"key_hash": "abc"})
	testkeys.WriteKeys(t, path, a, bad)
	s.check()
	s.check()
	if n := logs.FilterMessageSnippet("key file is broken").Len(); n != 2 {
		t.Fatalf("%d broken-file errors, want 2", n)
	}

	// The file missing: also kept, also logged once.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s.check()
	s.check()
	if !admits(b.Raw) {
		t.Fatal("a missing file emptied the key set")
	}
	if n := logs.FilterMessageSnippet("cannot be read").Len(); n != 1 {
		t.Fatalf("missing file logged %d times, want once", n)
	}

	// Repaired: the new version is in force, a removed key is refused.
	testkeys.WriteKeys(t, path, b)
	if err := s.load(); err != nil {
		t.Fatal(err)
	}
	if admits(a.Raw) || !admits(b.Raw) {
		t.Fatal("the repaired file is not in force")
	}
}

func TestReloadCarriesUsageAcrossKeySets(t *testing.T) {
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	path := testkeys.WriteKeys(t, "", a)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)
	use(t, s, clock, a.Raw)
	s.writeUsage(false)
	testkeys.WriteKeys(t, path, a, b)
	if err := s.load(); err != nil {
		t.Fatal(err)
	}
	// The throttle state of a survived the reload: a use within the
	// interval is still not written.
	clock.advance(time.Minute)
	use(t, s, clock, a.Raw)
	s.writeUsage(false)
	if w := s.writes.Load(); w != 1 {
		t.Fatalf("throttle state lost on reload: %d writes, want 1", w)
	}
}

func TestStoreIsSharedPerFileAndFlushedOnRelease(t *testing.T) {
	k := testkeys.New("k", nil)
	path := testkeys.WriteKeys(t, "", k)
	l1, err := acquireStore(path, path, storecore.Settings{Usage: storecore.Interval{Every: time.Hour}, Reload: storecore.Interval{Every: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	l2, err := acquireStore(path, path, storecore.Settings{Usage: storecore.Interval{Every: 2 * time.Hour}, Reload: storecore.Interval{Off: true}})
	if err != nil {
		t.Fatal(err)
	}
	s := l1.store
	if l2.store != s {
		t.Fatal("two handlers of one key file got two stores (two writers)")
	}
	// Shared settings: the shortest interval that is on.
	if got, want := *s.leases.Current(), (storecore.Settings{Usage: storecore.Interval{Every: time.Hour}, Reload: storecore.Interval{Every: time.Second}}); got != want {
		t.Fatalf("effective settings %+v; want %+v", got, want)
	}
	key, sum := s.KeySet().Lookup(k.Raw)
	s.MarkUsed(key, sum, time.Now().UnixNano())

	// A config reload releases the old handler: its pending use is
	// written at once, though the interval is an hour, and its settings
	// go with it.
	l1.Release()
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got == "" {
		t.Fatal("pending use not flushed on release")
	}
	if got, want := *s.leases.Current(), (storecore.Settings{Usage: storecore.Interval{Every: 2 * time.Hour}, Reload: storecore.Interval{Off: true}}); got != want {
		t.Fatalf("after release, settings %+v; want %+v", got, want)
	}
	select {
	case <-s.life.Done():
		t.Fatal("store stopped while a handler still uses it")
	default:
	}
	later := time.Now().Add(2 * time.Second)
	s.MarkUsed(key, sum, later.UnixNano())
	l2.Release()
	select {
	case <-s.life.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("store not stopped after its last handler went")
	}
	if got := testkeys.LastUsed(t, path, k.Record["id"].(string)); got != keyset.FormatTimestamp(later) {
		t.Fatalf("pending use not flushed on stop: %q", got)
	}
}

// A key file replaced by a program that does not take the lock, while a
// usage write is under way, is not undone by that write.
func TestUsageWriteDoesNotUndoReplacement(t *testing.T) {
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	path := testkeys.WriteKeys(t, "", a, b)
	s, clock, _ := newTestStore(t, path, 15*time.Minute)
	use(t, s, clock, a.Raw)

	// Between the writer's read and its rename, b is revoked by an mv.
	replaced := false
	staged := filepath.Join(filepath.Dir(path), "staged.json")
	w, err := testkeys.Update(path, func(doc *keyfile.Doc) error {
		if !replaced {
			replaced = true
			b.Record["revoked_at"] = "2026-11-25T20:00:00+00:00"
			testkeys.WriteKeys(t, staged, a, b)
			if err := os.Rename(staged, path); err != nil {
				t.Fatal(err)
			}
		}
		return applyUsage(doc, map[keyset.UsageKey]time.Time{{ID: a.Record["id"].(string), Hash: a.Record["key_hash"].(string)}: clock.now()})
	})
	if err != nil {
		t.Fatal(err)
	}
	if w.Written == nil {
		t.Fatal("nothing written")
	}
	if testkeys.FileRecord(t, path, b.Record["id"].(string)).RevokedAt == nil {
		t.Fatal("the usage write undid a revocation made while it ran")
	}
	if testkeys.LastUsed(t, path, a.Record["id"].(string)) == "" {
		t.Fatal("the usage was not written on the new version")
	}
	// And the watcher picks the new version up: it is not taken for the
	// writer's own.
	if err := s.load(); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.KeySet().Lookup(b.Raw); k == nil || !k.Revoked() {
		t.Fatal("the revocation is not in force")
	}
}

// A key file reached through a symbolic link that is later pointed at a
// new folder (a Kubernetes ConfigMap, an `ln -sfn` deploy) is followed.
func TestReloadFollowsASwappedSymlink(t *testing.T) {
	dir := t.TempDir()
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	for name, key := range map[string]testkeys.Key{"v1": a, "v2": b} {
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		testkeys.WriteKeys(t, filepath.Join(dir, name, "keys.json"), key)
	}
	if err := os.Symlink("v1", filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	path, poolKey, err := keyFilePath(filepath.Join(dir, "current", "keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, "current", "keys.json") || poolKey != filepath.Join(dir, "v1", "keys.json") {
		t.Fatalf("keyFilePath = %q, %q", path, poolKey)
	}
	s, _, _ := newTestStore(t, path, -1)

	// Swap the link atomically, then remove the old version.
	if err := os.Symlink("v2", filepath.Join(dir, "next")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "next"), filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "v1")); err != nil {
		t.Fatal(err)
	}
	if err := s.load(); err != nil {
		t.Fatal(err)
	}
	if k, _ := s.KeySet().Lookup(b.Raw); k == nil {
		t.Fatal("the new version behind the link is not in force")
	}
	if k, _ := s.KeySet().Lookup(a.Raw); k != nil {
		t.Fatal("the old version is still in force")
	}
}

func TestKeyFilePathPlaceholders(t *testing.T) {
	t.Setenv("APIKEY_TEST_KEYS_DIR", "/srv/keys")
	if path, _, err := keyFilePath("{env.APIKEY_TEST_KEYS_DIR}/keys.json"); err != nil || path != "/srv/keys/keys.json" {
		t.Fatalf("keyFilePath = %q, %v", path, err)
	}
	if _, _, err := keyFilePath("{env.APIKEY_TEST_SURELY_UNSET}"); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("an unset variable as the whole path gave %v, want an error saying it is empty", err)
	}
}

// A broken edit of the key file is logged once, whether the watcher or the
// usage writer meets it first: the watcher reports it, the writer keeps its
// uses pending and says nothing. With watching off, the writer reports it,
// once.
func TestBrokenKeyFileEditLogsOneError(t *testing.T) {
	for _, order := range []string{"writer first", "watcher first", "watching off"} {
		t.Run(order, func(t *testing.T) {
			k := testkeys.New("k", nil)
			path := testkeys.WriteKeys(t, "", k)
			s, clock, logs := newTestStore(t, path, time.Minute)
			if order != "watching off" {
				setLease(s.leases, storecore.Settings{Usage: storecore.Interval{Every: time.Minute}, Reload: storecore.Interval{Every: time.Second}})
			}
			use(t, s, clock, k.Raw)
			if err := os.WriteFile(path, []byte(`{"api_keys": [`), 0o600); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				switch order {
				case "writer first":
					s.writeUsage(true)
					s.check()
				case "watcher first":
					s.check()
					s.writeUsage(true)
				case "watching off":
					s.writeUsage(true)
				}
			}
			errs := logs.FilterLevelExact(zapcore.ErrorLevel).All()
			if len(errs) != 1 {
				var msgs []string
				for _, e := range errs {
					msgs = append(msgs, e.Message)
				}
				t.Fatalf("%d errors logged for one broken edit, want 1: %q", len(errs), msgs)
			}
			// Repaired: the pending use is written, and nothing claims
			// that writing works again (nothing said it did not).
			testkeys.WriteKeys(t, path, k)
			s.check()
			s.writeUsage(true)
			if testkeys.LastUsed(t, path, k.Record["id"].(string)) == "" {
				t.Error("the use made while the file was broken was not written once it was repaired")
			}
			if order != "watching off" && logs.FilterMessageSnippet("works again").Len() != 0 {
				t.Error("the writer said writing works again, though it never said it did not")
			}
		})
	}
}
