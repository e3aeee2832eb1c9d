package apikey

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// limitedCall sends one request with raw as its key through h, and returns
// the response and whether the next handler ran, with the placeholders it
// saw.
func limitedCall(t *testing.T, h *Handler, raw string) (*httptest.ResponseRecorder, bool, *caddy.Replacer) {
	t.Helper()
	w, r := httptest.NewRecorder(), newRequest("GET", "/", "X-API-Key: "+raw)
	repl := caddy.NewReplacer()
	r = caddyhttp.PrepareRequest(r, repl, w, nil)
	passed := false
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { passed = true; return nil })
	if err := h.ServeHTTP(w, r, next); err != nil {
		if he, ok := err.(caddyhttp.HandlerError); ok {
			w.Code = he.StatusCode
			return w, false, repl
		}
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w, passed, repl
}

// The handler's default limits, a key's own that replace them (none, for
// an empty list), rate_limit off, the 429 with Retry-After in the JSON
// shape of the other refusals, counted as rate_limited; the headers of the
// IETF draft and the X-RateLimit ones on each answer, or none with
// rate_limit_headers off; refused requests counted against no limit.
func TestRateLimitsOnTheRequestPath(t *testing.T) {
	plain, own, unlimited := "sk_limits_plain_key", "sk_limits_own_key", "sk_limits_unlimited"
	ks := testkeys.KeySet(t,
		keyset.Record{ID: "id-plain", Label: "plain", KeyHash: keyset.HashKey(plain), KeyPrefix: plain[:11]},
		keyset.Record{ID: "id-own", Label: "own", KeyHash: keyset.HashKey(own), KeyPrefix: own[:11],
			RateLimits: []keyset.RateLimit{{Requests: 5, Window: "1h"}, {Requests: 2, Window: "1m"}}},
		keyset.Record{ID: "id-unlimited", Label: "unlimited", KeyHash: keyset.HashKey(unlimited), KeyPrefix: unlimited[:11],
			RateLimits: []keyset.RateLimit{}},
	)

	h := newMemoryHandler(&Handler{KeysFile: "keys.json", RateLimits: []keyset.RateLimit{{Requests: 3, Window: "1m"}}}, ks)
	for i := range 3 {
		w, passed, repl := limitedCall(t, h, plain)
		if !passed {
			t.Fatalf("request %d of 3 refused: %d %s", i+1, w.Code, w.Body)
		}
		remaining := strconv.Itoa(2 - i)
		for name, want := range map[string]string{
			"RateLimit-Policy": `"1m";q=3;w=60`, "X-RateLimit-Limit": "3", "X-RateLimit-Remaining": remaining,
		} {
			if got := w.Header().Get(name); got != want {
				t.Errorf("request %d: %s = %q, want %q", i+1, name, got, want)
			}
		}
		if got := w.Header().Get("RateLimit"); !strings.HasPrefix(got, `"1m";r=`+remaining+";t=") || got != `"1m";r=`+remaining+";t="+w.Header().Get("X-RateLimit-Reset") {
			t.Errorf("request %d: RateLimit = %q, X-RateLimit-Reset = %q", i+1, got, w.Header().Get("X-RateLimit-Reset"))
		}
		if v, _ := repl.GetString("http.auth.apikey.rate_limit.remaining"); v != remaining {
			t.Errorf("request %d: {http.auth.apikey.rate_limit.remaining} = %q, want %s", i+1, v, remaining)
		}
	}
	for range 3 { // refused, and not counted: still refused, never more
		w, passed, _ := limitedCall(t, h, plain)
		if passed || w.Code != http.StatusTooManyRequests {
			t.Fatalf("request over the limit: passed %v, %d", passed, w.Code)
		}
		if code, _ := testkeys.RefusalOf(t, w.Body.String()); code != CodeRateLimited {
			t.Errorf("refusal code %q, want RATE_LIMITED", code)
		}
		if ra, err := strconv.Atoi(w.Header().Get("Retry-After")); err != nil || ra < 1 || ra > 80 { // the sliding window: at most 1m + 1m/3
			t.Errorf("Retry-After = %q, want 1..80 seconds", w.Header().Get("Retry-After"))
		}
		if got := w.Header().Get("X-RateLimit-Remaining"); got != "0" {
			t.Errorf("a refusal's X-RateLimit-Remaining = %q, want 0", got)
		}
	}

	// A key's own limits: the tighter one binds and is the one shown.
	for i := range 2 {
		w, passed, _ := limitedCall(t, h, own)
		if !passed {
			t.Fatalf("own limits: request %d refused", i+1)
		}
		if got := w.Header().Get("RateLimit-Policy"); got != `"1h";q=5;w=3600, "1m";q=2;w=60` {
			t.Errorf("own limits: RateLimit-Policy = %q", got)
		}
		if got := w.Header().Get("X-RateLimit-Limit"); got != "2" {
			t.Errorf("own limits: the binding limit is %q, want the 2/1m one", got)
		}
	}
	if w, passed, _ := limitedCall(t, h, own); passed || w.Code != 429 {
		t.Errorf("own limits: the third request in a minute passed (%d)", w.Code)
	}
	for i := range 10 {
		if w, passed, _ := limitedCall(t, h, unlimited); !passed || w.Header().Get("RateLimit") != "" {
			t.Fatalf("a key with rate_limits [] refused or limited at request %d: %d %v", i+1, w.Code, w.Header())
		}
	}

	// rate_limit off: no limits at all, the keys' own neither.
	off := newMemoryHandler(&Handler{KeysFile: "keys.json", RateLimitsOff: true}, ks)
	for range 5 {
		if _, passed, _ := limitedCall(t, off, own); !passed {
			t.Fatal("rate_limit off: a key's own limit was enforced")
		}
	}

	// Headers off: none, but Retry-After on a refusal.
	quiet := newMemoryHandler(&Handler{KeysFile: "keys.json", RateLimits: []keyset.RateLimit{{Requests: 1, Window: "1s"}}, RateLimitHeadersOff: true}, ks)
	w, _, _ := limitedCall(t, quiet, plain)
	if w.Header().Get("RateLimit") != "" || w.Header().Get("X-RateLimit-Limit") != "" {
		t.Errorf("rate_limit_headers off: headers %v", w.Header())
	}
	w, _, _ = limitedCall(t, quiet, plain)
	if w.Code != 429 || w.Header().Get("Retry-After") == "" || w.Header().Get("X-RateLimit-Remaining") != "" {
		t.Errorf("rate_limit_headers off, over the limit: %d, headers %v", w.Code, w.Header())
	}

	// handle_errors: a 429 for Caddy's error routes, with the code.
	he := newMemoryHandler(&Handler{KeysFile: "keys.json", RateLimits: []keyset.RateLimit{{Requests: 1, Window: "1s"}}, HandleErrors: true}, ks)
	limitedCall(t, he, plain)
	w, passed, repl := limitedCall(t, he, plain)
	if passed || w.Code != 429 {
		t.Errorf("handle_errors: %d, passed %v", w.Code, passed)
	}
	if v, _ := repl.GetString("http.auth.apikey.error_code"); v != CodeRateLimited {
		t.Errorf("handle_errors: error_code %q", v)
	}
}

// The directive: rate_limit <requests> <window> (repeatable), rate_limit
// off alone, rate_limit_headers off; wrong arguments named with their line.
func TestRateLimitCaddyfile(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser(`apikey keys.json {
		rate_limit 100 1m
		rate_limit 10 1s
		rate_limit_headers off
	}`)
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if len(h.RateLimits) != 2 || h.RateLimits[0] != (keyset.RateLimit{Requests: 100, Window: "1m"}) || h.RateLimits[1] != (keyset.RateLimit{Requests: 10, Window: "1s"}) || !h.RateLimitHeadersOff {
		t.Errorf("parsed %+v, headers off %v", h.RateLimits, h.RateLimitHeadersOff)
	}
	for _, tc := range []struct{ block, want string }{
		{"rate_limit off\n rate_limit 1 1s", "rate_limit off is given already"},
		{"rate_limit 1 1s\n rate_limit off", "goes alone"},
		{"rate_limit 0 1m", "requests must be"},
		{"rate_limit 10 1ms", "window"},
		{"rate_limit 10 soon", "rate_limit 10 soon"},
		{"rate_limit 10 1m\n rate_limit 20 1m", "same window"},
		{"rate_limit 10", "rate_limit takes"},
		{"rate_limit_headers on", "rate_limit_headers takes"},
		{"rate_limt 10 1m", "did you mean 'rate_limit'"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("apikey keys.json {\n " + tc.block + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: %v, want %q and the line", tc.block, err, tc.want)
		}
	}
}
