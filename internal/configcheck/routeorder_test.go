package configcheck_test

// These tests adapt Caddyfiles with the apikey directive, so they import
// the root package (which imports this one): an external test package.

import (
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	_ "github.com/caddy-apikey/caddy-apikey"
	"github.com/caddy-apikey/caddy-apikey/internal/configcheck"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// adaptedServer adapts a Caddyfile and returns its one server as the http
// app reads it, before provisioning: every route still JSON.
func adaptedServer(t *testing.T, globals, body string) *caddyhttp.Server {
	t.Helper()
	input := "http://localhost:8080 {\n" + body + "\n}\n"
	if globals != "" {
		input = "{\n" + globals + "\n}\n" + input
	}
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]*caddyhttp.Server `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Apps.HTTP.Servers) != 1 {
		t.Fatalf("%d servers", len(cfg.Apps.HTTP.Servers))
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		return srv
	}
	return nil
}

// ShadowedAuths finds each handler that answers before an apikey handler
// can run, in the routes a Caddyfile adapts into, and nothing where apikey
// runs first or the handler before it may not run.
func TestShadowedAuths(t *testing.T) {
	tests := []struct {
		name, globals, body string
		answerer            string // "" for none
	}{
		{name: "respond before apikey in a route block", body: "route {\n\trespond \"secret\"\n\tapikey keys.json\n}", answerer: "static_response"},
		{name: "reverse_proxy before apikey", body: "route {\n\treverse_proxy localhost:9\n\tapikey keys.json\n}", answerer: "reverse_proxy"},
		{name: "file_server before apikey", body: "route {\n\tfile_server\n\tapikey keys.json\n}", answerer: "file_server"},
		{name: "metrics before apikey", body: "route {\n\tmetrics\n\tapikey keys.json\n}", answerer: "metrics"},
		{name: "a handle block that answers, before apikey", body: "route {\n\thandle {\n\t\trespond \"secret\"\n\t}\n\tapikey keys.json\n}", answerer: "static_response"},
		{name: "nested route blocks", body: "route {\n\troute {\n\t\theader X-A 1\n\t\trespond \"secret\"\n\t}\n\troute {\n\t\tapikey keys.json\n\t}\n}", answerer: "static_response"},
		{name: "the order option puts respond first", globals: "\torder respond before apikey", body: "apikey keys.json\nrespond \"secret\"", answerer: "static_response"},
		{name: "a second apikey with a scope, after the answer", body: "route {\n\tapikey keys.json\n\trespond \"secret\"\n\tapikey keys.json {\n\t\tscope admin\n\t}\n}", answerer: "static_response"},
		{name: "fallback handle before apikey in a route", body: "route {\n\thandle /x/* {\n\t\trespond \"x\"\n\t}\n\thandle {\n\t\trespond \"secret\"\n\t}\n\tapikey keys.json\n}", answerer: "static_response"},

		{name: "apikey ordered by Caddy", body: "respond \"secret\"\napikey keys.json"},
		{name: "apikey first in the route block", body: "route {\n\tapikey keys.json\n\trespond \"secret\"\n}"},
		{name: "respond with a matcher before apikey", body: "route {\n\trespond /health \"ok\"\n\tapikey keys.json\n\trespond \"secret\"\n}"},
		{name: "file_server with pass_thru", body: "route {\n\tfile_server {\n\t\tpass_thru\n\t}\n\tapikey keys.json\n\trespond \"secret\"\n}"},
		{name: "abort", body: "route {\n\tabort\n\tapikey keys.json\n}"},
		{name: "handle blocks", body: "handle /api/* {\n\tapikey keys.json\n\treverse_proxy localhost:9\n}\nhandle {\n\tfile_server\n}"},
		{name: "a handle block with a matcher before apikey", body: "route {\n\thandle /public/* {\n\t\trespond \"hi\"\n\t}\n\tapikey keys.json\n\trespond \"secret\"\n}"},
		{name: "no apikey after the answer", body: "route {\n\tapikey keys.json\n\treverse_proxy localhost:9\n}\nrespond \"x\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := configcheck.ShadowedAuths(adaptedServer(t, tt.globals, tt.body))
			if tt.answerer == "" {
				if len(got) != 0 {
					t.Fatalf("found %+v, want nothing", got)
				}
				return
			}
			if len(got) != 1 || got[0].Answerer != tt.answerer || got[0].AnswererAt == "" || got[0].ApikeyAt == "" {
				t.Fatalf("found %+v, want %s once", got, tt.answerer)
			}
		})
	}
}

// During provisioning, the routes before the one being provisioned are
// typed and the others JSON: both are read.
func TestShadowedAuthsPartlyProvisioned(t *testing.T) {
	apikeyRoute := caddyhttp.Route{HandlersRaw: []json.RawMessage{json.RawMessage(`{"handler":"apikey","keys_file":"k.json"}`)}}
	for _, tt := range []struct {
		name   string
		before caddyhttp.Route
		want   string
	}{
		{"typed static_response", caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.StaticResponse{}}}, "static_response"},
		{"typed subroute that answers", caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
			{Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.StaticResponse{}}},
		}}}}, "static_response"},
		{"typed abort", caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.StaticResponse{Abort: true}}}, ""},
		{"typed, with a matcher", caddyhttp.Route{
			MatcherSets: caddyhttp.MatcherSets{caddyhttp.MatcherSet{caddyhttp.MatchPath{"/x"}}},
			Handlers:    []caddyhttp.MiddlewareHandler{&caddyhttp.StaticResponse{}},
		}, ""},
		{"typed subroute with a matched answer", caddyhttp.Route{Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
			{MatcherSets: caddyhttp.MatcherSets{caddyhttp.MatcherSet{caddyhttp.MatchPath{"/x"}}}, Handlers: []caddyhttp.MiddlewareHandler{&caddyhttp.StaticResponse{}}},
		}}}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := &caddyhttp.Server{Routes: caddyhttp.RouteList{tt.before, apikeyRoute}}
			got := configcheck.ShadowedAuths(srv)
			switch {
			case tt.want == "" && len(got) != 0:
				t.Fatalf("found %+v, want nothing", got)
			case tt.want != "" && (len(got) != 1 || got[0].Answerer != tt.want || got[0].AnswererAt != "routes[0] handle[0]" && !strings.HasPrefix(got[0].AnswererAt, "routes[0] handle[0] routes[0]") || got[0].ApikeyAt != "routes[1] handle[0]"):
				t.Fatalf("found %+v, want %s at routes[0], apikey at routes[1] handle[0]", got, tt.want)
			}
		})
	}
}

// The warning is logged once per server, naming the handler and the fix.
func TestShadowedAuthWarning(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	srv := adaptedServer(t, "", "route {\n\trespond \"secret\"\n\tapikey keys.json\n}")
	for range 3 { // as three apikey handlers of the server would
		configcheck.WarnShadowedAuth(zap.New(core), srv)
	}
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d log entries, want one warning: %+v", len(entries), entries)
	}
	f := entries[0].ContextMap()
	if entries[0].Level != zapcore.WarnLevel || f["handler"] != "static_response" || !strings.Contains(f["fix"].(string), "put apikey first") {
		t.Errorf("warning %s %q %v", entries[0].Level, entries[0].Message, f)
	}
	// Another server (the next config's) is checked again.
	configcheck.WarnShadowedAuth(zap.New(core), adaptedServer(t, "", "route {\n\trespond \"secret\"\n\tapikey keys.json\n}"))
	if logs.Len() != 2 {
		t.Fatalf("the next server was not checked: %d entries", logs.Len())
	}
	configcheck.WarnShadowedAuth(zap.New(core), nil)
	if logs.Len() != 2 {
		t.Fatal("a warning without a server")
	}
}
