package apikey

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The checksummed key format on the request path, over an in-memory key
// set: what is refused before the lookup, what is looked up as ever.

// countingStore is a memory store that counts how often the handler asks
// it for the key set: zero means no lookup (and no hash) was made.
type countingStore struct {
	memoryStore
	asked atomic.Int64
}

func (c *countingStore) KeySet() *keyset.KeySet {
	c.asked.Add(1)
	return c.memoryStore.KeySet()
}
func (c *countingStore) MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64) {
	c.memoryStore.MarkUsed(k, sum, now)
}

// freshCounters are requests_total counters of the test's own, to read
// exactly what one handler counted.
func freshCounters() *requestCounters {
	var c requestCounters
	for r := range c {
		c[r] = prometheus.NewCounter(prometheus.CounterOpts{Name: "test_" + resultNames[r]})
	}
	return &c
}

func counted(t *testing.T, c *requestCounters, r result) float64 {
	t.Helper()
	var m dto.Metric
	if err := c[r].Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestKeyFormatServeHTTP(t *testing.T) {
	acme := &keyformat.Format{Prefix: "acme_live_"}
	newKey, err := acme.Generate()
	if err != nil {
		t.Fatal(err)
	}
	unknownNew, _ := acme.Generate() // well formed, in no record
	oldKey := testkeys.New("old", nil)
	ks := testkeys.KeySet(t,
		keyset.Record{ID: "id-new", Label: "New", KeyHash: keyset.HashKey(newKey), KeyPrefix: acme.KeyPrefix(newKey)},
		oldKey.Rec(),
	)
	p := len(acme.Prefix)
	typo := newKey[:p+4] + string(flip(newKey[p+4])) + newKey[p+5:]
	const (
		invalidKey = `{"success":false,"error":{"code":"INVALID_KEY","message":"Invalid API key."}}`
		malformed  = `{"success":false,"error":{"code":"INVALID_KEY","message":"` + MalformedKeyMessage + `"}}`
	)
	tests := []struct {
		name      string
		format    *keyformat.Format
		optional  bool
		key       string
		status    int    // 0: passed on
		body      string // the refusal's
		userID    string // of a passed request
		result    result
		looksUp   bool // the store is asked for its key set
		malformed keyformat.Result
	}{
		{"new format, valid", acme, false, newKey, 0, "", "id-new", resultOK, true, keyformat.WellFormed},
		{"old format, key_format on", acme, false, oldKey.Raw, 0, "", oldKey.ID(), resultOK, true, keyformat.NotThisFormat},
		{"new format, well formed, unknown", acme, false, unknownNew, 403, invalidKey, "", resultInvalid, true, keyformat.WellFormed},
		{"wrong checksum", acme, false, typo, 403, malformed, "", resultMalformed, false, keyformat.WrongChecksum},
		{"cut short", acme, false, newKey[:len(newKey)-1], 403, malformed, "", resultMalformed, false, keyformat.WrongLength},
		{"run on", acme, false, newKey + "x", 403, malformed, "", resultMalformed, false, keyformat.WrongLength},
		{"a dash", acme, false, newKey[:p+2] + "-" + newKey[p+3:], 403, malformed, "", resultMalformed, false, keyformat.BadCharacter},
		{"the prefix alone", acme, false, acme.Prefix, 403, malformed, "", resultMalformed, false, keyformat.WrongLength},
		{"optional does not let a malformed key pass", acme, true, typo, 403, malformed, "", resultMalformed, false, keyformat.WrongChecksum},
		{"unknown old-format key, key_format on", acme, false, "sk_nobody", 403, invalidKey, "", resultInvalid, true, keyformat.NotThisFormat},
		// Without key_format, a key of the format is any key: looked up.
		{"no key_format, new format valid", nil, false, newKey, 0, "", "id-new", resultOK, true, keyformat.WellFormed},
		{"no key_format, wrong checksum", nil, false, typo, 403, invalidKey, "", resultInvalid, true, keyformat.WrongChecksum},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := acme.Check(tt.key); got != tt.malformed {
				t.Fatalf("the test's key is %v, not %v", got, tt.malformed)
			}
			h := &Handler{KeysFile: "keys.json", KeyFormat: tt.format, Optional: tt.optional}
			newMemoryHandler(h, ks)
			store := &countingStore{memoryStore: memoryStore{keys: ks}}
			h.store = store
			h.results = freshCounters()
			core, logs := observer.New(zapcore.DebugLevel)
			h.logger = zap.New(core)

			w, r := httptest.NewRecorder(), newRequest("GET", "/", "Authorization: Bearer "+tt.key)
			repl := caddy.NewReplacer()
			r = caddyhttp.PrepareRequest(r, repl, w, nil)
			passed := false
			next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { passed = true; return nil })
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			switch {
			case tt.status == 0 && !passed:
				t.Fatalf("refused with %d %s", w.Code, w.Body)
			case tt.status == 0:
				if id, _ := repl.GetString("http.auth.user.id"); id != tt.userID {
					t.Errorf("{http.auth.user.id} = %q, want %q", id, tt.userID)
				}
			case passed:
				t.Fatal("passed on a request it should refuse")
			case w.Code != tt.status || w.Body.String() != tt.body:
				t.Errorf("answer %d %s\nwant   %d %s", w.Code, w.Body, tt.status, tt.body)
			}
			if asked := store.asked.Load() > 0; asked != tt.looksUp {
				t.Errorf("the store was asked for its key set: %v, want %v", asked, tt.looksUp)
			}
			for res := range numResults {
				want := 0.0
				if res == tt.result {
					want = 1
				}
				if got := counted(t, h.results, res); got != want {
					t.Errorf("requests_total{result=%q} = %g, want %g", resultNames[res], got, want)
				}
			}
			// The refusal's log line says malformed, never the key.
			secret := strings.TrimPrefix(strings.TrimPrefix(tt.key, acme.Prefix), "sk_")
			for _, e := range logs.All() {
				for k, v := range e.ContextMap() {
					if s, ok := v.(string); ok && len(secret) >= 4 && strings.Contains(s, secret) {
						t.Errorf("log %q: %s holds the key", e.Message, k)
					}
				}
				if e.Message == "request refused" && e.ContextMap()["result"] != resultNames[tt.result] {
					t.Errorf("the refusal is logged with result %v, want %s", e.ContextMap()["result"], resultNames[tt.result])
				}
			}
		})
	}
}

// flip returns another base62 digit than c.
func flip(c byte) byte {
	if c == 'A' {
		return 'B'
	}
	return 'A'
}

// With handle_errors, a malformed key goes to the error routes as any
// INVALID_KEY does.
func TestKeyFormatHandleErrors(t *testing.T) {
	acme := &keyformat.Format{Prefix: "acme_live_"}
	h := newMemoryHandler(&Handler{KeysFile: "keys.json", KeyFormat: acme, HandleErrors: true}, testkeys.KeySet(t))
	w, repl := httptest.NewRecorder(), caddy.NewReplacer()
	r := caddyhttp.PrepareRequest(newRequest("GET", "/?api_key=acme_live_short"), repl, w, nil)
	err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Fatal("passed")
		return nil
	}))
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != 403 || he.Err.Error() != MalformedKeyMessage {
		t.Fatalf("error %#v, want a 403 HandlerError", err)
	}
	if code, _ := repl.GetString("http.auth.apikey.error_code"); code != CodeInvalidKey {
		t.Errorf("error_code %q", code)
	}
}

// A bad key_format in JSON is refused at setup (Provision), saying why.
func TestKeyFormatJSONRefused(t *testing.T) {
	for prefix, want := range map[string]string{
		"":          "empty",
		"acme":      "must end with _",
		"sk_live_":  "default format",
		"acme-key_": "holds '-'",
	} {
		h := &Handler{KeysFile: "keys.json", KeyFormat: &keyformat.Format{Prefix: prefix}}
		err := h.setup()
		if err == nil || !strings.HasPrefix(err.Error(), "key_format: ") || !strings.Contains(err.Error(), want) {
			t.Errorf("prefix %q: setup error %v, want key_format: … %s", prefix, err, want)
		}
	}
	if err := (&Handler{KeysFile: "keys.json", KeyFormat: &keyformat.Format{Prefix: "acme_"}}).setup(); err != nil {
		t.Errorf("a good prefix: %v", err)
	}
}

// The Caddyfile's key_format is the handler's key_format.prefix in JSON.
func TestKeyFormatAdapt(t *testing.T) {
	cfg, err := adaptCaddyfile(t, site("apikey k.json {\n\tkey_format acme_live_\n}"))
	if err != nil {
		t.Fatal(err)
	}
	routes := apikeyRoutes(cfg)
	if len(routes) != 1 {
		t.Fatalf("%d apikey routes", len(routes))
	}
	kf, _ := routes[0].Handler["key_format"].(map[string]any)
	if len(kf) != 1 || kf["prefix"] != "acme_live_" {
		t.Errorf("handler JSON %v, want key_format {prefix: acme_live_}", routes[0].Handler)
	}
}

// The request path with a key_format allocates no more than without: the
// check itself allocates nothing.
func TestKeyFormatRefusalAllocs(t *testing.T) {
	acme := &keyformat.Format{Prefix: "acme_live_"}
	good, _ := acme.Generate()
	bad := good[:len(good)-1] + string(flip(good[len(good)-1]))
	ks := testkeys.KeySet(t, keyset.Record{ID: "id", Label: "L", KeyHash: keyset.HashKey(good), KeyPrefix: acme.KeyPrefix(good)})
	allocs := func(h *Handler, key string) float64 {
		w := &discardWriter{hdr: make(http.Header)}
		r := caddyhttp.PrepareRequest(newRequest("GET", "/", "Authorization: Bearer "+key), caddy.NewReplacer(), w, nil)
		return testing.AllocsPerRun(200, func() { _ = h.ServeHTTP(w, r, noopNext) })
	}
	with := newMemoryHandler(&Handler{KeysFile: "k.json", KeyFormat: acme}, ks)
	without := newMemoryHandler(&Handler{KeysFile: "k.json"}, ks)
	if a, b := allocs(with, good), allocs(without, good); a != b {
		t.Errorf("a valid key: %.0f allocations with key_format, %.0f without", a, b)
	}
	if a, b := allocs(with, bad), allocs(without, "sk_nobody"); a > b {
		t.Errorf("a malformed key: %.0f allocations, an unknown one %.0f", a, b)
	}
}

// Against the test Caddy: a key file holding a key of each format behind a
// handler with key_format; a malformed key refused and counted; the admin
// API making keys in the format; a reload without key_format going back
// to the default format; a bad prefix refused with its file and line.
func TestKeyFormatAgainstCaddy(t *testing.T) {
	acme := &keyformat.Format{Prefix: "acme_live_"}
	newRaw, _ := acme.Generate()
	newKey := testkeys.New("new", nil)
	newKey.Raw = newRaw
	newKey.Record["key_hash"], newKey.Record["key_prefix"] = keyset.HashKey(newRaw), acme.KeyPrefix(newRaw)
	oldKey := testkeys.New("old", nil)
	path := testkeys.WriteKeys(t, "", newKey, oldKey)
	// The admin server restarts with each config load: no kept-alive
	// connection to it from this test may be reused by the next one's load.
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	formatted := `
	apikey ` + path + ` {
		key_format acme_live_
		reload_interval off
		usage_interval off
	}
	respond "{http.auth.user.label} {http.auth.user.id}"
`
	loadCaddyfile(t, formatted)

	malformedBefore := scrape(t).must(t, requestsSeries("malformed"))
	expectOK(t, "/", "new "+newKey.ID(), "Authorization: Bearer "+newRaw)
	expectOK(t, "/", "old "+oldKey.ID(), bearer(oldKey))
	typo := newRaw[:len(newRaw)-1] + string(flip(newRaw[len(newRaw)-1]))
	resp, body := do(t, "GET", "/", "X-API-Key: "+typo)
	if msg := testkeys.AssertRefusal(t, resp, body, 403, CodeInvalidKey, ""); msg != MalformedKeyMessage {
		t.Errorf("message %q", msg)
	}
	if got := scrape(t).must(t, requestsSeries("malformed")) - malformedBefore; got != 1 {
		t.Errorf("requests_total{result=malformed} moved by %g, want 1", got)
	}

	// The admin API: the store shows the format, new keys are in it.
	var infos []admin.StoreInfo
	resp, body = adminCall(t, "GET", "/apikey/stores", "")
	adminAnswer(t, resp, body, 200, &infos)
	if len(infos) != 1 || infos[0].KeyFormat != "acme_live_" {
		t.Errorf("stores %s, want key_format acme_live_", body)
	}
	var created, rotated admin.NewKeyAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys", `{"label": "made"}`)
	adminAnswer(t, resp, body, 201, &created)
	if acme.Check(created.Key) != keyformat.WellFormed || created.KeyPrefix != acme.KeyPrefix(created.Key) {
		t.Fatalf("created %s, want a key in acme_live_", body)
	}
	expectOK(t, "/", "made "+created.ID, "Authorization: Bearer "+created.Key)
	resp, body = adminCall(t, "POST", "/apikey/keys/"+oldKey.ID()+"/rotate", `{"grace": "0"}`)
	adminAnswer(t, resp, body, 201, &rotated)
	if acme.Check(rotated.Key) != keyformat.WellFormed {
		t.Fatalf("rotated %s, want a key in acme_live_", body)
	}
	expectOK(t, "/", "old "+rotated.ID, "Authorization: Bearer "+rotated.Key)
	expectRefused(t, "/", 403, CodeInvalidKey, bearer(oldKey))

	// A reload without key_format: the admin API makes default keys,
	// and the keys of the format still work.
	loadCaddyfile(t, adminKeySite(path))
	resp, body = adminCall(t, "POST", "/apikey/keys", `{"label": "plain"}`)
	adminAnswer(t, resp, body, 201, &created)
	if !strings.HasPrefix(created.Key, "sk_") || created.KeyPrefix != created.Key[:11] {
		t.Fatalf("created %s after key_format went, want a default key", body)
	}
	expectOK(t, "/", "plain "+created.ID, "Authorization: Bearer "+created.Key)
	expectOK(t, "/", "new "+newKey.ID(), "Authorization: Bearer "+newRaw)

	// A bad prefix: the config is refused, naming the Caddyfile's line.
	bad := strings.Replace(formatted, "key_format acme_live_", "key_format acme-live_", 1)
	var refused struct{ Error string }
	msg := loadConfigError(t, caddyfileFor(bad))
	if err := json.Unmarshal([]byte(msg), &refused); err == nil {
		msg = refused.Error
	}
	for _, want := range []string{"Caddyfile:", `key format prefix "acme-live_" holds '-'`} {
		if !strings.Contains(msg, want) {
			t.Errorf("loading a bad key_format: %q, want it to say %q", msg, want)
		}
	}
}
