package apikey

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	redisstore "github.com/caddy-apikey/caddy-apikey/stores/redis"
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
	flag.Parse()
	if testing.Short() {
		fmt.Fprintln(os.Stderr, "apikey: -short given: integration tests against a real Caddy will be SKIPPED")
		os.Exit(m.Run())
	}
	// The test Caddy writes nothing outside a folder of its own: its
	// configs say persist_config off, and its config and data folders
	// (autosave.json, certificates, locks) are in a temporary one.
	home, err := os.MkdirTemp("", "apikey-caddy-home-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, "apikey:", err)
		os.Exit(1)
	}
	for _, v := range []string{"HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"} {
		_ = os.Setenv(v, home)
	}
	if err := startCaddy(); err != nil {
		fmt.Fprintln(os.Stderr, "apikey: cannot start Caddy for the integration tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(home)
	os.Exit(code)
}

func startCaddy() error {
	if adminUp() {
		return fmt.Errorf("something already listens on admin port %d; set APIKEY_TEST_ADMIN_PORT", adminPort)
	}
	f, err := os.CreateTemp("", "apikey-caddy-init-*.caddyfile")
	if err != nil {
		return err
	}
	// Read once, as Caddy starts: gone when this returns.
	defer os.Remove(f.Name())
	fmt.Fprintf(f, "{\n\tadmin localhost:%d\n\tpersist_config off\n}\n", adminPort)
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
		if msg := loadConfigError(t, fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n}\n", adminPort)); msg != "" {
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
	// A connection of its own: the admin server restarts with each load,
	// and a kept-alive connection to the one before would read EOF.
	c := http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
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
	persist_config off
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

// newMemoryHandler sets h up as Provision does (setup), but on the in-memory
// key set ks instead of a key file's store, and with no logging.
func newMemoryHandler(h *Handler, ks *keyset.KeySet) *Handler {
	if err := h.setup(); err != nil {
		panic(err)
	}
	h.logger = zap.NewNop()
	h.store = &memoryStore{keys: ks, name: memoryStoreName()}
	h.useShared(caddy.Context{})
	return h
}

// memoryStore is a store that holds a key set in memory and notes uses in
// a usage tracker, as the stores of this repository do on the request
// path, with nothing behind it.
type memoryStore struct {
	keys  *keyset.KeySet
	usage keyset.UsageTracker
	name  string // memoryStoreName's
}

// memoryStores counts the memory stores made, for their names.
var memoryStores atomic.Int64

// memoryStoreName is a name of its own for a memory store, so that the
// state its handlers share (package shared, by the store's name) is its
// own: without one, a handler would share by its address, and find the
// state of a handler set up before it at the same address and never
// cleaned up (as a benchmark's are not), with that one's store.
func memoryStoreName() string { return fmt.Sprintf("memory store %d", memoryStores.Add(1)) }

func (m *memoryStore) Name() string           { return m.name }
func (m *memoryStore) KeySet() *keyset.KeySet { return m.keys }
func (m *memoryStore) MarkUsed(k *keyset.Key, sum [sha256.Size]byte, now int64) {
	m.usage.Mark(k, sum, now)
}

// redisRecords is the test's record store on r's key set at prefix (made
// by the first add), closed when the test ends.
func redisRecords(t testing.TB, r *testredis.Server, prefix string) redisstore.Records {
	t.Helper()
	rs, err := redisstore.Open(redisstore.Target{URL: r.URL, Prefix: prefix, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.Close)
	return rs
}
