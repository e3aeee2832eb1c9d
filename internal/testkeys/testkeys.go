// Package testkeys makes keys and key files for the tests of every package
// of caddy-apikey, and reads key files back for their checks.
package testkeys

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/google/uuid"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// Key is a key made for a test: its raw value and its record.
type Key struct {
	Raw    string
	Record map[string]any
}

// New makes a key in the reference application's format (sk_ and 32
// random bytes in URL-safe base64). extra members are added to (or replace
// members of) its record.
func New(label string, extra map[string]any) Key {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	raw := "sk_" + base64.RawURLEncoding.EncodeToString(b)
	rec := map[string]any{
		"id":           uuid.NewString(),
		"label":        label,
		"key_hash":     keyset.HashKey(raw),
		"key_prefix":   raw[:11],
		"created_at":   "2026-11-25T20:14:31.123456+00:00",
		"last_used_at": nil,
	}
	for k, v := range extra {
		rec[k] = v
	}
	return Key{Raw: raw, Record: rec}
}

// ID is the key's id.
func (k Key) ID() string { return k.Record["id"].(string) }

// Rec is the key's record, decoded.
func (k Key) Rec() keyset.Record {
	var r keyset.Record
	data, err := json.Marshal(k.Record)
	if err == nil {
		err = json.Unmarshal(data, &r)
	}
	if err != nil {
		panic(err)
	}
	return r
}

// WriteKeys writes a key file holding keys, as {"api_keys": [...]}, into a
// new temporary folder unless path is given, and returns its path.
func WriteKeys(t testing.TB, path string, keys ...Key) string {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "keys.json")
	}
	recs := make([]map[string]any, len(keys))
	for i, k := range keys {
		recs[i] = k.Record
	}
	data, err := json.MarshalIndent(map[string]any{"api_keys": recs}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keyfile.WriteAtomic(path, bytes.NewReader(data), nil, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteFile writes content to path, mode 0600.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ReadFile returns the text of the file at path, for checks on its bytes.
func ReadFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// ReadDoc reads the key file at path as writers do, failing the test if it
// does not parse or if the handler would refuse it. It is the tests' one
// reader of a key file; FileRecord, LastUsed and Members look into what it
// returns.
func ReadDoc(t testing.TB, path string) *keyfile.Doc {
	t.Helper()
	doc, err := keyfile.ParseDoc([]byte(ReadFile(t, path)))
	if err != nil {
		t.Fatalf("key file %s does not parse: %v", path, err)
	}
	if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
		t.Fatalf("key file %s no longer loads: %v", path, err)
	}
	return doc
}

// FileRecord returns the record with id in the key file at path, failing
// the test if there is none.
func FileRecord(t testing.TB, path, id string) keyfile.Record {
	t.Helper()
	for _, r := range ReadDoc(t, path).Records {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("record %s is not in the key file %s", id, path)
	return keyfile.Record{}
}

// LastUsed returns last_used_at of the record with id in the key file at
// path: "" when it is null or absent.
func LastUsed(t testing.TB, path, id string) string {
	t.Helper()
	if p := FileRecord(t, path, id).LastUsedAt; p != nil {
		return *p
	}
	return ""
}

// Object is the members of a JSON object in their order, for tests to look
// into.
type Object []keyfile.Member

// Members returns the members of a key file's record in their order.
func Members(r keyfile.Record) Object { return r.Members() }

// Names returns the names of o's members, in their order.
func (o Object) Names() []string {
	names := make([]string, len(o))
	for i, m := range o {
		names[i] = m.Name
	}
	return names
}

// Get returns member name's raw value, or nil.
func (o Object) Get(name string) json.RawMessage {
	for _, m := range o {
		if m.Name == name {
			return m.Value
		}
	}
	return nil
}

// GetString returns member name as a string; "" if absent, null or no
// string.
func (o Object) GetString(name string) string {
	var s string
	_ = json.Unmarshal(o.Get(name), &s)
	return s
}

// MarshalJSON renders the object compactly, members in order.
func (o Object) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, m := range o {
		if i > 0 {
			b = append(b, ',')
		}
		b, _ = jsontext.AppendQuote(b, m.Name)
		b = append(append(b, ':'), m.Value...)
	}
	var out bytes.Buffer
	err := json.Compact(&out, append(b, '}'))
	return out.Bytes(), err
}

// MustJSON is v as JSON, failing the test if it cannot be.
func MustJSON(t testing.TB, v any) string {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// MarshalDoc renders a key file's document as its writers write it.
func MarshalDoc(d *keyfile.Doc) []byte {
	var b bytes.Buffer
	_, _ = d.WriteTo(&b) // a bytes.Buffer takes every write
	return b.Bytes()
}

// Update applies edit to the key file at path, which must exist, as every
// writer does (under its lock, atomically).
func Update(path string, edit func(*keyfile.Doc) error) (keyfile.Write, error) {
	return keyfile.Edit(path, keyfile.EditOptions{Edit: edit})
}

// KeySet builds the key set of records, failing the test on an error.
func KeySet(t testing.TB, records ...keyset.Record) *keyset.KeySet {
	t.Helper()
	ks, err := keyset.New(records)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// ExpiresAt is when key k expires (unix nanoseconds), 0 if it does not.
func ExpiresAt(k *keyset.Key) int64 {
	at, _ := k.ExpiresAt()
	return at
}

// ScopesJoined is key k's scopes as {http.auth.user.scopes} gives them.
func ScopesJoined(k *keyset.Key) string {
	v, _ := k.Placeholder("http.auth.user.scopes")
	return v.(string)
}

// WaitFor polls cond until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
