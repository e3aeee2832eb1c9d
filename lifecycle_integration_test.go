package apikey

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// expectRefusal sends a GET and checks that it is refused with status and
// code, as assertRefusal does (a 401 with the default realm); it returns the
// refusal's message.
func expectRefusal(t *testing.T, path string, status int, code string, headers ...string) string {
	t.Helper()
	resp, body := do(t, "GET", path, headers...)
	return testkeys.AssertRefusal(t, resp, body, status, code, "restricted")
}

// expectOK sends a request and checks that it passes with body want.
func expectOK(t *testing.T, path, want string, headers ...string) {
	t.Helper()
	resp, body := do(t, "GET", path, headers...)
	if resp.StatusCode != http.StatusOK || body != want {
		t.Fatalf("GET %s: %d %q, want 200 %q", path, resp.StatusCode, body, want)
	}
}

func bearer(k testkeys.Key) string { return "Authorization: Bearer " + k.Raw }

func TestLifecycleExpiredAndRevokedKeys(t *testing.T) {
	active := testkeys.New("active", map[string]any{"expires_at": keyset.FormatTimestamp(time.Now().Add(24 * time.Hour))})
	expired := testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00+00:00"})
	revoked := testkeys.New("revoked", map[string]any{"revoked_at": "2026-01-01T00:00:00.000000+00:00"})
	expiresSoon := testkeys.New("soon", map[string]any{"expires_at": keyset.FormatTimestamp(time.Now().Add(1500 * time.Millisecond))})
	path := testkeys.WriteKeys(t, "", active, expired, revoked, expiresSoon)
	loadCaddyfile(t, `
	apikey `+path+`
	respond "hello {http.auth.user.label}"
`)

	expectOK(t, "/", "hello active", bearer(active))
	expectRefusal(t, "/", http.StatusForbidden, CodeKeyExpired, bearer(expired))
	expectRefusal(t, "/", http.StatusForbidden, CodeInvalidKey, bearer(revoked))
	expectRefusal(t, "/?api_key="+revoked.Raw, http.StatusForbidden, CodeInvalidKey)

	// A key expires while Caddy runs, with no change to the file.
	expectOK(t, "/", "hello soon", bearer(expiresSoon))
	testkeys.WaitFor(t, 4*time.Second, "the key to expire", func() bool {
		resp, body := do(t, "GET", "/", bearer(expiresSoon))
		if resp.StatusCode != http.StatusForbidden {
			return false
		}
		code, _ := testkeys.RefusalOf(t, body)
		return code == CodeKeyExpired
	})
}

func TestLifecycleScopesPerRoute(t *testing.T) {
	reader := testkeys.New("reader", map[string]any{"scopes": []string{"read"}})
	writer := testkeys.New("writer", map[string]any{"scopes": []string{"read", "write"}})
	unscoped := testkeys.New("unscoped", nil)
	path := testkeys.WriteKeys(t, "", reader, writer, unscoped)
	loadCaddyfile(t, `
	handle /read/* {
		apikey {
			keys_file `+path+`
			scope read
		}
		respond "read by {http.auth.user.label} holding {http.auth.user.scopes}"
	}
	handle /write/* {
		apikey `+path+` {
			scope write
		}
		respond "write by {http.auth.user.label}"
	}
	handle /both/* {
		apikey `+path+` {
			scope read write
		}
		respond "both by {http.auth.user.label}"
	}
	handle /any/* {
		apikey `+path+`
		respond "any by {http.auth.user.label} holding [{http.auth.user.scopes}]"
	}
`)

	expectOK(t, "/read/x", "read by reader holding read", bearer(reader))
	expectOK(t, "/read/x", "read by writer holding read,write", bearer(writer))
	expectOK(t, "/write/x", "write by writer", bearer(writer))
	expectOK(t, "/both/x", "both by writer", bearer(writer))
	expectOK(t, "/any/x", "any by unscoped holding []", bearer(unscoped))

	for _, tc := range []struct {
		path    string
		key     testkeys.Key
		missing string
	}{
		{"/write/x", reader, "write"},
		{"/both/x", reader, "write"},
		{"/read/x", unscoped, "read"},
		{"/write/x", unscoped, "write"},
	} {
		msg := expectRefusal(t, tc.path, http.StatusForbidden, CodeInsufficientScope, bearer(tc.key))
		if !strings.Contains(msg, `"`+tc.missing+`"`) {
			t.Errorf("%s with key %s: message %q does not name the missing scope %q", tc.path, tc.key.Record["label"], msg, tc.missing)
		}
	}
}

func TestLifecycleOptional(t *testing.T) {
	member := testkeys.New("member", nil)
	expired := testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00+00:00"})
	revoked := testkeys.New("revoked", map[string]any{"revoked_at": "2026-01-01T00:00:00+00:00"})
	path := testkeys.WriteKeys(t, "", member, expired, revoked)
	loadCaddyfile(t, `
	apikey `+path+` {
		optional
	}
	respond "id=[{http.auth.user.id}] label=[{http.auth.user.label}]"
`)

	// No key: served, without identity. The placeholders are not set, so
	// respond leaves them as written.
	resp, body := do(t, "GET", "/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("no key: %d %q, want 200", resp.StatusCode, body)
	}
	if body != "id=[{http.auth.user.id}] label=[{http.auth.user.label}]" {
		t.Errorf("no key: body %q, want the placeholders unset", body)
	}
	if resp.Header.Get("WWW-Authenticate") != "" {
		t.Error("no key: a WWW-Authenticate challenge was sent")
	}

	expectOK(t, "/", fmt.Sprintf("id=[%s] label=[member]", member.Record["id"]), bearer(member))
	expectOK(t, "/", fmt.Sprintf("id=[%s] label=[member]", member.Record["id"]), "X-API-Key: "+member.Raw)

	// A key that is sent must be good.
	expectRefusal(t, "/", http.StatusForbidden, CodeInvalidKey, "Authorization: Bearer sk_wrongwrongwrongwrongwrongwrongwrongwrongwro")
	expectRefusal(t, "/?api_key=nope", http.StatusForbidden, CodeInvalidKey)
	expectRefusal(t, "/", http.StatusForbidden, CodeKeyExpired, bearer(expired))
	expectRefusal(t, "/", http.StatusForbidden, CodeInvalidKey, bearer(revoked))
}

// echoUpstream is a backend that answers with what it received.
type echoed struct {
	URI     string      `json:"uri"`
	Headers http.Header `json:"headers"`
}

func startEchoUpstream(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echoed{URI: r.RequestURI, Headers: r.Header})
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// viaProxy sends a request through the test site and returns what the
// upstream received.
func viaProxy(t *testing.T, path string, headers ...string) echoed {
	t.Helper()
	resp, body := do(t, "GET", path, headers...)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %q", path, resp.StatusCode, body)
	}
	var got echoed
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("GET %s: upstream answer %q: %v", path, body, err)
	}
	return got
}

func TestLifecycleHideCredentialsSeenFromUpstream(t *testing.T) {
	k := testkeys.New("consumer", nil)
	path := testkeys.WriteKeys(t, "", k)
	upstream := startEchoUpstream(t)
	loadCaddyfile(t, `
	handle /hidden/* {
		apikey `+path+` {
			hide_credentials
		}
		reverse_proxy `+upstream+` {
			header_up X-Consumer-Id {http.auth.user.id}
		}
	}
	handle /shown/* {
		apikey `+path+`
		reverse_proxy `+upstream+` {
			header_up X-Consumer-Id {http.auth.user.id}
		}
	}
`)
	id := k.Record["id"].(string)

	for _, tc := range []struct {
		name    string
		query   string
		headers []string
		header  string // the header that carried the key, if any
	}{
		{"bearer", "?a=1&b=two%20words", []string{bearer(k)}, "Authorization"},
		{"bearer odd case", "?a=1&b=two%20words", []string{"Authorization: bEaReR   " + k.Raw + "  "}, "Authorization"},
		{"x-api-key", "?a=1&b=two%20words", []string{"X-API-Key: " + k.Raw}, "X-Api-Key"},
		{"query", "?a=1&api_key=" + k.Raw + "&b=two%20words", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headers := append([]string{"X-Other: kept"}, tc.headers...)

			got := viaProxy(t, "/hidden/x"+tc.query, headers...)
			if got.URI != "/hidden/x?a=1&b=two%20words" {
				t.Errorf("hidden: upstream got URI %q, want the other parameters as sent", got.URI)
			}
			for _, name := range []string{"Authorization", "X-Api-Key"} {
				if v, ok := got.Headers[name]; ok {
					t.Errorf("hidden: upstream got %s: %q", name, v)
				}
			}
			if raw, _ := json.Marshal(got); bytes.Contains(raw, []byte(k.Raw)) {
				t.Errorf("hidden: the upstream saw the key: %s", raw)
			}
			if v := got.Headers.Get("X-Other"); v != "kept" {
				t.Errorf("hidden: X-Other = %q, want kept", v)
			}
			if v := got.Headers.Get("X-Consumer-Id"); v != id {
				t.Errorf("hidden: X-Consumer-Id = %q, want %q", v, id)
			}

			// Without hide_credentials the upstream sees the request as
			// sent.
			got = viaProxy(t, "/shown/x"+tc.query, headers...)
			if got.URI != "/shown/x"+tc.query {
				t.Errorf("shown: upstream got URI %q, want %q", got.URI, "/shown/x"+tc.query)
			}
			if tc.header != "" && !strings.Contains(got.Headers.Get(tc.header), k.Raw) {
				t.Errorf("shown: upstream got %s: %q, want the key", tc.header, got.Headers.Get(tc.header))
			}
			if v := got.Headers.Get("X-Consumer-Id"); v != id {
				t.Errorf("shown: X-Consumer-Id = %q, want %q", v, id)
			}
		})
	}

	// A client that sends the key twice, in two sources, must not leak
	// the second copy to the upstream; an Authorization header with
	// another scheme, meant for the upstream, is kept.
	t.Run("key in every source", func(t *testing.T) {
		got := viaProxy(t, "/hidden/x?api_key="+k.Raw+"&a=1", bearer(k), "X-API-Key: "+k.Raw)
		if raw, _ := json.Marshal(got); bytes.Contains(raw, []byte(k.Raw)) {
			t.Errorf("the upstream saw the key: %s", raw)
		}
		if got.URI != "/hidden/x?a=1" {
			t.Errorf("URI %q", got.URI)
		}
	})
	t.Run("other Authorization scheme kept", func(t *testing.T) {
		got := viaProxy(t, "/hidden/x", "Authorization: Basic dXNlcjpwYXNz", "X-API-Key: "+k.Raw)
		if v := got.Headers.Get("Authorization"); v != "Basic dXNlcjpwYXNz" {
			t.Errorf("Authorization = %q, want the Basic credentials kept for the upstream", v)
		}
		if _, ok := got.Headers["X-Api-Key"]; ok {
			t.Error("X-API-Key reached the upstream")
		}
	})
}

// A key added with `caddy apikey add` while Caddy runs is admitted, and one
// revoked with `caddy apikey revoke` is refused, each within 2 seconds and
// without a config reload.
func TestLifecycleCommandsWhileCaddyRuns(t *testing.T) {
	existing := testkeys.New("existing", nil)
	path := testkeys.WriteKeys(t, "", existing)
	loadCaddyfile(t, `
	apikey `+path+`
	respond "hello {http.auth.user.label}"
`)
	expectOK(t, "/", "hello existing", bearer(existing))

	stdout, _, err := testkeys.RunCommand(t, "", "add", "--file", path, "--label", "live")
	if err != nil {
		t.Fatal(err)
	}
	raw := strings.TrimSpace(stdout)
	start := time.Now()
	testkeys.WaitFor(t, 2*time.Second, "the added key to be admitted", func() bool {
		resp, body := do(t, "GET", "/", "Authorization: Bearer "+raw)
		return resp.StatusCode == http.StatusOK && body == "hello live"
	})
	t.Logf("added key admitted after %s", time.Since(start).Round(time.Millisecond))

	if _, _, err := testkeys.RunCommand(t, "", "revoke", "--file", path, raw[:11]); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	testkeys.WaitFor(t, 2*time.Second, "the revoked key to be refused", func() bool {
		resp, body := do(t, "GET", "/", "Authorization: Bearer "+raw)
		if resp.StatusCode != http.StatusForbidden {
			return false
		}
		code, _ := testkeys.RefusalOf(t, body)
		return code == CodeInvalidKey
	})
	t.Logf("revoked key refused after %s", time.Since(start).Round(time.Millisecond))
	expectOK(t, "/", "hello existing", bearer(existing))
}

// The README's matcher recipes: CORS preflight passes without a key, and
// reads and writes need different scopes from one key file.
func TestLifecycleMatcherRecipes(t *testing.T) {
	reader := testkeys.New("reader", map[string]any{"scopes": []string{"read"}})
	path := testkeys.WriteKeys(t, "", reader)
	loadCaddyfile(t, `
	@preflight method OPTIONS
	respond @preflight 204

	@reads method GET HEAD
	@writes not method GET HEAD OPTIONS
	apikey @reads `+path+` {
		scope read
	}
	apikey @writes `+path+` {
		scope write
	}
	respond "{method} by {http.auth.user.label}"
`)
	if resp, body := do(t, "OPTIONS", "/things", "Origin: https://app.example.com"); resp.StatusCode != http.StatusNoContent {
		t.Errorf("preflight without a key: %d %q, want 204", resp.StatusCode, body)
	}
	expectRefusal(t, "/things", http.StatusUnauthorized, CodeAuthRequired)
	expectOK(t, "/things", "GET by reader", bearer(reader))
	resp, body := do(t, "POST", "/things", bearer(reader))
	if msg := testkeys.AssertRefusal(t, resp, body, http.StatusForbidden, CodeInsufficientScope, "", reader.Raw); !strings.Contains(msg, `"write"`) {
		t.Errorf("POST with a read-only key: message %q does not name the scope write", msg)
	}
}

// The README's recipe for identity headers under optional: an anonymous
// request reaches the upstream without the header (whatever the client
// sent), an authenticated one with the key's id.
func TestLifecycleOptionalIdentityHeaders(t *testing.T) {
	k := testkeys.New("consumer", nil)
	path := testkeys.WriteKeys(t, "", k)
	upstream := startEchoUpstream(t)
	loadCaddyfile(t, `
	apikey `+path+` {
		optional
		hide_credentials
	}
	@authenticated not vars {http.auth.user.id} ""
	request_header @authenticated X-Consumer-Id {http.auth.user.id}
	@anonymous vars {http.auth.user.id} ""
	request_header @anonymous -X-Consumer-Id
	reverse_proxy `+upstream+`
`)
	got := viaProxy(t, "/x", "X-Consumer-Id: forged")
	if v, ok := got.Headers["X-Consumer-Id"]; ok {
		t.Errorf("anonymous: upstream got X-Consumer-Id %q, want none", v)
	}
	got = viaProxy(t, "/x", "X-Consumer-Id: forged", bearer(k))
	if v := got.Headers.Get("X-Consumer-Id"); v != k.Record["id"] {
		t.Errorf("authenticated: upstream got X-Consumer-Id %q, want %q", v, k.Record["id"])
	}
}

// Against the running Caddy: after a keyops.Rotation the new key is admitted
// within the reload interval, the old one still is during the grace, and
// it is refused once the grace has ended.
func TestLifecycleRotateWhileCaddyRuns(t *testing.T) {
	old := testkeys.New("svc", map[string]any{"scopes": []string{"read"}})
	path := testkeys.WriteKeys(t, "", old)
	loadCaddyfile(t, `
	apikey `+path+` {
		reload_interval 100ms
		scope read
	}
	respond "{http.auth.user.label} {http.auth.user.id}"
`)
	oldID := old.Record["id"].(string)
	expectOK(t, "/", "svc "+oldID, bearer(old))

	const grace = 2 * time.Second
	rotated := time.Now()
	stdout, _, err := testkeys.RunCommand(t, "", "rotate", "--file", path, "--grace", "2s", oldID)
	if err != nil {
		t.Fatal(err)
	}
	raw := strings.TrimSpace(stdout)
	recs := testkeys.ReadDoc(t, path).Records
	newID := recs[len(recs)-1].ID
	testkeys.WaitFor(t, 2*time.Second, "the new key to be admitted", func() bool {
		resp, body := do(t, "GET", "/", "Authorization: Bearer "+raw)
		return resp.StatusCode == http.StatusOK && body == "svc "+newID
	})
	t.Logf("new key admitted after %s", time.Since(rotated).Round(time.Millisecond))

	// The new file is in force: the old key is admitted while the grace
	// lasts, then refused.
	expectGraceThenExpired(t, bearer(old), "svc "+oldID, rotated, grace)
	expectOK(t, "/", "svc "+newID, "Authorization: Bearer "+raw)
}

// expectGraceThenExpired checks a key rotated at rotated with grace: sent
// as header, it is still answered with want during the grace (checked only
// if this machine got here well within it), then refused as KEY_EXPIRED,
// never before the grace has ended.
func expectGraceThenExpired(t *testing.T, header, want string, rotated time.Time, grace time.Duration) {
	t.Helper()
	resp, body := do(t, "GET", "/", header)
	if time.Since(rotated) < grace-300*time.Millisecond {
		if resp.StatusCode != http.StatusOK || body != want {
			t.Fatalf("old key during the grace: %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	} else {
		t.Logf("the grace had nearly ended when the new key was in force: old key during the grace not checked")
	}
	testkeys.WaitFor(t, grace+2*time.Second, "the old key to be refused once the grace has ended", func() bool {
		resp, body := do(t, "GET", "/", header)
		if resp.StatusCode != http.StatusForbidden {
			return false
		}
		code, _ := testkeys.RefusalOf(t, body)
		return code == CodeKeyExpired
	})
	if early := time.Since(rotated); early < grace {
		t.Errorf("the old key was refused after %s, before the %s grace ended", early, grace)
	}
}
