package keyset

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"time"
)

// testKey is a raw key and its record, as a key file holds it.
type testKey struct {
	Raw    string
	record map[string]any
}

func newTestKey(label string) testKey {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	raw := "sk_" + base64.RawURLEncoding.EncodeToString(b)
	return testKey{Raw: raw, record: map[string]any{
		"id": "id-" + label + "-" + hex.EncodeToString(b[:4]), "label": label,
		"key_hash": HashKey(raw), "key_prefix": raw[:11],
		"created_at": "2026-11-25T20:14:31+00:00", "last_used_at": nil,
	}}
}

// KeySet.With, as a Redis store applies changes: replaced, removed and new
// keys; the set it was made from unchanged (they share the keys' array);
// usage cells kept for a key that stays the same.
func TestKeySetWith(t *testing.T) {
	a, b, c := newTestKey("a"), newTestKey("b"), newTestKey("c")
	rec := func(k testKey, extra map[string]any) *Record {
		var r Record
		m := maps.Clone(k.record)
		maps.Copy(m, extra)
		js, _ := json.Marshal(m)
		if err := json.Unmarshal(js, &r); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	base, err := New([]Record{*rec(a, nil), *rec(b, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ka, sumA := base.Lookup(a.Raw)
	ka.usage.Store(&usageCell{id: ka.ID})
	set := base
	for i := range 300 { // past the spare room: compacts on the way
		var changes map[string]*Record
		switch i % 3 {
		case 0: // revoke b
			changes = map[string]*Record{b.record["id"].(string): rec(b, map[string]any{"revoked_at": "2026-11-29T00:00:00Z"})}
		case 1: // add c
			changes = map[string]*Record{c.record["id"].(string): rec(c, nil), b.record["id"].(string): rec(b, nil)}
		case 2: // remove c
			changes = map[string]*Record{c.record["id"].(string): nil}
		}
		// Every other step says what the records were, as the log does;
		// the others leave with to search.
		var was map[string]string
		if i%2 == 0 {
			was = map[string]string{}
			for id := range changes {
				was[id] = ""
				set.Each(func(sum [sha256.Size]byte, k *Key) {
					if k.ID == id {
						was[id] = hex.EncodeToString(sum[:])
					}
				})
			}
		}
		next, problems := set.With(changes, was)
		if problems != nil {
			t.Fatal(problems)
		}
		kb, _ := next.Lookup(b.Raw)
		kc, _ := next.Lookup(c.Raw)
		switch i % 3 {
		case 0:
			if kb == nil || !kb.Revoked() || kc != nil || next.Len() != 2 {
				t.Fatalf("step %d: b revoked %v, c %v, size %d", i, kb != nil && kb.Revoked(), kc != nil, next.Len())
			}
		case 1:
			if kb == nil || kb.Revoked() || kc == nil || next.Len() != 3 {
				t.Fatalf("step %d: b %v, c %v, size %d", i, kb, kc, next.Len())
			}
		case 2:
			if kc != nil || next.Len() != 2 {
				t.Fatalf("step %d: c still there", i)
			}
		}
		if got := next.Find(sumA); got == nil || got.usage.Load() == nil || got.usage.Load() != ka.usage.Load() {
			t.Fatalf("step %d: a lost its usage cell", i)
		}
		if n := next.Counts(time.Now()); n[Active]+n[Revoked] != next.Len() {
			t.Fatalf("step %d: counted %v, size %d", i, n, next.Len())
		}
		set = next
	}
	if k, _ := base.Lookup(b.Raw); k == nil || k.Revoked() || base.Len() != 2 {
		t.Fatal("the first set changed")
	}
	next, problems := set.With(map[string]*Record{"dup": rec(a, map[string]any{"id": "dup"})}, nil)
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "key_hash is the same") {
		t.Fatalf("a change giving a second id the same key_hash: problems %v", problems)
	}
	if k, _ := next.Lookup(a.Raw); k == nil || k.ID != a.record["id"] {
		t.Fatal("the key whose hash was claimed again is not its own id's any more")
	}
	// A new record replayed (a full read saw it already): its own key is
	// replaced, not refused as a second key with its hash.
	replay := map[string]string{a.record["id"].(string): ""}
	next, problems = set.With(map[string]*Record{a.record["id"].(string): rec(a, nil)}, replay)
	if k, _ := next.Lookup(a.Raw); problems != nil || k == nil || next.Len() != set.Len() {
		t.Fatalf("a replayed add: problems %v, size %d", problems, next.Len())
	}
	// A key the log says nothing right about (its record changed by other
	// means) is still found and replaced.
	stale := map[string]string{a.record["id"].(string): HashKey("not a's key")}
	next, _ = set.With(map[string]*Record{a.record["id"].(string): rec(a, map[string]any{"revoked_at": "2026-11-29T00:00:00Z"})}, stale)
	if k, _ := next.Lookup(a.Raw); k == nil || !k.Revoked() || next.Len() != set.Len() {
		t.Fatal("a change with a wrong was left the old key in force")
	}
}
