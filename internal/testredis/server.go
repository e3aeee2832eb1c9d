// Package testredis starts real redis-server and redis-sentinel processes
// (the Debian packages) on free loopback ports for the tests: one server,
// a primary with a replica watched by three Sentinels, or a Cluster. A
// test that needs one fails, never skips, when it cannot start: .ci/test
// installs both programs.
package testredis

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// Server is a real redis-server (the Debian package), started on a free
// loopback port for one test and stopped when it ends.
type Server struct {
	T    testing.TB
	Port int
	Dir  string
	Cmd  *exec.Cmd
	URL  string
}

// Start starts a redis-server without persistence. A test that needs
// Redis fails, not skips, when it cannot start one: .ci/run installs it.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server is not installed (apt-get install -y redis-server; .ci/run does it): %v", err)
	}
	r := &Server{T: t, Port: FreePort(t), Dir: t.TempDir()}
	r.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", r.Port)
	r.Restart()
	t.Cleanup(r.Kill)
	return r
}

// FreePort returns a loopback TCP port that nothing listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Restart runs redis-server on r's port and waits until it answers.
func (r *Server) Restart() {
	r.T.Helper()
	r.Cmd = exec.Command("redis-server", "--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.Dir, "--logfile", filepath.Join(r.Dir, "redis.Log"))
	DieWithTest(r.Cmd)
	if err := r.Cmd.Start(); err != nil {
		r.T.Fatalf("starting redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", r.Port))
		if err == nil {
			fmt.Fprintf(c, "PING\r\n")
			buf := make([]byte, 7)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := io.ReadFull(c, buf)
			c.Close()
			if string(buf[:n]) == "+PONG\r\n" {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(r.Dir, "redis.Log"))
			r.T.Fatalf("redis-server on port %d did not answer within 10s: %v\n%s", r.Port, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops redis-server at once (SIGKILL), as a crash would.
func (r *Server) Kill() {
	if r.Cmd != nil && r.Cmd.Process != nil {
		_ = r.Cmd.Process.Kill()
		_ = r.Cmd.Wait()
		r.Cmd = nil
	}
}

// Client is a rueidis client for the test's own calls.
func (r *Server) Client() rueidis.Client {
	r.T.Helper()
	opt, err := rueidis.ParseURL(r.URL)
	if err != nil {
		r.T.Fatal(err)
	}
	opt.DisableCache, opt.DisableRetry = true, true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		r.T.Fatal(err)
	}
	r.T.Cleanup(c.Close)
	return c
}

// Do runs a Redis command for the test.
func (r *Server) Do(args ...string) rueidis.RedisResult {
	r.T.Helper()
	c := r.Client()
	return c.Do(context.Background(), c.B().Arbitrary(args...).Build())
}

// Eventually polls cond until it holds, failing the test after timeout.
// Changes reach a store through a blocking read: this waits for delivery,
// not for an interval.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// AtURL is a Server holding only a URL (a Sentinel's or a Cluster's), for
// the helpers that need nothing else.
func AtURL(t testing.TB, url string) *Server { return &Server{T: t, URL: url} }
