package audit_test

import (
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// crashWriterEnv names, for a child process of TestFileAuditSurvivesKill,
// the key file whose key it changes until it is killed.
const crashWriterEnv = "APIKEY_TEST_AUDIT_CRASH_WRITER"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashWriterEnv); path != "" {
		runCrashWriter(path)
		os.Exit(0)
	}
	flag.Parse()
	os.Exit(m.Run())
}

// runCrashWriter sets the rate limit of the key file's one key to 1, 2,
// 3... until it is killed.
func runCrashWriter(path string) {
	st := stores.By(filestore.Records{Path: path}, audit.Command())
	records, _, err := st.Read()
	if err != nil || len(records) != 1 {
		os.Exit(2)
	}
	for n := int64(1); ; n++ {
		if _, _, err := keyops.SetRateLimits(st, records[0].ID, []keyset.RateLimit{{Requests: n, Window: "1m"}}, nil); err != nil {
			os.Exit(3)
		}
	}
}

// requestsOf is the requests of the one rate limit an entry sets.
func requestsOf(t *testing.T, e audit.Entry) int64 {
	t.Helper()
	data, _ := json.Marshal(e.Changes["rate_limits"])
	var l []keyset.RateLimit
	if err := json.Unmarshal(data, &l); err != nil || len(l) != 1 {
		t.Fatalf("entry %+v", e)
	}
	return l[0].Requests
}

// A writer killed (kill -9) in the middle of its changes: every change
// the key file holds has its entry, in order, and at most one entry (the
// last) is of a change the kill cut short, which the key file does not
// hold.
func TestFileAuditSurvivesKill(t *testing.T) {
	testkeys.Slow(t, "a child process making changes until it is killed")
	path := filepath.Join(t.TempDir(), "keys.json")
	k := testkeys.New("crash", nil)
	testkeys.WriteKeys(t, path, k)
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashWriterEnv+"="+path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logPath := path + filestore.AuditSuffix
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Stat(logPath); err == nil && fi.Size() > 200*300 {
			break // some 200 changes made
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatal("the writer made too few changes in 30 s")
		}
		time.Sleep(time.Millisecond) // polling for the child's progress
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	held := testkeys.FileRecord(t, path, k.ID()).RateLimits
	if len(held) != 1 {
		t.Fatalf("the key file holds %+v", held)
	}
	entries, err := filestore.Records{Path: path}.ReadAudit(audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	r := held[0].Requests
	for i := int64(0); i < r; i++ {
		if int(i) >= len(entries) || requestsOf(t, entries[i]) != i+1 {
			t.Fatalf("change %d of %d is in the key file without its entry in order", i+1, r)
		}
	}
	switch extra := int64(len(entries)) - r; {
	case extra == 0:
	case extra == 1 && requestsOf(t, entries[r]) == r+1:
		t.Logf("the kill cut a change short after its entry: entry %d is there, the key file holds change %d", r+1, r)
	default:
		t.Fatalf("%d entries for %d changes", len(entries), r)
	}
	t.Logf("killed after %d changes; %d entries", r, len(entries))
}
