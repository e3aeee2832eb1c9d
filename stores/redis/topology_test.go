package redis

import (
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"go.uber.org/zap"
)

// openLoggedRedisStore opens a live store on the key set at prefix of the
// Redis at url, as openRedisStore does, logging to logger; it is stopped
// when the test ends.
func openTopologyStore(t testing.TB, url, prefix string, logger *zap.Logger) *live.Set {
	t.Helper()
	opt, shown, err := parseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := keyspace.New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	s := newLiveSet(opt, shown, keys, "")
	s.Logger = logger
	s.Leases().Add(storecore.Settings{Usage: storecore.Interval{Every: time.Hour}, Reload: storecore.Interval{Off: true}})
	if err := s.Open(); err != nil {
		t.Fatalf("open: %v", err)
	}
	s.Start()
	t.Cleanup(func() { _ = s.Destruct() })
	return s
}

// redisCLI runs `caddy apikey <args> --redis url --prefix prefix` as the
// command line does (in this process), and returns its stdout and stderr;
// the test fails if the command does.
func redisCLI(t *testing.T, url, prefix string, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := testkeys.RunCommand(t, "", append(args, "--redis", url, "--prefix", prefix)...)
	if err != nil {
		t.Fatalf("caddy apikey %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr
}
