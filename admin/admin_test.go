package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// The admin API's own logic, without Caddy: the API is called directly, on
// stores of its own.

// startTestStore loads the key file at path into a running store (watcher
// and writer, reloading and usage writes off), stopped when the test ends.
func startTestStore(t *testing.T, path string) stores.Live {
	t.Helper()
	startFileStore(t, path)
	return liveStore(t, "file:"+path)
}

// startFileStore provisions a file store on the key file at path, with
// reloading and usage writes off, released when the test ends.
func startFileStore(t testing.TB, path string) *filestore.Store {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	s := &filestore.Store{Path: path, UsageInterval: -1, ReloadInterval: -1}
	if err := s.Provision(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Cleanup(); cancel() })
	return s
}

// liveStore returns the store in use whose name is name.
func liveStore(t testing.TB, name string) stores.Live {
	t.Helper()
	for _, s := range stores.InUse() {
		if s.Name() == name {
			return s
		}
	}
	t.Fatalf("no store %s in use", name)
	return nil
}

// testAdmin is the admin API on stores.
func testAdmin(live ...stores.Live) *API {
	return New(zap.NewNop(), func() []stores.Live { return live }, time.Now)
}

// call sends method target with body (none if "") to a, and returns the
// response and its body.
func call(t *testing.T, a *API, method, target, body string) (*http.Response, string) {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	w := httptest.NewRecorder()
	if err := a.serve(w, r); err != nil {
		t.Fatalf("%s %s: serve returned %v; it writes every answer itself", method, target, err)
	}
	return w.Result(), w.Body.String()
}

// wantRefusal checks that an answer is the refusal status and code, with a
// message holding each of want, and returns the message.
func wantRefusal(t *testing.T, resp *http.Response, body string, status int, code string, want ...string) string {
	t.Helper()
	msg := testkeys.AssertRefusal(t, resp, body, status, code, "")
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("message does not say %q: %q", w, msg)
		}
	}
	return msg
}

// Bodies are JSON objects with the route's members only, named exactly,
// each once, of the right types, with nothing after them, at most 64 KiB;
// values are checked as the commands check them. A refused body changes
// nothing.
func TestAdminRequestBodies(t *testing.T) {
	k := testkeys.New("svc", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001"})
	path := testkeys.WriteKeys(t, "", k)
	a := testAdmin(startTestStore(t, path))
	before := testkeys.ReadFile(t, path)
	const create, rotate, revoke = "/apikey/keys", "/apikey/keys/aaaa1111/rotate", "/apikey/keys/aaaa1111/revoke"
	for _, tc := range []struct {
		name, target, body string
		status             int
		code               string
		want               []string
	}{
		{"not JSON", create, `{"label": "x",}`, 400, "BAD_REQUEST", []string{"not valid JSON", "invalid character ','", "offset 13"}},
		{"cut short", create, `{"label": "x"`, 400, "BAD_REQUEST", []string{"not valid JSON", "unexpected EOF"}},
		{"unknown member", create, `{"label": "x", "owner": "ops"}`, 400, "BAD_REQUEST", []string{`unknown member "owner"`, "label, scopes and expires"}},
		{"member named in another case", create, `{"Label": "x"}`, 400, "BAD_REQUEST", []string{`unknown member "Label"`}},
		{"member twice", create, `{"label": "x", "label": "y"}`, 400, "BAD_REQUEST", []string{"duplicate object member name \"label\""}},
		{"label not a string", create, `{"label": 5}`, 400, "BAD_REQUEST", []string{`"label" must be a string, not a JSON number`}},
		{"scopes not a list", create, `{"label": "x", "scopes": "read"}`, 400, "BAD_REQUEST", []string{`"scopes" must be a list of strings, not a JSON string`}},
		{"scope not a string", create, `{"label": "x", "scopes": [1]}`, 400, "BAD_REQUEST", []string{`"scopes" must be a list of strings`}},
		{"data after the object", create, `{"label": "x"} {"label": "y"}`, 400, "BAD_REQUEST", []string{"after top-level value"}},
		{"text after the object", create, `{"label": "x"}x`, 400, "BAD_REQUEST", []string{"after top-level value"}},
		{"an array", create, `[{"label": "x"}]`, 400, "BAD_REQUEST", []string{"must be a JSON object"}},
		{"null", create, `null`, 400, "BAD_REQUEST", []string{"must be a JSON object"}},
		{"no label", create, `{}`, 400, "BAD_REQUEST", []string{"a label is required"}},
		{"empty body", create, ``, 400, "BAD_REQUEST", []string{"a label is required"}},
		{"bad expiry", create, `{"label": "x", "expires": "soon"}`, 400, "BAD_REQUEST", []string{`"soon"`, "90d"}},
		{"past expiry", create, `{"label": "x", "expires": "2020-01-01"}`, 400, "BAD_REQUEST", []string{"in the past"}},
		{"bad scope", create, `{"label": "x", "scopes": ["a b"]}`, 400, "BAD_REQUEST", []string{`"a b"`}},
		{"too large", create, `{"label": "` + strings.Repeat("x", maxBodySize) + `"}`, 413, "BODY_TOO_LARGE", []string{"65536 bytes"}},
		{"bad grace", rotate, `{"grace": "a while"}`, 400, "BAD_REQUEST", []string{`"a while"`, "24h"}},
		{"negative grace", rotate, `{"grace": "-1h"}`, 400, "BAD_REQUEST", []string{"negative"}},
		{"grace not a string", rotate, `{"grace": 3600}`, 400, "BAD_REQUEST", []string{`"grace" must be a string`}},
		{"rotate's unknown member", rotate, `{"label": "x"}`, 400, "BAD_REQUEST", []string{`unknown member "label"`, "grace and expires"}},
		{"revoke with a member", revoke, `{"reason": "leaked"}`, 400, "BAD_REQUEST", []string{`unknown member "reason"`, "revoke takes none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := call(t, a, "POST", tc.target, tc.body)
			wantRefusal(t, resp, body, tc.status, tc.code, tc.want...)
			if got := testkeys.ReadFile(t, path); got != before {
				t.Fatalf("a refused request changed the key file:\n%s", got)
			}
		})
	}
}

// Paths outside the routes are refused with the routes' list; a method a
// route does not take with the ones it does, in Allow.
func TestAdminRouting(t *testing.T) {
	a := testAdmin()
	for _, target := range []string{"/apikey/", "/apikey/key", "/apikey/keys/", "/apikey/keys/abcd", "/apikey/keys/abcd/delete", "/apikey/keys/a/b/revoke", "/apikey/stores/x"} {
		resp, body := call(t, a, "GET", target, "")
		wantRefusal(t, resp, body, 404, "NOT_FOUND", "GET /apikey/stores", "POST /apikey/keys/{id}/rotate")
	}
	for _, tc := range []struct{ method, target, allow string }{
		{"POST", "/apikey/stores", "GET"},
		{"DELETE", "/apikey/keys", "GET, POST"},
		{"PUT", "/apikey/keys", "GET, POST"},
		{"GET", "/apikey/keys/abcd/revoke", "POST"},
		{"DELETE", "/apikey/keys/abcd/rotate", "POST"},
	} {
		resp, body := call(t, a, tc.method, tc.target, "")
		wantRefusal(t, resp, body, 405, "METHOD_NOT_ALLOWED", tc.method, tc.allow)
		if got := resp.Header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.target, got, tc.allow)
		}
	}
}

// An id with a slash is named escaped (%2F), and found.
func TestAdminEscapedID(t *testing.T) {
	k := testkeys.New("odd", map[string]any{"id": "team/ci"})
	path := testkeys.WriteKeys(t, "", k)
	a := testAdmin(startTestStore(t, path))
	resp, body := call(t, a, "POST", "/apikey/keys/team%2Fci/revoke", "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"id":"team/ci"`) {
		t.Fatalf("revoke of team%%2Fci: %d %s", resp.StatusCode, body)
	}
}

// ?store= picks a store by name or by a file store's path (relative to the
// working directory, as keys_file is); it may be left out when one store is
// in use. None in use, several and no ?store=, or one that is not in use are
// refused with the choices.
func TestAdminPickStore(t *testing.T) {
	dir := t.TempDir()
	one, two := testkeys.WriteKeys(t, filepath.Join(dir, "one.json"), testkeys.New("one", nil)), testkeys.WriteKeys(t, filepath.Join(dir, "two.json"), testkeys.New("two", nil))
	s1, s2 := startTestStore(t, one), startTestStore(t, two)
	labels := func(body string) string {
		var keys []keyops.Listed
		if err := json.Unmarshal([]byte(body), &keys); err != nil || len(keys) != 1 {
			t.Fatalf("body %q: %v", body, err)
		}
		return keys[0].Label
	}

	resp, body := call(t, testAdmin(), "GET", "/apikey/keys", "")
	wantRefusal(t, resp, body, 404, "NO_STORE", "no key store is in use")

	if resp, body := call(t, testAdmin(s2), "GET", "/apikey/keys", ""); resp.StatusCode != 200 || labels(body) != "two" {
		t.Errorf("one store, no ?store=: %d %s", resp.StatusCode, body)
	}

	a := testAdmin(s1, s2)
	t.Chdir(dir)
	for target, want := range map[string]string{
		"/apikey/keys?store=file:" + one: "one",
		"/apikey/keys?store=" + two:      "two",
		"/apikey/keys?store=two.json":    "two",
		"/apikey/keys?store=./one.json":  "one",
	} {
		if resp, body := call(t, a, "GET", target, ""); resp.StatusCode != 200 || labels(body) != want {
			t.Errorf("GET %s: %d %s, want the keys of %s", target, resp.StatusCode, body, want)
		}
	}
	choices := []string{"file:" + one, "file:" + two}
	resp, body = call(t, a, "GET", "/apikey/keys", "")
	wantRefusal(t, resp, body, 400, "AMBIGUOUS_STORE", append(choices, "?store=")...)
	resp, body = call(t, a, "POST", "/apikey/keys/abcd/revoke?store=", "")
	wantRefusal(t, resp, body, 400, "AMBIGUOUS_STORE", choices...)
	resp, body = call(t, a, "GET", "/apikey/keys?store=three.json", "")
	wantRefusal(t, resp, body, 400, "STORE_NOT_FOUND", append(choices, `"three.json"`)...)
	resp, body = call(t, a, "GET", "/apikey/keys?store=one.json&store=two.json", "")
	wantRefusal(t, resp, body, 400, "BAD_REQUEST", append(choices, "once")...)
}

// A store that fails (its key file gone) is the server's error, 500, naming
// the store; the API never makes a key file anew, which would put one key
// in force in place of all the others.
func TestAdminStoreFailure(t *testing.T) {
	k := testkeys.New("svc", nil)
	path := testkeys.WriteKeys(t, "", k)
	a := testAdmin(startTestStore(t, path))
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ method, target, body string }{
		{"GET", "/apikey/keys", ""},
		{"POST", "/apikey/keys", `{"label": "new"}`},
		{"POST", "/apikey/keys/" + k.Record["id"].(string) + "/revoke", ""},
		{"POST", "/apikey/keys/" + k.Record["id"].(string) + "/rotate", ""},
	} {
		resp, body := call(t, a, tc.method, tc.target, tc.body)
		wantRefusal(t, resp, body, 500, "INTERNAL_ERROR", "key store file:"+path, "no such file")
	}
	for _, p := range []string{path, path + ".lock"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the admin API made %s", p)
		}
	}
}

// failingRefresh is a store whose changes cannot be put in force.
type failingRefresh struct{ stores.Live }

func (failingRefresh) Refresh() error { return errors.New("the watcher is stuck") }

// A change that is saved but not in force is answered as made (the new key
// is shown: it exists), with a warning; not as an error, which would have
// the client try again and make a second key.
func TestAdminRefreshFailureIsAWarning(t *testing.T) {
	path := testkeys.WriteKeys(t, "", testkeys.New("svc", nil))
	a := testAdmin(failingRefresh{startTestStore(t, path)})
	resp, body := call(t, a, "POST", "/apikey/keys", `{"label": "new"}`)
	var got NewKeyAnswer
	if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != 201 {
		t.Fatalf("create: %d %s (%v)", resp.StatusCode, body, err)
	}
	if !regexp.MustCompile(`^sk_[A-Za-z0-9_-]{43}$`).MatchString(got.Key) || testkeys.FileRecord(t, path, got.ID).KeyHash != keyset.HashKey(got.Key) {
		t.Errorf("the key was not made as shown: %s", body)
	}
	if want := "the change is saved but not yet in force on this server: the watcher is stuck"; got.Warning != want {
		t.Errorf("warning %q, want %q", got.Warning, want)
	}
}

// A stopped store has no watcher to wait for: the admin API may hold a
// store that a config unload let go, and must not hang on it.
func TestAdminRefreshOfAStoppedStore(t *testing.T) {
	path := testkeys.WriteKeys(t, "", testkeys.New("svc", nil))
	fs := startFileStore(t, path)
	s := liveStore(t, "file:"+path)
	if err := fs.Cleanup(); err != nil { // its last user: the store stops
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Refresh() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("refresh of a stopped store: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("refresh of a stopped store waits")
	}
}

// namedStore is a store that is only a name and a key set, for the list
// of stores.
type namedStore struct {
	n  string
	ks *keyset.KeySet
}

func (s namedStore) Name() string                { return s.n }
func (s namedStore) KeySet() *keyset.KeySet      { return s.ks }
func (s namedStore) Records() stores.RecordStore { return nil }
func (s namedStore) Refresh() error              { return nil }

// The list of stores says where each one's keys are, by its kind, and
// counts its keys by state now.
func TestAdminListStores(t *testing.T) {
	past, future := keyset.FormatTimestamp(time.Now().Add(-time.Hour)), keyset.FormatTimestamp(time.Now().Add(time.Hour))
	ks := testkeys.KeySet(t,
		testkeys.New("active", map[string]any{"expires_at": future}).Rec(),
		testkeys.New("expired", map[string]any{"expires_at": past}).Rec(),
		testkeys.New("revoked and expired", map[string]any{"expires_at": past, "revoked_at": past}).Rec(),
	)
	a := testAdmin(
		namedStore{"file:/etc/caddy/keys.json", ks},
		namedStore{"redis:redis://10.0.0.5:6379/0#apikey:", ks},
		namedStore{"redis:redis://10.0.0.5:6379/0#team#a:", nil},
	)
	resp, body := call(t, a, "GET", "/apikey/stores", "")
	var got []StoreInfo
	if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s (%v)", resp.StatusCode, body, err)
	}
	counts := KeyCounts{Active: 1, Expired: 1, Revoked: 1}
	want := []StoreInfo{
		{Name: "file:/etc/caddy/keys.json", Kind: "file", Path: "/etc/caddy/keys.json", Keys: counts},
		{Name: "redis:redis://10.0.0.5:6379/0#apikey:", Kind: "redis", URL: "redis://10.0.0.5:6379/0", Prefix: "apikey:", Keys: counts},
		{Name: "redis:redis://10.0.0.5:6379/0#team#a:", Kind: "redis", URL: "redis://10.0.0.5:6379/0", Prefix: "team#a:"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stores\n%+v\nwant\n%+v", got, want)
	}
}
