package apikey

import (
	"net/http"
	"testing"
)

func TestHarnessSmoke(t *testing.T) {
	k := newTestKey("smoke", nil)
	path := writeKeys(t, "", k)
	loadCaddyfile(t, `
	apikey `+path+`
	respond "hello {http.auth.user.label}"
`)
	resp, body := do(t, "GET", "/", "Authorization: Bearer "+k.Raw)
	if resp.StatusCode != http.StatusOK || body != "hello smoke" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", "/")
	if resp.StatusCode != 401 || errorCode(t, body) != "AUTH_REQUIRED" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}
