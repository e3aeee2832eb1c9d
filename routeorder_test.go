package apikey

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// adaptedServer adapts a Caddyfile and returns its one server as the http
// app reads it, before provisioning: every route still JSON.
func adaptedServer(t *testing.T, globals, body string) *caddyhttp.Server {
	t.Helper()
	input := site(body)
	if globals != "" {
		input = "{\n" + globals + "\n}\n" + input
	}
	cfg, err := adaptCaddyfile(t, input)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	servers := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)
	if len(servers) != 1 {
		t.Fatalf("%d servers", len(servers))
	}
	for _, s := range servers {
		raw, _ := json.Marshal(s)
		var srv caddyhttp.Server
		if err := json.Unmarshal(raw, &srv); err != nil {
			t.Fatal(err)
		}
		return &srv
	}
	return nil
}

// shadowedAuths finds each handler that answers before an apikey handler
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
			got := shadowedAuths(adaptedServer(t, tt.globals, tt.body))
			if tt.answerer == "" {
				if len(got) != 0 {
					t.Fatalf("found %+v, want nothing", got)
				}
				return
			}
			if len(got) != 1 || got[0].answerer != tt.answerer || got[0].answererAt == "" || got[0].apikeyAt == "" {
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
			got := shadowedAuths(srv)
			switch {
			case tt.want == "" && len(got) != 0:
				t.Fatalf("found %+v, want nothing", got)
			case tt.want != "" && (len(got) != 1 || got[0].answerer != tt.want || got[0].answererAt != "routes[0] handle[0]" && !strings.HasPrefix(got[0].answererAt, "routes[0] handle[0] routes[0]") || got[0].apikeyAt != "routes[1] handle[0]"):
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
		warnShadowedAuth(zap.New(core), srv)
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
	warnShadowedAuth(zap.New(core), adaptedServer(t, "", "route {\n\trespond \"secret\"\n\tapikey keys.json\n}"))
	if logs.Len() != 2 {
		t.Fatalf("the next server was not checked: %d entries", logs.Len())
	}
	warnShadowedAuth(zap.New(core), nil)
	if logs.Len() != 2 {
		t.Fatal("a warning without a server")
	}
}

// Through the real Caddy, with the routes as the http app provisions
// them: the trap is warned about once, however many apikey handlers the
// server has, and a config in the right order loads without a word.
func TestIntegrationRouteOrderWarning(t *testing.T) {
	k := testkeys.New("k", nil)
	keys := testkeys.WriteKeys(t, "", k)
	const warning = "an apikey handler never runs"
	for _, tt := range []struct {
		name, site string
		warned     bool
	}{
		{"respond before apikey", "\troute {\n\t\trespond \"secret\"\n\t\tapikey " + keys + "\n\t}\n\thandle /other/* {\n\t\tapikey " + keys + "\n\t\trespond \"other\"\n\t}\n", true},
		{"apikey first", "\troute {\n\t\tapikey " + keys + "\n\t\trespond \"secret\"\n\t}\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "caddy.log")
			globals := "\tlog {\n\t\toutput file " + logPath + "\n\t\tlevel WARN\n\t}\n"
			loadCaddyfileWithGlobals(t, globals, tt.site)
			readLog := func() string { data, _ := os.ReadFile(logPath); return string(data) }

			resp, body := do(t, http.MethodGet, "/")
			if tt.warned {
				// The warning is all the handler can do: the route
				// answers as written.
				if resp.StatusCode != http.StatusOK || body != "secret" {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
				var log string
				testkeys.WaitFor(t, 5*time.Second, "the warning in Caddy's log", func() bool {
					log = readLog()
					return strings.Contains(log, warning)
				})
				if n := strings.Count(log, warning); n != 1 {
					t.Fatalf("the warning is logged %d times:\n%s", n, log)
				}
				for _, part := range []string{`"handler":"static_response"`, `"fix":"put apikey first`, `"server":"srv0"`} {
					if !strings.Contains(log, part) {
						t.Errorf("the warning does not say %s:\n%s", part, log)
					}
				}
				return
			}
			testkeys.AssertRefusal(t, resp, body, http.StatusUnauthorized, CodeAuthRequired, "restricted")
			if log := readLog(); strings.Contains(log, warning) {
				t.Fatalf("warned about a route in the right order:\n%s", log)
			}
		})
	}
}
