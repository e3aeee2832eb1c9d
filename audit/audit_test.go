package audit_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	_ "github.com/caddy-apikey/caddy-apikey/cli" // registers caddy apikey
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// noSecrets fails t if log holds any of the raw keys, their secret parts
// or their SHA-256 hashes (in either case).
func noSecrets(t *testing.T, log string, raws ...string) {
	t.Helper()
	low := strings.ToLower(log)
	for _, raw := range raws {
		for _, s := range []string{raw, testkeys.SecretPart(raw), keyset.HashKey(raw)} {
			if strings.Contains(log, s) || strings.Contains(low, strings.ToLower(s)) {
				t.Errorf("the audit log holds a key or its hash (%s)", testkeys.Truncate(s))
			}
		}
	}
}

func readAll(t *testing.T, st stores.RecordStore, f audit.Filter) []audit.Entry {
	t.Helper()
	entries, err := st.(stores.AuditReader).ReadAudit(f)
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// Every operation of keyops on a key file leaves one entry in
// <keyfile>.audit.jsonl, with who and what, and never a key or a hash.
func TestFileAuditEveryAction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	rs := filestore.Records{Path: path, MayCreate: true}
	who := audit.Who{Via: audit.ViaCommand, User: "alice", Host: "build-1"}
	st := stores.By(rs, who)
	now := time.Now()

	raw, rec, err := keyops.Create(st, keyops.AddOptions{Label: "CI deploy", Scopes: []string{"read"}, Expires: "90d"}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	limits := []keyset.RateLimit{{Requests: 100, Window: "1m"}}
	if _, changed, err := keyops.SetRateLimits(st, rec.ID, limits, nil); err != nil || !changed {
		t.Fatalf("limits: %v %v", changed, err)
	}
	// No change, no entry.
	if _, changed, err := keyops.SetRateLimits(st, rec.ID, limits, nil); err != nil || changed {
		t.Fatalf("limits again: %v %v", changed, err)
	}
	rot, err := keyops.Rotate(st, keyops.RotateOptions{Ref: rec.KeyPrefix, Grace: "1h"}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := keyops.Revoke(st, rot.Added.ID, now, nil); err != nil {
		t.Fatal(err)
	}
	// Revoking again changes nothing: no entry.
	if _, already, err := keyops.Revoke(st, rot.Added.ID, now, nil); err != nil || already == "" {
		t.Fatalf("revoke again: %q %v", already, err)
	}

	logPath := path + filestore.AuditSuffix
	fi, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	noSecrets(t, string(data), raw, rot.Raw)
	if lines := strings.Count(string(data), "\n"); lines != 4 {
		t.Fatalf("%d lines in the audit log, want 4:\n%s", lines, data)
	}

	entries := readAll(t, rs, audit.Filter{})
	if len(entries) != 4 {
		t.Fatalf("%d entries, want 4", len(entries))
	}
	want := []struct{ action, id, prefix string }{
		{audit.Create, rec.ID, rec.KeyPrefix},
		{audit.RateLimits, rec.ID, rec.KeyPrefix},
		{audit.Rotate, rec.ID, rec.KeyPrefix},
		{audit.Revoke, rot.Added.ID, rot.Added.KeyPrefix},
	}
	for i, w := range want {
		e := entries[i]
		if e.Action != w.action || e.KeyID != w.id || e.KeyPrefix != w.prefix || e.Label != "CI deploy" {
			t.Errorf("entry %d: %s %s %s %q, want %s %s %s", i, e.Action, e.KeyID, e.KeyPrefix, e.Label, w.action, w.id, w.prefix)
		}
		if e.Who != who {
			t.Errorf("entry %d: who %+v, want %+v", i, e.Who, who)
		}
		at, err := time.Parse(time.RFC3339Nano, e.Time)
		if err != nil || at.Location() != time.UTC || !strings.HasSuffix(e.Time, "Z") {
			t.Errorf("entry %d: time %q is not RFC 3339 in UTC", i, e.Time)
		}
	}
	js := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	if got := js(entries[0].Changes["scopes"]); got != `["read"]` {
		t.Errorf("create: scopes %s", got)
	}
	if entries[0].Changes["expires_at"] != *rec.ExpiresAt {
		t.Errorf("create: expires_at %v, want %s", entries[0].Changes["expires_at"], *rec.ExpiresAt)
	}
	if got := js(entries[1].Changes); got != `{"rate_limits":[{"requests":100,"window":"1m"}]}` {
		t.Errorf("rate_limits: changes %s", got)
	}
	if c := entries[2].Changes; c["old_id"] != rec.ID || c["new_id"] != rot.Added.ID || c["new_key_prefix"] != rot.Added.KeyPrefix || c["expires_at"] != *rot.OldExpiresAt {
		t.Errorf("rotate: changes %s", js(c))
	}
	if c := entries[3].Changes; c["revoked_at"] != keyset.FormatTimestamp(now) || len(c) != 1 {
		t.Errorf("revoke: changes %s", js(c))
	}

	// Filters: by id, by key_prefix (a rotate shows for both keys), since.
	if got := readAll(t, rs, audit.Filter{Key: rec.ID}); len(got) != 3 {
		t.Errorf("--key old id: %d entries, want 3", len(got))
	}
	if got := readAll(t, rs, audit.Filter{Key: rot.Added.KeyPrefix}); len(got) != 2 || got[0].Action != audit.Rotate || got[1].Action != audit.Revoke {
		t.Errorf("--key new key_prefix: %+v", got)
	}
	if got := readAll(t, rs, audit.Filter{Key: "nope"}); len(got) != 0 {
		t.Errorf("--key nope: %d entries", len(got))
	}
	if got := readAll(t, rs, audit.Filter{Since: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Errorf("since an hour ahead: %d entries", len(got))
	}
	if got := readAll(t, rs, audit.Filter{Since: now.Add(-time.Minute)}); len(got) != 4 {
		t.Errorf("since a minute ago: %d entries", len(got))
	}

	// A mistyped key file is an error, not an empty log.
	if _, err := (filestore.Records{Path: path + ".typo"}).ReadAudit(audit.Filter{}); err == nil {
		t.Error("the audit log of a missing key file read as empty")
	}
}

// A change whose entry cannot be written to the audit log is not made.
func TestFileAuditUnwritable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, logPath string)
		want  string
	}{
		{"directory", func(t *testing.T, p string) {
			if err := os.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "audit log"},
		{"symlink", func(t *testing.T, p string) {
			target := filepath.Join(t.TempDir(), "elsewhere")
			testkeys.WriteFile(t, target, "")
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if data, _ := os.ReadFile(target); len(data) != 0 {
					t.Errorf("the link's target was written: %q", data)
				}
			})
		}, "symbolic link"},
		{"hard link", func(t *testing.T, p string) {
			other := filepath.Join(filepath.Dir(p), "other")
			testkeys.WriteFile(t, other, "")
			if err := os.Link(other, p); err != nil {
				t.Fatal(err)
			}
		}, "hard links"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.json")
			st := stores.By(filestore.Records{Path: path, MayCreate: true}, audit.Command())
			_, rec := teststores.AddKey(t, filestore.Records{Path: path, MayCreate: true}, "first") // before the plant: no log needed
			if err := os.Remove(path + filestore.AuditSuffix); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, path+filestore.AuditSuffix)
			before := testkeys.ReadFile(t, path)
			beforeFi, _ := os.Stat(path)

			_, _, err := keyops.Create(st, keyops.AddOptions{Label: "second"}, time.Now(), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("add: %v, want an error saying %q", err, tc.want)
			}
			if _, _, err := keyops.Revoke(st, rec.ID, time.Now(), nil); err == nil {
				t.Fatal("revoke made with no audit log")
			}
			if after := testkeys.ReadFile(t, path); after != before {
				t.Errorf("the key file changed:\n%s", after)
			}
			afterFi, _ := os.Stat(path)
			if !os.SameFile(beforeFi, afterFi) {
				t.Error("the key file was replaced")
			}
		})
	}
}

// A read-only folder: the log cannot be made, nothing changes.
func TestFileAuditReadOnlyFolder(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root writes a read-only folder all the same")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	_, rec := teststores.AddKey(t, filestore.Records{Path: path, MayCreate: true}, "first")
	// A log that cannot be opened for appending.
	if err := os.Chmod(path+filestore.AuditSuffix, 0o400); err != nil {
		t.Fatal(err)
	}
	before := testkeys.ReadFile(t, path)
	if _, _, err := keyops.Revoke(filestore.Records{Path: path}, rec.ID, time.Now(), nil); err == nil || !strings.Contains(err.Error(), "audit log") {
		t.Fatalf("revoke with a read-only log: %v", err)
	}
	if testkeys.ReadFile(t, path) != before {
		t.Error("the key file changed")
	}
}

// N changes at once through the admin API: N entries, in the order of the
// key file's changes, each naming the request's remote address; the
// command and GET /apikey/audit read them.
func TestAdminAuditConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	testkeys.WriteKeys(t, path)
	s := teststores.StartFileStore(t, path, -1, -1)
	api := teststores.AdminOver(teststores.Live(t, s.Name()))

	const n = 16
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := range n {
		wg.Go(func() {
			resp, body := teststores.Call(t, api, http.MethodPost, "/apikey/keys", fmt.Sprintf(`{"label":"client %d"}`, i))
			if resp.StatusCode != http.StatusCreated {
				errs <- body
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	records, _, err := filestore.Records{Path: path}.Read()
	if err != nil {
		t.Fatal(err)
	}
	resp, body := teststores.Call(t, api, http.MethodGet, "/apikey/audit", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /apikey/audit: %d %s", resp.StatusCode, body)
	}
	var entries []audit.Entry
	if err := json.Unmarshal([]byte(body), &entries); err != nil {
		t.Fatal(err)
	}
	if len(entries) != n || len(records) != n {
		t.Fatalf("%d entries and %d records, want %d", len(entries), len(records), n)
	}
	for i, e := range entries {
		if e.Action != audit.Create || e.KeyID != records[i].ID || e.Label != records[i].Label {
			t.Errorf("entry %d: %s %s %q, record %s %q", i, e.Action, e.KeyID, e.Label, records[i].ID, records[i].Label)
		}
		if e.Who.Via != audit.ViaAdminAPI || e.Who.RemoteAddr == "" || e.Who.User != "" {
			t.Errorf("entry %d: who %+v", i, e.Who)
		}
	}

	// A revoke, then the filters of the endpoint.
	id := records[3].ID
	if resp, body := teststores.Call(t, api, http.MethodPost, "/apikey/keys/"+id+"/revoke", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %d %s", resp.StatusCode, body)
	}
	resp, body = teststores.Call(t, api, http.MethodGet, "/apikey/audit?key="+id, "")
	entries = nil
	if err := json.Unmarshal([]byte(body), &entries); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s %v", resp.StatusCode, body, err)
	}
	if len(entries) != 2 || entries[0].Action != audit.Create || entries[1].Action != audit.Revoke {
		t.Errorf("?key=%s: %s", id, body)
	}
	resp, body = teststores.Call(t, api, http.MethodGet, "/apikey/audit?since=2999-01-01T00:00:00Z", "")
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("?since= in the future: %d %s", resp.StatusCode, body)
	}
	resp, body = teststores.Call(t, api, http.MethodGet, "/apikey/audit?since=yesterday", "")
	teststores.WantRefusal(t, resp, body, http.StatusBadRequest, "BAD_REQUEST", "since")

	// The command reads them too.
	out, _, err := testkeys.RunCommand(t, "", "audit", "--file", path, "--key", id, "--json")
	if err != nil {
		t.Fatal(err)
	}
	entries = nil
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 2 {
		t.Fatalf("audit --json: %v\n%s", err, out)
	}
	out, _, err = testkeys.RunCommand(t, "", "audit", "--file", path, "--since", "1h")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != n+2 || !strings.HasPrefix(lines[0], "TIME") || !strings.Contains(lines[n+1], "revoke") {
		t.Errorf("audit table:\n%s", out)
	}
}

// A command's entry names the OS user and the host.
func TestCommandAuditWho(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	out, _, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "ops")
	if err != nil {
		t.Fatal(err)
	}
	entries := readAll(t, filestore.Records{Path: path}, audit.Filter{})
	if len(entries) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	u, err := user.Current()
	if err != nil {
		t.Skip("no current user:", err)
	}
	host, _ := os.Hostname()
	if w := entries[0].Who; w.Via != audit.ViaCommand || w.User != u.Username || w.Host != host || w.RemoteAddr != "" {
		t.Errorf("who %+v, want the command by %s on %s", w, u.Username, host)
	}
	for _, line := range strings.Fields(out) {
		if testkeys.RawKeyPattern.MatchString(line) {
			data, _ := os.ReadFile(path + filestore.AuditSuffix)
			noSecrets(t, string(data), line)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"24h":                  now.Add(-24 * time.Hour),
		"7d":                   now.Add(-7 * 24 * time.Hour),
		"2026-01-01T00:00:00Z": time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		got, err := audit.ParseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"yesterday", "-1h", "2026-13-01"} {
		if _, err := audit.ParseSince(in, now); err == nil {
			t.Errorf("ParseSince(%q) took it", in)
		}
	}
}

// A last line that a crash cut short is skipped; a broken line elsewhere
// is an error naming it.
func TestReadCutShort(t *testing.T) {
	log := `{"time":"2026-01-01T00:00:00Z","action":"create","key_id":"a","label":"x","key_prefix":"sk_1","who":{"via":"command"}}` + "\n" + `{"time":"2026-01-01T00:00:01Z","act`
	got, err := audit.Read(strings.NewReader(log), audit.Filter{})
	if err != nil || len(got) != 1 || got[0].KeyID != "a" {
		t.Fatalf("%+v %v", got, err)
	}
	_, err = audit.Read(strings.NewReader("garbage\n"+log), audit.Filter{})
	if err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("a broken line: %v", err)
	}
}

// Through the admin API, a change whose entry cannot be written is
// answered as a store failure naming the audit log, and not made.
func TestAdminAuditUnwritable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	k := testkeys.New("planted", nil)
	testkeys.WriteKeys(t, path, k)
	if err := os.Mkdir(path+filestore.AuditSuffix, 0o700); err != nil {
		t.Fatal(err)
	}
	s := teststores.StartFileStore(t, path, -1, -1)
	api := teststores.AdminOver(teststores.Live(t, s.Name()))
	before := testkeys.ReadFile(t, path)
	resp, body := teststores.Call(t, api, http.MethodPost, "/apikey/keys/"+k.ID()+"/revoke", "")
	teststores.WantRefusal(t, resp, body, http.StatusInternalServerError, "INTERNAL_ERROR", "audit log", "nothing was changed")
	if testkeys.ReadFile(t, path) != before {
		t.Error("the key file changed")
	}
	resp, body = teststores.Call(t, api, http.MethodGet, "/apikey/audit", "")
	if resp.StatusCode == http.StatusOK {
		t.Errorf("GET /apikey/audit read a directory as the log: %s", body)
	}
}
