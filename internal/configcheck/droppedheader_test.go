package configcheck

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

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
			got := droppedHeaders([]string{"Authorization", tt.header}, tt.srv)
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

// WarnDroppedHeaders warns once per header that the server drops, naming the header,
// the server and the fix.
func TestDroppedHeaderWarnings(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	srv := &caddyhttp.Server{}
	WarnDroppedHeaders(zap.New(core), []string{"api_key", "X-API-Key", "x.token"}, srv)
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
	WarnDroppedHeaders(zap.New(core), []string{"Authorization", "X-API-Key"}, srv)
	if logs.Len() != 0 {
		t.Fatalf("warnings for headers the server passes: %+v", logs.All())
	}
}
