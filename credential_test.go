package apikey

import (
	"context"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/internal/credential"
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

func TestCredentialCustomSources(t *testing.T) {
	tests := []struct {
		name    string
		handler Handler
		target  string
		headers []string
		want    credential.Credential
	}{
		{"the defaults: Authorization Bearer first", Handler{}, "/?api_key=sk_q",
			[]string{"X-API-Key: sk_two", "Authorization: bearer sk_one"}, credential.Credential{Key: "sk_one", Status: credential.Found, Header: "Authorization"}},
		{"the defaults: X-API-Key before the query", Handler{}, "/?api_key=sk_q",
			[]string{"X-API-Key: sk_two"}, credential.Credential{Key: "sk_two", Status: credential.Found, Header: "X-Api-Key"}},
		{"the defaults: api_key", Handler{}, "/?api_key=sk_q",
			nil, credential.Credential{Key: "sk_q", Status: credential.Found, Param: "api_key"}},
		{"custom header replaces the defaults", Handler{Headers: []HeaderSource{{Name: "X-Token"}}}, "/",
			[]string{"Authorization: Bearer sk_one", "X-API-Key: sk_two"}, credential.Credential{}},
		{"custom header read", Handler{Headers: []HeaderSource{{Name: "X-Token"}}}, "/",
			[]string{"X-Token: sk_one"}, credential.Credential{Key: "sk_one", Status: credential.Found, Header: "X-Token"}},
		{"custom header configured in lower case", Handler{Headers: []HeaderSource{{Name: "x-token"}}}, "/",
			[]string{"X-TOKEN: sk_one"}, credential.Credential{Key: "sk_one", Status: credential.Found, Header: "X-Token"}},
		{"custom header keeps the default query", Handler{Headers: []HeaderSource{{Name: "X-Token"}}}, "/?api_key=sk_q",
			nil, credential.Credential{Key: "sk_q", Status: credential.Found, Param: "api_key"}},
		{"custom scheme", Handler{Headers: []HeaderSource{{Name: "Authorization", Scheme: "Token"}}}, "/",
			[]string{"Authorization: token sk_one"}, credential.Credential{Key: "sk_one", Status: credential.Found, Header: "Authorization"}},
		{"custom scheme ignores bearer", Handler{Headers: []HeaderSource{{Name: "Authorization", Scheme: "Token"}}}, "/",
			[]string{"Authorization: Bearer sk_one"}, credential.Credential{}},
		{"header order is the configured one", Handler{Headers: []HeaderSource{{Name: "X-B"}, {Name: "X-A"}}}, "/",
			[]string{"X-A: sk_a", "X-B: sk_b"}, credential.Credential{Key: "sk_b", Status: credential.Found, Header: "X-B"}},
		{"custom query", Handler{Query: strPtr("token")}, "/?api_key=sk_a&token=sk_t",
			nil, credential.Credential{Key: "sk_t", Status: credential.Found, Param: "token"}},
		{"custom query ignores api_key", Handler{Query: strPtr("token")}, "/?api_key=sk_a",
			nil, credential.Credential{}},
		{"query off", Handler{Query: strPtr("")}, "/?api_key=sk_a",
			nil, credential.Credential{}},
		{"query off keeps headers", Handler{Query: strPtr("")}, "/?api_key=sk_a",
			[]string{"X-Api-Key: sk_h"}, credential.Credential{Key: "sk_h", Status: credential.Found, Header: "X-Api-Key"}},
		{"no headers, only query", Handler{Headers: []HeaderSource{}}, "/?api_key=sk_a",
			[]string{"Authorization: Bearer sk_b"}, credential.Credential{Key: "sk_a", Status: credential.Found, Param: "api_key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.handler
			provisionTestHandler(t, &h)
			got := h.sources.Find(newRequest("GET", tt.target, tt.headers...))
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
