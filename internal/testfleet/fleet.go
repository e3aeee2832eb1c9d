// Package testfleet runs a fleet of Caddy processes for the tests: Caddy
// built with this plugin (cmd/caddy), each server on its own free loopback
// ports with its own home folder, serving one route guarded by a Redis
// key set, and stopped when the test ends.
package testfleet

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var (
	caddyBinOnce sync.Once
	caddyBin     string
	caddyBinErr  error

	// buildEnv is the environment the test binary started with, taken
	// before any TestMain can change it: the root package's moves HOME
	// into a temporary folder, and a go command run there would find
	// neither the build cache nor the module cache (GOCACHE and GOPATH
	// default to folders in HOME), building all of Caddy from nothing
	// into that folder on every run.
	buildEnv = os.Environ()
)

// Build builds ./cmd/caddy once per test binary, or, where the test
// binaries of one `go test` run can share it (sharedBuild), once per run:
// they run at the same time, and two builds of Caddy on a 2-core machine
// cost a minute.
func Build(t testing.TB) string {
	t.Helper()
	caddyBinOnce.Do(func() {
		dir, unlock, err := sharedBuild()
		if err != nil {
			caddyBinErr = err
			return
		}
		defer unlock()
		caddyBin = filepath.Join(dir, "caddy")
		if runtime.GOOS == "windows" {
			caddyBin += ".exe"
		}
		done := caddyBin + ".built"
		if _, err := os.Stat(done); err == nil {
			return // built by another test binary of this run
		}
		build := exec.Command("go", "build", "-o", caddyBin, "github.com/caddy-apikey/caddy-apikey/cmd/caddy")
		build.Env = buildEnv
		out, err := build.CombinedOutput()
		if err != nil {
			caddyBinErr = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
			return
		}
		caddyBinErr = os.WriteFile(done, nil, 0o600)
	})
	if caddyBinErr != nil {
		t.Fatal(caddyBinErr)
	}
	return caddyBin
}

// Caddy is one Caddy process of a fleet.
type Caddy struct {
	t         testing.TB
	Name      string
	AdminPort int
	HTTPPort  int
	Dir       string
	Config    string
	Cmd       *exec.Cmd
	log       *bytes.Buffer
	logMu     *sync.Mutex
}

// Caddyfile is the config of each server: a route protected by the
// Redis key set that answers with the key's id.
func Caddyfile(adminPort, httpPort int, redisBlock string) string {
	return CaddyfileWith(adminPort, httpPort, redisBlock, `respond "ok {http.auth.user.id}"`)
}

// CaddyfileWith is Caddyfile with then, instead of the respond, after
// apikey (e.g. a reverse_proxy).
func CaddyfileWith(adminPort, httpPort int, apikeyBlock, then string) string {
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
	%s
}
`, adminPort, httpPort, httpPort, apikeyBlock, then)
}

// StartCaddy starts a Caddy process with the redis subdirective
// redisBlock, and waits until it serves. It is stopped when the test ends.
func StartCaddy(t testing.TB, name, redisBlock string) *Caddy {
	t.Helper()
	c, err := LaunchCaddy(t, name, redisBlock)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// LaunchCaddy starts a Caddy process; an error if it does not serve
// (its log is in the error).
func LaunchCaddy(t testing.TB, name, redisBlock string) (*Caddy, error) {
	t.Helper()
	return LaunchCaddyWith(t, name, redisBlock, `respond "ok {http.auth.user.id}"`)
}

// LaunchCaddyWith is LaunchCaddy with then after apikey (see
// CaddyfileWith).
func LaunchCaddyWith(t testing.TB, name, apikeyBlock, then string) (*Caddy, error) {
	t.Helper()
	bin := Build(t)
	c := &Caddy{t: t, Name: name, AdminPort: testredis.FreePort(t), HTTPPort: testredis.FreePort(t), Dir: t.TempDir(), log: new(bytes.Buffer), logMu: new(sync.Mutex)}
	c.Config = filepath.Join(c.Dir, "Caddyfile")
	if err := os.WriteFile(c.Config, []byte(CaddyfileWith(c.AdminPort, c.HTTPPort, apikeyBlock, then)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Cmd = exec.Command(bin, "run", "--config", c.Config, "--adapter", "caddyfile")
	c.Cmd.Env = append(os.Environ(), "HOME="+c.Dir, "XDG_DATA_HOME="+c.Dir, "XDG_CONFIG_HOME="+c.Dir)
	w := &lockedWriter{w: c.log, mu: c.logMu}
	c.Cmd.Stdout, c.Cmd.Stderr = w, w
	testredis.DieWithTest(c.Cmd)
	if err := c.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Cmd.Wait() }()
	t.Cleanup(func() {
		_ = c.Cmd.Process.Kill()
		<-exited
	})
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("caddy %s exited (%v):\n%s", name, err, c.Logs())
		case <-deadline:
			return nil, fmt.Errorf("caddy %s did not serve within 30s:\n%s", name, c.Logs())
		case <-time.After(20 * time.Millisecond):
		}
		if resp, err := http.Get(c.URL()); err == nil {
			resp.Body.Close()
			return c, nil
		}
	}
}

// lockedWriter is a writer shared by a process's stdout and stderr.
type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Logs is what the server printed so far.
func (c *Caddy) Logs() string {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return c.log.String()
}

// URL is the address of the server's route.
func (c *Caddy) URL() string { return fmt.Sprintf("http://127.0.0.1:%d/", c.HTTPPort) }

// fleetClient opens a connection per request: the tests reload configs
// under load, and a reload closes idle keep-alive connections, which a
// client may be about to reuse (an EOF that is no fault of the server).
var fleetClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Status sends a request with raw as bearer key and returns the status,
// or 0 (the test marked failed) if there is no response. It may be called
// from any goroutine.
func (c *Caddy) Status(raw string) int {
	req, _ := http.NewRequest("GET", c.URL(), nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := fleetClient.Do(req)
	if err != nil {
		c.t.Errorf("caddy %s: %v", c.Name, err)
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// Reload loads the config again through the admin API: the old handlers'
// stores write their pending last-used times, which is how the tests flush.
func (c *Caddy) Reload() {
	c.t.Helper()
	cfg, err := os.ReadFile(c.Config)
	if err != nil {
		c.t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", fmt.Sprintf("http://127.0.0.1:%d/load", c.AdminPort), bytes.NewReader(cfg))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate") // load even if unchanged
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		c.t.Fatalf("reload of caddy %s: %d %s", c.Name, resp.StatusCode, body)
	}
}

// UsageWrites is the server's count of successful usage writes, from its
// /metrics.
func (c *Caddy) UsageWrites() float64 {
	c.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.AdminPort))
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

// UnderLoad sends requests to every server of fleet, one goroutine each
// running round in a loop, until the returned stop is called (which waits
// for them).
func UnderLoad(fleet []*Caddy, round func(c *Caddy)) (stop func()) {
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

// Start starts n Caddy servers on r's key set at prefix.
func Start(t testing.TB, r *testredis.Server, n int, extra string) []*Caddy {
	t.Helper()
	fleet := make([]*Caddy, n)
	var wg sync.WaitGroup
	for i := range fleet {
		wg.Go(func() {
			fleet[i] = StartCaddy(t, fmt.Sprintf("#%d", i+1), "redis "+r.URL+" {\n\t\t\tprefix fleet:\n\t\t}\n\t\tusage_interval 1s\n\t\t"+extra)
		})
	}
	wg.Wait()
	return fleet
}

// WaitAll waits until every server answers raw with status want, and
// returns how long after start the last one did.
func WaitAll(t testing.TB, fleet []*Caddy, raw string, want int, start time.Time) time.Duration {
	t.Helper()
	var wg sync.WaitGroup
	var last atomic.Int64
	for _, c := range fleet {
		wg.Go(func() {
			deadline := time.Now().Add(5 * time.Second)
			for st := c.Status(raw); st != want; st = c.Status(raw) {
				if st == 0 || time.Now().After(deadline) {
					t.Errorf("caddy %s: not %d after 5s", c.Name, want)
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

// Percentile is the p-quantile (0..1) of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}
