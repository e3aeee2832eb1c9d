package redis

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
)

// A Redis that takes the connection but does not answer (frozen, SIGSTOP):
// the commands, the admin API's record store and a config load give up
// after the connection's time-out, and say so, where they said "context
// deadline exceeded" or "i/o timeout" alone.
func TestRedisTimeoutsSayWhatGaveUp(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis round trips")
	r := testredis.Start(t)
	slow := &testredis.Server{T: t, Port: r.Port, URL: r.URL + "?dial_timeout=1s&write_timeout=1s"}
	rs := records(t, slow, "")
	_, rec := teststores.AddKey(t, rs, "a")
	s, err := openRedisStore(t, slow, "", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(r.Cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(r.Cmd.Process.Pid, syscall.SIGCONT) })

	says := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "Redis did not answer within 1s") {
			t.Errorf("%s: %v, want it to say that Redis did not answer within 1s", what, err)
		}
	}
	_, _, err = rs.Read()
	says("list", err)
	_, _, err = keyops.Revoke(rs, rec.ID, time.Now(), nil)
	says("revoke", err)
	_, _, err = s.Records().Read()
	says("the admin API's list", err)
	_, err = Open(Target{URL: slow.URL, Prefix: ""})
	says("a command's connection", err)
	_, err = openRedisStore(t, slow, "", "", time.Hour)
	says("a config load", err)
}
