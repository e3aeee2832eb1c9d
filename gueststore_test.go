package apikey

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// A store module written outside this repository, as a third party would
// write one: it holds its records in memory, serves requests through the
// handler's Store interface, and opts in to the admin API (stores.Register,
// with a stores.RecordStore), and to the metrics (stores.AcquireMetrics),
// through the exported API alone. Nothing in the plugin knows its name.

func init() {
	caddy.RegisterModule(new(guestStore))
}

// guestStore is the module http.handlers.apikey.stores.guest:
//
//	store guest <name> {
//	    key <raw key>
//	}
type guestStore struct {
	Set  string   `json:"set,omitempty"`
	Keys []string `json:"keys,omitempty"` // raw keys, for the test only

	mu      *sync.Mutex
	doc     *keyfile.Doc
	keys    atomic.Pointer[keyset.KeySet]
	used    atomic.Int64
	metrics *stores.Metrics
}

func (*guestStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.apikey.stores.guest", New: func() caddy.Module { return new(guestStore) }}
}

func (g *guestStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store's name
	if !d.AllArgs(&g.Set) {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		if d.Val() != "key" {
			return d.Errf("unknown option %q", d.Val())
		}
		var raw string
		if !d.AllArgs(&raw) {
			return d.ArgErr()
		}
		g.Keys = append(g.Keys, raw)
	}
	return nil
}

func (g *guestStore) Provision(caddy.Context) error {
	g.mu = new(sync.Mutex)
	g.doc = keyfile.NewList()
	for i, raw := range g.Keys {
		r, err := keyfile.NewRecord(keyset.Record{ID: "guest-" + strconv.Itoa(i), Label: "guest key", KeyHash: keyset.HashKey(raw), KeyPrefix: raw[:11]})
		if err != nil {
			return err
		}
		g.doc.Records = append(g.doc.Records, r)
	}
	g.metrics = stores.AcquireMetrics(g.Name())
	if err := g.Refresh(); err != nil {
		return err
	}
	stores.Register(g)
	return nil
}

func (g *guestStore) Cleanup() error {
	stores.Unregister(g)
	g.metrics.Release()
	return nil
}

// Name names the store for the admin API and the metrics.
func (g *guestStore) Name() string { return "guest:" + g.Set }

// The handler's Store.
func (g *guestStore) KeySet() *keyset.KeySet { return g.keys.Load() }
func (g *guestStore) MarkUsed(*keyset.Key, [sha256.Size]byte, int64) {
	g.used.Add(1)
}

// stores.Live, for the admin API.
func (g *guestStore) Records() stores.RecordStore { return guestRecords{g} }
func (g *guestStore) Refresh() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	ks, err := keyfile.BuildKeySet(g.doc.Records)
	if err != nil {
		return err
	}
	g.keys.Store(ks)
	g.metrics.Loaded(ks, time.Now())
	return nil
}

// guestRecords is the guest store's write side.
type guestRecords struct{ g *guestStore }

func (r guestRecords) String() string { return r.g.Name() }
func (r guestRecords) Flags() string  { return "(a guest store: no command-line flags)" }
func (r guestRecords) Read() ([]keyfile.Record, *keyset.KeySet, error) {
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	ks, err := keyfile.BuildKeySet(r.g.doc.Records)
	return append([]keyfile.Record(nil), r.g.doc.Records...), ks, err
}
func (r guestRecords) Edit(e stores.Edit) error {
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	doc := keyfile.NewList(append([]keyfile.Record(nil), r.g.doc.Records...)...)
	if err := e.Change(doc); err != nil {
		if errors.Is(err, keyfile.ErrNoChange) {
			return nil
		}
		return err
	}
	if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
		return err
	}
	r.g.doc = doc
	return nil
}

// A store module of another plugin is named in the Caddyfile with store,
// parsed by the module itself, and served by the handler, the admin API
// and the metrics with no special case for it.
func TestGuestStore(t *testing.T) {
	k := testkeys.New("guest", nil)
	loadCaddyfile(t, `
	apikey {
		store guest visitors {
			key `+k.Raw+`
		}
	}
	respond "{http.auth.user.id}"
`)
	if resp, body := do(t, "GET", "/", "Authorization: Bearer "+k.Raw); resp.StatusCode != 200 || body != "guest-0" {
		t.Fatalf("the guest store's key: %d %q", resp.StatusCode, body)
	}
	expectRefused(t, "/", http.StatusUnauthorized, CodeAuthRequired)
	expectRefused(t, "/", http.StatusForbidden, CodeInvalidKey, "Authorization: Bearer sk_not_a_guest_key_at_all_xxxxxxxxxxxxxxxxxx")

	// The admin API lists it and changes its keys.
	var listed []admin.StoreInfo
	resp, body := adminCall(t, "GET", "/apikey/stores", "")
	adminAnswer(t, resp, body, http.StatusOK, &listed)
	if len(listed) != 1 || listed[0].Name != "guest:visitors" || listed[0].Kind != "guest" || listed[0].Keys.Active != 1 {
		t.Fatalf("stores listed: %+v", listed)
	}
	var made admin.NewKeyAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys", `{"label": "made through the admin API"}`)
	adminAnswer(t, resp, body, http.StatusCreated, &made)
	if resp, _ := do(t, "GET", "/", "X-API-Key: "+made.Key); resp.StatusCode != 200 {
		t.Fatalf("a key made in the guest store through the admin API: %d", resp.StatusCode)
	}
	var revoked admin.RevokeAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys/guest-0/revoke", "")
	adminAnswer(t, resp, body, http.StatusOK, &revoked)
	expectRefused(t, "/", http.StatusForbidden, CodeInvalidKey, "Authorization: Bearer "+k.Raw)

	// Its metrics are on /metrics under its name.
	m := scrape(t)
	for state, want := range map[string]float64{"active": 1, "revoked": 1} {
		if got := m.must(t, series("caddy_apikey_keys", "state", state, "store", "guest:visitors")); got != want {
			t.Errorf("caddy_apikey_keys{store=guest:visitors,state=%s} = %v, want %v\n%s", state, got, want, fmt.Sprint(m))
		}
	}
}

// Interface guards
var (
	_ Store                 = (*guestStore)(nil)
	_ stores.Live           = (*guestStore)(nil)
	_ caddy.Provisioner     = (*guestStore)(nil)
	_ caddy.CleanerUpper    = (*guestStore)(nil)
	_ caddyfile.Unmarshaler = (*guestStore)(nil)
)
