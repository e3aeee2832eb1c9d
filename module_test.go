package apikey

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestServeHTTP runs the request path over an in-memory key set: every
// refusal with its exact body and headers, and what a passing request
// carries on.
func TestServeHTTP(t *testing.T) {
	const (
		good    = "sk_module_test_good"
		revoked = "sk_module_test_revoked"
		expired = "sk_module_test_expired"
		reader  = "sk_module_test_reader"
	)
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	ks := testkeys.KeySet(t,
		keyset.Record{ID: "id-good", Label: "Good", KeyHash: keyset.HashKey(good), KeyPrefix: good[:11], Scopes: []string{"read", "write"}},
		keyset.Record{ID: "id-revoked", Label: "Revoked", KeyHash: keyset.HashKey(revoked), KeyPrefix: revoked[:11], RevokedAt: &past},
		keyset.Record{ID: "id-expired", Label: "Expired", KeyHash: keyset.HashKey(expired), KeyPrefix: expired[:11], ExpiresAt: &past},
		keyset.Record{ID: "id-reader", Label: "Reader", KeyHash: keyset.HashKey(reader), KeyPrefix: reader[:11], Scopes: []string{"read"}},
	)
	const (
		authRequired = `{"success":false,"error":{"code":"AUTH_REQUIRED","message":"API key is required. Pass via Authorization: Bearer header, X-API-Key header or ?api_key= query parameter."}}`
		invalidKey   = `{"success":false,"error":{"code":"INVALID_KEY","message":"Invalid API key."}}`
		keyExpired   = `{"success":false,"error":{"code":"KEY_EXPIRED","message":"API key has expired."}}`
		noScope      = `{"success":false,"error":{"code":"INSUFFICIENT_SCOPE","message":"API key lacks the required scope \"write\"."}}`
		ambiguous    = `{"success":false,"error":{"code":"AMBIGUOUS_KEY","message":"More than one API key was sent; send exactly one."}}`
	)
	tests := []struct {
		name    string
		handler Handler
		target  string
		headers []string
		status  int    // 0: passed on to the next handler
		body    string // the refusal's body
		userID  string // {http.auth.user.id} of a passed request
	}{
		{"no key", Handler{}, "/", nil, 401, authRequired, ""},
		{"bearer", Handler{}, "/", []string{"Authorization: Bearer " + good}, 0, "", "id-good"},
		{"x-api-key", Handler{}, "/", []string{"X-API-Key: " + good}, 0, "", "id-good"},
		{"query", Handler{}, "/?api_key=" + good, nil, 0, "", "id-good"},
		{"unknown key", Handler{}, "/", []string{"X-API-Key: sk_nobody"}, 403, invalidKey, ""},
		{"revoked key", Handler{}, "/", []string{"X-API-Key: " + revoked}, 403, invalidKey, ""},
		{"expired key", Handler{}, "/", []string{"X-API-Key: " + expired}, 403, keyExpired, ""},
		{"two keys in one source", Handler{}, "/", []string{"X-API-Key: " + good, "X-API-Key: " + reader}, 400, ambiguous, ""},
		{"scopes held", Handler{Scopes: []string{"read", "write"}}, "/", []string{"X-API-Key: " + good}, 0, "", "id-good"},
		{"scope missing", Handler{Scopes: []string{"read", "write"}}, "/", []string{"X-API-Key: " + reader}, 403, noScope, ""},
		{"optional without key", Handler{Optional: true}, "/", nil, 0, "", ""},
		{"optional with a wrong key", Handler{Optional: true}, "/", []string{"X-API-Key: sk_nobody"}, 403, invalidKey, ""},
		{"query off", Handler{Query: strPtr("")}, "/?api_key=" + good, nil, 401,
			`{"success":false,"error":{"code":"AUTH_REQUIRED","message":"API key is required. Pass via Authorization: Bearer header or X-API-Key header."}}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.handler
			h.KeysFile = "keys.json"
			newMemoryHandler(&h, ks)
			w, r := httptest.NewRecorder(), newRequest("GET", tt.target, tt.headers...)
			repl := caddy.NewReplacer()
			r = caddyhttp.PrepareRequest(r, repl, w, nil)
			passed := false
			next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { passed = true; return nil })
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			if tt.status == 0 {
				if !passed {
					t.Fatalf("refused with %d %s", w.Code, w.Body)
				}
				if id, _ := repl.GetString("http.auth.user.id"); id != tt.userID {
					t.Errorf("{http.auth.user.id} = %q, want %q", id, tt.userID)
				}
				return
			}
			if passed {
				t.Fatal("passed on a request it should refuse")
			}
			if w.Code != tt.status || w.Body.String() != tt.body {
				t.Errorf("answer %d %s\nwant   %d %s", w.Code, w.Body, tt.status, tt.body)
			}
			want := map[string]string{"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
			if tt.status == 401 {
				want["Www-Authenticate"] = `Bearer realm="restricted"`
			}
			for name, value := range want {
				if got := w.Header().Get(name); got != value {
					t.Errorf("%s: %q, want %q", name, got, value)
				}
			}
		})
	}
}

// With handle_errors, a refusal is handed to Caddy's error routes with its
// status, message and code, and nothing is written.
func TestServeHTTPHandleErrors(t *testing.T) {
	h := newMemoryHandler(&Handler{KeysFile: "keys.json", HandleErrors: true}, testkeys.KeySet(t))
	w := httptest.NewRecorder()
	repl := caddy.NewReplacer()
	r := caddyhttp.PrepareRequest(newRequest("GET", "/", "X-API-Key: sk_nobody"), repl, w, nil)
	err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Fatal("passed")
		return nil
	}))
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != 403 || !strings.Contains(he.Err.Error(), "Invalid API key.") {
		t.Fatalf("error %#v, want a 403 HandlerError", err)
	}
	if code, _ := repl.GetString("http.auth.apikey.error_code"); code != CodeInvalidKey {
		t.Errorf("error_code placeholder %q", code)
	}
	if w.Body.Len() != 0 {
		t.Errorf("wrote a body: %s", w.Body)
	}
}

// With hide_credentials, the next handler gets no query pair that an
// upstream could read as the key's parameter, whether the request was
// admitted with a key or let through without one (optional), and every
// other byte of the query as it came.
func TestServeHTTPHidesQueryCredentials(t *testing.T) {
	const good = "sk_module_test_hidden"
	ks := testkeys.KeySet(t, keyset.Record{ID: "id-hidden", Label: "Hidden", KeyHash: keyset.HashKey(good), KeyPrefix: good[:11]})
	for _, tt := range []struct {
		name     string
		optional bool
		rawQuery string
		headers  []string
		want     string // RawQuery the next handler sees
	}{
		{"admitted, key after a semicolon", false, "x=1;api_key=" + good, []string{"X-API-Key: " + good}, "x=1"},
		{"admitted, another key after a semicolon", false, "x=1;api_key=sk_other&y=%zz", []string{"X-API-Key: " + good}, "x=1&y=%zz"},
		{"admitted by the query, copies beside", false, "api_key=" + good + "&API_KEY=" + good + "&api%255Fkey=" + good + "&api.key=" + good + "&z=1", nil, "z=1"},
		{"anonymous, key after a semicolon", true, "x=1;api_key=" + good, nil, "x=1"},
		{"anonymous, badly escaped name", true, "api%u005Fkey=" + good + "&api_key[]=" + good + "&p=2", nil, "p=2"},
		{"anonymous, nothing to hide", true, "a=1;b=%zz&&c", nil, "a=1;b=%zz&&c"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newMemoryHandler(&Handler{KeysFile: "keys.json", Optional: tt.optional, HideCredentials: true}, ks)
			w := httptest.NewRecorder()
			r := newRequest("GET", "/p", tt.headers...)
			r.URL.RawQuery = tt.rawQuery
			r.RequestURI = "/p?" + tt.rawQuery
			r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
			var seen *http.Request
			next := caddyhttp.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error { seen = r; return nil })
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			if seen == nil {
				t.Fatalf("refused with %d %s", w.Code, w.Body)
			}
			if seen.URL.RawQuery != tt.want {
				t.Errorf("next handler's query %q, want %q", seen.URL.RawQuery, tt.want)
			}
			wantURI := "/p"
			if tt.want != "" {
				wantURI += "?" + tt.want
			}
			if seen.RequestURI != wantURI {
				t.Errorf("next handler's RequestURI %q, want %q", seen.RequestURI, wantURI)
			}
			if seen.Header.Get("X-Api-Key") != "" {
				t.Error("the X-API-Key header is still there")
			}
		})
	}
}
