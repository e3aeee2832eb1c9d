package apikey

import (
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
)

// Rate limits in a running Caddy: the directive's default, a key's own set
// and cleared through the admin API (in force when the call answers), the
// 429 and the headers over HTTP, the key file keeping the member.
func TestRateLimitsAgainstCaddy(t *testing.T) {
	k := testkeys.New("metered", nil)
	path := testkeys.WriteKeys(t, "", k)
	loadCaddyfile(t, `
	apikey `+path+` {
		reload_interval off
		usage_interval off
		rate_limit 2 1h
	}
	respond "ok {http.auth.apikey.rate_limit.remaining}"
`)
	id := k.Record["id"].(string)
	send := func() (*http.Response, string) { return do(t, "GET", "/", bearer(k)) }

	for i, want := range []string{"ok 1", "ok 0"} {
		resp, body := send()
		if resp.StatusCode != 200 || body != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i+1, resp.StatusCode, body, want)
		}
		if got := resp.Header.Get("RateLimit-Policy"); got != `"1h";q=2;w=3600` {
			t.Errorf("RateLimit-Policy = %q", got)
		}
	}
	resp, body := send()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the limit: %d %q, Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if code, _ := testkeys.RefusalOf(t, body); code != CodeRateLimited {
		t.Errorf("code %q, want RATE_LIMITED", code)
	}

	// The key's own limit, set through the admin API: in force at once.
	var answer admin.RateLimitsAnswer
	resp, body = adminCall(t, "PUT", "/apikey/keys/"+id+"/rate_limits", `{"rate_limits": [{"requests": 4, "window": "1h"}]}`)
	adminAnswer(t, resp, body, 200, &answer)
	if !answer.Changed || len(answer.RateLimits) != 1 || answer.RateLimits[0].Requests != 4 {
		t.Fatalf("PUT rate_limits: %s", body)
	}
	for i, want := range []int{200, 200, 429} { // 2 of 4 spent already
		if resp, _ := send(); resp.StatusCode != want {
			t.Fatalf("with its own limit of 4, request %d: %d, want %d", i+1, resp.StatusCode, want)
		}
	}
	if !strings.Contains(testkeys.ReadFile(t, path), `"rate_limits"`) {
		t.Error("the key file does not hold the key's rate_limits")
	}

	// None at all, then the defaults again.
	resp, body = adminCall(t, "PUT", "/apikey/keys/"+id+"/rate_limits", `{"rate_limits": []}`)
	adminAnswer(t, resp, body, 200, &answer)
	for range 5 {
		if resp, _ := send(); resp.StatusCode != 200 || resp.Header.Get("RateLimit") != "" {
			t.Fatalf("with rate_limits [], a request got %d (RateLimit %q)", resp.StatusCode, resp.Header.Get("RateLimit"))
		}
	}
	resp, body = adminCall(t, "DELETE", "/apikey/keys/"+id+"/rate_limits", "")
	var dropped admin.RateLimitsAnswer
	adminAnswer(t, resp, body, 200, &dropped)
	if dropped.RateLimits != nil || strings.Contains(testkeys.ReadFile(t, path), `"rate_limits"`) {
		t.Errorf("DELETE rate_limits left them: %s", body)
	}
	if resp, _ := send(); resp.StatusCode != 429 {
		t.Errorf("back on the default of 2 an hour after 4 requests: %d, want 429", resp.StatusCode)
	}

	for _, bad := range []string{`{}`, `{"rate_limits": [{"requests": 0, "window": "1m"}]}`, `{"rate_limits": [{"requests": 1, "window": "soon"}]}`, `{"rate_limits": "100/1m"}`} {
		resp, body := adminCall(t, "PUT", "/apikey/keys/"+id+"/rate_limits", bad)
		if resp.StatusCode != 400 {
			t.Errorf("PUT %s: %d %s, want 400", bad, resp.StatusCode, body)
		}
	}
}
