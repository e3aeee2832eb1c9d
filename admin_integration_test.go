package apikey

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/admin"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// The admin API over HTTP, on the test Caddy's admin endpoint, against the
// stores of the configs the tests load. The handlers read their key files
// with reload_interval off: a change is in force only if the API put it in
// force before answering.

// adminCall sends method path (with its query) and body (none if "") to the
// test Caddy's admin endpoint, and returns the response and its body.
func adminCall(t *testing.T, method, path, body string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", adminPort, path), rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return roundTrip(t, req)
}

// adminAnswer checks that an answer has status and is JSON that is never
// cached, and decodes it into v, failing the test on members v lacks.
func adminAnswer(t *testing.T, resp *http.Response, body string, status int, v any) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, testkeys.Truncate(body))
	}
	if ct, cc := resp.Header.Get("Content-Type"), resp.Header.Get("Cache-Control"); ct != "application/json" || cc != "no-store" {
		t.Errorf("Content-Type %q, Cache-Control %q; want application/json, no-store", ct, cc)
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("answer %s: %v", testkeys.Truncate(body), err)
	}
}

// adminKeySite is a site whose one handler reads the key file at path with
// reloading and usage writes off, and answers with the key's label and id.
func adminKeySite(path string) string {
	return `
	apikey ` + path + ` {
		reload_interval off
		usage_interval off
	}
	respond "{http.auth.user.label} {http.auth.user.id}"
`
}

// expectRefused checks that the site refuses a request with status and code.
func expectRefused(t *testing.T, path string, status int, code string, headers ...string) {
	t.Helper()
	resp, body := do(t, "GET", path, headers...)
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %d %q, want %d %s", path, resp.StatusCode, body, status, code)
	}
	if got, _ := testkeys.RefusalOf(t, body); got != code {
		t.Fatalf("GET %s: code %s, want %s", path, got, code)
	}
}

// Every route against the running Caddy: the stores and their counts, the
// keys as list --json prints them, and a created, a revoked and a rotated
// key in force at once.
func TestAdminRoutesAgainstCaddy(t *testing.T) {
	svc := testkeys.New("svc", map[string]any{"scopes": []string{"read"}})
	victim := testkeys.New("victim", nil)
	rotating := testkeys.New("rotating", map[string]any{"scopes": []string{"read", "write"}})
	expired := testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00+00:00"})
	revoked := testkeys.New("revoked", map[string]any{"revoked_at": "2026-01-01T00:00:00+00:00"})
	path := testkeys.WriteKeys(t, "", svc, victim, rotating, expired, revoked)
	loadCaddyfile(t, adminKeySite(path))

	t.Run("stores", func(t *testing.T) {
		var stores []admin.StoreInfo
		resp, body := adminCall(t, "GET", "/apikey/stores", "")
		adminAnswer(t, resp, body, 200, &stores)
		want := []admin.StoreInfo{{Name: "file:" + path, Kind: "file", Path: path, Keys: admin.KeyCounts{Active: 3, Expired: 1, Revoked: 1}}}
		if !reflect.DeepEqual(stores, want) {
			t.Errorf("stores %+v, want %+v", stores, want)
		}
	})

	t.Run("list", func(t *testing.T) {
		var keys, cli []keyops.Listed
		resp, body := adminCall(t, "GET", "/apikey/keys", "")
		adminAnswer(t, resp, body, 200, &keys)
		out, _, err := testkeys.RunCommand(t, "", "list", "--file", path, "--json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &cli); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(keys, cli) {
			t.Errorf("GET /apikey/keys:\n%s\nwant what list --json prints:\n%s", body, out)
		}
		if strings.Contains(body, "key_hash") || strings.Contains(body, svc.Record["key_hash"].(string)) {
			t.Errorf("the list shows hashes: %s", body)
		}
	})

	t.Run("create", func(t *testing.T) {
		var got admin.NewKeyAnswer
		before := time.Now()
		resp, body := adminCall(t, "POST", "/apikey/keys", `{"label": "new", "scopes": ["read", "write"], "expires": "90d"}`)
		adminAnswer(t, resp, body, 201, &got)
		rec := testkeys.FileRecord(t, path, got.ID)
		if !testkeys.RawKeyPattern.MatchString(got.Key) || rec.KeyHash != keyset.HashKey(got.Key) || got.KeyPrefix != got.Key[:11] || !testkeys.UUIDv4Pattern.MatchString(got.ID) {
			t.Fatalf("the answer is not the key that was made: %s", body)
		}
		if got.Label != "new" || !reflect.DeepEqual(got.Scopes, []string{"read", "write"}) || got.Status != "active" || got.Replaced != nil || got.Warning != "" {
			t.Errorf("answer %s", body)
		}
		if exp, err := keyset.ParseTimestamp(*got.ExpiresAt); err != nil || exp.Before(before.Add(90*24*time.Hour)) || exp.After(time.Now().Add(90*24*time.Hour)) {
			t.Errorf("expires_at %s, want 90 days from now", *got.ExpiresAt)
		}
		expectOK(t, "/", "new "+got.ID, "Authorization: Bearer "+got.Key)

		at := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
		resp, body = adminCall(t, "POST", "/apikey/keys", `{"label": "dated", "expires": "`+at.Format(time.RFC3339)+`"}`)
		adminAnswer(t, resp, body, 201, &got)
		if exp, err := keyset.ParseTimestamp(*got.ExpiresAt); err != nil || !exp.Equal(at) || len(got.Scopes) != 0 {
			t.Errorf("expires_at %s, scopes %v; want %s and none", *got.ExpiresAt, got.Scopes, at)
		}
		expectOK(t, "/", "dated "+got.ID, "Authorization: Bearer "+got.Key)
	})

	t.Run("revoke", func(t *testing.T) {
		expectOK(t, "/", "victim "+victim.Record["id"].(string), bearer(victim))
		var got, again admin.RevokeAnswer
		resp, body := adminCall(t, "POST", "/apikey/keys/"+victim.Record["key_prefix"].(string)+"/revoke", "")
		adminAnswer(t, resp, body, 200, &got)
		if got.ID != victim.Record["id"] || got.Status != "revoked" || got.RevokedAt == nil || got.AlreadyRevoked || got.Warning != "" {
			t.Fatalf("answer %s", body)
		}
		if rec := testkeys.FileRecord(t, path, got.ID); rec.RevokedAt == nil || *rec.RevokedAt != *got.RevokedAt {
			t.Errorf("revoked_at in the file %v, answered %s", rec.RevokedAt, *got.RevokedAt)
		}
		expectRefused(t, "/", 403, CodeInvalidKey, bearer(victim))

		resp, body = adminCall(t, "POST", "/apikey/keys/"+got.ID+"/revoke", "{}")
		adminAnswer(t, resp, body, 200, &again)
		if !again.AlreadyRevoked || again.RevokedAt == nil || *again.RevokedAt != *got.RevokedAt || again.Status != "revoked" {
			t.Errorf("revoking again: %s, want already_revoked and the first revoked_at", body)
		}
	})

	t.Run("rotate", func(t *testing.T) {
		oldID := rotating.Record["id"].(string)
		expectOK(t, "/", "rotating "+oldID, bearer(rotating))
		const grace = 2 * time.Second
		var got admin.NewKeyAnswer
		rotated := time.Now()
		resp, body := adminCall(t, "POST", "/apikey/keys/"+oldID[:8]+"/rotate", `{"grace": "2s"}`)
		adminAnswer(t, resp, body, 201, &got)
		if !testkeys.RawKeyPattern.MatchString(got.Key) || testkeys.FileRecord(t, path, got.ID).KeyHash != keyset.HashKey(got.Key) {
			t.Fatalf("the answer is not the key that was made: %s", body)
		}
		if got.Label != "rotating" || !reflect.DeepEqual(got.Scopes, []string{"read", "write"}) || got.RotatedFrom == nil || *got.RotatedFrom != oldID || got.ExpiresAt != nil || got.Status != "active" {
			t.Errorf("new key %s", body)
		}
		old := got.Replaced
		if old == nil || old.ID != oldID || old.Status != "active" || old.RevokedAt != nil || old.ExpiresAt == nil {
			t.Fatalf("replaced %s, want the old key, active until the grace ends", body)
		}
		if end, err := keyset.ParseTimestamp(*old.ExpiresAt); err != nil || end.Before(rotated.Add(grace)) || end.After(time.Now().Add(grace)) {
			t.Errorf("the old key expires at %s, want at the end of the 2s grace", *old.ExpiresAt)
		}
		expectOK(t, "/", "rotating "+got.ID, "Authorization: Bearer "+got.Key)

		// The old key, during the grace, then refused once it has ended.
		expectGraceThenExpired(t, bearer(rotating), "rotating "+oldID, rotated, grace)
		expectOK(t, "/", "rotating "+got.ID, "Authorization: Bearer "+got.Key)

		// The old key, during the grace (checked only if this machine got
		// here well within it), then refused once it has ended.
		resp, body = do(t, "GET", "/", bearer(rotating))
		if time.Since(rotated) < grace-300*time.Millisecond {
			if resp.StatusCode != 200 || body != "rotating "+oldID {
				t.Fatalf("old key during the grace: %d %q, want 200", resp.StatusCode, body)
			}
		} else {
			t.Logf("the grace had nearly ended when the keyops.Rotation was answered: old key during the grace not checked")
		}
		testkeys.WaitFor(t, grace+2*time.Second, "the old key to be refused once the grace has ended", func() bool {
			resp, body := do(t, "GET", "/", bearer(rotating))
			if resp.StatusCode != http.StatusForbidden {
				return false
			}
			code, _ := testkeys.RefusalOf(t, body)
			return code == CodeKeyExpired
		})
		if early := time.Since(rotated); early < grace {
			t.Errorf("the old key was refused after %s, before the %s grace ended", early, grace)
		}
		expectOK(t, "/", "rotating "+got.ID, "Authorization: Bearer "+got.Key)
	})

	t.Run("stores after", func(t *testing.T) {
		var stores []admin.StoreInfo
		resp, body := adminCall(t, "GET", "/apikey/stores", "")
		adminAnswer(t, resp, body, 200, &stores)
		// svc, new, dated and the rotated key active; expired and the
		// rotated-from key (its grace over) expired; revoked and victim
		// revoked.
		if want := (admin.KeyCounts{Active: 4, Expired: 2, Revoked: 2}); len(stores) != 1 || stores[0].Keys != want {
			t.Errorf("stores %s, want keys %+v", body, want)
		}
	})
}

// Refusals over HTTP, with their exact statuses and codes; none changes the
// key file.
func TestAdminRefusalsAgainstCaddy(t *testing.T) {
	keys := []testkeys.Key{
		testkeys.New("alpha", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001"}),
		testkeys.New("beta", map[string]any{"id": "aaaa2222-0000-4000-8000-000000000002"}),
		testkeys.New("gone", map[string]any{"id": "eeee5555-0000-4000-8000-000000000005", "revoked_at": "2026-11-02T00:00:00+00:00"}),
		testkeys.New("replaced", map[string]any{"id": "abab7777-0000-4000-8000-000000000007"}),
		testkeys.New("replaced", map[string]any{"id": "abab8888-0000-4000-8000-000000000008", "rotated_from": "abab7777-0000-4000-8000-000000000007"}),
	}
	path := testkeys.WriteKeys(t, "", keys...)
	loadCaddyfile(t, adminKeySite(path))
	before := testkeys.ReadFile(t, path)

	for _, tc := range []struct {
		name, method, target, body string
		status                     int
		code                       string
		want                       []string
	}{
		{"unknown id", "POST", "/apikey/keys/sk_NoSuchKy/revoke", "", 404, "KEY_NOT_FOUND", []string{`"sk_NoSuchKy"`}},
		{"unknown id, rotate", "POST", "/apikey/keys/ffff0000/rotate", "", 404, "KEY_NOT_FOUND", []string{`"ffff0000"`}},
		{"ambiguous id prefix", "POST", "/apikey/keys/aaaa/revoke", "", 409, "AMBIGUOUS_REF", []string{"matches 2 keys", "aaaa1111-0000-4000-8000-000000000001", "aaaa2222-0000-4000-8000-000000000002"}},
		{"ambiguous id prefix, rotate", "POST", "/apikey/keys/aaaa/rotate", "", 409, "AMBIGUOUS_REF", []string{"matches 2 keys"}},
		{"revoked key rotated", "POST", "/apikey/keys/eeee5555/rotate", "", 409, "KEY_NOT_ACTIVE", []string{"revoked at 2026-11-02T00:00:00+00:00"}},
		{"key rotated twice", "POST", "/apikey/keys/abab7777/rotate", "", 409, "ALREADY_ROTATED", []string{"abab8888-0000-4000-8000-000000000008"}},
		{"bad JSON", "POST", "/apikey/keys", `{"label": }`, 400, "BAD_REQUEST", []string{"not valid JSON"}},
		{"unknown member", "POST", "/apikey/keys", `{"label": "x", "expiry": "90d"}`, 400, "BAD_REQUEST", []string{`unknown member "expiry"`}},
		{"wrong type", "POST", "/apikey/keys", `{"label": "x", "scopes": "read"}`, 400, "BAD_REQUEST", []string{`"scopes" must be a list of strings`}},
		{"data after the object", "POST", "/apikey/keys", `{"label": "x"}{}`, 400, "BAD_REQUEST", []string{"after top-level value"}},
		{"bad expiry", "POST", "/apikey/keys", `{"label": "x", "expires": "later"}`, 400, "BAD_REQUEST", []string{`"later"`}},
		{"bad grace", "POST", "/apikey/keys/aaaa1111/rotate", `{"grace": "later"}`, 400, "BAD_REQUEST", []string{`"later"`}},
		{"oversized body", "POST", "/apikey/keys", `{"label": "` + strings.Repeat("x", 70<<10) + `"}`, 413, "BODY_TOO_LARGE", nil},
		{"wrong method", "DELETE", "/apikey/keys", "", 405, "METHOD_NOT_ALLOWED", []string{"GET, POST"}},
		{"wrong method on a key", "GET", "/apikey/keys/aaaa1111/revoke", "", 405, "METHOD_NOT_ALLOWED", []string{"POST"}},
		{"unknown route", "GET", "/apikey/keys/aaaa1111", "", 404, "NOT_FOUND", []string{"GET /apikey/stores"}},
		{"unknown store", "GET", "/apikey/keys?store=/nowhere/keys.json", "", 400, "STORE_NOT_FOUND", []string{"file:" + path}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := adminCall(t, tc.method, tc.target, tc.body)
			msg := testkeys.AssertRefusal(t, resp, body, tc.status, tc.code, "")
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message does not say %q: %q", w, msg)
				}
			}
			if tc.status == 405 {
				if allow := resp.Header.Get("Allow"); allow == "" || !strings.Contains(msg, allow) {
					t.Errorf("Allow %q, message %q", allow, msg)
				}
			}
		})
	}
	if got := testkeys.ReadFile(t, path); got != before {
		t.Errorf("refused requests changed the key file:\n%s", got)
	}
}

// Two handlers on two key files: without ?store= or with an unknown one, a
// request is refused with both names; with one, it acts on that store only.
func TestAdminTwoStoresAgainstCaddy(t *testing.T) {
	dir := t.TempDir()
	a, b := testkeys.New("a", nil), testkeys.New("b", nil)
	one, two := testkeys.WriteKeys(t, filepath.Join(dir, "one.json"), a), testkeys.WriteKeys(t, filepath.Join(dir, "two.json"), b)
	loadCaddyfile(t, `
	handle /one/* {
		apikey `+one+` {
			reload_interval off
		}
		respond "one {http.auth.user.label}"
	}
	handle /two/* {
		apikey `+two+` {
			reload_interval off
		}
		respond "two {http.auth.user.label}"
	}
`)
	names := []string{"file:" + one, "file:" + two}

	var stores []admin.StoreInfo
	resp, body := adminCall(t, "GET", "/apikey/stores", "")
	adminAnswer(t, resp, body, 200, &stores)
	if len(stores) != 2 || stores[0].Name != names[0] || stores[1].Name != names[1] {
		t.Fatalf("stores %s, want %v", body, names)
	}

	for _, tc := range []struct{ method, target, body, code string }{
		{"GET", "/apikey/keys", "", "AMBIGUOUS_STORE"},
		{"POST", "/apikey/keys", `{"label": "x"}`, "AMBIGUOUS_STORE"},
		{"POST", "/apikey/keys/" + a.Record["id"].(string) + "/revoke", "", "AMBIGUOUS_STORE"},
		{"GET", "/apikey/keys?store=" + url.QueryEscape(filepath.Join(dir, "three.json")), "", "STORE_NOT_FOUND"},
		{"POST", "/apikey/keys/" + a.Record["id"].(string) + "/rotate?store=file:three.json", "", "STORE_NOT_FOUND"},
	} {
		resp, body := adminCall(t, tc.method, tc.target, tc.body)
		msg := testkeys.AssertRefusal(t, resp, body, 400, tc.code, "")
		if !strings.Contains(msg, names[0]) || !strings.Contains(msg, names[1]) {
			t.Errorf("%s %s: the message does not name both stores: %q", tc.method, tc.target, msg)
		}
	}

	var created admin.NewKeyAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys?store="+url.QueryEscape(two), `{"label": "made"}`)
	adminAnswer(t, resp, body, 201, &created)
	expectOK(t, "/two/", "two made", "Authorization: Bearer "+created.Key)
	expectRefused(t, "/one/", 403, CodeInvalidKey, "Authorization: Bearer "+created.Key)

	var revoked admin.RevokeAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys/"+a.Record["key_prefix"].(string)+"/revoke?store="+url.QueryEscape("file:"+one), "")
	adminAnswer(t, resp, body, 200, &revoked)
	expectRefused(t, "/one/", 403, CodeInvalidKey, bearer(a))
	expectOK(t, "/two/", "two b", bearer(b))
}

// With no apikey handler loaded, there is no store to act on.
func TestAdminNoStoreAgainstCaddy(t *testing.T) {
	loadCaddyfile(t, `respond "no keys here"`)
	var stores []admin.StoreInfo
	resp, body := adminCall(t, "GET", "/apikey/stores", "")
	adminAnswer(t, resp, body, 200, &stores)
	if len(stores) != 0 {
		t.Errorf("stores %s, want none", body)
	}
	resp, body = adminCall(t, "POST", "/apikey/keys", `{"label": "x"}`)
	testkeys.AssertRefusal(t, resp, body, 404, "NO_STORE", "")
}

// The raw keys that create and rotate answer with reach no log line, at
// DEBUG; the API's own lines, under its module's name, name the keys by id,
// label and prefix.
func TestAdminLogsHoldNoKeys(t *testing.T) {
	old := testkeys.New("logged", nil)
	path := testkeys.WriteKeys(t, "", old)
	logFile := filepath.Join(t.TempDir(), "default.log")
	loadCaddyfileWithGlobals(t, "\tdebug\n\tlog default {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t}", adminKeySite(path))

	var created, rotated admin.NewKeyAnswer
	resp, body := adminCall(t, "POST", "/apikey/keys", `{"label": "fresh"}`)
	adminAnswer(t, resp, body, 201, &created)
	resp, body = adminCall(t, "POST", "/apikey/keys/"+old.Record["id"].(string)+"/rotate", `{"grace": "0"}`)
	adminAnswer(t, resp, body, 201, &rotated)

	var text string
	testkeys.WaitFor(t, 5*time.Second, "the admin API's log lines", func() bool {
		text = testkeys.ReadFile(t, logFile)
		return strings.Contains(text, `"key created"`) && strings.Contains(text, `"key rotated"`)
	})
	for _, raw := range []string{created.Key, rotated.Key} {
		if strings.Contains(text, testkeys.SecretPart(raw)) {
			t.Errorf("a log line holds the key %s…", raw[:11])
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, `"key created"`) && !(strings.Contains(line, `"logger":"admin.api.apikey"`) && strings.Contains(line, created.ID) && strings.Contains(line, created.KeyPrefix) && strings.Contains(line, `"fresh"`)) {
			t.Errorf("the creation's line does not name the key: %s", line)
		}
	}
}

// The admin API on a Redis store: a created key is in force at once on the
// server that answered, a revoked one refused at once, a rotated one as
// rotate says; ?store= may name the store by its prefix.
func TestAdminRedisStoreAgainstCaddy(t *testing.T) {
	r := testredis.Start(t)
	rs := redisRecords(t, r, "adm:")
	first, firstRec := teststores.AddKey(t, rs, "first")
	dir := t.TempDir()
	file := testkeys.WriteKeys(t, filepath.Join(dir, "keys.json"), testkeys.New("file", nil))
	loadCaddyfile(t, `
	handle /file/* {
		apikey `+file+` {
			reload_interval off
		}
		respond "file {http.auth.user.label}"
	}
	handle {
		apikey {
			redis `+r.URL+` {
				prefix adm:
			}
			usage_interval off
		}
		respond "{http.auth.user.label} {http.auth.user.id}"
	}
`)
	expectOK(t, "/", "first "+firstRec.ID, "Authorization: Bearer "+first)

	var stores []admin.StoreInfo
	resp, body := adminCall(t, "GET", "/apikey/stores", "")
	adminAnswer(t, resp, body, 200, &stores)
	i := slices.IndexFunc(stores, func(s admin.StoreInfo) bool { return s.Kind == "redis" })
	if i < 0 || stores[i].Prefix != "adm:" || stores[i].URL != r.URL || stores[i].Keys != (admin.KeyCounts{Active: 1}) {
		t.Fatalf("stores %s, want the Redis store with 1 active key", body)
	}

	var created admin.NewKeyAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys?store=adm:", `{"label": "made", "scopes": ["read"]}`)
	adminAnswer(t, resp, body, 201, &created)
	expectOK(t, "/", "made "+created.ID, "Authorization: Bearer "+created.Key)

	var keys []keyops.Listed
	resp, body = adminCall(t, "GET", "/apikey/keys?store=adm:", "")
	adminAnswer(t, resp, body, 200, &keys)
	if len(keys) != 2 || strings.Contains(body, "key_hash") {
		t.Fatalf("keys %s, want 2 without hashes", body)
	}

	var revoked admin.RevokeAnswer
	resp, body = adminCall(t, "POST", "/apikey/keys/"+firstRec.KeyPrefix+"/revoke?store=adm:", "")
	adminAnswer(t, resp, body, 200, &revoked)
	expectRefused(t, "/", 403, CodeInvalidKey, "Authorization: Bearer "+first)

	const grace = 2 * time.Second
	var rotated admin.NewKeyAnswer
	at := time.Now()
	resp, body = adminCall(t, "POST", "/apikey/keys/"+created.ID+"/rotate?store=adm:", `{"grace": "2s"}`)
	adminAnswer(t, resp, body, 201, &rotated)
	expectOK(t, "/", "made "+rotated.ID, "Authorization: Bearer "+rotated.Key)
	if resp, _ := do(t, "GET", "/", "Authorization: Bearer "+created.Key); time.Since(at) < grace-300*time.Millisecond && resp.StatusCode != 200 {
		t.Fatalf("old key during the grace: %d, want 200", resp.StatusCode)
	}
	testkeys.WaitFor(t, grace+2*time.Second, "the old key to be refused once the grace has ended", func() bool {
		resp, body := do(t, "GET", "/", "Authorization: Bearer "+created.Key)
		if resp.StatusCode != http.StatusForbidden {
			return false
		}
		code, _ := testkeys.RefusalOf(t, body)
		return code == CodeKeyExpired
	})

	// Both stores are in use: a request that names none is ambiguous.
	resp, body = adminCall(t, "GET", "/apikey/keys", "")
	testkeys.AssertRefusal(t, resp, body, 400, "AMBIGUOUS_STORE", "")
}
