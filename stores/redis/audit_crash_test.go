package redis

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// auditWriterEnv names, for a child process of TestRedisAuditSurvivesKill,
// the Redis URL, prefix and key id (space-separated) whose rate limit it
// changes until it is killed.
const auditWriterEnv = "APIKEY_TEST_REDIS_AUDIT_WRITER"

func TestMain(m *testing.M) {
	if arg := os.Getenv(auditWriterEnv); arg != "" {
		f := strings.Fields(arg)
		rs, err := Open(Target{URL: f[0], Prefix: f[1]})
		if err != nil {
			os.Exit(2)
		}
		st := stores.By(rs, audit.Command())
		for n := int64(1); ; n++ {
			if _, _, err := keyops.SetRateLimits(st, f[2], []keyset.RateLimit{{Requests: n, Window: "1m"}}, nil); err != nil {
				os.Exit(3)
			}
		}
	}
	flag.Parse()
	os.Exit(m.Run())
}

// A writer killed (kill -9) in the middle of its changes: the audit stream
// holds exactly one entry per change the key set holds, in order: entry
// and change are one script.
func TestRedisAuditSurvivesKill(t *testing.T) {
	testkeys.Slow(t, "a child process making changes until it is killed")
	r := testredis.Start(t)
	rs := records(t, r, "audkill:")
	_, rec := teststores.AddKey(t, rs, "crash")
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s audkill: %s", auditWriterEnv, r.URL, rec.ID))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testredis.Eventually(t, 30*time.Second, "200 changes", func() bool {
		n, _ := r.Do("XLEN", rs.keys.Audit).AsInt64()
		return n > 200
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	records, _, err := rs.Read()
	if err != nil || len(records) != 1 || len(records[0].RateLimits) != 1 {
		t.Fatalf("%+v %v", records, err)
	}
	held := records[0].RateLimits[0].Requests
	entries := readAudit(t, rs, audit.Filter{Key: rec.ID})
	// The add, then one entry per change.
	if int64(len(entries)) != held+1 {
		t.Fatalf("%d entries for the add and %d changes", len(entries), held)
	}
	for i, e := range entries[1:] {
		if e.Action != audit.RateLimits || !strings.Contains(fmt.Sprint(e.Changes["rate_limits"]), fmt.Sprintf("requests:%d ", i+1)) {
			t.Fatalf("entry %d: %+v", i+1, e)
		}
	}
	t.Logf("killed after %d changes; %d entries", held, len(entries))
}
