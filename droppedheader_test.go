package apikey

import (
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

// droppedHeaders mirrors Caddy's filter of request headers with "_" or "."
// in their names (Server.ServeHTTP).
func TestDroppedHeaders(t *testing.T) {
	server := func(underscore, dot []string) *caddyhttp.Server {
		return &caddyhttp.Server{ExpectedUnderscoreHeaders: underscore, ExpectedDotHeaders: dot}
	}
	plain := server(nil, nil)
	tests := []struct {
		name    string
		header  string
		srv     *caddyhttp.Server
		dropped bool
		fix     string // a part of the fix, if dropped
	}{
		{"default header", "X-API-Key", plain, false, ""},
		{"Authorization", "Authorization", plain, false, ""},
		{"underscore, server not listing it", "api_key", plain, true, "`servers { expected_underscore_headers api_key }`"},
		{"underscore, server not known", "api_key", nil, true, "expected_underscore_headers api_key"},
		{"dot, server not listing it", "x.api.key", plain, true, "`servers { expected_dot_headers x.api.key }`"},
		{"dot, server not known", "x.api.key", nil, true, "expected_dot_headers"},
		{"underscore listed, other case", "api_key", server([]string{"API_KEY"}, nil), false, ""},
		{"underscore listed by a glob", "api_key", server([]string{"api_*"}, nil), false, ""},
		{"underscore, another name listed", "api_key", server([]string{"token_id"}, nil), true, "expected_underscore_headers"},
		{"underscore, only the dot list set", "api_key", server(nil, []string{"api.key"}), true, "expected_underscore_headers"},
		{"dot listed", "X.Api.Key", server(nil, []string{"x.api.key"}), false, ""},
		{"dot listed by a glob", "X.Api.Key", server(nil, []string{"x.*"}), false, ""},
		{"both, glob only", "x_api.key", server([]string{"x_*"}, []string{"x_*.key"}), true, "expected_underscore_headers"},
		{"both, exact entry", "x_api.key", server([]string{"X_API.KEY"}, nil), false, ""},
		{"both, exact dot entry", "x_api.key", server(nil, []string{"x_api.key"}), false, ""},
		{"hyphenated variant of an underscore entry", "X-API-Key", server([]string{"x_api_key"}, nil), true, "take the entry out"},
		{"hyphenated variant of a dot glob", "X-Webhook-Key", server(nil, []string{"x.webhook.*"}), true, "take the entry out"},
		{"not a variant", "X-API-Key", server([]string{"x_api_token"}, nil), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := droppedHeaders([]HeaderSource{{Name: "Authorization", Scheme: "Bearer"}, {Name: tt.header}}, tt.srv)
			if !tt.dropped {
				if len(got) != 0 {
					t.Fatalf("droppedHeaders = %+v, want none", got)
				}
				return
			}
			if len(got) != 1 || got[0].name != tt.header {
				t.Fatalf("droppedHeaders = %+v, want %q alone", got, tt.header)
			}
			if !strings.Contains(got[0].fix, tt.fix) {
				t.Fatalf("fix %q does not say %q", got[0].fix, tt.fix)
			}
		})
	}
}

// Provision warns once per header that the server drops, naming the header,
// the server and the fix.
func TestDroppedHeaderWarnings(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	srv := &caddyhttp.Server{}
	warnDroppedHeaders(zap.New(core), []HeaderSource{{Name: "api_key"}, {Name: "X-API-Key"}, {Name: "x.token"}}, srv)
	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("%d log entries, want one warning for each of api_key and x.token: %+v", len(entries), entries)
	}
	for i, want := range []string{"api_key", "x.token"} {
		e := entries[i]
		f := e.ContextMap()
		if e.Level != zapcore.WarnLevel || f["header"] != want || f["server"] == nil || !strings.Contains(f["fix"].(string), "servers {") {
			t.Errorf("warning %d = %s %q %v", i, e.Level, e.Message, f)
		}
	}

	// Nothing to say about a configuration that works.
	logs.TakeAll()
	warnDroppedHeaders(zap.New(core), defaultHeaders, srv)
	if logs.Len() != 0 {
		t.Fatalf("warnings for the default headers: %+v", logs.All())
	}
}

// Through the real Caddy: a header with "_" reaches the handler only once
// the server lists it in expected_underscore_headers, and the warning is
// logged exactly when it does not.
func TestIntegrationUnderscoreHeader(t *testing.T) {
	k := testkeys.New("k", nil)
	keys := testkeys.WriteKeys(t, "", k)
	site := "\tapikey " + keys + " {\n\t\theader api_key\n\t}\n\trespond \"{http.auth.user.id}\"\n"
	const warning = "a configured header never reaches this handler"

	for _, listed := range []bool{false, true} {
		logPath := filepath.Join(t.TempDir(), "caddy.log")
		globals := "\tlog {\n\t\toutput file " + logPath + "\n\t\tlevel WARN\n\t}\n"
		if listed {
			globals += "\tservers {\n\t\texpected_underscore_headers api_key\n\t}\n"
		}
		loadCaddyfileWithGlobals(t, globals, site)

		resp, body := do(t, http.MethodGet, "/", "api_key: "+k.Raw)
		if listed {
			if resp.StatusCode != http.StatusOK || body != k.Record["id"] {
				t.Fatalf("listed in expected_underscore_headers: %d %q, want 200 and the key's id", resp.StatusCode, body)
			}
		} else {
			testkeys.AssertRefusal(t, resp, body, http.StatusUnauthorized, CodeAuthRequired, "restricted", k.Raw)
		}

		var log string
		readLog := func() string { data, _ := os.ReadFile(logPath); return string(data) }
		if listed {
			time.Sleep(200 * time.Millisecond) // give a wrong warning time to show
			log = readLog()
		} else {
			testkeys.WaitFor(t, 5*time.Second, "the warning in Caddy's log", func() bool {
				log = readLog()
				return strings.Contains(log, warning)
			})
		}
		if got := strings.Count(log, warning); got != map[bool]int{false: 1, true: 0}[listed] {
			t.Fatalf("listed=%v: the warning is logged %d times:\n%s", listed, got, log)
		}
		if strings.Contains(log, testkeys.SecretPart(k.Raw)) {
			t.Fatal("Caddy's log holds the raw key")
		}
	}
}
