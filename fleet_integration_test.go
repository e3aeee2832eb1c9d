package apikey

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The fleet tests run several Caddy processes, built from ./cmd/caddy, on
// one real redis-server: the feature is about several servers.

var (
	caddyBinOnce sync.Once
	caddyBin     string
	caddyBinErr  error
)

// buildCaddy builds ./cmd/caddy once per test binary.
func buildCaddy(t testing.TB) string {
	t.Helper()
	caddyBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "apikey-caddy-")
		if err != nil {
			caddyBinErr = err
			return
		}
		caddyBin = filepath.Join(dir, "caddy")
		if runtime.GOOS == "windows" {
			caddyBin += ".exe"
		}
		out, err := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy").CombinedOutput()
		if err != nil {
			caddyBinErr = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
		}
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBin
}

// fleetCaddy is one Caddy process of a fleet.
type fleetCaddy struct {
	t         testing.TB
	name      string
	adminPort int
	httpPort  int
	dir       string
	config    string
	cmd       *exec.Cmd
	log       *bytes.Buffer
	logMu     *sync.Mutex
}

// fleetCaddyfile is the config of each server: a route protected by the
// Redis key set that answers with the key's id.
func fleetCaddyfile(adminPort, httpPort int, redisBlock string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	default_bind 127.0.0.1
	auto_https off
	persist_config off
}

:%d {
	apikey {
		%s
	}
	respond "ok {http.auth.user.id}"
}
`, adminPort, httpPort, httpPort, redisBlock)
}

// startFleetCaddy starts a Caddy process with the redis subdirective
// redisBlock, and waits until it serves. It is stopped when the test ends.
func startFleetCaddy(t testing.TB, name, redisBlock string) *fleetCaddy {
	t.Helper()
	c, err := launchFleetCaddy(t, name, redisBlock)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// launchFleetCaddy starts a Caddy process; an error if it does not serve
// (its log is in the error).
func launchFleetCaddy(t testing.TB, name, redisBlock string) (*fleetCaddy, error) {
	t.Helper()
	bin := buildCaddy(t)
	c := &fleetCaddy{t: t, name: name, adminPort: freePort(t), httpPort: freePort(t), dir: t.TempDir(), log: new(bytes.Buffer), logMu: new(sync.Mutex)}
	c.config = filepath.Join(c.dir, "Caddyfile")
	if err := os.WriteFile(c.config, []byte(fleetCaddyfile(c.adminPort, c.httpPort, redisBlock)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "run", "--config", c.config, "--adapter", "caddyfile")
	c.cmd.Env = append(os.Environ(), "HOME="+c.dir, "XDG_DATA_HOME="+c.dir, "XDG_CONFIG_HOME="+c.dir)
	w := &lockedWriter{w: c.log, mu: c.logMu}
	c.cmd.Stdout, c.cmd.Stderr = w, w
	dieWithTest(c.cmd)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.cmd.Wait() }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-exited
	})
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("caddy %s exited (%v):\n%s", name, err, c.logs())
		case <-deadline:
			return nil, fmt.Errorf("caddy %s did not serve within 30s:\n%s", name, c.logs())
		case <-time.After(20 * time.Millisecond):
		}
		if resp, err := http.Get(c.url()); err == nil {
			resp.Body.Close()
			return c, nil
		}
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (c *fleetCaddy) logs() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.String()
}

func (c *fleetCaddy) url() string { return fmt.Sprintf("http://127.0.0.1:%d/", c.httpPort) }

// fleetClient opens a connection per request: the tests reload configs
// under load, and a reload closes idle keep-alive connections, which a
// client may be about to reuse (an EOF that is no fault of the server).
var fleetClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// status sends a request with raw as bearer key and returns the status,
// or 0 (the test marked failed) if there is no response. It may be called
// from any goroutine.
func (c *fleetCaddy) status(raw string) int {
	req, _ := http.NewRequest("GET", c.url(), nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := fleetClient.Do(req)
	if err != nil {
		c.t.Errorf("caddy %s: %v", c.name, err)
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// reload loads the config again through the admin API: the old handlers'
// stores write their pending last-used times, which is how the tests flush.
func (c *fleetCaddy) reload() {
	c.t.Helper()
	cfg, err := os.ReadFile(c.config)
	if err != nil {
		c.t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/load", c.adminPort), bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate") // load even if unchanged
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		c.t.Fatalf("reload of caddy %s: %d %s", c.name, resp.StatusCode, body)
	}
}

// usageWrites is the server's count of successful usage writes, from its
// /metrics.
func (c *fleetCaddy) usageWrites() float64 {
	c.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.adminPort))
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	total := 0.0
	for _, m := range families["caddy_apikey_usage_writes_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "result" && l.GetValue() == "ok" {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// underLoad sends requests to every server of fleet, one goroutine each
// running round in a loop, until the returned stop is called (which waits
// for them).
func underLoad(fleet []*fleetCaddy, round func(c *fleetCaddy)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range fleet {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				round(c)
			}
		})
	}
	return func() {
		close(done)
		wg.Wait()
	}
}

// startFleet starts n Caddy servers on r's key set at prefix.
func startFleet(t testing.TB, r *testRedis, n int, extra string) []*fleetCaddy {
	t.Helper()
	fleet := make([]*fleetCaddy, n)
	var wg sync.WaitGroup
	for i := range fleet {
		wg.Go(func() {
			fleet[i] = startFleetCaddy(t, fmt.Sprintf("#%d", i+1), "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t}\n\t\tusage_interval 1s\n\t\t"+extra)
		})
	}
	wg.Wait()
	return fleet
}

// waitAll waits until every server answers raw with status want, and
// returns how long after start the last one did.
func waitAll(t testing.TB, fleet []*fleetCaddy, raw string, want int, start time.Time) time.Duration {
	t.Helper()
	var wg sync.WaitGroup
	var last atomic.Int64
	for _, c := range fleet {
		wg.Go(func() {
			deadline := time.Now().Add(5 * time.Second)
			for st := c.status(raw); st != want; st = c.status(raw) {
				if st == 0 || time.Now().After(deadline) {
					t.Errorf("caddy %s: not %d after 5s", c.name, want)
					return
				}
			}
			d := int64(time.Since(start))
			for {
				cur := last.Load()
				if d <= cur || last.CompareAndSwap(cur, d) {
					break
				}
			}
		})
	}
	wg.Wait()
	return time.Duration(last.Load())
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

func TestFleetSharesOneKeySet(t *testing.T) {
	slowTest(t, "several Caddy processes")
	r := startRedis(t)
	rs := r.records("fleet:")
	first, _ := addRedisKey(t, rs, "first")
	fleet := startFleet(t, r, 3, "")

	for _, c := range fleet {
		if got := c.status(first); got != 200 {
			t.Fatalf("caddy %s: the first key got %d", c.name, got)
		}
	}

	t.Run("add and revoke reach every server", func(t *testing.T) {
		raw, rec := addRedisKey(t, rs, "added")
		waitAll(t, fleet, raw, 200, time.Now())
		if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		waitAll(t, fleet, raw, 403, time.Now())
	})

	t.Run("propagation of 200 changes", func(t *testing.T) {
		var lat []time.Duration
		for i := range 200 {
			if i%2 == 0 {
				raw, _ := addRedisKey(t, rs, fmt.Sprintf("p%d", i))
				lat = append(lat, waitAll(t, fleet, raw, 200, time.Now()))
				continue
			}
			raw, rec := addRedisKey(t, rs, fmt.Sprintf("p%d", i))
			waitAll(t, fleet, raw, 200, time.Now())
			start := time.Now()
			if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err != nil {
				t.Fatal(err)
			}
			lat = append(lat, waitAll(t, fleet, raw, 403, start))
		}
		slices.Sort(lat)
		t.Logf("propagation to all 3 servers over %d changes (ack by Redis to in force, seen by HTTP): p50 %s, p99 %s, max %s",
			len(lat), percentile(lat, 0.5), percentile(lat, 0.99), lat[len(lat)-1])
	})

	t.Run("usage from two servers is merged", func(t *testing.T) {
		raw, rec := addRedisKey(t, rs, "used")
		waitAll(t, fleet, raw, 200, time.Now())
		fleet[0].status(raw)
		fleet[0].reload()
		time.Sleep(1100 * time.Millisecond) // a later use: last-used times are kept to the second
		before := time.Now()
		fleet[1].status(raw)
		fleet[1].reload()
		records, _, err := rs.Read()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(records, func(d keyfile.Record) bool { return d.ID == rec.ID })
		if i < 0 || records[i].LastUsedAt == nil {
			t.Fatalf("no last_used_at for the used key")
		}
		at, _ := keyset.ParseTimestamp(*records[i].LastUsedAt)
		if at.Before(before.Add(-time.Second)) {
			t.Errorf("last_used_at = %s, want the second server's later use (after %s)", at, before)
		}
	})

	t.Run("adds racing usage writes lose nothing and resurrect nothing", func(t *testing.T) {
		var used []string
		for i := range 3 {
			raw, _ := addRedisKey(t, rs, fmt.Sprintf("busy%d", i))
			used = append(used, raw)
		}
		gone, goneRec := addRedisKey(t, rs, "to be deleted")
		waitAll(t, fleet, gone, 200, time.Now())
		for _, c := range fleet {
			c.status(gone)
		}
		stopLoad := underLoad(fleet, func(c *fleetCaddy) {
			for _, raw := range used {
				c.status(raw)
			}
		})
		writesBefore := make([]float64, len(fleet))
		for i, c := range fleet {
			writesBefore[i] = c.usageWrites()
		}
		// Deleted by hand while its uses are pending on every server.
		keys, _ := newRedisKeys("fleet:")
		r.do("HDEL", keys.records, goneRec.ID)
		var added []string
		var mu sync.Mutex
		var adders sync.WaitGroup
		bin := buildCaddy(t)
		for a := range 3 {
			adders.Go(func() {
				for i := range 10 {
					// The command itself, as an operator runs it.
					out, err := exec.Command(bin, "apikey", "add", "--redis", r.URL, "--prefix", "fleet:", "--label", fmt.Sprintf("racer %d/%d", a, i)).Output()
					if err != nil {
						t.Errorf("caddy apikey add: %v", err)
						return
					}
					mu.Lock()
					added = append(added, strings.TrimSpace(string(out)))
					mu.Unlock()
				}
			})
		}
		adders.Wait()
		// Go on until every server has written last-used times during
		// the race (usage_interval 1s: a write a second while in use).
		for i, c := range fleet {
			eventually(t, 10*time.Second, "caddy "+c.name+" wrote no last-used times during the race", func() bool {
				return c.usageWrites() > writesBefore[i]
			})
		}
		stopLoad()
		for _, c := range fleet {
			c.reload() // flushes what is left
		}
		lost := 0
		for _, raw := range added {
			for _, c := range fleet {
				if c.status(raw) != 200 {
					lost++
				}
			}
		}
		resurrected := 0
		if n, _ := r.do("HEXISTS", keys.records, goneRec.ID).AsInt64(); n != 0 {
			resurrected++
		}
		t.Logf("%d adds (caddy apikey add, 3 at a time) racing usage writes from 3 servers: %d lost, %d resurrected", len(added), lost, resurrected)
		if len(added) != 30 || lost != 0 || resurrected != 0 {
			t.Fatalf("lost %d, resurrected %d", lost, resurrected)
		}
	})
}

func TestFleetSurvivesRedisKill(t *testing.T) {
	slowTest(t, "several Caddy processes")
	r := startRedis(t)
	rs := r.records("fleet:")
	good, _ := addRedisKey(t, rs, "good")
	cacheDir := t.TempDir()
	cache := filepath.Join(cacheDir, "cache.json")
	fleet := startFleet(t, r, 3, "")
	// One more, with a cache file, for the start without Redis below.
	cached := startFleetCaddy(t, "cached", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t\tcache_file "+cache+"\n\t\t}")
	eventually(t, 10*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })
	fleet = append(fleet, cached)

	bad, _ := keyops.GenerateKey()
	var ok200, wrong, fivexx, other atomic.Int64
	stopLoad := underLoad(fleet, func(c *fleetCaddy) {
		switch c.status(good) {
		case 200:
			ok200.Add(1)
		case 500, 502, 503, 504:
			fivexx.Add(1)
		default:
			other.Add(1)
		}
		if st := c.status(bad); st == 200 {
			wrong.Add(1)
		} else if st >= 500 {
			fivexx.Add(1)
		}
	})
	time.Sleep(300 * time.Millisecond)
	r.kill()
	time.Sleep(2 * time.Second) // under load with Redis dead
	stopLoad()
	t.Logf("under load with redis-server killed (-9): %d ok, %d 5xx, %d other, %d wrong key admitted", ok200.Load(), fivexx.Load(), other.Load(), wrong.Load())
	if fivexx.Load() != 0 || wrong.Load() != 0 || other.Load() != 0 {
		t.Fatalf("5xx %d, wrong key admitted %d, good key refused %d", fivexx.Load(), wrong.Load(), other.Load())
	}

	outer := t // the server started from the cache serves until the end
	t.Run("start with Redis down", func(t *testing.T) {
		// Without a cache file, the config load fails and names the URL.
		_, err := launchFleetCaddy(t, "no cache", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t}")
		if err == nil || !strings.Contains(err.Error(), r.URL) {
			t.Fatalf("start without Redis and without cache: %v", err)
		}
		// With one, it starts and admits the keys it holds.
		c := startFleetCaddy(outer, "from cache", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t\tcache_file "+cache+"\n\t\t}")
		if got := c.status(good); got != 200 {
			t.Fatalf("started from the cache file: the good key got %d", got)
		}
		if got := c.status(bad); got != 403 {
			t.Fatalf("started from the cache file: a wrong key got %d", got)
		}
		fleet = append(fleet, c)
	})

	// Redis comes back empty (no persistence): the servers keep their
	// keys; the key set is restored from the cache file (an export would
	// do as well), and every server catches up.
	r.start()
	rs = r.records("fleet:")
	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	fresh, _ := addRedisKey(t, rs, "after the restart")
	waitAll(t, fleet, fresh, 200, time.Now())
	for _, c := range fleet {
		if got := c.status(good); got != 200 {
			t.Errorf("caddy %s: the good key got %d after the catch-up", c.name, got)
		}
	}
}

// The key set's records evicted (here deleted, as allkeys-lru would) while
// its version and log remain: a running server keeps admitting its keys; a
// server restarted with a cache file serves from it, one without refuses to
// start, naming the cause; the key set restored from the cache file, every
// server takes a change again.
func TestFleetRecordsGone(t *testing.T) {
	slowTest(t, "several Caddy processes")
	r := startRedis(t)
	rs := r.records("fleet:")
	good, _ := addRedisKey(t, rs, "good")
	cache := filepath.Join(t.TempDir(), "cache.json")
	block := "redis " + r.URL + " {\n\t\t\tprefix fleet:\n\t\t\tcache_file " + cache + "\n\t\t}"
	running := startFleetCaddy(t, "running", block)
	eventually(t, 10*time.Second, "the cache file was not written", func() bool { _, err := os.Stat(cache); return err == nil })

	keys, _ := newRedisKeys("fleet:")
	r.do("DEL", keys.records)
	if got := running.status(good); got != 200 {
		t.Fatalf("the running server: the good key got %d", got)
	}

	restarted := startFleetCaddy(t, "restarted", block)
	if got := restarted.status(good); got != 200 {
		t.Fatalf("the server restarted with a cache file: the good key got %d", got)
	}
	_, err := launchFleetCaddy(t, "no cache", "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t}")
	if err == nil || !strings.Contains(err.Error(), "records are gone") {
		t.Fatalf("a server restarted without a cache file: %v, want a refusal naming the cause", err)
	}
	// Within the follower's next version check (about a second).
	eventually(t, 10*time.Second, "the running server did not say that the records are gone", func() bool {
		return strings.Contains(running.logs(), "records are gone")
	})
	if got := running.status(good); got != 200 {
		t.Fatalf("the running server, once it saw the loss: the good key got %d", got)
	}

	if _, err := keyops.Import(cache, rs, keyops.ImportOptions{Waiting: nil}); err != nil {
		t.Fatal(err)
	}
	fresh, _ := addRedisKey(t, rs, "after the restore")
	waitAll(t, []*fleetCaddy{running, restarted}, fresh, 200, time.Now())
	waitAll(t, []*fleetCaddy{running, restarted}, good, 200, time.Now())
}
