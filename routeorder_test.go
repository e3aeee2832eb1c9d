package apikey

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
)

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
