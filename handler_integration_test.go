package apikey

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// The integration tests in this file run against the one Caddy that
// TestMain starts; they must not run in parallel.

// defaultAuthMessage is the 401 message of a handler with the default sources.
const defaultAuthMessage = "API key is required. Pass via Authorization: Bearer header, X-API-Key header or ?api_key= query parameter."

// keyWithRaw makes a key record for a given raw key.
func keyWithRaw(raw, label string, extra map[string]any) testkeys.Key {
	k := testkeys.New(label, extra)
	k.Raw = raw
	k.Record["key_hash"] = keyset.HashKey(raw)
	k.Record["key_prefix"] = raw[:11]
	return k
}

// bigRawKey returns a random key n characters long.
func bigRawKey(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return ("sk_" + base64.RawURLEncoding.EncodeToString(b))[:n]
}

// accessLogSite is the site config of a JSON access log written to path,
// filtered as the README advises.
func accessLogSite(path string) string {
	return `log {
		output file ` + path + `
		format filter {
			request>uri query {
				delete api_key
			}
			request>headers>X-Api-Key delete
		}
	}`
}

// accessLogEntry is what the tests read of an access log line.
type accessLogEntry struct {
	UserID  *string `json:"user_id"`
	Status  int     `json:"status"`
	Request struct {
		URI string `json:"uri"`
	} `json:"request"`
}

// readAccessLog returns the entries of the access log, waiting until there
// are at least n of them, and the log's raw text.
func readAccessLog(t *testing.T, path string, n int) ([]accessLogEntry, string) {
	t.Helper()
	var entries []accessLogEntry
	var raw string
	testkeys.WaitFor(t, 10*time.Second, fmt.Sprintf("%d access log lines", n), func() bool {
		data, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		raw = string(data)
		entries = entries[:0]
		sc := bufio.NewScanner(strings.NewReader(raw))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e accessLogEntry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("access log line is not JSON: %v: %q", err, testkeys.Truncate(sc.Text()))
			}
			entries = append(entries, e)
		}
		return len(entries) >= n
	})
	return entries, raw
}

// TestIntegrationDefaultSources drives every credential case through the
// real Caddy with the default sources, and checks the access log.
func TestIntegrationDefaultSources(t *testing.T) {
	good := testkeys.New("CI deploy", nil)
	revoked := testkeys.New("revoked", map[string]any{"revoked_at": "2026-11-25T21:00:00+00:00"})
	expired := testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00+00:00"})
	big := keyWithRaw(bigRawKey(64*1024), "big", nil)
	unknown := testkeys.New("not in the file", nil).Raw
	bigUnknown := bigRawKey(64 * 1024)
	keys := testkeys.WriteKeys(t, "", good, revoked, expired, big)
	logPath := filepath.Join(t.TempDir(), "access.log")
	// Caddy reads at most 16 KiB of request headers by default; this site
	// allows more, so that 64 KiB keys reach the handler.
	loadCaddyfileWithGlobals(t, "\tservers {\n\t\tmax_header_size 256KiB\n\t}", accessLogSite(logPath)+`
	apikey `+keys+`
	respond "{http.auth.user.id}|{http.auth.user.label}|{http.auth.user.key_prefix}"
`)

	ok := func(k testkeys.Key) string { return k.Record["id"].(string) }
	tests := []struct {
		name    string
		query   string
		headers []string
		status  int
		code    string // for refusals
		id      string // for successes
	}{
		{"no key", "", nil, 401, "AUTH_REQUIRED", ""},
		{"bearer", "", []string{"Authorization: Bearer " + good.Raw}, 200, "", ok(good)},
		{"bearer lower case", "", []string{"Authorization: bearer " + good.Raw}, 200, "", ok(good)},
		{"bearer upper case", "", []string{"Authorization: BEARER " + good.Raw}, 200, "", ok(good)},
		{"bearer with spaces and tabs", "", []string{"Authorization: \tBearer \t  " + good.Raw + " \t "}, 200, "", ok(good)},
		{"header names in lower case", "", []string{"authorization: Bearer " + good.Raw}, 200, "", ok(good)},
		{"x-api-key lower-case name", "", []string{"x-api-key: " + good.Raw}, 200, "", ok(good)},
		{"x-api-key", "", []string{"X-API-Key: " + good.Raw}, 200, "", ok(good)},
		{"x-api-key with spaces", "", []string{"X-API-Key:   " + good.Raw + "  "}, 200, "", ok(good)},
		{"query", "api_key=" + good.Raw, nil, 200, "", ok(good)},
		{"query percent-encoded value", "api_key=" + strings.ReplaceAll(good.Raw, "_", "%5F"), nil, 200, "", ok(good)},
		{"query percent-encoded name", "api%5Fkey=" + good.Raw, nil, 200, "", ok(good)},
		{"bearer empty", "", []string{"Authorization: Bearer"}, 401, "AUTH_REQUIRED", ""},
		{"bearer and spaces", "", []string{"Authorization: Bearer    "}, 401, "AUTH_REQUIRED", ""},
		{"x-api-key empty", "", []string{"X-Api-Key: "}, 401, "AUTH_REQUIRED", ""},
		{"query empty", "api_key=", nil, 401, "AUTH_REQUIRED", ""},
		{"basic is not a key", "", []string{"Authorization: Basic Ym9iOnNlY3JldA=="}, 401, "AUTH_REQUIRED", ""},
		{"basic then x-api-key", "", []string{"Authorization: Basic Ym9iOnNlY3JldA==", "X-Api-Key: " + good.Raw}, 200, "", ok(good)},
		{"unknown key", "", []string{"Authorization: Bearer " + unknown}, 403, "INVALID_KEY", ""},
		{"unknown key in x-api-key", "", []string{"X-Api-Key: " + unknown}, 403, "INVALID_KEY", ""},
		{"unknown key in query", "api_key=" + unknown, nil, 403, "INVALID_KEY", ""},
		{"key with the hash's case changed", "", []string{"X-Api-Key: " + strings.ToUpper(good.Raw)}, 403, "INVALID_KEY", ""},
		{"bearer beats x-api-key", "", []string{"Authorization: Bearer " + good.Raw, "X-Api-Key: " + unknown}, 200, "", ok(good)},
		{"bearer beats query", "api_key=" + unknown, []string{"Authorization: Bearer " + good.Raw}, 200, "", ok(good)},
		{"first source wins even if wrong", "", []string{"Authorization: Bearer " + unknown, "X-Api-Key: " + good.Raw}, 403, "INVALID_KEY", ""},
		{"x-api-key beats query", "api_key=" + unknown, []string{"X-Api-Key: " + good.Raw}, 200, "", ok(good)},
		{"x-api-key wrong, query right", "api_key=" + good.Raw, []string{"X-Api-Key: " + unknown}, 403, "INVALID_KEY", ""},
		{"empty bearer falls to query", "api_key=" + good.Raw, []string{"Authorization: Bearer "}, 200, "", ok(good)},
		{"same bearer twice", "", []string{"Authorization: Bearer " + good.Raw, "Authorization: bearer " + good.Raw}, 200, "", ok(good)},
		{"two bearers", "", []string{"Authorization: Bearer " + good.Raw, "Authorization: Bearer " + unknown}, 400, "AMBIGUOUS_KEY", ""},
		{"same x-api-key twice", "", []string{"X-Api-Key: " + good.Raw, "X-Api-Key: " + good.Raw}, 200, "", ok(good)},
		{"two x-api-keys", "", []string{"X-Api-Key: " + unknown, "X-Api-Key: " + good.Raw}, 400, "AMBIGUOUS_KEY", ""},
		{"two query keys", "api_key=" + good.Raw + "&api_key=" + unknown, nil, 400, "AMBIGUOUS_KEY", ""},
		{"same query key twice", "api_key=" + good.Raw + "&api_key=" + good.Raw, nil, 200, "", ok(good)},
		{"revoked key", "", []string{"Authorization: Bearer " + revoked.Raw}, 403, "INVALID_KEY", ""},
		{"expired key", "", []string{"Authorization: Bearer " + expired.Raw}, 403, "KEY_EXPIRED", ""},
		{"64 KiB unknown key", "", []string{"Authorization: Bearer " + bigUnknown}, 403, "INVALID_KEY", ""},
		{"64 KiB key", "", []string{"X-Api-Key: " + big.Raw}, 200, "", ok(big)},
	}
	allSecrets := []string{good.Raw, revoked.Raw, expired.Raw, big.Raw, unknown, bigUnknown}
	labels := map[string]testkeys.Key{ok(good): good, ok(big): big}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fmt.Sprintf("/t?case=%d", i)
			if tt.query != "" {
				path += "&" + tt.query
			}
			req := newRequest("GET", siteURL(path), tt.headers...)
			req.RequestURI = ""
			for _, h := range tt.headers {
				// A name written in lower case goes on the wire so
				// (newRequest canonicalised it): how Caddy takes it is
				// what those cases check.
				name, _, _ := strings.Cut(h, ":")
				if canon := http.CanonicalHeaderKey(name); name == strings.ToLower(name) && req.Header[canon] != nil {
					req.Header[name] = req.Header[canon]
					delete(req.Header, canon)
				}
			}
			resp, body := roundTrip(t, req)
			if tt.status != 200 {
				msg := testkeys.AssertRefusal(t, resp, body, tt.status, tt.code, "restricted", allSecrets...)
				switch tt.code {
				case "AUTH_REQUIRED":
					if msg != defaultAuthMessage {
						t.Errorf("message %q, want %q", msg, defaultAuthMessage)
					}
				case "INVALID_KEY":
					if msg != "Invalid API key." {
						t.Errorf("message %q", msg)
					}
				}
				return
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d, want 200; body %q", resp.StatusCode, testkeys.Truncate(body))
			}
			k := labels[tt.id]
			want := tt.id + "|" + k.Record["label"].(string) + "|" + k.Raw[:11]
			if body != want {
				t.Errorf("body %q, want %q", body, want)
			}
			if len(resp.Header.Values("WWW-Authenticate")) != 0 {
				t.Error("WWW-Authenticate on a 200")
			}
		})
	}

	// The access log shows the key's id as user_id on successes, no user
	// on refusals, and never the key.
	entries, raw := readAccessLog(t, logPath, len(tests))
	seen := map[int]bool{}
	for _, e := range entries {
		u, err := url.Parse(e.Request.URI)
		if err != nil {
			t.Fatalf("logged uri %q: %v", e.Request.URI, err)
		}
		if u.Query().Has("api_key") {
			t.Errorf("logged uri still has api_key: %q", testkeys.Truncate(e.Request.URI))
		}
		var i int
		if _, err := fmt.Sscan(u.Query().Get("case"), &i); err != nil || i < 0 || i >= len(tests) {
			continue
		}
		seen[i] = true
		tt := tests[i]
		if e.UserID == nil {
			t.Errorf("case %q: access log has no user_id", tt.name)
			continue
		}
		if *e.UserID != tt.id || e.Status != tt.status {
			t.Errorf("case %q: logged user_id %q status %d, want %q %d", tt.name, *e.UserID, e.Status, tt.id, tt.status)
		}
	}
	if len(seen) != len(tests) {
		t.Errorf("the access log has %d of the %d requests", len(seen), len(tests))
	}
	for _, s := range allSecrets {
		if strings.Contains(raw, testkeys.SecretPart(s)) {
			t.Errorf("the access log holds a raw key (prefix %s)", s[:11])
		}
	}
	if !strings.Contains(raw, ok(good)) {
		t.Error("the access log never names the good key's id")
	}
}

func TestIntegrationCustomSources(t *testing.T) {
	k := testkeys.New("custom", nil)
	keys := testkeys.WriteKeys(t, "", k)
	loadCaddyfile(t, `
	apikey `+keys+` {
		header X-Token
		header authorization Token
		query token
		realm "my api"
	}
	respond "{http.auth.user.id}"
`)
	id := k.Record["id"].(string)
	const msg = "API key is required. Pass via X-Token header, authorization: Token header or ?token= query parameter."
	for _, tt := range []struct {
		name    string
		query   string
		headers []string
		status  int
	}{
		{"no key", "", nil, 401},
		{"x-token", "", []string{"X-Token: " + k.Raw}, 200},
		{"token scheme", "", []string{"Authorization: token " + k.Raw}, 200},
		{"token query", "token=" + k.Raw, nil, 200},
		{"bearer is not read", "", []string{"Authorization: Bearer " + k.Raw}, 401},
		{"x-api-key is not read", "", []string{"X-Api-Key: " + k.Raw}, 401},
		{"api_key is not read", "api_key=" + k.Raw, nil, 401},
		{"x-token first", "token=" + k.Raw, []string{"X-Token: sk_wrong"}, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "GET", "/?"+tt.query, tt.headers...)
			switch tt.status {
			case 200:
				if resp.StatusCode != 200 || body != id {
					t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, id)
				}
			case 401:
				if got := testkeys.AssertRefusal(t, resp, body, 401, "AUTH_REQUIRED", "my api", k.Raw); got != msg {
					t.Errorf("message %q, want %q", got, msg)
				}
			default:
				testkeys.AssertRefusal(t, resp, body, tt.status, "INVALID_KEY", "my api", k.Raw)
			}
		})
	}
}

func TestIntegrationQueryOff(t *testing.T) {
	k := testkeys.New("noquery", nil)
	keys := testkeys.WriteKeys(t, "", k)
	loadCaddyfile(t, `
	apikey `+keys+` {
		query off
	}
	respond "in"
`)
	resp, body := do(t, "GET", "/?api_key="+k.Raw)
	msg := testkeys.AssertRefusal(t, resp, body, 401, "AUTH_REQUIRED", "restricted", k.Raw)
	if want := "API key is required. Pass via Authorization: Bearer header or X-API-Key header."; msg != want {
		t.Errorf("message %q, want %q", msg, want)
	}
	if resp, body := do(t, "GET", "/?api_key=x", "X-Api-Key: "+k.Raw); resp.StatusCode != 200 || body != "in" {
		t.Errorf("header key with query off: %d %q", resp.StatusCode, body)
	}
}

func TestIntegrationOptionalScopeHide(t *testing.T) {
	reader := testkeys.New("reader", map[string]any{"scopes": []string{"read", "list"}})
	plain := testkeys.New("plain", nil)
	keys := testkeys.WriteKeys(t, "", reader, plain)
	loadCaddyfile(t, `
	handle /opt/* {
		apikey `+keys+` {
			optional
		}
		respond "opt [{http.auth.user.id}]"
	}
	handle /scope/* {
		apikey `+keys+` {
			scope read
		}
		respond "scope {http.auth.user.id} {http.auth.user.scopes}"
	}
	handle /hide/* {
		apikey `+keys+` {
			hide_credentials
		}
		respond "hide [{http.request.header.X-Api-Key}] [{http.request.header.Authorization}] [{http.request.uri}]"
	}
`)
	readerID, plainID := reader.Record["id"].(string), plain.Record["id"].(string)

	// optional: no key passes without a user (the placeholder is not
	// set); a bad key is still refused.
	if resp, body := do(t, "GET", "/opt/x"); resp.StatusCode != 200 || (body != "opt []" && body != "opt [{http.auth.user.id}]") {
		t.Errorf("optional, no key: %d %q", resp.StatusCode, body)
	}
	if resp, body := do(t, "GET", "/opt/x", "X-Api-Key: "+plain.Raw); resp.StatusCode != 200 || body != "opt ["+plainID+"]" {
		t.Errorf("optional, good key: %d %q", resp.StatusCode, body)
	}
	resp, body := do(t, "GET", "/opt/x", "X-Api-Key: sk_not_a_key_at_all")
	testkeys.AssertRefusal(t, resp, body, 403, "INVALID_KEY", "")
	resp, body = do(t, "GET", "/opt/x", "X-Api-Key: sk_a", "X-Api-Key: sk_b")
	testkeys.AssertRefusal(t, resp, body, 400, "AMBIGUOUS_KEY", "")

	// scope
	if resp, body := do(t, "GET", "/scope/x", "Authorization: Bearer "+reader.Raw); resp.StatusCode != 200 || body != "scope "+readerID+" read,list" {
		t.Errorf("scoped key: %d %q", resp.StatusCode, body)
	}
	resp, body = do(t, "GET", "/scope/x", "Authorization: Bearer "+plain.Raw)
	if msg := testkeys.AssertRefusal(t, resp, body, 403, "INSUFFICIENT_SCOPE", "", plain.Raw); !strings.Contains(msg, `"read"`) {
		t.Errorf("message %q does not name the scope", msg)
	}
	resp, body = do(t, "GET", "/scope/x")
	testkeys.AssertRefusal(t, resp, body, 401, "AUTH_REQUIRED", "restricted")

	// hide_credentials: the next handler sees neither the header nor the
	// parameter; other parameters stay.
	if _, body := do(t, "GET", "/hide/x", "X-Api-Key: "+plain.Raw); body != "hide [] [] [/hide/x]" {
		t.Errorf("hidden header: %q", body)
	}
	if _, body := do(t, "GET", "/hide/x", "Authorization: Bearer "+plain.Raw); body != "hide [] [] [/hide/x]" {
		t.Errorf("hidden bearer: %q", body)
	}
	if _, body := do(t, "GET", "/hide/x?a=1&api_key="+plain.Raw+"&b=2"); body != "hide [] [] [/hide/x?a=1&b=2]" {
		t.Errorf("hidden query: %q", body)
	}
	// Query pairs the handler does not read but an upstream might go
	// too: after a ";", escaped or spelled otherwise; the rest stays as
	// sent.
	for _, tt := range []struct{ query, want string }{
		{"x=1;api_key=" + reader.Raw, "x=1"},
		{"api%5Fkey=" + reader.Raw + "&API_KEY=" + reader.Raw + "&api.key=" + reader.Raw + "&api_key[]=" + reader.Raw + "&b=%zz", "b=%zz"},
		{"a=1;api%255Fkey=" + reader.Raw + ";b=2", "a=1;b=2"},
	} {
		_, body := do(t, "GET", "/hide/x?"+tt.query, "X-Api-Key: "+plain.Raw)
		if want := "hide [] [] [/hide/x?" + tt.want + "]"; body != want {
			hide := func(s string) string { return strings.ReplaceAll(s, reader.Raw, "<key>") }
			t.Errorf("?%s: the next handler saw %q, want %q", hide(tt.query), hide(body), want)
		}
	}
	// Without hide_credentials, the next handler does see the key.
	if _, body := do(t, "GET", "/scope/x?api_key="+reader.Raw); !strings.HasPrefix(body, "scope "+readerID) {
		t.Errorf("query key on /scope: %q", body)
	}
}

func TestIntegrationHandleErrors(t *testing.T) {
	k := testkeys.New("errs", nil)
	expired := testkeys.New("old", map[string]any{"expires_at": "2001-01-01T00:00:00Z"})
	keys := testkeys.WriteKeys(t, "", k, expired)
	loadCaddyfile(t, `
	apikey `+keys+` {
		handle_errors
		realm errs
	}
	respond "ok {http.auth.user.id}"
	handle_errors {
		respond "{http.error.status_code} {http.auth.apikey.error_code}|{http.error.message}"
	}
`)
	for _, tt := range []struct {
		name    string
		headers []string
		status  int
		body    string
	}{
		{"no key", nil, 401, "401 AUTH_REQUIRED|" + defaultAuthMessage},
		{"unknown key", []string{"X-Api-Key: sk_unknown_key_here"}, 403, "403 INVALID_KEY|Invalid API key."},
		{"expired key", []string{"X-Api-Key: " + expired.Raw}, 403, "403 KEY_EXPIRED|API key has expired."},
		{"two keys", []string{"X-Api-Key: sk_a", "X-Api-Key: sk_b"}, 400, "400 AMBIGUOUS_KEY|More than one API key was sent; send exactly one."},
		{"good key", []string{"X-Api-Key: " + k.Raw}, 200, "ok " + k.Record["id"].(string)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, "GET", "/", tt.headers...)
			if resp.StatusCode != tt.status || body != tt.body {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tt.status, tt.body)
			}
			if strings.Contains(resp.Header.Get("Content-Type"), "json") {
				t.Errorf("handle_errors answer has Content-Type %q", resp.Header.Get("Content-Type"))
			}
			if tt.status == 401 {
				if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="errs"` {
					t.Errorf("WWW-Authenticate %q on the 401", got)
				}
			}
		})
	}
}

func TestIntegrationJSONConfig(t *testing.T) {
	k := testkeys.New("from json", nil)
	keys := testkeys.WriteKeys(t, "", k)
	cfg := map[string]any{
		"admin": map[string]any{"listen": fmt.Sprintf("localhost:%d", adminPort)},
		"apps": map[string]any{"http": map[string]any{
			"http_port":  httpPort,
			"https_port": httpPort + 1,
			"servers": map[string]any{"srv0": map[string]any{
				"listen":          []string{fmt.Sprintf(":%d", httpPort)},
				"automatic_https": map[string]any{"disable": true},
				"routes": []any{map[string]any{"handle": []any{
					map[string]any{
						"handler":   "apikey",
						"keys_file": keys,
						"headers":   []any{map[string]any{"name": "X-Token"}},
						"query":     "",
						"realm":     "json",
					},
					map[string]any{"handler": "static_response", "body": "json {http.auth.user.label}"},
				}}},
			}},
		}},
	}
	raw, _ := json.Marshal(cfg)
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tc.InitServer(string(raw), "json")
	if t.Failed() {
		t.FailNow()
	}
	if resp, body := do(t, "GET", "/", "X-Token: "+k.Raw); resp.StatusCode != 200 || body != "json from json" {
		t.Errorf("X-Token: %d %q", resp.StatusCode, body)
	}
	resp, body := do(t, "GET", "/?api_key="+k.Raw, "Authorization: Bearer "+k.Raw)
	if msg := testkeys.AssertRefusal(t, resp, body, 401, "AUTH_REQUIRED", "json", k.Raw); msg != "API key is required. Pass via X-Token header." {
		t.Errorf("message %q", msg)
	}
}

func TestIntegrationBrokenKeyFileFailsLoad(t *testing.T) {
	good := testkeys.New("good", nil)
	dir := t.TempDir()
	keys := testkeys.WriteKeys(t, filepath.Join(dir, "keys.json"), good)
	site := `
	apikey ` + keys + `
	respond "{http.auth.user.id}"
`
	loadCaddyfile(t, site)
	id := good.Record["id"].(string)

	broken := filepath.Join(dir, "broken.json")
	for _, tt := range []struct {
		name    string
		content string // "" for a missing file
		want    []string
	}{
		{"syntax error", "{\n  \"api_keys\": [\n    {\"id\": \"a\" \"key_hash\": \"x\"}\n  ]\n}\n", []string{"line 3, column 16"}},
		{"duplicate id", fmt.Sprintf(`[{"id": "a", "key_hash": %q}, {"id": "a", "key_hash": %q}]`, hashA, hashB), []string{"record 2", `\"a\"`}},
		{"bad hash", `{"api_keys": [{"id": "k1", "key_hash": "abc"}]}`, []string{"record 1", `\"k1\"`, "key_hash"}},
		{"empty", "", nil},
		{"missing", "", []string{"no such file"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_ = os.Remove(broken)
			if tt.name != "missing" {
				if err := os.WriteFile(broken, []byte(tt.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			body := loadConfigError(t, caddyfileFor("\tapikey "+broken+"\n\trespond x"))
			if body == "" {
				t.Fatalf("a config with a %s key file loaded", tt.name)
			}
			wantContains(t, body, append([]string{broken}, tt.want...)...)
			// The config in force before still serves.
			if resp, got := do(t, "GET", "/", "X-Api-Key: "+good.Raw); resp.StatusCode != 200 || got != id {
				t.Errorf("after the failed load: %d %q", resp.StatusCode, got)
			}
		})
	}

	// A key file in use that breaks fails the next config load, and the
	// keys in force stay.
	if err := os.WriteFile(keys, []byte(`[{"id": "x"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	// (Caddy ignores a load of the very config in force, so change it.)
	body := loadConfigError(t, caddyfileFor(site+"\theader X-Changed 1\n"))
	if body == "" {
		t.Fatal("a config load with the key file in use broken succeeded")
	}
	wantContains(t, body, keys, "record 1", "key_hash")
	if resp, got := do(t, "GET", "/", "X-Api-Key: "+good.Raw); resp.StatusCode != 200 || got != id {
		t.Errorf("after the broken key file: %d %q", resp.StatusCode, got)
	}
	// Mended, it loads again.
	testkeys.WriteKeys(t, keys, good)
	loadCaddyfile(t, site)
	if resp, got := do(t, "GET", "/", "X-Api-Key: "+good.Raw); resp.StatusCode != 200 || got != id {
		t.Errorf("after mending the key file: %d %q", resp.StatusCode, got)
	}
	resp, got := do(t, "GET", "/")
	testkeys.AssertRefusal(t, resp, got, 401, "AUTH_REQUIRED", "restricted")
}

// TestIntegrationHeaderLimit shows that with Caddy's default header limit
// (16 KiB) a 64 KiB key is refused by Caddy itself, before the handler, and
// not let through.
func TestIntegrationHeaderLimit(t *testing.T) {
	big := keyWithRaw(bigRawKey(64*1024), "big", nil)
	keys := testkeys.WriteKeys(t, "", big)
	loadCaddyfile(t, `
	apikey `+keys+`
	respond "in"
`)
	resp, body := do(t, "GET", "/", "X-Api-Key: "+big.Raw)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header with the default limit: %d %q", resp.StatusCode, testkeys.Truncate(body))
	}
	if strings.Contains(body, testkeys.SecretPart(big.Raw)) {
		t.Error("the answer echoes the key")
	}
}

// A later handler that edits the challenge in place (a deferred header
// replace does) must not change it for the requests after.
func TestIntegrationChallengeNotShared(t *testing.T) {
	path := testkeys.WriteKeys(t, "", testkeys.New("k", nil))
	loadCaddyfile(t, `
	header >Www-Authenticate restricted restricted-x
	apikey `+path+`
	respond "admitted"
`)
	for i := 0; i < 3; i++ {
		resp, _ := do(t, "GET", "/")
		if got := resp.Header.Values("Www-Authenticate"); len(got) != 1 || got[0] != `Bearer realm="restricted-x"` {
			t.Fatalf("request %d: WWW-Authenticate %q", i+1, got)
		}
	}
}
