package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// mustRotate runs rotate and returns the new raw key, checking that stdout
// holds it alone on its line, that stderr never shows it and says it
// cannot be shown again.
func mustRotate(t testing.TB, path string, opts keyops.RotateOptions, now time.Time) (raw, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	if err := rotateKey(&out, &errOut, filestore.Records{Path: path, MayCreate: true}, opts, now); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	raw, ok := strings.CutSuffix(out.String(), "\n")
	if !ok || !testkeys.RawKeyPattern.MatchString(raw) {
		t.Fatalf("stdout of rotate is %q, want the key alone on its line", out.String())
	}
	if strings.Contains(errOut.String(), raw) || strings.Contains(errOut.String(), testkeys.SecretPart(raw)) {
		t.Fatalf("stderr of rotate shows the raw key: %q", errOut.String())
	}
	if !strings.Contains(errOut.String(), "cannot be shown again") {
		t.Errorf("stderr of rotate does not warn that the key cannot be shown again: %q", errOut.String())
	}
	return raw, errOut.String()
}

// newRecordOf returns the record that rotate added for raw, the last one.
func newRecordOf(t testing.TB, path, raw string) keyfile.Record {
	t.Helper()
	recs := testkeys.ReadDoc(t, path).Records
	last := recs[len(recs)-1]
	if last.KeyHash != keyset.HashKey(raw) {
		t.Fatalf("the last record is not the new key's: %+v", last.Record)
	}
	return last
}

// The new record: the old one's label, scopes and unknown members (as they
// were, in their order, after the known members), a new id and key,
// created_at now, last_used_at null and rotated_from; the old key expires
// when the grace ends; other records are left as they were.
func TestCommandRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	other := testkeys.New("other", map[string]any{"id": "bbbb2222-0000-4000-8000-000000000002"})
	oldKey := testkeys.New("CI deploy", map[string]any{
		"id":           "aaaa1111-0000-4000-8000-000000000001",
		"scopes":       []string{"deploy", "read"},
		"last_used_at": "2026-11-20T08:00:00.5+00:00",
		"rotated_from": "99999999-0000-4000-8000-000000000009",
	})
	oldRec, err := json.Marshal(oldKey.Record)
	if err != nil {
		t.Fatal(err)
	}
	otherRec, err := json.Marshal(other.Record)
	if err != nil {
		t.Fatal(err)
	}
	// Unknown members before and after the known ones, one of them with a
	// number encoding/json would not keep as written.
	recText := `{"team": "ops", ` + strings.TrimPrefix(string(oldRec), "{")
	recText = strings.TrimSuffix(recText, "}") + `, "notes": {"ticket": 42, "big": 12345678901234567890}, "owner": "\u00e9quipe"}`
	writeFile(t, path, `{"version": 3, "api_keys": [`+recText+`, `+string(otherRec)+`]}`)

	raw, stderr := mustRotate(t, path, keyops.RotateOptions{Ref: "aaaa1111", Grace: "2h"}, cmdNow)

	doc := testkeys.ReadDoc(t, path)
	if len(doc.Records) != 3 {
		t.Fatalf("%d records, want 3 (the new one appended)", len(doc.Records))
	}
	if text := testkeys.ReadFile(t, path); !strings.Contains(text, string(otherRec)) {
		t.Errorf("the other record changed: %s is no longer in\n%s", otherRec, text)
	}
	nr := newRecordOf(t, path, raw)
	members := testkeys.Members(nr)
	wantOrder := []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "scopes", "rotated_from", "team", "notes", "owner"}
	if got := members.Names(); !slices.Equal(got, wantOrder) {
		t.Errorf("new record members = %v, want %v", got, wantOrder)
	}
	if !testkeys.UUIDv4Pattern.MatchString(nr.ID) || nr.ID == oldKey.Record["id"] {
		t.Errorf("new id = %q, want a new UUID", nr.ID)
	}
	if nr.Label != "CI deploy" || !slices.Equal(nr.Scopes, []string{"deploy", "read"}) || nr.KeyPrefix != raw[:11] {
		t.Errorf("new record = %+v", nr.Record)
	}
	if nr.CreatedAt == nil || *nr.CreatedAt != keyset.FormatTimestamp(cmdNow) || string(members.Get("last_used_at")) != "null" {
		t.Errorf("created_at = %v, last_used_at = %s", nr.CreatedAt, members.Get("last_used_at"))
	}
	if nr.ExpiresAt != nil || nr.RevokedAt != nil {
		t.Errorf("the new key has expires_at %v, revoked_at %v", nr.ExpiresAt, nr.RevokedAt)
	}
	if nr.RotatedFrom == nil || *nr.RotatedFrom != "aaaa1111-0000-4000-8000-000000000001" {
		t.Errorf("rotated_from = %v, want the old id", nr.RotatedFrom)
	}
	if got := string(members.Get("notes")); !strings.Contains(got, "12345678901234567890") || members.GetString("team") != "ops" {
		t.Errorf("unknown members not copied as they were: team %s, notes %s", members.Get("team"), got)
	}
	if got := string(members.Get("owner")); got != `"\u00e9quipe"` {
		t.Errorf("owner = %s, want the escape kept as written", got)
	}

	old := testkeys.FileRecord(t, path, "aaaa1111-0000-4000-8000-000000000001")
	if old.ExpiresAt == nil || *old.ExpiresAt != keyset.FormatTimestamp(cmdNow.Add(2*time.Hour)) || old.RevokedAt != nil {
		t.Errorf("old key: expires_at %v, revoked_at %v; want expires_at now + 2h", old.ExpiresAt, old.RevokedAt)
	}
	if old.RotatedFrom == nil || *old.RotatedFrom != "99999999-0000-4000-8000-000000000009" {
		t.Errorf("the old record lost its own rotated_from: %v", old.RotatedFrom)
	}
	// The old record keeps its members in their order (json.Marshal wrote
	// the known ones sorted); expires_at is added last.
	if got := testkeys.Members(old).Names(); !slices.Equal(got, []string{"team", "created_at", "id", "key_hash", "key_prefix", "label", "last_used_at", "rotated_from", "scopes", "notes", "owner", "expires_at"}) {
		t.Errorf("old record members = %v", got)
	}
	for _, want := range []string{`Rotated key "CI deploy"`, nr.ID, raw[:11], "aaaa1111-0000-4000-8000-000000000001", keyset.FormatTimestamp(cmdNow.Add(2 * time.Hour)), "2h grace", "deploy,read"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr)
		}
	}

	// The handler admits the new key, and the old one until the grace ends.
	ks, err := keyfile.ReadKeySet(path)
	if err != nil {
		t.Fatal(err)
	}
	newK, _ := ks.Lookup(raw)
	oldK, _ := ks.Lookup(oldKey.Raw)
	if newK == nil || oldK == nil {
		t.Fatalf("lookup: new %v, old %v", newK, oldK)
	}
	if newK.ID != nr.ID || !newK.HasScope("deploy") || newK.State(cmdNow.Add(365*24*time.Hour)).String() != "active" {
		t.Errorf("new key: %+v", newK)
	}
	end := cmdNow.Add(2 * time.Hour)
	if oldK.State(cmdNow).String() != "active" || oldK.State(end.Add(-time.Nanosecond)).String() != "active" || oldK.State(end).String() != "expired" {
		t.Errorf("old key status at now, just before and at the end of the grace: %s, %s, %s",
			oldK.State(cmdNow).String(), oldK.State(end.Add(-time.Nanosecond)).String(), oldK.State(end).String())
	}
}

// The old key's expiry is never moved later; the default grace is 24h;
// --expires gives the new key an expiry; a bare-array file stays one.
func TestCommandRotateOldExpiry(t *testing.T) {
	for _, tc := range []struct {
		name, grace, oldExpires, wantOld string
	}{
		{"no expiry, default grace", "", "", keyset.FormatTimestamp(cmdNow.Add(24 * time.Hour))},
		{"later expiry brought forward", "24h", keyset.FormatTimestamp(cmdNow.Add(48 * time.Hour)), keyset.FormatTimestamp(cmdNow.Add(24 * time.Hour))},
		{"earlier expiry kept as written", "24h", "2026-11-25T21:14:31+00:00", "2026-11-25T21:14:31+00:00"},
		{"grace in days", "7d", "", keyset.FormatTimestamp(cmdNow.Add(7 * 24 * time.Hour))},
		{"short grace", "1500ms", "", keyset.FormatTimestamp(cmdNow.Add(1500 * time.Millisecond))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := map[string]any{}
			if tc.oldExpires != "" {
				extra["expires_at"] = tc.oldExpires
			}
			k := testkeys.New("svc", extra)
			// Compact, as no writer of this plugin would render it.
			path := filepath.Join(t.TempDir(), "keys.json")
			data, err := json.Marshal(map[string]any{"api_keys": []any{k.Record}})
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, path, string(data))
			oldBytes := string(testkeys.ReadDoc(t, path).Records[0].Raw())
			_, stderr := mustRotate(t, path, keyops.RotateOptions{Ref: k.Record["key_prefix"].(string), Grace: tc.grace}, cmdNow)
			old := testkeys.FileRecord(t, path, k.Record["id"].(string))
			if old.ExpiresAt == nil || *old.ExpiresAt != tc.wantOld || old.RevokedAt != nil {
				t.Errorf("old key: expires_at %v, revoked_at %v; want expires_at %s", old.ExpiresAt, old.RevokedAt, tc.wantOld)
			}
			if tc.oldExpires == tc.wantOld {
				if !strings.Contains(stderr, "still expires at "+tc.wantOld) {
					t.Errorf("stderr does not say the old expiry was kept:\n%s", stderr)
				}
				if got := string(testkeys.ReadDoc(t, path).Records[0].Raw()); got != oldBytes {
					t.Errorf("the old record, unchanged, was rewritten:\n%s\nwas\n%s", got, oldBytes)
				}
			}
		})
	}

	t.Run("new key's --expires", func(t *testing.T) {
		k := testkeys.New("svc", nil)
		path := filepath.Join(t.TempDir(), "keys.json")
		data, _ := json.Marshal([]any{k.Record})
		writeFile(t, path, string(data))
		raw, stderr := mustRotate(t, path, keyops.RotateOptions{Ref: k.Record["id"].(string), Expires: "90d"}, cmdNow)
		nr := newRecordOf(t, path, raw)
		want := keyset.FormatTimestamp(cmdNow.Add(90 * 24 * time.Hour))
		if nr.ExpiresAt == nil || *nr.ExpiresAt != want || !strings.Contains(stderr, "expires: "+want) {
			t.Errorf("new key expires_at = %v, want %s; stderr:\n%s", nr.ExpiresAt, want, stderr)
		}
		if got := testkeys.Members(nr).Names(); !slices.Equal(got, []string{"id", "label", "key_hash", "key_prefix", "created_at", "last_used_at", "expires_at", "rotated_from"}) {
			t.Errorf("new record members = %v", got)
		}
		if !testkeys.ReadDoc(t, path).IsList() {
			t.Error("a bare-array key file is no longer one")
		}
	})
}

// --grace 0 revokes the old key at once.
func TestCommandRotateGraceZero(t *testing.T) {
	for _, grace := range []string{"0", "0s"} {
		t.Run(grace, func(t *testing.T) {
			k := testkeys.New("svc", map[string]any{"expires_at": keyset.FormatTimestamp(cmdNow.Add(time.Hour))})
			path := testkeys.WriteKeys(t, "", k)
			raw, stderr := mustRotate(t, path, keyops.RotateOptions{Ref: k.Record["id"].(string), Grace: grace}, cmdNow)
			old := testkeys.FileRecord(t, path, k.Record["id"].(string))
			if old.RevokedAt == nil || *old.RevokedAt != keyset.FormatTimestamp(cmdNow) {
				t.Errorf("old key revoked_at = %v, want now", old.RevokedAt)
			}
			if old.ExpiresAt == nil || *old.ExpiresAt != k.Record["expires_at"] {
				t.Errorf("old key expires_at = %v, want it unchanged", old.ExpiresAt)
			}
			if !strings.Contains(stderr, "revoked at "+keyset.FormatTimestamp(cmdNow)) {
				t.Errorf("stderr does not say the old key is revoked:\n%s", stderr)
			}
			ks, err := keyfile.ReadKeySet(path)
			if err != nil {
				t.Fatal(err)
			}
			if k, _ := ks.Lookup(k.Raw); k == nil || k.State(cmdNow).String() != "revoked" {
				t.Error("the old key is not revoked")
			}
			if k, _ := ks.Lookup(raw); k == nil || k.State(cmdNow).String() != "active" {
				t.Error("the new key is not active")
			}
		})
	}
}

// Refusals change nothing and print nothing on stdout: names resolved as
// revoke resolves them, revoked and expired keys, a key already rotated, bad
// flags.
func TestCommandRotateRefusals(t *testing.T) {
	revoked := testkeys.New("gone", map[string]any{"id": "eeee5555-0000-4000-8000-000000000005", "revoked_at": "2026-11-02T00:00:00+00:00"})
	expired := testkeys.New("old", map[string]any{"id": "ffff6666-0000-4000-8000-000000000006", "expires_at": keyset.FormatTimestamp(cmdNow)})
	replaced := testkeys.New("replaced", map[string]any{"id": "abab7777-0000-4000-8000-000000000007"})
	successor := testkeys.New("replaced", map[string]any{"id": "abab8888-0000-4000-8000-000000000008", "key_prefix": "sk_NEXTpref", "rotated_from": "abab7777-0000-4000-8000-000000000007"})
	for _, tc := range []struct {
		name string
		opts keyops.RotateOptions
		want []string
	}{
		{"unknown", keyops.RotateOptions{Ref: "sk_NoSuchKy"}, []string{"no key", "sk_NoSuchKy"}},
		{"id prefix too short", keyops.RotateOptions{Ref: "ccc"}, []string{"no key", "at least 4 characters"}},
		{"ambiguous id prefix", keyops.RotateOptions{Ref: "aaaa"}, []string{"matches 2 keys", "\n  aaaa1111-0000-4000-8000-000000000001  ", "alpha", "\n  aaaa2222-0000-4000-8000-000000000002  ", "beta"}},
		{"ambiguous key prefix", keyops.RotateOptions{Ref: "sk_SAMEpref"}, []string{"matches 2 keys", "gamma", "delta"}},
		{"blank", keyops.RotateOptions{Ref: " "}, []string{"name the key to rotate"}},
		{"revoked", keyops.RotateOptions{Ref: "eeee5555"}, []string{"eeee5555-0000-4000-8000-000000000005", "revoked at 2026-11-02T00:00:00+00:00", "only an active key", "caddy apikey add"}},
		{"expired", keyops.RotateOptions{Ref: "ffff6666"}, []string{"ffff6666-0000-4000-8000-000000000006", "expired at " + keyset.FormatTimestamp(cmdNow), "only an active key"}},
		{"already rotated", keyops.RotateOptions{Ref: "abab7777"}, []string{"abab7777-0000-4000-8000-000000000007", "already rotated", "abab8888-0000-4000-8000-000000000008", "sk_NEXTpref", "rotate that one"}},
		{"grace not a duration", keyops.RotateOptions{Ref: "cccc", Grace: "soon"}, []string{`--grace "soon"`, "24h", "0 to revoke"}},
		{"negative grace", keyops.RotateOptions{Ref: "cccc", Grace: "-1h"}, []string{"--grace -1h", "negative"}},
		{"bad --expires", keyops.RotateOptions{Ref: "cccc", Expires: "tomorrow"}, []string{`--expires "tomorrow"`}},
		{"past --expires", keyops.RotateOptions{Ref: "cccc", Expires: "2020-01-01"}, []string{"--expires 2020-01-01", "past"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, _ := revokeFixture(t)
			testkeys.WriteKeys(t, path, append(readFixtureKeys(t, path), revoked, expired, replaced, successor)...)
			before := testkeys.ReadFile(t, path)
			var out, errOut bytes.Buffer
			err := rotateKey(&out, &errOut, filestore.Records{Path: path, MayCreate: true}, tc.opts, cmdNow)
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q: %v", want, err)
				}
			}
			if got := testkeys.ReadFile(t, path); got != before {
				t.Errorf("a refused rotate changed the file:\n%s", got)
			}
			if out.Len() != 0 || errOut.Len() != 0 {
				t.Errorf("a refused rotate printed %q and %q", out.String(), errOut.String())
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys.json")
		err := rotateKey(io.Discard, io.Discard, filestore.Records{Path: path, MayCreate: true}, keyops.RotateOptions{Ref: "sk_AbCdEfGh"}, cmdNow)
		if want := "key file " + path + ": no such file or directory"; err == nil || !errors.Is(err, os.ErrNotExist) || err.Error() != want {
			t.Errorf("error = %v, want %q", err, want)
		}
		for _, p := range []string{path, path + ".lock"} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("rotate of a missing key file made %s", p)
			}
		}
	})
}

// readFixtureKeys returns the records of a key file as testKeys without
// their raw keys, to write them again with more.
func readFixtureKeys(t *testing.T, path string) []testkeys.Key {
	t.Helper()
	var top struct {
		Keys []map[string]any `json:"api_keys"`
	}
	if err := json.Unmarshal([]byte(testkeys.ReadFile(t, path)), &top); err != nil {
		t.Fatal(err)
	}
	keys := make([]testkeys.Key, len(top.Keys))
	for i, r := range top.Keys {
		keys[i] = testkeys.Key{Record: r}
	}
	return keys
}

// Through cobra: flags and the argument reach rotateKey, the key alone is on
// stdout; through Caddy's real command line, a refusal is plain text on
// stderr with exit status 1, as revoke's.
func TestCommandRotateCommandLine(t *testing.T) {
	k := testkeys.New("wired", map[string]any{"scopes": []string{"read"}})
	path := testkeys.WriteKeys(t, "", k)
	stdout, stderr, err := testkeys.RunCommand(t, "", "rotate", "--file", path, "--grace", "1h", k.Record["key_prefix"].(string))
	if err != nil {
		t.Fatalf("rotate: %v (stderr %q)", err, stderr)
	}
	raw := strings.TrimSuffix(stdout, "\n")
	if !testkeys.RawKeyPattern.MatchString(raw) || strings.Contains(stderr, testkeys.SecretPart(raw)) || !strings.Contains(stderr, "cannot be shown again") {
		t.Fatalf("rotate: stdout %q, stderr %q", stdout, stderr)
	}
	if old := testkeys.FileRecord(t, path, k.Record["id"].(string)); old.ExpiresAt == nil {
		t.Error("--grace 1h set no expiry on the old key")
	}
	stdout, _, err = testkeys.RunCommand(t, "", "list", "--file", path, "--json")
	if err != nil || !strings.Contains(stdout, `"rotated_from": "`+k.Record["id"].(string)+`"`) {
		t.Errorf("list --json does not show rotated_from: %q, %v", stdout, err)
	}
	for _, args := range [][]string{
		{"rotate", "--file", path},
		{"rotate", "--file", path, "a", "b"},
		{"rotate", "--file", path, "--grace", "x", raw[:11]},
	} {
		if stdout, _, err := testkeys.RunCommand(t, "", args...); err == nil || stdout != "" {
			t.Errorf("%v: error %v, stdout %q", args, err, stdout)
		}
	}

	fixture, _ := revokeFixture(t)
	missing := filepath.Join(t.TempDir(), "missing.json")
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"apikey", "rotate", "--file", fixture, "aaaa"}, []string{
			`caddy apikey rotate: "aaaa" matches 2 keys in ` + fixture + `; give the full id of one of them:`,
			"  aaaa1111-0000-4000-8000-000000000001  ",
			"  aaaa2222-0000-4000-8000-000000000002  ",
		}},
		{[]string{"apikey", "rotate", "--file", missing, "sk_AbCdEfGh"}, []string{
			"caddy apikey rotate: key file " + missing + ": no such file or directory",
		}},
	} {
		stdout, stderr, code := runCaddyCommand(t, tc.args...)
		lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
		ok := code == 1 && stdout == "" && len(lines) == len(tc.want)
		for i := 0; ok && i < len(lines); i++ {
			ok = strings.HasPrefix(lines[i], tc.want[i])
		}
		if !ok {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s\nwant exit 1 and lines starting:\n%s", tc.args, code, stdout, stderr, strings.Join(tc.want, "\n"))
		}
	}
}
