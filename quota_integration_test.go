package apikey

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testfleet"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// The quota tests run Caddy processes (see the testfleet package) behind
// which an upstream in the test counts the requests each key was admitted
// for: a request that reaches it was admitted, whether or not its answer
// made it back to the client before the server was killed.

// upstream counts the requests that reach it.
type upstream struct {
	*httptest.Server
	n atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.n.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(u.Close)
	return u
}

// proxyTo is the route after apikey that sends admitted requests to u.
func (u *upstream) proxyTo() string {
	return "reverse_proxy " + u.Listener.Addr().String()
}

// load sends requests with raw as bearer key from workers goroutines to
// the server target points at, until stop is called; it tallies the
// statuses (0: no answer, e.g. the server was killed).
type load struct {
	target   atomic.Pointer[string]
	statuses sync.Map // int -> *atomic.Int64
	sent     atomic.Int64
	done     chan struct{}
	wg       sync.WaitGroup
}

func startLoad(raw string, workers int, url string, max int64) *load {
	l := &load{done: make(chan struct{})}
	l.target.Store(&url)
	for range workers {
		l.wg.Go(func() {
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			for {
				select {
				case <-l.done:
					return
				default:
				}
				if max > 0 && l.sent.Add(1) > max {
					return
				}
				req, _ := http.NewRequest("GET", *l.target.Load(), nil)
				req.Header.Set("Authorization", "Bearer "+raw)
				status := 0
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				} else {
					client.CloseIdleConnections()
					time.Sleep(time.Millisecond) // a server being restarted: do not spin
				}
				v, _ := l.statuses.LoadOrStore(status, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
		})
	}
	return l
}

func (l *load) wait()            { l.wg.Wait() }
func (l *load) stop()            { close(l.done); l.wg.Wait() }
func (l *load) point(url string) { l.target.Store(&url) }
func (l *load) count(status int) int64 {
	if v, ok := l.statuses.Load(status); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

// addQuotaKey adds a key with quota q to st and returns the raw key.
func addQuotaKey(t *testing.T, st stores.RecordStore, label, q string) string {
	t.Helper()
	parsed, err := quota.Parse(q)
	if err != nil {
		t.Fatal(err)
	}
	raw, _, err := keyops.Create(st, keyops.AddOptions{Label: label, Quota: keyset.QuotaSpecOf(parsed)}, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// One server, a quota of 10 000 spent by three times that traffic:
// exactly 10 000 admitted, the rest refused with 429 QUOTA_EXCEEDED.
func TestQuotaExactOnOneServer(t *testing.T) {
	testkeys.Slow(t, "a Caddy process and 30 000 requests")
	path := filepath.Join(t.TempDir(), "keys.json")
	raw := addQuotaKey(t, filestore.Records{Path: path, MayCreate: true}, "metered", "10000/month")
	up := newUpstream(t)
	c, err := testfleet.LaunchCaddyWith(t, "one", "keys_file "+path, up.proxyTo())
	if err != nil {
		t.Fatal(err)
	}
	l := startLoad(raw, 8, c.URL(), 30_000)
	l.wait()
	t.Logf("30 000 requests on a quota of 10 000: %d admitted (the upstream's count), %d × 200 and %d × 429 answered", up.n.Load(), l.count(200), l.count(429))
	if up.n.Load() != 10_000 || l.count(200) != 10_000 || l.count(429) != 20_000 {
		t.Fatalf("30 000 requests on a quota of 10 000: upstream saw %d, the client %d × 200 and %d × 429 (and %d unanswered)",
			up.n.Load(), l.count(200), l.count(429), l.count(0))
	}
}

// One server killed -9 twenty times while it spends a quota of 10 000,
// restarted each time on the same key file and state: never more than
// the quota admitted in total; each crash strands at most the block its
// server held (1 %: 100 units).
func TestQuotaSurvivesKill9(t *testing.T) {
	testkeys.Slow(t, "twenty Caddy processes killed -9")
	path := filepath.Join(t.TempDir(), "keys.json")
	const allowance, crashes, perRun = 10_000, 20, 300
	raw := addQuotaKey(t, filestore.Records{Path: path, MayCreate: true}, "metered", fmt.Sprintf("%d/none", allowance))
	up := newUpstream(t)
	start := func(name string) *testfleet.Caddy {
		c, err := testfleet.LaunchCaddyWith(t, name, "keys_file "+path, up.proxyTo())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := start("run 1")
	l := startLoad(raw, 6, c.URL(), 0)
	for i := range crashes {
		// Kill the server while requests are in flight, once it admitted
		// perRun more.
		goal := int64(i+1) * perRun
		for up.n.Load() < goal {
			if l.count(429) > 0 {
				t.Fatalf("run %d: refused with 429 after %d admitted", i+1, up.n.Load())
			}
			time.Sleep(time.Millisecond)
		}
		if err := c.Cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		c = start(fmt.Sprintf("run %d", i+2))
		l.point(c.URL())
	}
	// The last server spends what is left.
	deadline := time.Now().Add(time.Minute)
	for refused := l.count(429); l.count(429)-refused < 200; {
		if time.Now().After(deadline) {
			t.Fatalf("the last server still admits after a minute: %d admitted", up.n.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.stop()
	admitted := up.n.Load()
	stranded := allowance - admitted
	bound := crashes * quota.Quota{Requests: allowance}.Block()
	t.Logf("%d kill -9: %d admitted of %d, %d stranded (bound %d)", crashes, admitted, allowance, stranded, bound)
	if admitted > allowance {
		t.Fatalf("%d admitted, over the quota of %d", admitted, allowance)
	}
	if stranded > bound {
		t.Fatalf("%d units stranded by %d crashes: more than a block each", stranded, crashes)
	}
}

// Three servers on one redis-server spend one key's quota of 100 000
// units (a route of cost 10: 10 000 requests; with QUOTA_FULL=1, as
// bench/quota.sh runs it, a cost of 1: 100 000 requests), round-robin and
// then all on one, with one server killed -9 midway: never more than the
// quota, and at least 99 % of it once the survivors have spent it.
func TestQuotaFleetWithAKill(t *testing.T) {
	testkeys.Slow(t, "three Caddy processes and a redis-server")
	r := testredis.Start(t)
	rs := redisRecords(t, r, "fleet:")
	const allowance = 100_000
	cost := int64(10)
	if os.Getenv("QUOTA_FULL") != "" {
		cost = 1
	}
	raw := addQuotaKey(t, rs, "metered", fmt.Sprintf("%d/month", allowance))
	up := newUpstream(t)
	block := "redis " + r.URL + " {\n\t\t\tprefix fleet:\n\t\t}\n\t\tcost " + fmt.Sprint(cost)
	fleet := make([]*testfleet.Caddy, 3)
	var wg sync.WaitGroup
	for i := range fleet {
		wg.Go(func() {
			c, err := testfleet.LaunchCaddyWith(t, fmt.Sprintf("#%d", i+1), block, up.proxyTo())
			if err != nil {
				t.Error(err)
				return
			}
			fleet[i] = c
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Round-robin: one load per server.
	loads := make([]*load, 3)
	for i, c := range fleet {
		loads[i] = startLoad(raw, 2, c.URL(), 0)
	}
	for up.n.Load()*cost < allowance/2 {
		time.Sleep(time.Millisecond)
	}
	if err := fleet[2].Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	loads[2].stop()
	// Skewed: what the killed server's client sent goes to #1 now.
	loads[2] = startLoad(raw, 2, fleet[0].URL(), 0)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		before := up.n.Load()
		time.Sleep(500 * time.Millisecond)
		if up.n.Load() == before && loads[0].count(429) > 0 && loads[1].count(429) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the survivors still admit after two minutes: %d admitted", up.n.Load()*cost)
		}
	}
	for _, l := range loads {
		l.stop()
	}
	admitted := up.n.Load() * cost
	t.Logf("3 servers, one killed -9 midway: %d units admitted of %d (%.2f %%)", admitted, allowance, 100*float64(admitted)/allowance)
	if admitted > allowance {
		t.Fatalf("%d units admitted, over the quota of %d", admitted, allowance)
	}
	if admitted < allowance*99/100 {
		t.Fatalf("%d units admitted, under 99 %% of %d", admitted, allowance)
	}
}

// A known mix of requests, one Caddy on a key file: the usage counts
// that the admin API (which first writes what its server has not) and
// caddy apikey usage --json show are what was sent, per key and result.
func TestUsageCountsMatchTraffic(t *testing.T) {
	testkeys.Slow(t, "a Caddy process")
	if now := time.Now().UTC(); now.Truncate(24*time.Hour).Add(24*time.Hour).Sub(now) < time.Minute {
		t.Skip("too close to midnight UTC, when the day's counts and quota start again")
	}
	read := []string{"read"}
	keys := map[string]testkeys.Key{
		"ok":      testkeys.New("ok", map[string]any{"scopes": read}),
		"quota":   testkeys.New("quota", map[string]any{"scopes": read, "quota": map[string]any{"requests": 5, "period": "day"}}),
		"revoked": testkeys.New("revoked", map[string]any{"scopes": read, "revoked_at": "2026-01-01T00:00:00+00:00"}),
		"expired": testkeys.New("expired", map[string]any{"scopes": read, "expires_at": "2026-01-01T00:00:00+00:00"}),
		"noscope": testkeys.New("noscope", nil),
		"limited": testkeys.New("limited", map[string]any{"scopes": read, "rate_limits": []map[string]any{{"requests": 2, "window": "1h"}}}),
	}
	var all []testkeys.Key
	for _, k := range keys {
		all = append(all, k)
	}
	path := testkeys.WriteKeys(t, "", all...)
	up := newUpstream(t)
	c, err := testfleet.LaunchCaddyWith(t, "counts", "keys_file "+path+"\n\t\tscope read", up.proxyTo())
	if err != nil {
		t.Fatal(err)
	}
	send := map[string]int64{"ok": 7, "quota": 8, "revoked": 2, "expired": 3, "noscope": 4, "limited": 5}
	for name, n := range send {
		startLoad(keys[name].Raw, 1, c.URL(), n).wait()
	}
	startLoad("sk_not_a_key_of_this_file", 1, c.URL(), 4).wait() // counted for no key
	want := map[string]map[string]int64{
		"ok":      {"admitted": 7},
		"quota":   {"admitted": 5, "quota_exceeded": 3},
		"revoked": {"revoked": 2},
		"expired": {"expired": 3},
		"noscope": {"insufficient_scope": 4},
		"limited": {"admitted": 2, "rate_limited": 3},
	}
	for name, k := range keys {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/apikey/keys/%s/usage?days=1", c.AdminPort, k.ID()))
		if err != nil {
			t.Fatal(err)
		}
		var viaAdmin keyops.Usage
		err = json.NewDecoder(resp.Body).Decode(&viaAdmin)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: GET usage: %d %v", name, resp.StatusCode, err)
		}
		if !maps.Equal(viaAdmin.Totals, want[name]) {
			t.Errorf("%s: the admin API counts %v, want %v", name, viaAdmin.Totals, want[name])
		}
		out, stderr, err := testkeys.RunCommand(t, "", "usage", k.ID(), "--days", "1", "--json", "--file", path)
		if err != nil {
			t.Fatalf("%s: caddy apikey usage: %v %s", name, err, stderr)
		}
		var viaCLI keyops.Usage
		if err := json.Unmarshal([]byte(out), &viaCLI); err != nil {
			t.Fatalf("%s: usage --json: %v\n%s", name, err, out)
		}
		if !maps.Equal(viaCLI.Totals, want[name]) {
			t.Errorf("%s: caddy apikey usage counts %v, want %v", name, viaCLI.Totals, want[name])
		}
	}
}

// Through the in-process Caddy, a key file whose state file breaks: the
// server spends the block it holds, then refuses the key with 503
// QUOTA_UNAVAILABLE and Retry-After; once the state file is good again,
// the key is admitted at the next sync (asked for here, as a second's
// tick would).
func TestQuotaStateOutageThroughCaddy(t *testing.T) {
	k := testkeys.New("metered", map[string]any{"quota": map[string]any{"requests": 1000, "period": "month"}})
	path := testkeys.WriteKeys(t, "", k)
	loadCaddyfile(t, "apikey "+path+"\n\trespond \"ok\"")
	if resp, _ := do(t, "GET", "/", "Authorization: Bearer "+k.Raw); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	FlushUsage("file:" + path) // its block is taken
	state := path + ".state"
	good, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(state, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	var admitted int
	for i := 0; ; i++ {
		resp, body := do(t, "GET", "/", "Authorization: Bearer "+k.Raw)
		if resp.StatusCode == 200 {
			admitted++
			if admitted > 10 {
				t.Fatalf("%d requests admitted with the state file broken: more than the block of 10 a server holds", admitted)
			}
			continue
		}
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
			t.Fatalf("with the state file broken: %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if code, _ := testkeys.RefusalOf(t, body); code != CodeQuotaUnavailable {
			t.Fatalf("code %q, want QUOTA_UNAVAILABLE", code)
		}
		break
	}
	if err := os.WriteFile(state, good, 0o600); err != nil {
		t.Fatal(err)
	}
	FlushUsage("file:" + path)
	if resp, _ := do(t, "GET", "/", "Authorization: Bearer "+k.Raw); resp.StatusCode != 200 {
		t.Fatalf("once the state file is good again: %d", resp.StatusCode)
	}
}
