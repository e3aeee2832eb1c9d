package apikey

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyops"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A fleet on a Sentinel-watched Redis: three Caddy servers follow one key
// set through the Sentinel URL (with the password from the environment);
// the primary is killed (-9) under traffic.
// Every request is answered from memory meanwhile, and a key revoked by
// the command after the failover is refused by every server within 5s.
func TestRedisSentinelFailoverUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis, three Sentinels and three Caddy servers, and waits for a failover")
	}
	// As in production: Redis requires a password, which the Caddyfile
	// takes from the environment.
	const password = "sentinel-test-secret"
	t.Setenv("APIKEY_TEST_REDIS_PASSWORD", password)
	s := startSentinelSetup(t, password, "", "")
	stdout, _ := redisCLI(t, s.URL, "fleet:", "add", "--create", "--label", "good")
	good := strings.TrimSpace(stdout)
	stdout, _ = redisCLI(t, s.URL, "fleet:", "add", "--label", "doomed")
	doomed := strings.TrimSpace(stdout)
	configured := strings.Replace(s.URL, ":"+password+"@", ":{env.APIKEY_TEST_REDIS_PASSWORD}@", 1)
	fleet := startFleet(t, topologyURL(t, configured), 3, "")
	waitAll(t, fleet, doomed, 200, time.Now())

	wrong, _ := keyops.GenerateKey()
	var ok200, refused, fivexx, admittedWrong atomic.Int64
	stopLoad := underLoad(fleet, func(c *fleetCaddy) {
		switch st := c.status(good); {
		case st == 200:
			ok200.Add(1)
		case st >= 500:
			fivexx.Add(1)
		default:
			refused.Add(1)
		}
		if st := c.status(wrong); st == 200 {
			admittedWrong.Add(1)
		} else if st >= 500 {
			fivexx.Add(1)
		}
	})
	stopped := false
	defer func() {
		if !stopped {
			stopLoad()
		}
	}()
	waitUntil(t, 5*time.Second, "no request answered before the kill", func() bool { return ok200.Load() > 0 }, nil)

	before := ok200.Load()
	s.primary.kill()
	// A command while no primary answers: a prompt error that names the
	// key set's URL, without its password (or, on a machine slow enough
	// for the failover to be done already, success).
	start := time.Now()
	_, stderr, err := apikeyCommand(t, "", "add", "--label", "during the failover", "--redis", s.URL, "--prefix", "fleet:")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a command during the failover took %s", took)
	}
	if shown := redactURL(s.URL); err != nil && (!strings.Contains(stderr, shown) || strings.Contains(stderr, password)) {
		t.Errorf("a command during the failover said %q; want an error naming %s", stderr, shown)
	}
	failover := s.waitFailover(t)
	during := ok200.Load() - before

	start = time.Now()
	stdout, _ = redisCLI(t, s.URL, "fleet:", "revoke", doomed[:11])
	if !strings.Contains(stdout, "Revoked") {
		t.Fatalf("revoke after the failover: %q", stdout)
	}
	inForce := waitAll(t, fleet, doomed, 403, start)
	if inForce > 5*time.Second {
		t.Errorf("the revoke made after the failover took %s to be in force everywhere, want ≤ 5s", inForce)
	}
	stdout, _ = redisCLI(t, s.URL, "fleet:", "add", "--label", "after the failover")
	fresh := strings.TrimSpace(stdout)
	added := waitAll(t, fleet, fresh, 200, time.Now())

	stopLoad()
	stopped = true
	t.Logf("a command during the failover: %v", strings.TrimSpace(stderr))
	t.Logf("Sentinel failover (down-after 1s) took %s after kill -9 of the primary; %d requests answered 200 meanwhile; "+
		"a revoke made after it was in force on all 3 servers in %s, an add in %s; in all %d ok, %d refused, %d 5xx, %d wrong key admitted",
		failover.Round(time.Millisecond), during, inForce.Round(time.Millisecond), added.Round(time.Millisecond),
		ok200.Load(), refused.Load(), fivexx.Load(), admittedWrong.Load())
	if refused.Load() != 0 || fivexx.Load() != 0 || admittedWrong.Load() != 0 {
		t.Fatalf("under the failover: the good key refused %d times, %d 5xx, a wrong key admitted %d times",
			refused.Load(), fivexx.Load(), admittedWrong.Load())
	}
	if during == 0 {
		t.Fatal("no request was answered during the failover")
	}
	for _, c := range fleet {
		if logs := c.logs(); strings.Contains(logs, password) {
			t.Errorf("caddy %s logged the Redis password:\n%s", c.name, logs)
		}
	}
}

// What Redis's asynchronous replication can lose: a revoke acknowledged by
// the primary but not yet on the replica is gone once the replica is
// promoted. The servers that had put it in force see the key set's version
// go back, say so, read the key set whole and agree with the new primary
// (the key is admitted again, everywhere alike); the operator revokes it
// again, through the same Sentinel URL.
func TestRedisSentinelFailoverCanLoseAChange(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and three Sentinels, and waits for a failover")
	}
	// The replica replicates as the user "repl", which the test deletes
	// on the primary to cut replication before the change it loses.
	s := startSentinelSetup(t, "", "user repl on >replpass ~* &* +@all\n", "masteruser repl\nmasterauth replpass\n")
	rs := topologyURL(t, s.URL).records("")
	rawA, _ := addRedisKey(t, rs, "a")
	rawB, recB := addRedisKey(t, rs, "b")

	core, logs := observer.New(zapcore.InfoLevel)
	stores := []*redisKeyStore{
		openTopologyStore(t, s.URL, "", zap.New(core)),
		openTopologyStore(t, s.URL, "", zap.New(core)),
	}
	keys, _ := newRedisKeys("")
	replicated := s.primary.version(keys)
	waitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return s.replica.version(keys) == replicated }, nil)

	// Replication stops; the revoke is acknowledged by the primary alone.
	if err := s.primary.do("ACL", "DELUSER", "repl").Error(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the replica is still connected", func() bool {
		return s.primary.info("replication")["connected_slaves"] == "0"
	}, nil)
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	for i, st := range stores {
		eventually(t, time.Second, fmt.Sprintf("store %d did not put the revoke in force", i), func() bool { return !admits(st, rawB) })
	}
	if got := s.replica.version(keys); got != replicated {
		t.Fatalf("the replica is at version %d, want %d (without the revoke)", got, replicated)
	}

	s.primary.kill()
	failover := s.waitFailover(t)
	start := time.Now()
	for i, st := range stores {
		eventually(t, 5*time.Second, fmt.Sprintf("store %d does not agree with the new primary", i), func() bool {
			return admits(st, rawB)
		})
	}
	agreed := time.Since(start)
	if n := logs.FilterMessageSnippet("version went back").Len(); n != len(stores) {
		t.Errorf("%d warnings that the version went back, want one per store:\n%v", n, logs.All())
	}
	for i, st := range stores {
		if !admits(st, rawA) {
			t.Errorf("store %d lost a key that was replicated", i)
		}
	}

	// The operator re-checks the revocations made before the failover.
	start = time.Now()
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke again: %v", err)
	}
	for i, st := range stores {
		eventually(t, 5*time.Second, fmt.Sprintf("store %d does not refuse the key revoked again", i), func() bool { return !admits(st, rawB) })
	}
	t.Logf("failover took %s; the stores went back to the new primary's key set %s after it (the unreplicated revoke lost); revoked again, in force in %s",
		failover.Round(time.Millisecond), agreed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// The guard Redis itself offers against such losses, as the docs advise
// it: with min-replicas-to-write 1, a primary that no replica follows
// refuses writes, so a revoke that could be lost is refused, and the
// command says why, instead of being acknowledged; once the replica is
// back, it goes through.
func TestRedisMinReplicasRefusesUnreplicatedChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis primary and a replica")
	}
	primary := startRedisNode(t, "redis-server", "user repl on >replpass ~* &* +@all\nmin-replicas-to-write 1\nmin-replicas-max-lag 10\n")
	replica := startRedisNode(t, "redis-server", fmt.Sprintf("replicaof 127.0.0.1 %d\nmasteruser repl\nmasterauth replpass\n", primary.port))
	waitUntil(t, 10*time.Second, "the replica is not in sync", func() bool { return caughtUp(primary, replica) }, replica.log)
	url := "redis://" + primary.addr() + "/0"
	stdout, _ := redisCLI(t, url, "", "add", "--create", "--label", "a")
	raw := strings.TrimSpace(stdout)
	s := mustOpenRedisStore(t, topologyURL(t, url), "")

	if err := primary.do("ACL", "DELUSER", "repl").Error(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the replica is still connected", func() bool {
		return primary.info("replication")["connected_slaves"] == "0"
	}, nil)
	_, stderr, err := apikeyCommand(t, "", "revoke", raw[:11], "--redis", url)
	if err == nil || !strings.Contains(stderr, "NOREPLICAS") {
		t.Fatalf("revoke with no replica following: %v\n%s", err, stderr)
	}
	if !admits(s, raw) {
		t.Fatal("the refused revoke is in force")
	}

	if err := primary.do("ACL", "SETUSER", "repl", "on", ">replpass", "~*", "&*", "+@all").Error(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the replica did not come back", func() bool {
		return primary.info("replication")["min_slaves_good_slaves"] == "1"
	}, replica.log)
	redisCLI(t, url, "", "revoke", raw[:11])
	eventually(t, time.Second, "the revoke is not in force", func() bool { return !admits(s, raw) })
	t.Logf("with no replica following, the command said: %s", strings.TrimSpace(stderr))
}

// A switchover (SENTINEL FAILOVER, as for maintenance): the old primary
// lives on, as a replica. A running store's writes, through the admin
// API's record store and the usage writer, go to the new primary, and its
// follower follows the key set there.
func TestRedisSentinelSwitchover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and three Sentinels, and waits for a switchover")
	}
	s := startSentinelSetup(t, "", "", "")
	rs := topologyURL(t, s.URL).records("")
	raw, rec := addRedisKey(t, rs, "a")
	st := mustOpenRedisStore(t, topologyURL(t, s.URL), "")
	if err := s.sentinels[0].do("SENTINEL", "FAILOVER", sentinelMasterSet).Error(); err != nil {
		t.Fatal(err)
	}
	keys, _ := newRedisKeys("")
	version := s.primary.version(keys)
	switchover := s.waitFailover(t)

	// The old primary may not know yet that it is one no more: a write
	// that went to it would be lost when it becomes a replica.
	start := time.Now()
	if _, _, err := keyops.Revoke(st.Records(), rec.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke through the store's record store after the switchover: %v", err)
	}
	if got := s.replica.version(keys); got != version+1 {
		t.Fatalf("the new primary is at version %d after the revoke, want %d", got, version+1)
	}
	eventually(t, 5*time.Second, "the revoke is not in force", func() bool { return !admits(st, raw) })
	inForce := time.Since(start)

	k, sum := st.keys.Load().Lookup(raw)
	st.usage.Mark(k, sum, time.Now().UnixNano())
	st.askFlush()
	if st.writes.Load() != 1 {
		t.Fatal("the usage write after the switchover failed")
	}
	if n, err := s.replica.do("HLEN", keys.used).AsInt64(); err != nil || n != 1 {
		t.Errorf("the new primary holds %d last-used times (%v), want 1", n, err)
	}
	t.Logf("switchover took %s; a revoke through the running store's record store was in force %s after it",
		switchover.Round(time.Millisecond), inForce.Round(time.Millisecond))
}

// A failover between two primaries whose clocks differ: the old primary's
// log entries carry ids from its clock, ahead of the new one's (here by an
// hour, for a test that cannot move a clock). A server that applied a change
// lost in the failover follows the log from past the new primary's next
// entry; when exactly one change is made after the failover, the versions
// match again, and a server that compared only the version kept the lost
// change and missed the new one. The log's last entry tells them apart.
func TestRedisSentinelFailoverWithClockSkew(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and three Sentinels, and waits for a failover")
	}
	s := startSentinelSetup(t, "", "user repl on >replpass ~* &* +@all\n", "masteruser repl\nmasterauth replpass\n")
	rs := topologyURL(t, s.URL).records("")
	rawA, _ := addRedisKey(t, rs, "a")
	rawB, recB := addRedisKey(t, rs, "b")
	core, logs := observer.New(zapcore.InfoLevel)
	st := openTopologyStore(t, s.URL, "", zap.New(core))
	waitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return caughtUp(s.primary, s.replica) }, nil)

	if err := s.primary.do("ACL", "DELUSER", "repl").Error(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the replica is still connected", func() bool {
		return s.primary.info("replication")["connected_slaves"] == "0"
	}, nil)
	// The old primary's clock is an hour ahead: its next log entries get
	// ids from then on (an entry for the version in force, which a
	// follower takes for a gap: it reads the key set whole, which changes
	// nothing).
	keys, _ := newRedisKeys("")
	ahead := time.Now().Add(time.Hour).UnixMilli()
	if err := s.primary.do("XADD", keys.log, fmt.Sprintf("%d-0", ahead), "v", fmt.Sprint(s.primary.version(keys)), "ids", "[]").Error(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	eventually(t, 2*time.Second, "the revoke is not in force", func() bool { return !admits(st, rawB) })

	s.primary.kill()
	s.waitFailover(t)
	// One change after the failover (by a new command, which asks the
	// Sentinels where the primary is): the new primary is at the version
	// the store holds, with another key set.
	rawC, _ := addRedisKey(t, topologyURL(t, s.URL).records(""), "c")
	start := time.Now()
	eventually(t, 5*time.Second, "the key added after the failover is not in force", func() bool { return admits(st, rawC) })
	if !admits(st, rawB) || !admits(st, rawA) {
		t.Errorf("the store does not hold the new primary's key set: a admitted %v, b admitted %v", admits(st, rawA), admits(st, rawB))
	}
	if logs.FilterMessageSnippet("failover").Len() == 0 {
		t.Errorf("no warning that changes were lost:\n%v", logs.All())
	}
	t.Logf("the key added after the failover was in force %s after the add", time.Since(start).Round(time.Millisecond))
}
