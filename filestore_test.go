package apikey

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// Hashes of made-up keys for the validation tests.
var (
	hashA = keyset.HashKey("sk_store_test_key_a")
	hashB = keyset.HashKey("sk_store_test_key_b")
)

// mustParse parses a key file's contents, failing the test on an error.
func mustParse(t *testing.T, data string) *keyset.KeySet {
	t.Helper()
	ks, err := keyfile.ParseKeySet([]byte(data))
	if err != nil {
		t.Fatalf("keyfile.ParseKeySet: %v\nfile:\n%s", err, data)
	}
	return ks
}

// parseErr parses a key file's contents that must be refused and returns
// the error's message.
func parseErr(t *testing.T, data string) string {
	t.Helper()
	ks, err := keyfile.ParseKeySet([]byte(data))
	if err == nil {
		t.Fatalf("keyfile.ParseKeySet accepted a bad file (%d keys):\n%s", ks.Len(), data)
	}
	return err.Error()
}

func wantContains(t *testing.T, msg string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("message %q does not contain %q", msg, p)
		}
	}
}

func TestStoreObjectShapeKeepsOtherMembers(t *testing.T) {
	data := fmt.Sprintf(`{
  "server": {"port": 8888, "debug": false},
  "api_keys": [
    {"id": "a", "label": "first", "key_hash": %q, "key_prefix": "sk_store_t",
     "created_at": "2026-11-25T20:14:31+00:00", "last_used_at": null,
     "note": "unknown member", "tags": ["x", 1, {"deep": true}]},
    {"id": "b", "label": "second", "key_hash": %q, "key_prefix": "sk_store_t",
     "created_at": "2026-11-25T20:14:31+00:00", "last_used_at": "2026-11-26T01:02:03.5+00:00"}
  ],
  "trailing_member": [1, 2, 3]
}`, hashA, hashB)
	ks := mustParse(t, data)
	if ks.Len() != 2 {
		t.Fatalf("got %d keys; want 2", ks.Len())
	}
	for raw, id := range map[string]string{"sk_store_test_key_a": "a", "sk_store_test_key_b": "b"} {
		k, sum := ks.Lookup(raw)
		if k == nil || k.ID != id {
			t.Fatalf("lookup(%s) = %+v, want id %s", raw[:11], k, id)
		}
		if keyset.HashKey(raw) != fmt.Sprintf("%x", sum) {
			t.Errorf("lookup returned sum %x, want %s", sum, keyset.HashKey(raw))
		}
	}
	if k, _ := ks.Lookup("sk_store_test_key_a"); k.Label != "first" || k.Prefix != "sk_store_t" {
		t.Errorf("key a: label %q prefix %q", k.Label, k.Prefix)
	}
	if k, _ := ks.Lookup("sk_not_a_key"); k != nil {
		t.Errorf("an unknown key was found: %+v", k)
	}
}

func TestStoreBareArrayShape(t *testing.T) {
	data := fmt.Sprintf(`[
  {"id": "a", "label": "", "key_hash": %q, "key_prefix": "", "created_at": null, "last_used_at": null}
]`, hashA)
	ks := mustParse(t, data)
	if k, _ := ks.Lookup("sk_store_test_key_a"); k == nil || k.ID != "a" {
		t.Fatalf("bare array: lookup = %+v", k)
	}
}

func TestStoreEmptyListsAreValid(t *testing.T) {
	for _, data := range []string{`[]`, `{"api_keys": []}`, ` {"other": 1} `} {
		ks := mustParse(t, data)
		if ks.Len() != 0 {
			t.Errorf("%s: got %d keys", data, ks.Len())
		}
	}
}

// TestStoreReferenceAppFile loads a file exactly as the reference (Python)
// application writes it: json.dump(config, indent=2) with ensure_ascii,
// isoformat() timestamps with and without fractional seconds, null
// last_used_at, and the application's other settings beside "api_keys".
func TestStoreReferenceAppFile(t *testing.T) {
	rawCI := "sk_Q2hlY2tpbmctdGhlLXJlZmVyZW5jZS1mb3JtYXQtMDE"
	rawBot := "sk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCd"
	data := fmt.Sprintf(`{
  "soulsync": {
    "library_path": "/music",
    "scan_interval": 3600
  },
  "api_keys": [
    {
      "id": "3f1c2a9e-5b7d-4e2a-9c1f-0a8b7c6d5e4f",
      "label": "Caf\u00e9 \u2014 CI deploy",
      "key_hash": "%s",
      "key_prefix": "%s",
      "created_at": "2026-11-25T20:14:31.123456+00:00",
      "last_used_at": null
    },
    {
      "id": "b2d4f6a8-1c3e-4a5b-8d7f-9e0a1b2c3d4e",
      "label": "",
      "key_hash": "%s",
      "key_prefix": "%s",
      "created_at": "2026-11-25T20:14:31+00:00",
      "last_used_at": "2026-11-26T08:00:01.000001+00:00"
    }
  ],
  "webhooks": []
}`, keyset.HashKey(rawCI), rawCI[:11], keyset.HashKey(rawBot), rawBot[:11])
	path := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, err := keyfile.ReadKeySet(path)
	if err != nil {
		t.Fatalf("the reference application's file does not load: %v", err)
	}
	k, _ := ks.Lookup(rawCI)
	if k == nil {
		t.Fatal("the CI key is not found")
	}
	if k.ID != "3f1c2a9e-5b7d-4e2a-9c1f-0a8b7c6d5e4f" || k.Label != "Café — CI deploy" || k.Prefix != rawCI[:11] {
		t.Errorf("CI key = id %q label %q prefix %q", k.ID, k.Label, k.Prefix)
	}
	if k.Revoked() || testkeys.ExpiresAt(k) != 0 || len(k.Scopes) != 0 {
		t.Errorf("CI key has lifecycle state it was not given: %+v", k)
	}
	if k, _ := ks.Lookup(rawBot); k == nil || k.ID != "b2d4f6a8-1c3e-4a5b-8d7f-9e0a1b2c3d4e" {
		t.Errorf("bot key = %+v", k)
	}
	// The file on disk is untouched by reading it.
	after, _ := os.ReadFile(path)
	if string(after) != data {
		t.Error("readKeySet changed the key file")
	}
}

func TestStoreLookupAcceptsUppercaseHash(t *testing.T) {
	data := fmt.Sprintf(`[{"id": "up", "key_hash": %q}]`, strings.ToUpper(hashA))
	ks := mustParse(t, data)
	if k, _ := ks.Lookup("sk_store_test_key_a"); k == nil || k.ID != "up" {
		t.Fatalf("uppercase key_hash: lookup = %+v", k)
	}
	// Mixed case too, and the uppercase form collides with the lowercase.
	mixed := strings.ToUpper(hashA[:10]) + hashA[10:]
	msg := parseErr(t, fmt.Sprintf(`[{"id": "lo", "key_hash": %q}, {"id": "mixed", "key_hash": %q}]`, hashA, mixed))
	wantContains(t, msg, "record 2", `"mixed"`, `"lo"`, "same")
}

func TestStoreLifecycleMembers(t *testing.T) {
	data := fmt.Sprintf(`[
  {"id": "a", "key_hash": %q, "expires_at": "2030-01-02T03:04:05.5+01:00", "scopes": ["read", "write"]},
  {"id": "b", "key_hash": %q, "revoked_at": "2026-11-25T20:14:31+00:00", "expires_at": null}
]`, hashA, hashB)
	ks := mustParse(t, data)
	a, _ := ks.Lookup("sk_store_test_key_a")
	want := time.Date(2030, 1, 2, 2, 4, 5, 500_000_000, time.UTC).UnixNano()
	if testkeys.ExpiresAt(a) != want {
		t.Errorf("expiresAt = %d, want %d", testkeys.ExpiresAt(a), want)
	}
	if a.Revoked() || !a.HasScope("read") || !a.HasScope("write") || a.HasScope("admin") || testkeys.ScopesJoined(a) != "read,write" {
		t.Errorf("key a: %+v", a)
	}
	if a.Expired(want-1) || !a.Expired(want) {
		t.Error("expired() is wrong around expires_at")
	}
	b, _ := ks.Lookup("sk_store_test_key_b")
	if !b.Revoked() || testkeys.ExpiresAt(b) != 0 || b.Expired(time.Now().UnixNano()) {
		t.Errorf("key b: %+v", b)
	}
}

func TestStoreValidationErrors(t *testing.T) {
	rec := func(id, hash string, extra string) string {
		return fmt.Sprintf(`{"id": %q, "label": "l", "key_hash": %q, "key_prefix": "sk_x"%s}`, id, hash, extra)
	}
	tests := []struct {
		name string
		data string
		want []string
	}{
		{"empty file", "", []string{"empty"}},
		{"blank file", " \n\t\n", []string{"empty"}},
		{"top level string", `"api_keys"`, []string{"JSON object", "api_keys"}},
		{"top level null", `null`, []string{"JSON object"}},
		{"top level number", `42`, []string{"JSON object"}},
		{"api_keys an object", `{"api_keys": {"id": "a"}}`, []string{`"api_keys"`, "list", "object"}},
		{"api_keys a string", `{"api_keys": "none"}`, []string{`"api_keys"`, "list", "string"}},
		{"record a number", `{"api_keys": [1]}`, []string{"record 1", "object"}},
		{"record a string", `[` + rec("a", hashA, "") + `, "b"]`, []string{"record 2", "object"}},
		{"record null", `[null]`, []string{"record 1", "object"}},
		{"missing id", `[` + rec("a", hashA, "") + `, {"key_hash": "` + hashB + `"}]`, []string{"record 2", `"id"`, "missing"}},
		{"empty id", `[{"id": "", "key_hash": "` + hashA + `"}]`, []string{"record 1", `"id"`, "empty"}},
		{"duplicate id", `[` + rec("dup", hashA, "") + `,` + rec("dup", hashB, "") + `]`, []string{"record 2", `"dup"`, "record 1"}},
		{"missing key_hash", `[` + rec("a", hashA, "") + `, {"id": "nohash"}]`, []string{"record 2", `"nohash"`, "key_hash", "missing"}},
		{"short key_hash", `[` + rec("short", hashA[:63], "") + `]`, []string{"record 1", `"short"`, "key_hash", "64", "63"}},
		{"long key_hash", `[` + rec("long", hashA+"0", "") + `]`, []string{"record 1", `"long"`, "key_hash", "64", "65"}},
		{"non-hex key_hash", `[` + rec("nothex", "g"+hashA[1:], "") + `]`, []string{"record 1", `"nothex"`, "key_hash", "hexadecimal"}},
		{"duplicate key_hash", `[` + rec("one", hashA, "") + `,` + rec("two", hashA, "") + `]`, []string{"record 2", `"two"`, `"one"`, "key_hash"}},
		{"label a number", `[` + rec("a", hashA, "") + `, {"id": "numlabel", "label": 5, "key_hash": "` + hashB + `"}]`, []string{"record 2", `"numlabel"`, `"label"`, "string", "number"}},
		{"id a number", `[{"id": 7, "key_hash": "` + hashA + `"}]`, []string{"record 1", `"id"`, "string", "number"}},
		{"key_hash a list", `[{"id": "a", "key_hash": ["x"]}]`, []string{"record 1", `"a"`, `"key_hash"`, "string", "array"}},
		{"created_at a number", `[{"id": "a", "key_hash": "` + hashA + `", "created_at": 1700000000}]`, []string{"record 1", `"a"`, `"created_at"`}},
		{"bad expires_at", `[` + rec("exp", hashA, `, "expires_at": "next tuesday"`) + `]`, []string{"record 1", `"exp"`, "expires_at", "next tuesday", "ISO 8601"}},
		{"expires_at a number", `[` + rec("expn", hashA, `, "expires_at": 5`) + `]`, []string{"record 1", `"expn"`, `"expires_at"`, "number"}},
		{"bad revoked_at", `[` + rec("rev", hashA, `, "revoked_at": "yes"`) + `]`, []string{"record 1", `"rev"`, "revoked_at", "ISO 8601"}},
		{"revoked_at true", `[` + rec("revb", hashA, `, "revoked_at": true`) + `]`, []string{"record 1", `"revb"`, `"revoked_at"`, "bool"}},
		{"scope with a space", `[` + rec("sc", hashA, `, "scopes": ["read", "a b"]`) + `]`, []string{"record 1", `"sc"`, "scope", `"a b"`}},
		{"scope with a comma", `[` + rec("sc", hashA, `, "scopes": ["a,b"]`) + `]`, []string{"record 1", `"sc"`, "scope"}},
		{"empty scope", `[` + rec("sc", hashA, `, "scopes": [""]`) + `]`, []string{"record 1", `"sc"`, "scope"}},
		{"scopes a string", `[` + rec("scs", hashA, `, "scopes": "read"`) + `]`, []string{"record 1", `"scs"`, `"scopes"`, "list"}},
		{"rotated_from a number", `[` + rec("rf", hashA, `, "rotated_from": 5`) + `]`, []string{"record 1", `"rf"`, `"rotated_from"`, "string", "number"}},
		{"rotated_from twice", `[` + rec("rf2", hashA, `, "rotated_from": "a", "rotated_from": "b"`) + `]`, []string{"record 1", `"rotated_from"`, "twice"}},
		{"scopes of numbers", `[` + rec("scn", hashA, `, "scopes": [1]`) + `]`, []string{"record 1", `"scn"`, "scopes", "number"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantContains(t, parseErr(t, tt.data), tt.want...)
		})
	}
}

func TestStoreSyntaxErrorLineAndColumn(t *testing.T) {
	tests := []struct {
		data      string
		line, col int
	}{
		// The stray comma before '}' is reported at the comma.
		{"{\n  \"api_keys\": [\n    {\"id\": \"a\",}\n  ]\n}\n", 3, 15},
		{"[\n  {\"id\": \"a\"}\n  {\"id\": \"b\"}\n]", 3, 3},
		{"{\"api_keys\": [}", 1, 15},
		{"\n\n\n   x", 4, 4},
	}
	for _, tt := range tests {
		msg := parseErr(t, tt.data)
		want := fmt.Sprintf("line %d, column %d", tt.line, tt.col)
		if !strings.Contains(msg, want) {
			t.Errorf("%q: message %q does not give %q", tt.data, msg, want)
		}
	}
	// A trailing comma is named as such.
	wantContains(t, parseErr(t, "[\n  {\"id\": \"a\"},\n]"), "line 2, column 14", "comma before ']'", "trailing comma")
	// A file cut short is a syntax error too.
	msg := parseErr(t, "{\"api_keys\": [\n  {\"id\": \"a\"")
	wantContains(t, msg, "JSON")
}

func TestReadKeySetNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "broken-keys.json")
	if err := os.WriteFile(path, []byte(`[{"id": "x", "key_hash": "nothex"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := keyfile.ReadKeySet(path)
	if err == nil {
		t.Fatal("a broken file loaded")
	}
	wantContains(t, err.Error(), path, "record 1", `"x"`, "key_hash")
	var kfe *keyfile.Error
	if !errors.As(err, &kfe) || kfe.Path != path {
		t.Errorf("error %v is not a *keyfile.Error for %s", err, path)
	}

	// Syntax errors name the file as well as the position.
	if err := os.WriteFile(path, []byte("{\n  \"api_keys\": [,]\n}"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = keyfile.ReadKeySet(path)
	if err == nil {
		t.Fatal("a file with a syntax error loaded")
	}
	wantContains(t, err.Error(), path, "line 2, column 16")

	// A missing file is an error that names it.
	missing := filepath.Join(dir, "no-such-keys.json")
	_, err = keyfile.ReadKeySet(missing)
	if err == nil {
		t.Fatal("a missing key file loaded")
	}
	wantContains(t, err.Error(), missing)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error %v is not os.ErrNotExist", err)
	}
}

func TestHashKey(t *testing.T) {
	// SHA-256 of "abc", as hashlib.sha256(b"abc").hexdigest() gives it.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := keyset.HashKey("abc"); got != want {
		t.Fatalf("keyset.HashKey(abc) = %s, want %s", got, want)
	}
}

// Member names are case-sensitive, as in the reference application: a known
// member spelled in another case, or repeated, is an error rather than
// something encoding/json would quietly accept.
func TestMemberNamesAreStrict(t *testing.T) {
	hash := strings.Repeat("ab", 32)
	other := strings.Repeat("cd", 32)
	cases := map[string]struct{ file, want string }{
		"API_KEYS":         {`{"API_KEYS": [{"id": "a", "key_hash": "` + hash + `"}]}`, `member "API_KEYS" must be spelled "api_keys"`},
		"api_keys twice":   {`{"api_keys": [], "api_keys": [{"id": "a", "key_hash": "` + hash + `"}]}`, `member "api_keys" appears twice`},
		"KEY_HASH":         {`{"api_keys": [{"id": "a", "KEY_HASH": "` + hash + `"}]}`, `record 1 (id "a"): member "KEY_HASH" must be spelled "key_hash"`},
		"both hash cases":  {`{"api_keys": [{"id": "a", "key_hash": "` + hash + `", "Key_Hash": "` + other + `"}]}`, `must be spelled "key_hash"`},
		"key_hash twice":   {`[{"id": "a", "key_hash": "` + hash + `", "key_hash": "` + other + `"}]`, `record 1 (id "a"): member "key_hash" appears twice`},
		"ID in a record":   {`[{"ID": "a", "key_hash": "` + hash + `"}]`, `record 1: member "ID" must be spelled "id"`},
		"escaped variants": {`[{"id": "a\u0062", "key_hash": "` + hash + `", "Label": "x"}]`, `member "Label" must be spelled "label"`},
	}
	for name, c := range cases {
		_, err := keyfile.ParseKeySet([]byte(c.file))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, c.want)
		}
	}
	// Unknown members may repeat and may be spelled any way.
	if _, err := keyfile.ParseKeySet([]byte(`[{"id": "a", "key_hash": "` + hash + `", "note": 1, "note": 2, "Notes": 3}]`)); err != nil {
		t.Fatal(err)
	}
}

// An expiry at the Unix epoch, or outside the years an int64 of nanoseconds
// holds, is still an expiry.
func TestExpiryAtOddTimes(t *testing.T) {
	now := time.Now().UnixNano()
	for at, wantExpired := range map[string]bool{
		"1970-01-01T00:00:00Z":      true,
		"1500-01-01T00:00:00Z":      true,
		"1600-06-01T00:00:00+00:00": true,
		"0001-01-01T00:00:00Z":      true,
		"3000-01-01T00:00:00Z":      false,
		"9999-12-31T23:59:59Z":      false,
	} {
		file := `[{"id": "a", "key_hash": "` + strings.Repeat("ab", 32) + `", "expires_at": "` + at + `"}]`
		ks, err := keyfile.ParseKeySet([]byte(file))
		if err != nil {
			t.Fatalf("%s: %v", at, err)
		}
		if got := ks.At(0).Expired(now); got != wantExpired {
			t.Errorf("expires_at %s: expired = %v, want %v", at, got, wantExpired)
		}
	}
}

// The streamed reader reuses one buffer for every record: what a key keeps
// must be copies. A lone scope once stayed a view of the buffer, and the
// next records overwrote it.
func TestStreamedKeySetKeepsCopies(t *testing.T) {
	var recs []string
	for i := 0; i < 50; i++ {
		recs = append(recs, fmt.Sprintf(`{"id": "id-%02d-xxxxxxxx", "label": "label %d", "key_hash": %q, "key_prefix": "sk_%08d", "scopes": ["scope%02d"]}`,
			i, i, keyset.HashKey(fmt.Sprint("sk_streamed_", i)), i, i))
	}
	data := []byte(`{"api_keys": [` + strings.Join(recs, ",\n") + `]}`)
	ks, err := keyfile.DecodeKeySet(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range ks.Len() {
		k := ks.At(i)
		if want := fmt.Sprintf("scope%02d", i); testkeys.ScopesJoined(k) != want || len(k.Scopes) != 1 || k.Scopes[0] != want {
			t.Errorf("key %d: scopes %q / %q, want %q", i, k.Scopes, testkeys.ScopesJoined(k), want)
		}
		if want := fmt.Sprintf("id-%02d-xxxxxxxx", i); k.ID != want || k.Label != fmt.Sprint("label ", i) || k.Prefix != fmt.Sprintf("sk_%08d", i) {
			t.Errorf("key %d: %q %q %q", i, k.ID, k.Label, k.Prefix)
		}
	}
}

// A key file that holds something other than records (a link pointed at
// another JSON file, say) is refused without its content in the error,
// which goes to the logs.
func TestParseKeySetErrorQuotesNoContent(t *testing.T) {
	for _, data := range []string{
		`["the content of another file"]`,
		`{"api_keys": ["the content of another file"]}`,
		`[{"id": "a", "label": "x", "key_hash": "` + strings.Repeat("ab", 32) + `", "key_prefix": "sk_"}, "the content of another file"]`,
	} {
		_, err := keyfile.ParseKeySet([]byte(data))
		if err == nil {
			t.Fatalf("%s: accepted", data)
		}
		if strings.Contains(err.Error(), "content") {
			t.Errorf("%s: the error quotes the file: %v", data, err)
		}
		if !strings.Contains(err.Error(), "want a JSON object, got a JSON string") {
			t.Errorf("%s: error %q does not say what was found", data, err)
		}
	}
}
