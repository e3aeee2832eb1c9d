package apikey

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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

// newTestKey makes a key in the reference application's format. extra
// members are added to (or replace members of) its record.
func newTestKey(label string, extra map[string]any) testKey {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	raw := "sk_" + base64.RawURLEncoding.EncodeToString(b)
	rec := map[string]any{
		"id":           newTestID(),
		"label":        label,
		"key_hash":     hashKey(raw),
		"key_prefix":   raw[:11],
		"created_at":   "2026-11-25T20:14:31.123456+00:00",
		"last_used_at": nil,
	}
	for k, v := range extra {
		rec[k] = v
	}
	return testKey{Raw: raw, record: rec}
}

func newTestID() string { return uuid.NewString() }

// rec is the key's record, decoded.
func (k testKey) rec() record {
	var r record
	data, err := json.Marshal(k.record)
	if err == nil {
		err = json.Unmarshal(data, &r)
	}
	if err != nil {
		panic(err)
	}
	return r
}

// readKeyDoc reads the key file at path as writers do.
func readKeyDoc(t testing.TB, path string) *keyDoc {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := parseKeyDoc(data)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// object is the members of a JSON object in their order, for tests to look
// into.
type object []member

// get returns member name's raw value, or nil.
func (o object) get(name string) json.RawMessage {
	for _, m := range o {
		if m.name == name {
			return m.value
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
		b = appendName(b, m.name)
		b = append(b, m.value...)
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
	if _, err := writeFileAtomic(path, data, nil, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// do sends a request to the test site and returns the response and body.
// headers are "Name: value" strings.
func do(t *testing.T, method, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, siteURL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
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
// the test if the body is not one.
func refusalOf(t *testing.T, body string) (code, message string) {
	t.Helper()
	var env refusalBody
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		t.Fatalf("body is not JSON: %v: %q", err, body)
	}
	if env.Success == nil || *env.Success || env.Error == nil || env.Error.Code == nil || env.Error.Message == nil {
		t.Fatalf("body is not a refusal ({\"success\": false, \"error\": {\"code\", \"message\"}}): %q", body)
	}
	return *env.Error.Code, *env.Error.Message
}

// errorCode returns error.code of a JSON refusal body, failing the test if
// the body is not one.
func errorCode(t *testing.T, body string) string {
	t.Helper()
	code, _ := refusalOf(t, body)
	return code
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
	s.settings.Store(&storeSettings{
		usage:  intervalSetting(caddy.Duration(d), defaultUsageInterval),
		reload: interval{off: true},
	})
}

// newMemoryHandler sets h up as Provision does (setup), but on the in-memory
// key set ks instead of a key file's store, and with no logging.
func newMemoryHandler(h *Handler, ks *keySet) *Handler {
	if err := h.setup(); err != nil {
		panic(err)
	}
	h.logger = zap.NewNop()
	s := newKeyStore("/nonexistent/keys.json", zap.NewNop())
	setUsageInterval(s, defaultUsageInterval)
	s.keys.Store(ks)
	h.store = s
	return h
}

// mustBuildKeySet builds the key set of records, failing the test on an error.
func mustBuildKeySet(t testing.TB, records ...record) *keySet {
	t.Helper()
	docs := make([]docRecord, len(records))
	for i := range records {
		docs[i].record = records[i]
	}
	ks, err := buildKeySet(docs)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}
