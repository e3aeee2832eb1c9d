package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// cmdNow is the time the command tests run at, so expiry and status are
// exact.
var cmdNow = time.Date(2026, 11, 25, 20, 14, 31, 123456000, time.UTC)

// mustAdd runs add and returns the raw key, checking that stdout holds it
// alone on its line and that stderr never shows it.
func mustAdd(t testing.TB, path string, opts keyops.AddOptions) string {
	t.Helper()
	if opts.Label == "" {
		opts.Label = "test key"
	}
	var stdout, stderr bytes.Buffer
	if err := addKey(&stdout, &stderr, filestore.Records{Path: path, MayCreate: true}, opts, cmdNow); err != nil {
		t.Fatalf("add: %v", err)
	}
	raw, ok := strings.CutSuffix(stdout.String(), "\n")
	if !ok || !testkeys.RawKeyPattern.MatchString(raw) {
		t.Fatalf("stdout of add is %q, want the key alone on its line", stdout.String())
	}
	if strings.Contains(stderr.String(), raw) {
		t.Fatalf("stderr of add shows the raw key: %q", stderr.String())
	}
	return raw
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCommandAddCreatesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	var stdout, stderr bytes.Buffer
	if err := addKey(&stdout, &stderr, filestore.Records{Path: path, MayCreate: true}, keyops.AddOptions{Label: "CI deploy"}, cmdNow); err != nil {
		t.Fatal(err)
	}
	raw := strings.TrimSuffix(stdout.String(), "\n")
	if stdout.String() != raw+"\n" || !testkeys.RawKeyPattern.MatchString(raw) {
		t.Fatalf("stdout = %q, want one line holding sk_ and 43 URL-safe characters", stdout.String())
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("new key file has mode %v, want 0600", fi.Mode().Perm())
	}
	doc := testkeys.ReadDoc(t, path)
	if got := testkeys.Object(doc.TopMembers()).Names(); !slices.Equal(got, []string{"api_keys"}) {
		t.Errorf("top-level members = %v, want [api_keys]", got)
	}
	if len(doc.Records) != 1 {
		t.Fatalf("%d records, want 1", len(doc.Records))
	}
	rec := testkeys.Members(doc.Records[0])
	wantOrder := []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at"}
	if got := rec.Names(); !slices.Equal(got, wantOrder) {
		t.Errorf("record members = %v, want %v", got, wantOrder)
	}
	id := rec.GetString("id")
	if !testkeys.UUIDv4Pattern.MatchString(id) {
		t.Errorf("id %q is not a random UUID", id)
	}
	if got := rec.GetString("label"); got != "CI deploy" {
		t.Errorf("label = %q", got)
	}
	if got := rec.GetString("key_hash"); got != keyset.HashKey(raw) {
		t.Errorf("key_hash = %q, want the SHA-256 of the printed key %q", got, keyset.HashKey(raw))
	}
	if got := rec.GetString("key_prefix"); got != raw[:11] {
		t.Errorf("key_prefix = %q, want %q", got, raw[:11])
	}
	if got := rec.GetString("created_at"); got != "2026-11-25T20:14:31.123456+00:00" {
		t.Errorf("created_at = %q", got)
	}
	if got := string(rec.Get("last_used_at")); got != "null" {
		t.Errorf("last_used_at = %s, want null", got)
	}
	if strings.Contains(testkeys.ReadFile(t, path), raw) {
		t.Error("the key file holds the raw key")
	}

	for _, want := range []string{id, raw[:11], path, "never", "cannot be shown again"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr does not mention %q: %q", want, stderr.String())
		}
	}

	// The handler admits the printed key.
	ks, err := keyfile.ReadKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := ks.Lookup(raw); k == nil || k.ID != id || k.Label != "CI deploy" {
		t.Fatalf("lookup of the printed key = %+v", k)
	}
}

func TestCommandAddAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	first := mustAdd(t, path, keyops.AddOptions{Label: "first"})
	before := testkeys.Members(testkeys.ReadDoc(t, path).Records[0])
	second := mustAdd(t, path, keyops.AddOptions{Label: "second", Expires: "90d", Scopes: []string{"read", "write,admin", "read"}})
	if first == second {
		t.Fatal("two adds printed the same key")
	}

	doc := testkeys.ReadDoc(t, path)
	if len(doc.Records) != 2 {
		t.Fatalf("%d records, want 2", len(doc.Records))
	}
	if a, b := mustJSON(t, before), mustJSON(t, testkeys.Members(doc.Records[0])); a != b {
		t.Errorf("the first record changed:\n%s\n%s", a, b)
	}
	rec := testkeys.Members(doc.Records[1])
	wantOrder := []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "expires_at", "scopes"}
	if got := rec.Names(); !slices.Equal(got, wantOrder) {
		t.Errorf("record members = %v, want %v", got, wantOrder)
	}
	if got, want := rec.GetString("expires_at"), keyset.FormatTimestamp(cmdNow.Add(90*24*time.Hour)); got != want {
		t.Errorf("expires_at = %q, want %q", got, want)
	}
	if got := mustJSON(t, rec.Get("scopes")); got != `["read","write","admin"]` {
		t.Errorf("scopes = %s, want [\"read\",\"write\",\"admin\"]", got)
	}
	if rec.GetString("id") == doc.Records[0].ID {
		t.Error("two keys got the same id")
	}

	ks, err := keyfile.ReadKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{first, second} {
		if k, _ := ks.Lookup(raw); k == nil {
			t.Errorf("key %s... is not in the file", raw[:11])
		}
	}
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCommandAddBareArrayFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	k := testkeys.New("old", nil)
	writeFile(t, path, "["+mustJSON(t, k.Record)+"]")
	raw := mustAdd(t, path, keyops.AddOptions{Label: "new"})
	data := testkeys.ReadFile(t, path)
	if !strings.HasPrefix(strings.TrimSpace(data), "[") {
		t.Fatalf("a bare-array key file was turned into another shape:\n%s", data)
	}
	recs := testkeys.ReadDoc(t, path).Records
	if len(recs) != 2 || recs[0].ID != k.Record["id"] || recs[1].KeyHash != keyset.HashKey(raw) {
		t.Fatalf("records not the old one and the added one:\n%s", testkeys.ReadFile(t, path))
	}
}

func TestCommandAddRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	for _, tc := range []struct {
		name    string
		opts    keyops.AddOptions
		wantErr string
	}{
		{"no label", keyops.AddOptions{}, "label is required (--label)"},
		{"blank label", keyops.AddOptions{Label: "  "}, "label is required (--label)"},
		{"bad duration", keyops.AddOptions{Label: "x", Expires: "soon"}, "--expires"},
		{"past time", keyops.AddOptions{Label: "x", Expires: "2001-01-01T00:00:00Z"}, "in the past"},
		{"empty scope", keyops.AddOptions{Label: "x", Scopes: []string{"read,"}}, "--scope"},
		{"scope with space", keyops.AddOptions{Label: "x", Scopes: []string{"read write"}}, "--scope"},
		{"missing folder", keyops.AddOptions{Label: "x"}, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			st := filestore.Records{Path: path, MayCreate: true}
			if tc.name == "missing folder" {
				st = filestore.Records{Path: filepath.Join(dir, "nope", "keys.json"), MayCreate: true}
			}
			err := addKey(&stdout, &stderr, st, tc.opts, cmdNow)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one saying %q", err, tc.wantErr)
			}
			if stdout.Len() != 0 {
				t.Errorf("a failed add printed %q on stdout", stdout.String())
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a failed add created the key file (stat: %v)", err)
			}
		})
	}
}

// A file the handler would refuse is left alone by every command: a person
// must mend it first.
func TestCommandsLeaveBrokenFileUnchanged(t *testing.T) {
	k := testkeys.New("k", nil)
	for name, content := range map[string]string{
		"bad JSON":     "{\"api_keys\": [\n  {\"id\": \"a\",}\n]}\n",
		"bad hash":     `{"api_keys": [{"id": "a", "label": "x", "key_hash": "abc", "key_prefix": "sk_x"}]}`,
		"duplicate id": `{"api_keys": [` + mustJSON(t, k.Record) + `,` + mustJSON(t, testkeys.New("b", map[string]any{"id": k.Record["id"]}).Record) + `]}`,
		"empty":        "",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys.json")
			writeFile(t, path, content)
			var out, errOut bytes.Buffer

			err := addKey(&out, &errOut, filestore.Records{Path: path, MayCreate: true}, keyops.AddOptions{Label: "x"}, cmdNow)
			var kfe *keyfile.Error
			if !errors.As(err, &kfe) || !strings.Contains(err.Error(), path) {
				t.Errorf("add: error = %v, want a keyfile.Error naming the file", err)
			}
			if out.Len() != 0 {
				t.Errorf("add printed a key for a file it did not write: %q", out.String())
			}
			if err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, k.Record["id"].(string), cmdNow); !errors.As(err, &kfe) {
				t.Errorf("revoke: error = %v, want a keyfile.Error", err)
			}
			if err := listKeys(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, false, cmdNow); !errors.As(err, &kfe) {
				t.Errorf("list: error = %v, want a keyfile.Error", err)
			}
			if got := testkeys.ReadFile(t, path); got != content {
				t.Errorf("the broken file was changed to:\n%s", got)
			}
		})
	}

	t.Run("JSON error position", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys.json")
		writeFile(t, path, "{\"api_keys\": [\n  {\"id\": \"a\",}\n]}\n")
		err := listKeys(new(bytes.Buffer), io.Discard, filestore.Records{Path: path, MayCreate: true}, false, cmdNow)
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Fatalf("error = %v, want the line of the syntax error", err)
		}
	})
}

func TestCommandsMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	var out bytes.Buffer
	// Worded as every other key-file error, the path said once.
	wantMsg := "key file " + path + ": no such file or directory"
	if err := listKeys(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, false, cmdNow); err == nil || !errors.Is(err, os.ErrNotExist) || err.Error() != wantMsg {
		t.Errorf("list: error = %v, want not-exist: %q", err, wantMsg)
	}
	if _, _, err := openStore("", redisTarget{}, false); err == nil || !strings.Contains(err.Error(), "--file") {
		t.Errorf("without --file: error = %v", err)
	}
	if err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, "sk_AbCdEfGh", cmdNow); err == nil || !errors.Is(err, os.ErrNotExist) || err.Error() != wantMsg {
		t.Errorf("revoke: error = %v, want not-exist: %q", err, wantMsg)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Error("revoke created the missing key file")
	}
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Error("revoke of a missing key file left a lock file")
	}
}

// listFixture writes a key file with one key in each status and returns its
// path and keys: active (with scopes and a last use), expired, revoked, and
// active with a future expiry.
func listFixture(t *testing.T) (string, []testkeys.Key) {
	t.Helper()
	keys := []testkeys.Key{
		testkeys.New("active", map[string]any{"scopes": []string{"read", "write"}, "last_used_at": "2026-11-20T08:00:00.5+00:00"}),
		testkeys.New("expired", map[string]any{"expires_at": "2026-11-01T00:00:00+00:00"}),
		testkeys.New("revoked", map[string]any{"revoked_at": "2026-11-02T00:00:00+00:00", "expires_at": "2026-11-01T00:00:00+00:00"}),
		testkeys.New("expires later\twith\na tab", map[string]any{"expires_at": "2027-06-01T12:00:00+02:00", "rotated_from": "0b6f7f52-4d7e-4c55-9a4b-8a3f0d6e2c11"}),
	}
	return testkeys.WriteKeys(t, "", keys...), keys
}

func TestCommandListTable(t *testing.T) {
	path, keys := listFixture(t)
	var out bytes.Buffer
	if err := listKeys(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, false, cmdNow); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != 1+len(keys) {
		t.Fatalf("%d lines, want a header and %d rows:\n%s", len(lines), len(keys), text)
	}
	header := strings.Fields(lines[0])
	if want := []string{"ID", "LABEL", "PREFIX", "CREATED", "LAST", "USED", "EXPIRES", "SCOPES", "RATE", "LIMITS", "QUOTA", "USED/LEFT", "STATUS"}; !slices.Equal(header, want) {
		t.Errorf("header = %q", lines[0])
	}
	wantStatus := []string{"active", "expired", "revoked", "active"}
	for i, k := range keys {
		row := lines[i+1]
		for _, want := range []string{k.Record["id"].(string), k.Record["key_prefix"].(string), "2026-11-25T20:14:31Z"} {
			if !strings.Contains(row, want) {
				t.Errorf("row %d does not show %q: %q", i+1, want, row)
			}
		}
		if !strings.HasSuffix(row, wantStatus[i]) {
			t.Errorf("row %d: want status %s: %q", i+1, wantStatus[i], row)
		}
		if strings.Contains(text, k.Record["key_hash"].(string)) || strings.Contains(text, k.Raw) {
			t.Error("list shows a key hash or a raw key")
		}
	}
	for _, want := range []string{"read,write", "2026-11-20T08:00:00Z", "never", "2027-06-01T10:00:00Z", "expires later?with?a tab"} {
		if !strings.Contains(text, want) {
			t.Errorf("the table does not show %q:\n%s", want, text)
		}
	}
}

func TestCommandListJSON(t *testing.T) {
	path, keys := listFixture(t)
	var out bytes.Buffer
	if err := listKeys(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, true, cmdNow); err != nil {
		t.Fatal(err)
	}
	var listed []map[string]any
	if err := json.Unmarshal(out.Bytes(), &listed); err != nil {
		t.Fatalf("--json output is not a JSON array: %v\n%s", err, out.String())
	}
	if len(listed) != len(keys) {
		t.Fatalf("%d entries, want %d", len(listed), len(keys))
	}
	wantStatus := []string{"active", "expired", "revoked", "active"}
	for i, got := range listed {
		k := keys[i]
		if _, ok := got["key_hash"]; ok {
			t.Errorf("entry %d shows key_hash", i)
		}
		if got["id"] != k.Record["id"] || got["label"] != k.Record["label"] || got["key_prefix"] != k.Record["key_prefix"] {
			t.Errorf("entry %d = %v, want the record's id, label and prefix", i, got)
		}
		if got["status"] != wantStatus[i] {
			t.Errorf("entry %d status = %v, want %s", i, got["status"], wantStatus[i])
		}
		if got["created_at"] != k.Record["created_at"] {
			t.Errorf("entry %d created_at = %v, want the stored value", i, got["created_at"])
		}
		for _, member := range []string{"last_used_at", "expires_at", "revoked_at", "scopes", "rotated_from"} {
			if _, ok := got[member]; !ok {
				t.Errorf("entry %d has no %q member (want null or a value, always present)", i, member)
			}
		}
	}
	if mustJSON(t, listed[0]["scopes"]) != `["read","write"]` || mustJSON(t, listed[1]["scopes"]) != `[]` {
		t.Errorf("scopes = %v, %v", listed[0]["scopes"], listed[1]["scopes"])
	}
	if listed[0]["last_used_at"] != "2026-11-20T08:00:00.5+00:00" || listed[1]["last_used_at"] != nil {
		t.Errorf("last_used_at = %v, %v", listed[0]["last_used_at"], listed[1]["last_used_at"])
	}
	if listed[2]["revoked_at"] != "2026-11-02T00:00:00+00:00" {
		t.Errorf("revoked_at = %v", listed[2]["revoked_at"])
	}
	if listed[3]["rotated_from"] != "0b6f7f52-4d7e-4c55-9a4b-8a3f0d6e2c11" || listed[0]["rotated_from"] != nil {
		t.Errorf("rotated_from = %v, %v", listed[3]["rotated_from"], listed[0]["rotated_from"])
	}

	// An empty key file lists as an empty array, not null.
	empty := testkeys.WriteKeys(t, "")
	out.Reset()
	if err := listKeys(&out, io.Discard, filestore.Records{Path: empty, MayCreate: true}, true, cmdNow); err != nil || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("empty file: %q, %v", out.String(), err)
	}
}

// revokeFixture is a key file whose keys share an id prefix and a key
// prefix, to test how revoke resolves names.
func revokeFixture(t *testing.T) (string, []testkeys.Key) {
	t.Helper()
	keys := []testkeys.Key{
		testkeys.New("alpha", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001"}),
		testkeys.New("beta", map[string]any{"id": "aaaa2222-0000-4000-8000-000000000002"}),
		testkeys.New("gamma", map[string]any{"id": "cccc3333-0000-4000-8000-000000000003", "key_prefix": "sk_SAMEpref"}),
		testkeys.New("delta", map[string]any{"id": "dddd4444-0000-4000-8000-000000000004", "key_prefix": "sk_SAMEpref"}),
	}
	return testkeys.WriteKeys(t, "", keys...), keys
}

func TestCommandRevoke(t *testing.T) {
	for _, tc := range []struct {
		name, ref, wantID string
	}{
		{"full id", "aaaa1111-0000-4000-8000-000000000001", "aaaa1111-0000-4000-8000-000000000001"},
		{"full id in capitals", "AAAA2222-0000-4000-8000-000000000002", "aaaa2222-0000-4000-8000-000000000002"},
		{"id prefix", "cccc", "cccc3333-0000-4000-8000-000000000003"},
		{"id prefix, longer", "aaaa22", "aaaa2222-0000-4000-8000-000000000002"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, keys := revokeFixture(t)
			var out bytes.Buffer
			if err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, tc.ref, cmdNow); err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				got := testkeys.FileRecord(t, path, k.Record["id"].(string)).RevokedAt
				if k.Record["id"] == tc.wantID {
					if got == nil || *got != keyset.FormatTimestamp(cmdNow) {
						t.Errorf("revoked_at = %v, want %s", got, keyset.FormatTimestamp(cmdNow))
					}
				} else if got != nil {
					t.Errorf("key %s was revoked too", k.Record["label"])
				}
			}
			if !strings.Contains(out.String(), tc.wantID) {
				t.Errorf("output does not name the revoked key: %q", out.String())
			}
		})
	}

	t.Run("key prefix", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys.json")
		first := mustAdd(t, path, keyops.AddOptions{Label: "one"})
		second := mustAdd(t, path, keyops.AddOptions{Label: "two"})
		var out bytes.Buffer
		if err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, second[:11], cmdNow); err != nil {
			t.Fatal(err)
		}
		ks, err := keyfile.ReadKeySet(path)
		if err != nil {
			t.Fatal(err)
		}
		if k, _ := ks.Lookup(second); k == nil || !k.Revoked() {
			t.Error("the key named by its prefix is not revoked")
		}
		if k, _ := ks.Lookup(first); k == nil || k.Revoked() {
			t.Error("the other key is revoked")
		}
		if strings.Contains(out.String(), second) {
			t.Error("revoke printed the raw key")
		}
	})
}

func TestCommandRevokeRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, ref string
		want      []string
	}{
		{"ambiguous id prefix", "aaaa", []string{"matches 2 keys", "aaaa1111-0000-4000-8000-000000000001", "alpha", "aaaa2222-0000-4000-8000-000000000002", "beta"}},
		{"ambiguous key prefix", "sk_SAMEpref", []string{"matches 2 keys", "cccc3333-0000-4000-8000-000000000003", "gamma", "dddd4444-0000-4000-8000-000000000004", "delta", "sk_SAMEpref"}},
		{"unknown", "sk_NoSuchKy", []string{"no key", "sk_NoSuchKy"}},
		{"id prefix too short", "ccc", []string{"no key", "at least 4 characters"}},
		{"part of a key prefix", "sk_SAME", []string{"no key"}},
		{"blank", "  ", []string{"name the key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, _ := revokeFixture(t)
			before := testkeys.ReadFile(t, path)
			var out bytes.Buffer
			err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, tc.ref, cmdNow)
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
			if got := testkeys.ReadFile(t, path); got != before {
				t.Errorf("a refused revoke changed the file:\n%s", got)
			}
			if out.Len() != 0 {
				t.Errorf("a refused revoke printed %q", out.String())
			}
		})
	}
}

// Revoking a revoked key changes nothing: its first revoked_at is the one
// an audit needs.
func TestCommandRevokeTwice(t *testing.T) {
	path, keys := revokeFixture(t)
	id := keys[0].Record["id"].(string)
	var out bytes.Buffer
	if err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, id, cmdNow); err != nil {
		t.Fatal(err)
	}
	before := testkeys.ReadFile(t, path)
	out.Reset()
	if err := revokeKey(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, id, cmdNow.Add(time.Hour)); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	if !strings.Contains(out.String(), "already revoked") || !strings.Contains(out.String(), keyset.FormatTimestamp(cmdNow)) {
		t.Errorf("output = %q, want it to say the key was already revoked, and when", out.String())
	}
	if testkeys.ReadFile(t, path) != before {
		t.Error("the second revoke rewrote the file")
	}
}

// Members this plugin does not know, at the top level and inside records,
// survive add and revoke, in their order.
func TestCommandsKeepUnknownMembers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	k := testkeys.New("old", nil)
	rec, err := json.Marshal(k.Record)
	if err != nil {
		t.Fatal(err)
	}
	// An unknown member inside the record, before and after the known ones.
	recText := `{"team": "ops", ` + strings.TrimPrefix(string(rec), "{")
	recText = strings.TrimSuffix(recText, "}") + `, "notes": {"ticket": 42, "big": 12345678901234567890}}`
	writeFile(t, path, `{"version": 3, "api_keys": [`+recText+`], "meta": {"owner": "platform"}}`)

	raw := mustAdd(t, path, keyops.AddOptions{Label: "new"})
	if err := revokeKey(new(bytes.Buffer), io.Discard, filestore.Records{Path: path, MayCreate: true}, k.Record["id"].(string), cmdNow); err != nil {
		t.Fatal(err)
	}

	doc := testkeys.ReadDoc(t, path)
	top := testkeys.Object(doc.TopMembers())
	if got := top.Names(); !slices.Equal(got, []string{"version", "api_keys", "meta"}) {
		t.Errorf("top-level members = %v", got)
	}
	if got := string(top.Get("version")); got != "3" {
		t.Errorf("version = %s", got)
	}
	if got := mustJSON(t, top.Get("meta")); got != `{"owner":"platform"}` {
		t.Errorf("meta = %s", got)
	}
	if len(doc.Records) != 2 {
		t.Fatalf("%d records", len(doc.Records))
	}
	old := testkeys.Members(doc.Records[0])
	wantOrder := []string{"team", "created_at", "id", "key_hash", "key_prefix", "label", "last_used_at", "notes", "revoked_at"}
	if got := old.Names(); !slices.Equal(got, wantOrder) {
		t.Errorf("old record members = %v, want %v", got, wantOrder)
	}
	if got := mustJSON(t, old.Get("notes")); got != `{"ticket":42,"big":12345678901234567890}` {
		t.Errorf("notes = %s (numbers must be kept as written)", got)
	}
	if doc.Records[1].KeyHash != keyset.HashKey(raw) {
		t.Error("the added key is not the second record")
	}
}

func TestCommandHash(t *testing.T) {
	const key = "sk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcde"
	for _, in := range []string{key, key + "\n", key + "\r\n", "  " + key + " \n"} {
		var out bytes.Buffer
		if err := hashFromReader(strings.NewReader(in), &out); err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if got := out.String(); got != keyset.HashKey(key)+"\n" {
			t.Errorf("hash of %q = %q, want %q", in, got, keyset.HashKey(key))
		}
	}
	for _, tc := range []struct{ in, wantErr string }{
		{"", "no key"},
		{" \n", "no key"},
		{key + "\n" + key + "\n", "more than one line"},
		{strings.Repeat("x", 70<<10), "64 KiB"},
	} {
		var out bytes.Buffer
		err := hashFromReader(strings.NewReader(tc.in), &out)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%.20q: error = %v, want one saying %q", tc.in, err, tc.wantErr)
		}
		if out.Len() != 0 {
			t.Errorf("%.20q: printed %q", tc.in, out.String())
		}
	}

	// A key made by add hashes to the key_hash add stored.
	path := filepath.Join(t.TempDir(), "keys.json")
	raw := mustAdd(t, path, keyops.AddOptions{})
	var out bytes.Buffer
	if err := hashFromReader(strings.NewReader(raw+"\n"), &out); err != nil {
		t.Fatal(err)
	}
	if got, stored := strings.TrimSpace(out.String()), testkeys.ReadDoc(t, path).Records[0].KeyHash; got != stored {
		t.Errorf("hash = %s, stored key_hash = %s", got, stored)
	}
}

// caddy apikey add makes a missing key file only with --create: a typo
// (keys.jsn) or the wrong working folder is an error that names the file's
// absolute path and suggests --create, and leaves nothing behind. Success
// names the absolute path of the file written.
func TestCommandAddMissingFileNeedsCreate(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	abs := filepath.Join(dir, "keys.jsn")
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", "keys.jsn", "--label", "typo")
	if err == nil {
		t.Fatalf("add on a missing file without --create succeeded: stdout %q, stderr %q", stdout, stderr)
	}
	for _, want := range []string{abs, "does not exist", "--create"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr %q does not say %q", stderr, want)
		}
	}
	if stdout != "" {
		t.Errorf("stdout = %q: a key was printed though none was stored", stdout)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("add without --create left %v behind", entries)
	}

	stdout, stderr, err = testkeys.RunCommand(t, "", "add", "--file", "keys.jsn", "--create", "--label", "made")
	if err != nil {
		t.Fatalf("add --create: %v (stderr %q)", err, stderr)
	}
	if !strings.Contains(stderr, `Created key "made" in `+abs+"\n") {
		t.Errorf("add --create: stderr %q does not name the absolute path %s", stderr, abs)
	}
	if fi, err := os.Stat(abs); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("add --create made no key file of mode 0600: %v", err)
	}
	raw := strings.TrimSuffix(stdout, "\n")
	if ks, err := keyfile.ReadKeySet(abs); err != nil {
		t.Fatal(err)
	} else if k, _ := ks.Lookup(raw); k == nil {
		t.Error("the printed key is not in the file made")
	}

	// An existing file, named relative: the absolute path is printed.
	_, stderr, err = testkeys.RunCommand(t, "", "add", "--file", "./keys.jsn", "--label", "second")
	if err != nil || !strings.Contains(stderr, `Created key "second" in `+abs+"\n") {
		t.Errorf("add to an existing file: %v, stderr %q", err, stderr)
	}
}

// The cobra wiring: flags reach the command functions, and failures are
// errors (so the process exits non-zero).
func TestCommandCobraWiring(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "wired", "--expires", "30d", "--scope", "read", "-s", "write,admin")
	if err != nil {
		t.Fatalf("add: %v (stderr %q)", err, stderr)
	}
	raw := strings.TrimSuffix(stdout, "\n")
	if !testkeys.RawKeyPattern.MatchString(raw) || !strings.Contains(stderr, "cannot be shown again") {
		t.Fatalf("add: stdout %q, stderr %q", stdout, stderr)
	}
	// add and list show scopes the same way.
	if !strings.Contains(stderr, "  scopes:  read,write,admin\n") {
		t.Errorf("add: stderr does not show the scopes as read,write,admin: %q", stderr)
	}
	recs := testkeys.ReadDoc(t, path).Records
	if len(recs) != 1 || recs[0].Label != "wired" || !slices.Equal(recs[0].Scopes, []string{"read", "write", "admin"}) ||
		recs[0].ExpiresAt == nil || recs[0].KeyHash != keyset.HashKey(raw) {
		t.Fatalf("record = %+v", recs[0])
	}

	stdout, _, err = testkeys.RunCommand(t, "", "list", "--file", path, "--json")
	if err != nil || !strings.Contains(stdout, `"label": "wired"`) {
		t.Fatalf("list --json: %q, %v", stdout, err)
	}
	stdout, _, err = testkeys.RunCommand(t, "", "list", "-f", path)
	if err != nil || !strings.HasPrefix(stdout, "ID ") || !strings.Contains(stdout, " read,write,admin ") {
		t.Fatalf("list: %q, %v", stdout, err)
	}
	stdout, _, err = testkeys.RunCommand(t, raw+"\n", "hash")
	if err != nil || stdout != keyset.HashKey(raw)+"\n" {
		t.Fatalf("hash: %q, %v", stdout, err)
	}
	stdout, _, err = testkeys.RunCommand(t, "", "revoke", "--file", path, raw[:11])
	if err != nil || !strings.Contains(stdout, "Revoked") {
		t.Fatalf("revoke: %q, %v", stdout, err)
	}

	for _, args := range [][]string{
		{"revoke", "--file", path},
		{"revoke", "--file", path, "a", "b"},
		{"revoke", "--file", path, "sk_NoSuchKy"},
		{"add", "--file", path, "--label", "x", "--expires", "tomorrow"},
		{"add", "--label", "x"},
		{"list", "--file", filepath.Join(t.TempDir(), "missing.json")},
		{"list", "--file", path, "extra"},
	} {
		if stdout, _, err := testkeys.RunCommand(t, "", args...); err == nil {
			t.Errorf("%v: no error (stdout %q)", args, stdout)
		}
	}
}

// Many writers at once on one key file, as in production: `caddy apikey add`
// and `revoke` in other processes while Caddy's usage writer flushes. Every
// update must be in the file at the end, and the file valid throughout.
func TestCommandsConcurrentWithUsageWriter(t *testing.T) {
	const (
		baseKeys   = 6
		revoked    = 4 // the first baseKeys are revoked concurrently
		adders     = 4
		addsEach   = 5
		usageTicks = 25
	)
	base := make([]testkeys.Key, baseKeys)
	for i := range base {
		base[i] = testkeys.New(fmt.Sprintf("base %d", i), nil)
	}
	path := testkeys.WriteKeys(t, "", base...)

	store := teststores.StartFileStore(t, path, 0, -1)

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		added    []string
		errs     = make(chan error, adders*addsEach+revoked+1)
		lastUsed time.Time
	)
	for a := range adders {
		wg.Go(func() {
			for i := range addsEach {
				var stdout, stderr bytes.Buffer
				if err := addKey(&stdout, &stderr, filestore.Records{Path: path, MayCreate: true}, keyops.AddOptions{Label: fmt.Sprintf("added %d/%d", a, i)}, time.Now()); err != nil {
					errs <- fmt.Errorf("add: %w", err)
					continue
				}
				mu.Lock()
				added = append(added, strings.TrimSpace(stdout.String()))
				mu.Unlock()
			}
		})
	}
	for i := range revoked {
		wg.Go(func() {
			if err := revokeKey(new(bytes.Buffer), io.Discard, filestore.Records{Path: path, MayCreate: true}, base[i].Record["id"].(string), time.Now()); err != nil {
				errs <- fmt.Errorf("revoke: %w", err)
			}
		})
	}
	wg.Go(func() {
		// The usage writer: every base key is used at each tick, a
		// second apart (the in-memory resolution), and every tick is
		// flushed; the file is re-read in between, as the watcher does.
		start := time.Now().Truncate(time.Second).Add(-time.Hour)
		for tick := range usageTicks {
			used := start.Add(time.Duration(tick) * 2 * time.Second)
			ks := store.KeySet()
			for _, k := range base {
				key, sum := ks.Lookup(k.Raw)
				if key == nil {
					errs <- fmt.Errorf("tick %d: base key %s vanished from the key set", tick, k.Record["label"])
					return
				}
				store.MarkUsed(key, sum, used.UnixNano())
			}
			store.Flush()
			if err := store.Refresh(); err != nil {
				errs <- fmt.Errorf("tick %d: the key file does not load: %w", tick, err)
				return
			}
			lastUsed = used
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	recs := testkeys.ReadDoc(t, path).Records
	if want := baseKeys + adders*addsEach; len(recs) != want {
		t.Fatalf("%d records in the file, want %d", len(recs), want)
	}
	byHash := make(map[string]keyfile.Record, len(recs))
	for _, rec := range recs {
		byHash[rec.KeyHash] = rec
	}
	for _, raw := range added {
		rec, ok := byHash[keyset.HashKey(raw)]
		if !ok {
			t.Errorf("added key %s is lost", raw[:11])
			continue
		}
		if rec.RevokedAt != nil || rec.LastUsedAt != nil {
			t.Errorf("added key %s: revoked_at %v, last_used_at %v; want neither", rec.ID, rec.RevokedAt, rec.LastUsedAt)
		}
	}
	if len(added) != adders*addsEach {
		t.Errorf("%d keys added, want %d", len(added), adders*addsEach)
	}
	wantUsed := keyset.FormatTimestamp(lastUsed)
	for i, k := range base {
		rec := byHash[k.Record["key_hash"].(string)]
		if (rec.RevokedAt != nil) != (i < revoked) {
			t.Errorf("base key %d: revoked_at = %v, want revoked: %v", i, rec.RevokedAt, i < revoked)
		}
		if rec.LastUsedAt == nil || *rec.LastUsedAt != wantUsed {
			t.Errorf("base key %d: last_used_at = %v, want %s", i, rec.LastUsedAt, wantUsed)
		}
	}
}

// cliChildEnv makes TestCommandLineChild run Caddy's own command line,
// caddycmd.Main, with the tab-separated arguments it holds: the child
// process of TestCommandErrorsArePlainText.
const cliChildEnv = "APIKEY_TEST_CLI_ARGS"

func TestCommandLineChild(t *testing.T) {
	args := os.Getenv(cliChildEnv)
	if args == "" {
		t.Skip("runs only as a child process of TestCommandErrorsArePlainText")
	}
	os.Args = append([]string{"caddy"}, strings.Split(args, "\t")...)
	caddycmd.Main() // exits non-zero on error
	os.Exit(0)
}

// runCaddyCommand runs `caddy args...` in a child process, through Caddy's
// real command line (root command, logger, exit code), and returns its
// stdout, stderr and exit code.
func runCaddyCommand(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	// os.Executable, not os.Args[0]: Caddy's command line, run in process
	// by other tests, may have changed os.Args.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^TestCommandLineChild$", "-test.short", "-test.count=1")
	cmd.Env = append(os.Environ(), cliChildEnv+"="+strings.Join(args, "\t"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		t.Fatalf("running the child process: %v", err)
	}
	// TestMain's note that -short skips the integration tests.
	var kept []string
	for line := range strings.SplitAfterSeq(errOut.String(), "\n") {
		if !strings.HasPrefix(line, "apikey: -short given") {
			kept = append(kept, line)
		}
	}
	return out.String(), strings.Join(kept, ""), code
}

// The `caddy apikey` commands print their errors as plain lines on stderr,
// not as a Caddy JSON log line (whose message would hold the candidates of an
// ambiguous revoke as one escaped string), and exit with status 1.
func TestCommandErrorsArePlainText(t *testing.T) {
	path, _ := revokeFixture(t)
	missing := filepath.Join(t.TempDir(), "missing.json")
	for _, tc := range []struct {
		name string
		args []string
		want []string // stderr, line by line
	}{
		{"ambiguous revoke", []string{"apikey", "revoke", "--file", path, "aaaa"}, []string{
			`caddy apikey revoke: "aaaa" matches 2 keys in ` + path + `; give the full id of one of them:`,
			"  aaaa1111-0000-4000-8000-000000000001  " + "*" + "  alpha",
			"  aaaa2222-0000-4000-8000-000000000002  " + "*" + "  beta",
		}},
		{"short id prefix", []string{"apikey", "revoke", "--file", path, "aa"}, []string{
			`caddy apikey revoke: no key in ` + path + ` has the id or key_prefix "aa"; the start of an id must be at least 4 characters long (see caddy apikey list --file ` + path + `)`,
		}},
		{"revoke, missing file", []string{"apikey", "revoke", "--file", missing, "sk_AbCdEfGh"}, []string{
			"caddy apikey revoke: key file " + missing + ": no such file or directory",
		}},
		{"list, missing file", []string{"apikey", "list", "--file", missing}, []string{
			"caddy apikey list: key file " + missing + ": no such file or directory",
		}},
		{"add, bad expiry", []string{"apikey", "add", "--file", missing, "--label", "x", "--expires", "soon"}, []string{
			`caddy apikey add: --expires "soon": want a duration from now such as 90d, 12h or 30m, or a time such as 2027-01-31T00:00:00Z`,
		}},
		{"hash, no key", []string{"apikey", "hash"}, []string{
			`caddy apikey hash: no key on stdin; pipe the raw key in, e.g. printf '%s' "$KEY" | caddy apikey hash`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stdout, stderr, code := runCaddyCommand(t, tc.args...)
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			for _, line := range lines {
				if strings.HasPrefix(strings.TrimSpace(line), "{") || strings.Contains(line, `"level"`) || strings.Contains(line, `\n`) {
					t.Errorf("stderr has a log line, not plain text: %q", line)
				}
			}
			ok := len(lines) == len(tc.want)
			for i := 0; ok && i < len(lines); i++ {
				if before, after, wild := strings.Cut(tc.want[i], "*"); wild {
					ok = strings.HasPrefix(lines[i], before) && strings.HasSuffix(lines[i], after)
				} else {
					ok = lines[i] == tc.want[i]
				}
			}
			if !ok {
				t.Errorf("stderr:\n%s\nwant these lines:\n%s", stderr, strings.Join(tc.want, "\n"))
			}
		})
	}

	// Success still exits 0, with the output on stdout.
	stdout, stderr, code := runCaddyCommand(t, "apikey", "list", "--file", path)
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "ID ") {
		t.Errorf("list: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// The commands take the Redis password from an {env.*} placeholder in
// --redis, from --redis-password-file or from CADDY_APIKEY_REDIS_PASSWORD,
// and never show it in a message.
func TestCommandRedisPasswordSources(t *testing.T) {
	r := testredis.Start(t)
	const password = "s3cret-pass"
	r.Do("CONFIG", "SET", "requirepass", password)
	t.Setenv(redisPasswordEnv, "")
	host := strings.TrimPrefix(r.URL, "redis://")
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "redis-password")
	writeFile(t, pwFile, password+"\n")
	wrongFile := filepath.Join(dir, "wrong-password")
	writeFile(t, wrongFile, "wrong-pass\r\n")
	emptyFile := filepath.Join(dir, "empty")
	writeFile(t, emptyFile, "\n")

	// A placeholder in the URL, as in the Caddyfile.
	t.Setenv("APIKEY_TEST_REDIS_PASSWORD", password)
	_, stderr, err := testkeys.RunCommand(t, "", "add", "--redis", "redis://:{env.APIKEY_TEST_REDIS_PASSWORD}@"+host, "--prefix", "pw:", "--create", "--label", "placeholder")
	if err != nil {
		t.Fatalf("add with {env.*} in --redis: %v (stderr %q)", err, stderr)
	}
	list := func(env string, args ...string) (string, string, error) {
		t.Helper()
		t.Setenv(redisPasswordEnv, env)
		return testkeys.RunCommand(t, "", append([]string{"list", "--prefix", "pw:", "--json"}, args...)...)
	}
	// From a file, its line end dropped.
	if stdout, stderr, err := list("", "--redis", r.URL, "--redis-password-file", pwFile); err != nil || !strings.Contains(stdout, `"label": "placeholder"`) {
		t.Errorf("list --redis-password-file: %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	// From the environment.
	if stdout, stderr, err := list(password, "--redis", r.URL); err != nil || !strings.Contains(stdout, `"label": "placeholder"`) {
		t.Errorf("list with %s: %v, stdout %q, stderr %q", redisPasswordEnv, err, stdout, stderr)
	}
	// The URL's password comes before the environment's.
	if _, stderr, err := list("wrong-pass", "--redis", "redis://:"+password+"@"+host); err != nil {
		t.Errorf("a password in the URL with a wrong one in %s: %v (stderr %q)", redisPasswordEnv, err, stderr)
	}

	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"no password", "", []string{"--redis", r.URL}, "127.0.0.1"},
		{"wrong password in the file", "", []string{"--redis", r.URL, "--redis-password-file", wrongFile}, "127.0.0.1"},
		{"wrong password in the environment", "wrong-pass", []string{"--redis", r.URL}, "127.0.0.1"},
		{"password in the URL and in a file", "", []string{"--redis", "redis://:wrong-pass@" + host, "--redis-password-file", pwFile}, "give it once"},
		{"empty file", "", []string{"--redis", r.URL, "--redis-password-file", emptyFile}, "empty"},
		{"missing file", "", []string{"--redis", r.URL, "--redis-password-file", filepath.Join(dir, "missing")}, "no such file"},
		{"with --file", "", []string{"--file", filepath.Join(dir, "keys.json"), "--redis-password-file", pwFile}, "goes with --redis"},
	} {
		stdout, stderr, err := list(tc.env, tc.args...)
		if err == nil {
			t.Errorf("%s: list succeeded: %q", tc.name, stdout)
			continue
		}
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: stderr %q does not say %q", tc.name, stderr, tc.want)
		}
		if strings.Contains(stderr, password) || strings.Contains(stderr, "wrong-pass") || strings.Contains(err.Error(), "wrong-pass") {
			t.Errorf("%s: the error shows a password: %q", tc.name, stderr)
		}
	}
}

// Labels and scopes with bidirectional overrides, isolates, marks or
// zero-width characters are shown by list and add with '?' in their place:
// U+202E must not make a label read backwards, nor reorder the row.
func TestCommandOutputNeutralisesInvisibleCharacters(t *testing.T) {
	invisible := []rune{'\u202A', '\u202B', '\u202C', '\u202D', '\u202E', '\u2066', '\u2067', '\u2068', '\u2069',
		'\u200E', '\u200F', '\u061C', '\u200B', '\u200C', '\u200D', '\u2060', '\uFEFF', '\u2028', '\u2029'}
	label := "admin" + string(invisible) + "\u202Egnp.exe"
	path := testkeys.WriteKeys(t, "", testkeys.New(label, map[string]any{"scopes": []string{"read\u202Eetirw"}}))

	var out bytes.Buffer
	if err := listKeys(&out, io.Discard, filestore.Records{Path: path, MayCreate: true}, false, cmdNow); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := addKey(&stdout, &stderr, filestore.Records{Path: path, MayCreate: true}, keyops.AddOptions{Label: "new\u202Ekey", Scopes: []string{"x\u2066y"}}, cmdNow); err != nil {
		t.Fatal(err)
	}
	for what, text := range map[string]string{"list": out.String(), "add": stderr.String()} {
		for _, r := range invisible {
			if strings.ContainsRune(text, r) {
				t.Errorf("%s shows U+%04X as it is:\n%q", what, r, text)
			}
		}
	}
	for _, want := range []string{"admin" + strings.Repeat("?", len(invisible)) + "?gnp.exe", "read?etirw"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("list does not show %q:\n%s", want, out.String())
		}
	}
	for _, want := range []string{`"new?key"`, "x?y"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("add does not show %q:\n%s", want, stderr.String())
		}
	}
}

// Importing an older export after a revoke: the key revoked in Redis stays
// revoked, and import says so, naming it; --reactivate makes it active
// again. Into an empty key set, import says that it cannot tell which keys
// were revoked since. A cache_file as the source gets a warning. Without a
// terminal, import shows no progress.
func TestCommandImportDoesNotReactivateRevokedKeys(t *testing.T) {
	r := testredis.Start(t)
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	export := testkeys.WriteKeys(t, "", a, b)
	redis := []string{"--redis", r.URL, "--prefix", "re:"}
	run := func(args ...string) (string, string, error) {
		t.Helper()
		return testkeys.RunCommand(t, "", append(args, redis...)...)
	}

	// Into an empty key set: all taken as they are, and said so.
	stdout, stderr, err := run("import", "--file", export)
	if err != nil || !strings.Contains(stdout, "Imported 2 keys") {
		t.Fatalf("first import: %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	for _, want := range []string{"held no keys", "cannot tell which keys were revoked", "2 active keys"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("import into an empty key set: stderr %q does not say %q", stderr, want)
		}
	}
	if strings.ContainsAny(stderr, "\r\x1b") || strings.Contains(stderr, "Reading") {
		t.Errorf("import showed progress on a stderr that is no terminal: %q", stderr)
	}

	// a is revoked; the older export is imported again.
	id := a.Record["id"].(string)
	if _, stderr, err := run("revoke", id); err != nil {
		t.Fatalf("revoke: %v (%s)", err, stderr)
	}
	status := func() string {
		t.Helper()
		out, _, err := run("list", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var listed []keyops.Listed
		if err := json.Unmarshal([]byte(out), &listed); err != nil {
			t.Fatal(err)
		}
		for _, k := range listed {
			if k.ID == id {
				return k.Status
			}
		}
		t.Fatalf("key %s is gone", id)
		return ""
	}
	stdout, stderr, err = run("import", "--file", export)
	if err != nil {
		t.Fatalf("import of the older export: %v (stderr %q)", err, stderr)
	}
	if got := status(); got != "revoked" {
		t.Fatalf("import of an older export made the revoked key %s", got)
	}
	for _, want := range []string{"1 keys revoked in", "stay revoked", "--reactivate", id, a.Record["key_prefix"].(string)} {
		if !strings.Contains(stderr, want) {
			t.Errorf("import of the older export: stderr %q does not say %q", stderr, want)
		}
	}
	if strings.Contains(stderr, "held no keys") || strings.Contains(stdout, "Re-activated") {
		t.Errorf("import of the older export: stdout %q, stderr %q", stdout, stderr)
	}

	// Asked to: re-activated, and said so.
	stdout, stderr, err = run("import", "--file", export, "--reactivate")
	if err != nil {
		t.Fatalf("import --reactivate: %v (stderr %q)", err, stderr)
	}
	if got := status(); got != "active" {
		t.Fatalf("import --reactivate left the key %s", got)
	}
	if !strings.Contains(stdout, "Re-activated 1 keys") || !strings.Contains(stdout, id) {
		t.Errorf("import --reactivate: stdout %q does not name the key it re-activated", stdout)
	}

	// A cache_file as the source.
	snap := filepath.Join(t.TempDir(), "cache.json")
	writeFile(t, snap, `{"snapshot": "a snapshot of redis:x, written by caddy-apikey", "api_keys": []}`)
	_, stderr, err = run("import", "--file", snap)
	if err != nil || !strings.Contains(stderr, "cache_file") || !strings.Contains(stderr, "Prefer an export") {
		t.Errorf("import of a cache_file: %v, stderr %q, want a warning", err, stderr)
	}
}
