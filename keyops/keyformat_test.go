package keyops

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

var acme = &keyformat.Format{Prefix: "acme_live_"}

func TestNewKey(t *testing.T) {
	raw, prefix, err := NewKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(raw, "sk_") || len(raw) != 46 || prefix != raw[:11] {
		t.Errorf("default: %q, key_prefix %q; want sk_ and 43 characters, its first 11", raw, prefix)
	}
	if _, r := keyformat.Inspect(raw); r != keyformat.NotThisFormat {
		t.Errorf("a default key reads as %v", r)
	}
	raw, prefix, err = NewKey(acme)
	if err != nil {
		t.Fatal(err)
	}
	if acme.Check(raw) != keyformat.WellFormed || prefix != raw[:len("acme_live_")+8] {
		t.Errorf("acme_live_: %q, key_prefix %q", raw, prefix)
	}
	if _, _, err := NewKey(&keyformat.Format{Prefix: "sk_x_"}); err == nil {
		t.Error("NewKey with an invalid format made a key")
	}
}

// TestCreateRotateInFormat makes keys in a format and in the default one
// in one key file, and rotates across formats both ways: each key's record
// matches its key, each key_prefix names its key to revoke.
func TestCreateRotateInFormat(t *testing.T) {
	st := filestore.Records{Path: filepath.Join(t.TempDir(), "keys.json"), MayCreate: true}
	raw, rec, err := Create(st, AddOptions{Label: "new format", Format: acme}, cmdNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if acme.Check(raw) != keyformat.WellFormed || rec.KeyHash != keyset.HashKey(raw) || rec.KeyPrefix != raw[:18] {
		t.Fatalf("created %q: record %+v", raw, rec)
	}
	old, oldRec, err := Create(st, AddOptions{Label: "default"}, cmdNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(old, "sk_") || oldRec.KeyPrefix != old[:11] {
		t.Fatalf("created %q: record %+v", old, oldRec)
	}

	// The default key rotated into the format, by its key_prefix.
	rot, err := Rotate(st, RotateOptions{Ref: oldRec.KeyPrefix, Grace: "1h", Format: acme}, cmdNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if acme.Check(rot.Raw) != keyformat.WellFormed || rot.Added.KeyPrefix != rot.Raw[:18] || rot.Added.KeyHash != keyset.HashKey(rot.Raw) || rot.Old.ID != oldRec.ID {
		t.Errorf("rotation %+v", rot)
	}
	// The format's key rotated to the default format, by its key_prefix.
	back, err := Rotate(st, RotateOptions{Ref: rec.KeyPrefix, Grace: "0"}, cmdNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(back.Raw, "sk_") || back.Added.KeyPrefix != back.Raw[:11] || back.Old.ID != rec.ID {
		t.Errorf("rotation %+v", back)
	}

	// All four keys are in the key set, each found by its own key.
	_, ks, err := st.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{raw, old, rot.Raw, back.Raw} {
		if key, _ := ks.Lookup(k); key == nil {
			t.Errorf("key %s… is not in the key set", k[:11])
		}
	}
	// A format's key_prefix names its key to revoke.
	if r, _, err := Revoke(st, rot.Added.KeyPrefix, cmdNow, nil); err != nil || r.ID != rot.Added.ID {
		t.Errorf("revoke by key_prefix %q: %+v, %v", rot.Added.KeyPrefix, r, err)
	}
}
