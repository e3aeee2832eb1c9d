package admin

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
)

// The handler provisioned last among those in use on a store has the
// say; releasing it gives the say back to the one before, and releasing
// twice is harmless.
func TestKeyFormatRegistry(t *testing.T) {
	const store = "file:/test/registry/keys.json"
	acme, other := &keyformat.Format{Prefix: "acme_"}, &keyformat.Format{Prefix: "other_"}
	if f := KeyFormat(store); f != nil {
		t.Fatalf("no handler says, yet %v", f)
	}
	releaseOld := UseKeyFormat(store, acme)
	if f := KeyFormat(store); f != acme {
		t.Fatalf("KeyFormat = %v, want acme_", f)
	}
	// A config reload whose handler has no key_format: the default, at
	// once, even while the old config's handler is still in use.
	releaseNew := UseKeyFormat(store, nil)
	if f := KeyFormat(store); f != nil {
		t.Fatalf("after a reload without key_format: %v, want the default", f)
	}
	releaseOld()
	releaseOld()
	if f := KeyFormat(store); f != nil {
		t.Fatalf("after the old config's cleanup: %v, want the default", f)
	}
	releaseThird := UseKeyFormat(store, other)
	releaseNew()
	if f := KeyFormat(store); f != other {
		t.Fatalf("KeyFormat = %v, want other_", f)
	}
	if f := KeyFormat("file:/another/store.json"); f != nil {
		t.Errorf("another store has %v", f)
	}
	releaseThird()
	if f := KeyFormat(store); f != nil {
		t.Fatalf("after every handler's cleanup: %v", f)
	}
	keyFormats.Lock()
	n := len(keyFormats.byStore[store])
	keyFormats.Unlock()
	if n != 0 {
		t.Errorf("%d entries left behind", n)
	}
}

// Create and rotate make keys in the store's key format; the store list
// shows it.
func TestKeyFormatCreateRotate(t *testing.T) {
	path := testkeys.WriteKeys(t, filepath.Join(t.TempDir(), "keys.json"), testkeys.New("old", nil))
	live := startTestStore(t, path)
	acme := &keyformat.Format{Prefix: "acme_live_"}
	defer UseKeyFormat(live.Name(), acme)()
	a := testAdmin(live)

	resp, body := call(t, a, "GET", "/apikey/stores", "")
	var infos []StoreInfo
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &infos) != nil || len(infos) != 1 || infos[0].KeyFormat != "acme_live_" {
		t.Fatalf("GET /apikey/stores: %d %s; want key_format acme_live_", resp.StatusCode, body)
	}

	var created NewKeyAnswer
	resp, body = call(t, a, "POST", "/apikey/keys", `{"label": "new"}`)
	if resp.StatusCode != 201 || json.Unmarshal([]byte(body), &created) != nil {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	if acme.Check(created.Key) != keyformat.WellFormed || created.KeyPrefix != created.Key[:18] {
		t.Fatalf("created %q with key_prefix %q; want a key in acme_live_", created.Key, created.KeyPrefix)
	}
	if k, _ := live.KeySet().Lookup(created.Key); k == nil || k.ID != created.ID {
		t.Fatal("the created key is not in force")
	}

	var rotated NewKeyAnswer
	resp, body = call(t, a, "POST", "/apikey/keys/"+created.KeyPrefix+"/rotate", `{"grace": "0"}`)
	if resp.StatusCode != 201 || json.Unmarshal([]byte(body), &rotated) != nil {
		t.Fatalf("rotate by key_prefix: %d %s", resp.StatusCode, body)
	}
	if acme.Check(rotated.Key) != keyformat.WellFormed || rotated.Replaced == nil || rotated.Replaced.ID != created.ID {
		t.Fatalf("rotated: %s", body)
	}
	ks := live.KeySet()
	if k, _ := ks.Lookup(rotated.Key); k == nil {
		t.Fatal("the rotated key is not in force")
	}
	if k, _ := ks.Lookup(created.Key); k == nil || !k.Revoked() {
		t.Fatal("the replaced key was not revoked")
	}
}
