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

	"github.com/caddy-apikey/caddy-apikey/internal/configcheck"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The headers read when none are configured are ones Caddy's server passes
// as it is, listing nothing: Provision has nothing to warn about.
func TestDefaultHeadersNotDropped(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	names := make([]string, len(defaultHeaders))
	for i, hs := range defaultHeaders {
		names[i] = hs.Name
	}
	configcheck.WarnDroppedHeaders(zap.New(core), names, &caddyhttp.Server{})
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
