package apikey

import (
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// samples are the caddy_apikey_* samples of a scrape, by series (see
// series).
type samples map[string]float64

// series names one series: the metric name and its labels, in the order
// given, e.g. series("caddy_apikey_keys", "store", path, "state", "active").
// Labels are sorted by name, as scrape keys them.
func series(name string, labels ...string) string {
	var pairs []string
	for i := 0; i+1 < len(labels); i += 2 {
		pairs = append(pairs, labels[i]+"="+labels[i+1])
	}
	sort.Strings(pairs)
	return name + "{" + strings.Join(pairs, ",") + "}"
}

// scrape reads the test Caddy's admin endpoint /metrics and returns its
// caddy_apikey_* samples, parsed with Prometheus's own text parser.
func scrape(t *testing.T) samples {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://localhost:%d/metrics", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	s := samples{}
	for name, fam := range families {
		if !strings.HasPrefix(name, "caddy_apikey_") {
			continue
		}
		for _, m := range fam.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName(), l.GetValue())
			}
			var v float64
			switch {
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			default:
				t.Fatalf("%s: neither a counter nor a gauge", name)
			}
			s[series(name, labels...)] = v
		}
	}
	return s
}

// must returns the value of series k, failing the test if it is not on
// /metrics.
func (s samples) must(t *testing.T, k string) float64 {
	t.Helper()
	v, ok := s[k]
	if !ok {
		t.Fatalf("%s is not on /metrics; the caddy_apikey_ series are:\n%s", k, s)
	}
	return v
}

func (s samples) String() string {
	var lines []string
	for k, v := range s {
		lines = append(lines, fmt.Sprintf("  %s %g", k, v))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func requestsSeries(result string) string {
	return series("caddy_apikey_requests_total", "result", result)
}

// TestMetricsRequestResults sends a known mix of requests, each result at
// least once, and checks that requests_total moved by exactly that much for
// each result, on the admin endpoint's /metrics. It then reloads the config
// and checks that the counters kept their values and count once, not twice.
func TestMetricsRequestResults(t *testing.T) {
	// Two scopes, not one: the streamed reader keeps a single scope as a
	// view of its reused buffer (strings.Join of one element does not
	// copy), so later records overwrite it. A bug of its own, reported
	// apart; two scopes are copied.
	good := testkeys.New("good", map[string]any{"scopes": []string{"read", "write"}})
	noScope := testkeys.New("no-scope", nil)
	revoked := testkeys.New("revoked", map[string]any{"revoked_at": "2026-11-26T10:00:00+00:00"})
	expired := testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00+00:00"})
	path := testkeys.WriteKeys(t, "", good, noScope, revoked, expired)
	site := `
	handle /open/* {
		apikey ` + path + ` {
			optional
		}
		respond "open"
	}
	handle /scoped/* {
		apikey ` + path + ` {
			scope read
		}
		respond "scoped"
	}
	handle /formatted/* {
		apikey ` + path + ` {
			key_format acme_live_
		}
		respond "formatted"
	}
	handle {
		apikey ` + path + `
		respond "%s"
	}
`
	loadCaddyfile(t, fmt.Sprintf(site, "first"))

	type call struct {
		path    string
		headers []string
		status  int
	}
	bearer := func(k testkeys.Key) []string { return []string{"Authorization: Bearer " + k.Raw} }
	mix := map[string][]call{
		"ok": {
			{"/", bearer(good), 200},
			{"/?api_key=" + noScope.Raw, nil, 200},
			{"/scoped/x", bearer(good), 200},
			{"/open/x", bearer(good), 200},
			{"/formatted/x", bearer(good), 200}, // a key of the default format, key_format on
		},
		"anonymous": {{"/open/x", nil, 200}, {"/open/y", nil, 200}},
		"missing":   {{"/", nil, 401}, {"/scoped/x", nil, 401}, {"/", []string{"Authorization: Basic Zm9vOmJhcg=="}, 401}},
		"invalid": {
			{"/", []string{"X-API-Key: sk_notakey"}, 403},
			{"/open/x", []string{"X-API-Key: sk_notakey"}, 403},
			{"/", []string{"X-API-Key: acme_live_typo"}, 403}, // without key_format, any key
		},
		"revoked":            {{"/", bearer(revoked), 403}},
		"expired":            {{"/", bearer(expired), 403}, {"/scoped/x", bearer(expired), 403}},
		"insufficient_scope": {{"/scoped/x", bearer(noScope), 403}, {"/scoped/y", bearer(noScope), 403}, {"/scoped/z", bearer(noScope), 403}},
		"ambiguous":          {{"/", []string{"X-API-Key: " + good.Raw, "X-API-Key: " + noScope.Raw}, 400}},
		"malformed":          {{"/formatted/x", []string{"X-API-Key: acme_live_typo"}, 403}},
	}
	send := func() {
		t.Helper()
		for result, calls := range mix {
			for _, c := range calls {
				resp, body := do(t, "GET", c.path, c.headers...)
				if resp.StatusCode != c.status {
					t.Fatalf("%s: GET %s %q: %d %s, want %d", result, c.path, c.headers, resp.StatusCode, body, c.status)
				}
			}
		}
	}
	check := func(before, after samples) {
		t.Helper()
		for _, result := range resultNames {
			k := requestsSeries(result)
			if got, want := after.must(t, k)-before.must(t, k), float64(len(mix[result])); got != want {
				t.Errorf("%s moved by %g, want %g", k, got, want)
			}
		}
	}

	before := scrape(t)
	send()
	after := scrape(t)
	check(before, after)

	// A config reload (four handlers register the collectors again, with
	// the new config's registry): the counters keep their values, and a
	// request is counted once.
	loadCaddyfile(t, fmt.Sprintf(site, "second"))
	if _, body := do(t, "GET", "/", bearer(good)...); body != "second" {
		t.Fatalf("the reloaded config is not in force: %q", body)
	}
	reloaded := scrape(t)
	for _, result := range resultNames {
		k := requestsSeries(result)
		want := after.must(t, k)
		if result == "ok" {
			want++ // the request above
		}
		if got := reloaded.must(t, k); got != want {
			t.Errorf("after a config reload, %s = %g, want %g", k, got, want)
		}
	}
	send()
	check(reloaded, scrape(t))
	if t.Failed() {
		t.Logf("after:\n%s", scrape(t))
	}
}

// TestMetricsStore checks the store-side metrics of a key file: the keys by
// state, reloads on a good and on a broken edit, the last load's time,
// usage writes after a first use, and that the store's series go once no
// config uses it.
func TestMetricsStore(t *testing.T) {
	a, b := testkeys.New("a", nil), testkeys.New("b", map[string]any{"expires_at": "2099-01-01T00:00:00Z"})
	expired := testkeys.New("expired", map[string]any{"expires_at": "2020-01-01T00:00:00Z"})
	revoked1 := testkeys.New("revoked", map[string]any{"revoked_at": "2026-11-26T10:00:00Z"})
	revoked2 := testkeys.New("revoked and expired", map[string]any{"revoked_at": "2026-11-26T10:00:00Z", "expires_at": "2020-01-01T00:00:00Z"})
	path := testkeys.WriteKeys(t, "", a, b, expired, revoked1, revoked2)
	store := []string{"store", path}
	keysSeries := func(state string) string { return series("caddy_apikey_keys", append(store, "state", state)...) }
	reloadsSeries := func(result string) string {
		return series("caddy_apikey_reloads_total", append(store, "result", result)...)
	}
	writesSeries := func(result string) string {
		return series("caddy_apikey_usage_writes_total", append(store, "result", result)...)
	}
	lastLoad := series("caddy_apikey_last_load_timestamp_seconds", store...)
	sourceBroken := series("caddy_apikey_source_broken", store...)
	checkKeys := func(s samples, active, expired, revoked float64) {
		t.Helper()
		for state, want := range map[string]float64{"active": active, "expired": expired, "revoked": revoked} {
			if got := s.must(t, keysSeries(state)); got != want {
				t.Errorf("%s = %g, want %g", keysSeries(state), got, want)
			}
		}
	}

	loadStart := time.Now()
	loadCaddyfile(t, `
	apikey `+path+` {
		usage_interval 1s
		reload_interval 100ms
	}
	respond "ok"
`)
	s := scrape(t)
	checkKeys(s, 2, 1, 2)
	if got := s.must(t, reloadsSeries("ok")); got != 1 {
		t.Errorf("%s = %g after the first load, want 1", reloadsSeries("ok"), got)
	}
	if got := s.must(t, reloadsSeries("error")); got != 0 {
		t.Errorf("%s = %g after the first load, want 0", reloadsSeries("error"), got)
	}
	if got := s.must(t, lastLoad); got < float64(loadStart.Unix()) || got > float64(time.Now().Unix()+1) {
		t.Errorf("%s = %g, want the time of the config load, %d", lastLoad, got, loadStart.Unix())
	}
	if got := s.must(t, writesSeries("ok")) + s.must(t, writesSeries("error")); got != 0 {
		t.Errorf("usage writes before any use: %g", got)
	}
	if got := s.must(t, sourceBroken); got != 0 {
		t.Errorf("%s = %g after a good first load, want 0", sourceBroken, got)
	}

	// A first use: one usage write, within maxFlushPeriod.
	if got := statusWith(t, a.Raw); got != 200 {
		t.Fatalf("a: %d", got)
	}
	testkeys.WaitFor(t, 10*time.Second, "the first use to be written", func() bool { return scrape(t)[writesSeries("ok")] == 1 })

	// A good edit: reloads ok moves by one, the keys and the last load
	// follow it.
	s = scrape(t)
	editStart := time.Now()
	testkeys.WriteKeys(t, path, a, expired)
	testkeys.WaitFor(t, 10*time.Second, "the good edit to be loaded", func() bool {
		return scrape(t)[reloadsSeries("ok")] == s[reloadsSeries("ok")]+1
	})
	s = scrape(t)
	checkKeys(s, 1, 1, 0)
	if got := s.must(t, lastLoad); got < float64(editStart.Unix()) {
		t.Errorf("%s = %g, want the time of the edit's load, %d or later", lastLoad, got, editStart.Unix())
	}

	// A broken edit: reloads error moves by one, once however long it
	// stays broken; the keys in force and their counts stay.
	if err := os.WriteFile(path, []byte(`{"api_keys": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	testkeys.WaitFor(t, 10*time.Second, "the broken edit to be counted", func() bool {
		return scrape(t)[reloadsSeries("error")] == s[reloadsSeries("error")]+1
	})
	if got := statusWith(t, a.Raw); got != 200 {
		t.Fatalf("a, with the key file broken: %d", got)
	}
	time.Sleep(500 * time.Millisecond) // five more checks of the broken file
	broken := scrape(t)
	if got := broken.must(t, reloadsSeries("error")); got != s[reloadsSeries("error")]+1 {
		t.Errorf("%s = %g: a broken version is counted more than once", reloadsSeries("error"), got)
	}
	if got := broken.must(t, reloadsSeries("ok")); got != s[reloadsSeries("ok")] {
		t.Errorf("%s moved on a broken edit: %g", reloadsSeries("ok"), got)
	}
	checkKeys(broken, 1, 1, 0)
	// The gauge says it is broken for as long as it is.
	if got := broken.must(t, sourceBroken); got != 1 {
		t.Errorf("%s = %g with the key file broken, want 1", sourceBroken, got)
	}

	// Repair it, then unload the config: the store goes, and so do its
	// series.
	testkeys.WriteKeys(t, path, a)
	testkeys.WaitFor(t, 10*time.Second, "the repaired file to be loaded", func() bool {
		return scrape(t)[reloadsSeries("ok")] == s[reloadsSeries("ok")]+1
	})
	if got := scrape(t).must(t, sourceBroken); got != 0 {
		t.Errorf("%s = %g once the key file is repaired, want 0", sourceBroken, got)
	}
	if msg := loadConfigError(t, fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n}\n", adminPort)); msg != "" {
		t.Fatalf("unloading the config: %s", msg)
	}
	for k := range scrape(t) {
		if strings.Contains(k, "store="+path) {
			t.Errorf("%s is still on /metrics once no config uses the store", k)
		}
	}
}

// A Redis store's metrics: its keys by state, its loads (the first read and
// each change from the log), its usage writes, and the time of its last
// sync, which a quiet log's version check moves on.
func TestMetricsRedisStore(t *testing.T) {
	r := testredis.Start(t)
	rs := redisRecords(t, r, "met:")
	raw, rec := teststores.AddKey(t, rs, "a")
	loadCaddyfile(t, `
	apikey {
		redis `+r.URL+` {
			prefix met:
		}
		usage_interval 1s
	}
	respond "ok"
`)
	store := []string{"store", "redis:" + r.URL + "#met:"}
	keys := func(state string) string { return series("caddy_apikey_keys", append(store, "state", state)...) }
	reloadsOK := series("caddy_apikey_reloads_total", append(store, "result", "ok")...)
	writesOK := series("caddy_apikey_usage_writes_total", append(store, "result", "ok")...)
	lastSync := series("caddy_apikey_last_sync_timestamp_seconds", store...)

	s := scrape(t)
	if got := s.must(t, keys("active")); got != 1 {
		t.Errorf("active keys = %g, want 1", got)
	}
	loads, synced := s.must(t, reloadsOK), s.must(t, lastSync)

	if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err != nil {
		t.Fatal(err)
	}
	testkeys.WaitFor(t, 5*time.Second, "the revocation to reach the server through the log", func() bool {
		resp, _ := do(t, "GET", "/", "Authorization: Bearer "+raw)
		return resp.StatusCode == 403
	})
	s = scrape(t)
	if got := s.must(t, keys("revoked")); got != 1 {
		t.Errorf("revoked keys = %g, want 1", got)
	}
	if got := s.must(t, reloadsOK); got != loads+1 {
		t.Errorf("%s = %g, want %g (one change applied)", reloadsOK, got, loads+1)
	}
	if got := s.must(t, lastSync); got <= synced {
		t.Errorf("%s did not move after a change (%g, was %g)", lastSync, got, synced)
	}

	raw2, _ := teststores.AddKey(t, rs, "b")
	testkeys.WaitFor(t, 5*time.Second, "the new key to reach the server through the log", func() bool {
		resp, _ := do(t, "GET", "/", "Authorization: Bearer "+raw2)
		return resp.StatusCode == 200
	})
	testkeys.WaitFor(t, 10*time.Second, "the first use to be written to Redis", func() bool { return scrape(t)[writesOK] >= 1 })
}
