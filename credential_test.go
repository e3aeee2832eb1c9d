package apikey

import (
	"context"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddyserver/caddy/v2"
)

// provisionTestHandler provisions h as Caddy would, with a key file of its
// own unless h names one, and cleans it up when the test ends.
func provisionTestHandler(t *testing.T, h *Handler) *Handler {
	t.Helper()
	if h.KeysFile == "" {
		h.KeysFile = testkeys.WriteKeys(t, "", testkeys.New("unit", nil))
	}
	h.UsageInterval, h.ReloadInterval = -1, -1
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return h
}

func TestCredentialExtraction(t *testing.T) {
	big := "sk_" + strings.Repeat("A", 64*1024-3)
	tests := []struct {
		name    string
		target  string
		headers []string
		want    credential
	}{
		{"nothing", "/", nil, credential{}},
		{"bearer", "/", []string{"Authorization: Bearer sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"bearer lower case", "/", []string{"Authorization: bearer sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"bearer upper case", "/", []string{"Authorization: BEARER sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"bearer mixed case", "/", []string{"Authorization: bEaReR sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"bearer spaces and tabs", "/", []string{"Authorization:  \t Bearer \t  sk_one \t "}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"bearer tab separator", "/", []string{"Authorization: Bearer\tsk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"bearer without separator", "/", []string{"Authorization: Bearersk_one"}, credential{}},
		{"bearer alone", "/", []string{"Authorization: Bearer"}, credential{}},
		{"bearer and spaces", "/", []string{"Authorization: Bearer    "}, credential{}},
		{"bearer and tabs", "/", []string{"Authorization: Bearer \t\t"}, credential{}},
		{"basic ignored", "/", []string{"Authorization: Basic Ym9iOnNlY3JldA=="}, credential{}},
		{"bare key in authorization ignored", "/", []string{"Authorization: sk_one"}, credential{}},
		{"x-api-key", "/", []string{"X-API-Key: sk_two"}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"x-api-key lower-case name", "/", []string{"x-api-key: sk_two"}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"x-api-key trimmed", "/", []string{"X-Api-Key: \t sk_two  "}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"x-api-key empty", "/", []string{"X-Api-Key: "}, credential{}},
		{"x-api-key blank", "/", []string{"X-Api-Key:   \t"}, credential{}},
		{"query", "/?api_key=sk_three", nil, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"query among others", "/p?a=1&api_key=sk_three&b=2", nil, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"query empty", "/?api_key=", nil, credential{}},
		{"query no value", "/?api_key", nil, credential{}},
		{"query name case matters", "/?API_KEY=sk_three", nil, credential{}},
		{"query name prefix", "/?api_keys=sk_three&xapi_key=sk_3", nil, credential{}},
		{"query empty then value", "/?api_key=&api_key=sk_three", nil, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"query percent-encoded value", "/?api_key=sk%5Fthree%2D", nil, credential{key: "sk_three-", status: credFound, param: "api_key"}},
		{"query percent-encoded name", "/?api%5Fkey=sk_three", nil, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"query plus is a space", "/?api_key=sk+three", nil, credential{key: "sk three", status: credFound, param: "api_key"}},
		{"query same value twice", "/?api_key=sk_three&api_key=sk%5Fthree", nil, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"query different values", "/?api_key=sk_three&api_key=sk_four", nil, credential{status: credAmbiguous, param: "api_key"}},
		{"bearer beats x-api-key and query", "/?api_key=sk_three", []string{"X-API-Key: sk_two", "Authorization: Bearer sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"x-api-key beats query", "/?api_key=sk_three", []string{"X-API-Key: sk_two"}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"empty bearer falls through", "/?api_key=sk_three", []string{"Authorization: Bearer "}, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"basic falls through to x-api-key", "/", []string{"Authorization: Basic Ym9iOnNlY3JldA==", "X-API-Key: sk_two"}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"empty x-api-key falls through", "/?api_key=sk_three", []string{"X-API-Key: "}, credential{key: "sk_three", status: credFound, param: "api_key"}},
		{"same bearer twice", "/", []string{"Authorization: Bearer sk_one", "Authorization: bearer  sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"different bearers", "/", []string{"Authorization: Bearer sk_one", "Authorization: Bearer sk_1"}, credential{status: credAmbiguous, header: "Authorization"}},
		{"basic and bearer", "/", []string{"Authorization: Basic Ym9i", "Authorization: Bearer sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"same x-api-key twice", "/", []string{"X-API-Key: sk_two", "X-Api-Key: sk_two"}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"different x-api-keys", "/", []string{"X-API-Key: sk_two", "X-Api-Key: sk_2"}, credential{status: credAmbiguous, header: "X-Api-Key"}},
		{"empty and a x-api-key", "/", []string{"X-API-Key: ", "X-Api-Key: sk_two"}, credential{key: "sk_two", status: credFound, header: "X-Api-Key"}},
		{"64 KiB bearer", "/", []string{"Authorization: Bearer " + big}, credential{key: big, status: credFound, header: "Authorization"}},
		{"64 KiB x-api-key", "/", []string{"X-Api-Key: " + big}, credential{key: big, status: credFound, header: "X-Api-Key"}},
	}
	h := provisionTestHandler(t, &Handler{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := h.credential(newRequest("GET", tt.target, tt.headers...))
			if got.status == credAmbiguous {
				got.key = "" // what an ambiguous result carries does not matter
			}
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", shorten(got), shorten(tt.want))
			}
		})
	}
}

func shorten(c credential) credential {
	if len(c.key) > 40 {
		c.key = c.key[:40] + "..."
	}
	return c
}

func TestCredentialCustomSources(t *testing.T) {
	tests := []struct {
		name    string
		handler Handler
		target  string
		headers []string
		want    credential
	}{
		{"custom header replaces the defaults", Handler{Headers: []HeaderSource{{Name: "X-Token"}}}, "/",
			[]string{"Authorization: Bearer sk_one", "X-API-Key: sk_two"}, credential{}},
		{"custom header read", Handler{Headers: []HeaderSource{{Name: "X-Token"}}}, "/",
			[]string{"X-Token: sk_one"}, credential{key: "sk_one", status: credFound, header: "X-Token"}},
		{"custom header configured in lower case", Handler{Headers: []HeaderSource{{Name: "x-token"}}}, "/",
			[]string{"X-TOKEN: sk_one"}, credential{key: "sk_one", status: credFound, header: "X-Token"}},
		{"custom header keeps the default query", Handler{Headers: []HeaderSource{{Name: "X-Token"}}}, "/?api_key=sk_q",
			nil, credential{key: "sk_q", status: credFound, param: "api_key"}},
		{"custom scheme", Handler{Headers: []HeaderSource{{Name: "Authorization", Scheme: "Token"}}}, "/",
			[]string{"Authorization: token sk_one"}, credential{key: "sk_one", status: credFound, header: "Authorization"}},
		{"custom scheme ignores bearer", Handler{Headers: []HeaderSource{{Name: "Authorization", Scheme: "Token"}}}, "/",
			[]string{"Authorization: Bearer sk_one"}, credential{}},
		{"header order is the configured one", Handler{Headers: []HeaderSource{{Name: "X-B"}, {Name: "X-A"}}}, "/",
			[]string{"X-A: sk_a", "X-B: sk_b"}, credential{key: "sk_b", status: credFound, header: "X-B"}},
		{"custom query", Handler{Query: strPtr("token")}, "/?api_key=sk_a&token=sk_t",
			nil, credential{key: "sk_t", status: credFound, param: "token"}},
		{"custom query ignores api_key", Handler{Query: strPtr("token")}, "/?api_key=sk_a",
			nil, credential{}},
		{"query off", Handler{Query: strPtr("")}, "/?api_key=sk_a",
			nil, credential{}},
		{"query off keeps headers", Handler{Query: strPtr("")}, "/?api_key=sk_a",
			[]string{"X-Api-Key: sk_h"}, credential{key: "sk_h", status: credFound, header: "X-Api-Key"}},
		{"no headers, only query", Handler{Headers: []HeaderSource{}}, "/?api_key=sk_a",
			[]string{"Authorization: Bearer sk_b"}, credential{key: "sk_a", status: credFound, param: "api_key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.handler
			provisionTestHandler(t, &h)
			got := h.credential(newRequest("GET", tt.target, tt.headers...))
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestCredentialNoSourceIsInvalid(t *testing.T) {
	h := Handler{Headers: []HeaderSource{}, Query: strPtr(""), KeysFile: testkeys.WriteKeys(t, "")}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// Refused before the key file is loaded and watched for nothing.
	err := h.Provision(ctx)
	if err == nil || !strings.Contains(err.Error(), "no credential source") {
		t.Fatalf("a handler that reads no source was provisioned (error %v)", err)
	}
	if h.store != nil {
		t.Fatal("the key file was loaded for a handler that reads no source")
	}
}

func TestRefusalMessages(t *testing.T) {
	tests := []struct {
		handler Handler
		want    string
	}{
		{Handler{}, "API key is required. Pass via Authorization: Bearer header, X-API-Key header or ?api_key= query parameter."},
		{Handler{Query: strPtr("")}, "API key is required. Pass via Authorization: Bearer header or X-API-Key header."},
		{Handler{Headers: []HeaderSource{{Name: "X-Token"}}, Query: strPtr("")}, "API key is required. Pass via X-Token header."},
		{Handler{Headers: []HeaderSource{}, Query: strPtr("token")}, "API key is required. Pass via ?token= query parameter."},
	}
	for _, tt := range tests {
		h := tt.handler
		provisionTestHandler(t, &h)
		if code, msg := testkeys.RefusalOf(t, string(h.authRequired.body)); code != "AUTH_REQUIRED" || msg != tt.want {
			t.Errorf("401 body %s, want message %q", h.authRequired.body, tt.want)
		}
	}
}

func TestRemoveQueryParam(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"api_key=k", ""},
		{"a=1&api_key=k&b=2", "a=1&b=2"},
		{"api_key=k&a=1", "a=1"},
		{"a=1&api_key=k", "a=1"},
		{"api_key=k&api_key=j&api_key=", ""},
		{"api%5Fkey=k&x=1", "x=1"},
		{"api_key&x=1", "x=1"},
		{"x=api_key&api_keys=1&apikey=2&api-key=3&xapi_key=4", "x=api_key&api_keys=1&apikey=2&api-key=3&xapi_key=4"},
		{"b=%20x&api_key=k&a=1+2", "b=%20x&a=1+2"},
		// Nothing to remove: the query stays byte for byte, odd
		// separators, escapes and all.
		{"a=1&&b=%zz;c&=d&", "a=1&&b=%zz;c&=d&"},
		// ";" separates pairs too, for many upstreams.
		{"x=1;api_key=k", "x=1"},
		{"api_key=k;x=1", "x=1"},
		{"a=1;api_key=k&b=2;c=3", "a=1&b=2;c=3"},
		{"a=1&api_key=k;api_key=j;b=2", "a=1;b=2"},
		// Every occurrence, however escaped: lower-case hex, double
		// encoding, IIS's %u, "+" and malformed escapes beside.
		{"api%5fkey=k&x=1", "x=1"},
		{"api%255Fkey=k&x=1", "x=1"},
		{"%2561pi_key=k&x=1", "x=1"},
		{"api%u005Fkey=k&x=1", "x=1"},
		{"%61%70%69%5F%6B%65%79=k", ""},
		{"api_key%=k&api_key%zz=j&x=1", "api_key%=k&api_key%zz=j&x=1"},
		// In another case (ASP.NET's query collection ignores it).
		{"API_KEY=k&Api_Key=j&x=1", "x=1"},
		// As PHP reads names: spaces, dots and "[" for "_", an array
		// suffix, leading spaces, a NUL.
		{"api.key=k&api+key=j&api%20key=i&api[key=h&x=1", "x=1"},
		{"api_key[]=k&api_key[0]=j&api_key%5B%5D=i&x=1", "x=1"},
		{"+api_key=k&%00=x&api_key%00junk=j&x=1", "%00=x&x=1"},
		// A value that looks like a pair is part of its pair.
		{"x=api_key%3Dk&y=1", "x=api_key%3Dk&y=1"},
		{"api_key=k&", ""},
		{"a=1&api_key=k&", "a=1&"},
	}
	for _, tt := range tests {
		if got := removeQueryParam(tt.in, "api_key"); got != tt.want {
			t.Errorf("removeQueryParam(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHideCredential(t *testing.T) {
	h := provisionTestHandler(t, &Handler{})

	// Every key goes, from every enabled source: the one that
	// authenticated and any other sent beside it. What carries no key
	// stays.
	r := newRequest("GET", "/p?x=1&api_key=sk_three", "Authorization: Bearer sk_one", "Authorization: Basic Ym9i", "X-Api-Key: sk_two", "X-Other: 1")
	h.hideCredentials(r)
	if got := r.Header["Authorization"]; len(got) != 1 || got[0] != "Basic Ym9i" {
		t.Errorf("Authorization after hiding: %q, want only the Basic value", got)
	}
	if _, ok := r.Header["X-Api-Key"]; ok {
		t.Errorf("X-API-Key still there: %q", r.Header["X-Api-Key"])
	}
	if r.Header.Get("X-Other") != "1" || r.URL.RawQuery != "x=1" {
		t.Errorf("what carries no key was touched: %v %q", r.Header, r.URL.RawQuery)
	}

	r = newRequest("GET", "/p?a=1&api_key=sk_three&b=2")
	h.hideCredentials(r)
	if r.URL.RawQuery != "a=1&b=2" || r.RequestURI != "/p?a=1&b=2" {
		t.Errorf("after hiding: RawQuery %q RequestURI %q", r.URL.RawQuery, r.RequestURI)
	}
	if strings.Contains(r.URL.String(), "sk_three") {
		t.Errorf("the key is still in the URL %s", r.URL)
	}

	r = newRequest("GET", "/p?api_key=sk_three")
	h.hideCredentials(r)
	if r.URL.RawQuery != "" || r.RequestURI != "/p" {
		t.Errorf("after hiding the only parameter: RawQuery %q RequestURI %q", r.URL.RawQuery, r.RequestURI)
	}
}

// Hiding allocates nothing for a query with nothing to hide and plain
// names, the common case of a request admitted by a header.
func TestRemoveQueryParamNoAllocs(t *testing.T) {
	for _, q := range []string{"", "page=2&sort=name;dir=asc", "q=a%20b&x=1+2"} {
		if n := testing.AllocsPerRun(100, func() { removeQueryParam(q, "api_key") }); n != 0 {
			t.Errorf("removeQueryParam(%q) allocates %v times", q, n)
		}
	}
}
