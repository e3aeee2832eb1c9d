package apikey

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// The integration tests share one Caddy, started by TestMain in this test
// binary and driven through its admin API, as caddytest does. Its ports can
// be moved with APIKEY_TEST_ADMIN_PORT and APIKEY_TEST_HTTP_PORT so that two
// test runs on one machine do not drive each other's Caddy.
var (
	adminPort = envPort("APIKEY_TEST_ADMIN_PORT", 2999)
	httpPort  = envPort("APIKEY_TEST_HTTP_PORT", 9080)
)

func envPort(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

// TestMain starts the in-process Caddy before any test, and fails the run
// (instead of letting caddytest skip the integration tests) if it cannot.
func TestMain(m *testing.M) {
	if path := os.Getenv(crashWriterEnv); path != "" {
		runCrashWriter(path) // a child process of TestUsageWriteSurvivesKill
		os.Exit(0)
	}
	if arg := os.Getenv(fullDiskEnv); arg != "" {
		runFullDiskChild(arg) // a child process of TestUsageWriteOnFullDisk
		os.Exit(0)
	}
	flag.Parse()
	if testing.Short() {
		fmt.Fprintln(os.Stderr, "apikey: -short given: integration tests against a real Caddy will be SKIPPED")
		os.Exit(m.Run())
	}
	if err := startCaddy(); err != nil {
		fmt.Fprintln(os.Stderr, "apikey: cannot start Caddy for the integration tests:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func startCaddy() error {
	if adminUp() {
		return fmt.Errorf("something already listens on admin port %d; set APIKEY_TEST_ADMIN_PORT", adminPort)
	}
	f, err := os.CreateTemp("", "apikey-caddy-init-*.caddyfile")
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "{\n\tadmin localhost:%d\n}\n", adminPort)
	f.Close()
	os.Args = []string{"caddy", "run", "--config", f.Name(), "--adapter", "caddyfile"}
	go caddycmd.Main()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if adminUp() {
			return nil
		}
	}
	return fmt.Errorf("admin endpoint localhost:%d did not come up", adminPort)
}

func adminUp() bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://localhost:%d/config/", adminPort))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// loadCaddyfile loads a site config into the test Caddy. site is the body of
// the one site block, served on http://localhost:<httpPort>.
func loadCaddyfile(t *testing.T, site string) *caddytest.Tester {
	t.Helper()
	return loadCaddyfileWithGlobals(t, "", site)
}

// loadCaddyfileWithGlobals is loadCaddyfile with more global options.
func loadCaddyfileWithGlobals(t *testing.T, globals, site string) *caddytest.Tester {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: -short does not start the test Caddy")
	}
	// Unload the test's config when it ends (after caddytest has shown it
	// on failure), so its key files are released while they still exist.
	t.Cleanup(func() {
		if msg := loadConfigError(t, fmt.Sprintf("{\n\tadmin localhost:%d\n}\n", adminPort)); msg != "" {
			t.Logf("unloading the test config: %s", msg)
		}
	})
	tc := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tc.InitServer(caddyfileWithGlobals(globals, site), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	return tc
}

// loadConfigError posts a Caddyfile to the admin API's /load and returns
// the error it answers with, or "" if the config loaded.
func loadConfigError(t *testing.T, caddyfile string) string {
	t.Helper()
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "text/caddyfile", strings.NewReader(caddyfile))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return ""
	case len(body) == 0:
		return resp.Status // an error all the same
	}
	return string(body)
}

// caddyfileFor wraps a site body in the global options the tests need.
func caddyfileFor(site string) string { return caddyfileWithGlobals("", site) }

func caddyfileWithGlobals(globals, site string) string {
	return fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	https_port %d
	grace_period 1s
%s
}
http://localhost:%d {
%s
}
`, adminPort, httpPort, httpPort+1, globals, httpPort, site)
}

// siteURL is the URL of path on the test site.
func siteURL(path string) string {
	return fmt.Sprintf("http://localhost:%d%s", httpPort, path)
}

// testKey is a key made for a test: its raw value and its record.
type testKey struct {
	Raw    string
	record map[string]any
}

// newTestKey makes a key in the reference application's format, its raw
// value made as `caddy apikey add` makes one. extra members are added to (or
// replace members of) its record.
func newTestKey(label string, extra map[string]any) testKey {
	raw, err := generateKey()
	if err != nil {
		panic(err)
	}
	rec := map[string]any{
		"id":           uuid.NewString(),
		"label":        label,
		"key_hash":     keyset.HashKey(raw),
		"key_prefix":   raw[:11],
		"created_at":   "2026-11-25T20:14:31.123456+00:00",
		"last_used_at": nil,
	}
	for k, v := range extra {
		rec[k] = v
	}
	return testKey{Raw: raw, record: rec}
}

// rec is the key's record, decoded.
func (k testKey) rec() keyset.Record {
	var r keyset.Record
	data, err := json.Marshal(k.record)
	if err == nil {
		err = json.Unmarshal(data, &r)
	}
	if err != nil {
		panic(err)
	}
	return r
}

// readKeyDoc reads the key file at path as writers do (parseKeyDoc), failing
// the test if it does not parse or if the handler would refuse it. It is the
// tests' one reader of a key file; fileRecord, lastUsed and recordMembers
// look into what it returns.
func readKeyDoc(t testing.TB, path string) *keyfile.Doc {
	t.Helper()
	doc, err := keyfile.ParseDoc([]byte(readFile(t, path)))
	if err != nil {
		t.Fatalf("key file %s does not parse: %v", path, err)
	}
	if _, err := keyfile.BuildKeySet(doc.Records); err != nil {
		t.Fatalf("key file %s no longer loads: %v", path, err)
	}
	return doc
}

// fileRecord returns the record with id in the key file at path, failing
// the test if there is none.
func fileRecord(t testing.TB, path, id string) keyfile.Record {
	t.Helper()
	for _, r := range readKeyDoc(t, path).Records {
		if r.ID == id {
			return r
		}
	}
	t.Fatalf("record %s is not in the key file %s", id, path)
	return keyfile.Record{}
}

// lastUsed returns last_used_at of the record with id in the key file at
// path: "" when it is null or absent.
func lastUsed(t testing.TB, path, id string) string {
	t.Helper()
	if p := fileRecord(t, path, id).LastUsedAt; p != nil {
		return *p
	}
	return ""
}

// recordMembers returns the members of a key file's record in their order.
func recordMembers(r keyfile.Record) object {
	return r.Members()
}

// memberNames returns the names of o's members, in their order.
func memberNames(o object) []string {
	names := make([]string, len(o))
	for i, m := range o {
		names[i] = m.Name
	}
	return names
}

// readFile returns the text of the file at path, for checks on its bytes.
func readFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// object is the members of a JSON object in their order, for tests to look
// into.
type object []keyfile.Member

// get returns member name's raw value, or nil.
func (o object) get(name string) json.RawMessage {
	for _, m := range o {
		if m.Name == name {
			return m.Value
		}
	}
	return nil
}

// getString returns member name as a string; "" if absent, null or no string.
func (o object) getString(name string) string {
	var s string
	_ = json.Unmarshal(o.get(name), &s)
	return s
}

// MarshalJSON renders the object compactly, members in order.
func (o object) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, m := range o {
		if i > 0 {
			b = append(b, ',')
		}
		b, _ = jsontext.AppendQuote(b, m.Name)
		b = append(append(b, ':'), m.Value...)
	}
	var out bytes.Buffer
	err := json.Compact(&out, append(b, '}'))
	return out.Bytes(), err
}

// writeKeys writes a key file holding keys, as {"api_keys": [...]}, into a
// new temporary folder unless path is given, and returns its path.
func writeKeys(t testing.TB, path string, keys ...testKey) string {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "keys.json")
	}
	recs := make([]map[string]any, len(keys))
	for i, k := range keys {
		recs[i] = k.record
	}
	data, err := json.MarshalIndent(map[string]any{"api_keys": recs}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keyfile.WriteAtomic(path, bytes.NewReader(data), nil, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// newRequest builds a request, as a server receives it, for method and
// target (a path or a URL). headers are "Name: value" lines: the name is
// added with Header.Add (so canonicalised), the value after ": " is kept
// verbatim, spaces and all; a name given twice makes two values.
func newRequest(method, target string, headers ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		r.Header.Add(name, strings.TrimPrefix(value, " "))
	}
	return r
}

// do sends newRequest(method, path, headers...) to the test site and
// returns the response and its body.
func do(t *testing.T, method, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	req := newRequest(method, siteURL(path), headers...)
	req.RequestURI = "" // a client request has none
	return roundTrip(t, req)
}

// roundTrip sends req and returns the response and its whole body.
func roundTrip(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// refusalBody is the JSON body of a refused request; pointers tell a
// missing member from an empty one.
type refusalBody struct {
	Success *bool `json:"success"`
	Error   *struct {
		Code    *string `json:"code"`
		Message *string `json:"message"`
	} `json:"error"`
}

// refusalOf returns the code and message of a JSON refusal body, failing
// the test if the body is not exactly the envelope: no other members, no
// missing ones, nothing after it.
func refusalOf(t testing.TB, body string) (code, message string) {
	t.Helper()
	var env refusalBody
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		t.Fatalf("body is not the JSON envelope: %v: %q", err, truncate(body))
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("body has more after the JSON envelope: %q", truncate(body))
	}
	if env.Success == nil || *env.Success || env.Error == nil || env.Error.Code == nil || env.Error.Message == nil {
		t.Fatalf("body is not a refusal ({\"success\": false, \"error\": {\"code\", \"message\"}}): %q", truncate(body))
	}
	return *env.Error.Code, *env.Error.Message
}

// assertRefusal checks a JSON refusal: status, headers and body (as
// refusalOf), and that no secret appears in it. It returns the message.
// realm is the challenge a 401 must carry; other statuses must carry none.
func assertRefusal(t *testing.T, resp *http.Response, body string, status int, code, realm string, secrets ...string) string {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %q", resp.StatusCode, status, truncate(body))
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
	challenge := resp.Header.Values("WWW-Authenticate")
	if status == http.StatusUnauthorized {
		if want := `Bearer realm="` + realm + `"`; len(challenge) != 1 || challenge[0] != want {
			t.Errorf("WWW-Authenticate %q, want %q", challenge, want)
		}
	} else if len(challenge) != 0 {
		t.Errorf("WWW-Authenticate %q on a %d", challenge, status)
	}
	gotCode, message := refusalOf(t, body)
	if gotCode != code {
		t.Errorf("error code %q, want %q", gotCode, code)
	}
	if message == "" {
		t.Error("empty error message")
	}
	for _, s := range secrets {
		if s != "" && strings.Contains(body, secretPart(s)) {
			t.Errorf("the refusal echoes the key: %q", truncate(body))
		}
	}
	return message
}

// secretPart is the part of a raw key that must never be shown: all of it
// after the public prefix.
func secretPart(raw string) string {
	if len(raw) > 11 {
		return raw[11:]
	}
	return raw
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// setUsageInterval sets a store's usage interval as a handler's
// usage_interval would (negative: off), with reloading off.
func setUsageInterval(s *keyStore, d time.Duration) {
	setLease(s.leases, storecore.Settings{
		Usage:  storecore.IntervalSetting(caddy.Duration(d), storecore.DefaultUsageInterval),
		Reload: storecore.Interval{Off: true},
	})
}

// testLeases holds the lease setLease took on each lease set.
var testLeases sync.Map // *storecore.Leases -> uint64

// setLease puts settings in force on a store's leases, as one handler
// using it alone would: a lease the test took before is withdrawn.
func setLease(l *storecore.Leases, settings storecore.Settings) {
	id := l.Add(settings)
	if old, ok := testLeases.Swap(l, id); ok {
		l.Remove(old.(uint64))
	}
}

// newMemoryHandler sets h up as Provision does (setup), but on the in-memory
// key set ks instead of a key file's store, and with no logging.
func newMemoryHandler(h *Handler, ks *keyset.KeySet) *Handler {
	if err := h.setup(); err != nil {
		panic(err)
	}
	h.logger = zap.NewNop()
	s := newKeyStore("/nonexistent/keys.json", zap.NewNop())
	setUsageInterval(s, storecore.DefaultUsageInterval)
	s.keys.Store(ks)
	h.store = &FileStore{store: s}
	return h
}

// mustBuildKeySet builds the key set of records, failing the test on an error.
func mustBuildKeySet(t testing.TB, records ...keyset.Record) *keyset.KeySet {
	t.Helper()
	docs := make([]keyfile.Record, len(records))
	for i := range records {
		docs[i].Record = records[i]
	}
	ks, err := keyfile.BuildKeySet(docs)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// expiresAt is when key k expires (unix nanoseconds), 0 if it does not.
func expiresAt(k *keyset.Key) int64 {
	at, _ := k.ExpiresAt()
	return at
}

// scopesJoined is key k's scopes as {http.auth.user.scopes} gives them.
func scopesJoined(k *keyset.Key) string {
	v, _ := k.Placeholder("http.auth.user.scopes")
	return v.(string)
}

// marshalDoc renders a key file's document as its writers write it.
func marshalDoc(d *keyfile.Doc) []byte {
	var b bytes.Buffer
	_, _ = d.WriteTo(&b) // a bytes.Buffer takes every write
	return b.Bytes()
}

// updateKeyFile applies edit to the key file at path, which must exist, as
// every writer does (under its lock, atomically).
func updateKeyFile(path string, edit func(*keyfile.Doc) error) (keyfile.Write, error) {
	return keyfile.Edit(path, keyfile.EditOptions{Edit: edit})
}
