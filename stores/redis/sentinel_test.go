package redis

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

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
	s := testredis.StartSentinels(t, "", "user repl on >replpass ~* &* +@all\n", "masteruser repl\nmasterauth replpass\n")
	rs := records(t, testredis.AtURL(t, s.URL), "")
	rawA, _ := teststores.AddKey(t, rs, "a")
	rawB, recB := teststores.AddKey(t, rs, "b")

	core, logs := observer.New(zapcore.InfoLevel)
	stores := []*live.Set{
		openTopologyStore(t, s.URL, "", zap.New(core)),
		openTopologyStore(t, s.URL, "", zap.New(core)),
	}
	keys, _ := keyspace.New("")
	replicated := s.Primary.Version(keys.Version)
	testredis.WaitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return s.Replica.Version(keys.Version) == replicated }, nil)

	// Replication stops; the revoke is acknowledged by the primary alone.
	if err := s.Primary.Do("ACL", "DELUSER", "repl").Error(); err != nil {
		t.Fatal(err)
	}
	testredis.WaitUntil(t, 5*time.Second, "the replica is still connected", func() bool {
		return s.Primary.Info("replication")["connected_slaves"] == "0"
	}, nil)
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	for i, st := range stores {
		testredis.Eventually(t, time.Second, fmt.Sprintf("store %d did not put the revoke in force", i), func() bool { return !admits(st, rawB) })
	}
	if got := s.Replica.Version(keys.Version); got != replicated {
		t.Fatalf("the replica is at version %d, want %d (without the revoke)", got, replicated)
	}

	s.Primary.Kill()
	failover := s.WaitFailover(t)
	start := time.Now()
	for i, st := range stores {
		testredis.Eventually(t, 5*time.Second, fmt.Sprintf("store %d does not agree with the new primary", i), func() bool {
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
		testredis.Eventually(t, 5*time.Second, fmt.Sprintf("store %d does not refuse the key revoked again", i), func() bool { return !admits(st, rawB) })
	}
	t.Logf("failover took %s; the stores went back to the new primary's key set %s after it (the unreplicated revoke lost); revoked again, in force in %s",
		failover.Round(time.Millisecond), agreed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// A switchover (SENTINEL FAILOVER, as for maintenance): the old primary
// lives on, as a replica. A running store's writes, through the admin
// API's record store and the usage writer, go to the new primary, and its
// follower follows the key set there.
func TestRedisSentinelSwitchover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and three Sentinels, and waits for a switchover")
	}
	s := testredis.StartSentinels(t, "", "", "")
	rs := records(t, testredis.AtURL(t, s.URL), "")
	raw, rec := teststores.AddKey(t, rs, "a")
	st := mustOpenRedisStore(t, testredis.AtURL(t, s.URL), "")
	if err := s.Sentinels[0].Do("SENTINEL", "FAILOVER", testredis.MasterSet).Error(); err != nil {
		t.Fatal(err)
	}
	keys, _ := keyspace.New("")
	version := s.Primary.Version(keys.Version)
	switchover := s.WaitFailover(t)

	// The old primary may not know yet that it is one no more: a write
	// that went to it would be lost when it becomes a replica.
	start := time.Now()
	if _, _, err := keyops.Revoke(st.Records(), rec.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke through the store's record store after the switchover: %v", err)
	}
	if got := s.Replica.Version(keys.Version); got != version+1 {
		t.Fatalf("the new primary is at version %d after the revoke, want %d", got, version+1)
	}
	testredis.Eventually(t, 5*time.Second, "the revoke is not in force", func() bool { return !admits(st, raw) })
	inForce := time.Since(start)

	k, sum := st.KeySet().Lookup(raw)
	st.Usage().Mark(k, sum, time.Now().UnixNano())
	st.AskFlush()
	if st.Writes() != 1 {
		t.Fatal("the usage write after the switchover failed")
	}
	if n, err := s.Replica.Do("HLEN", keys.Used).AsInt64(); err != nil || n != 1 {
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
	s := testredis.StartSentinels(t, "", "user repl on >replpass ~* &* +@all\n", "masteruser repl\nmasterauth replpass\n")
	rs := records(t, testredis.AtURL(t, s.URL), "")
	rawA, _ := teststores.AddKey(t, rs, "a")
	rawB, recB := teststores.AddKey(t, rs, "b")
	core, logs := observer.New(zapcore.InfoLevel)
	st := openTopologyStore(t, s.URL, "", zap.New(core))
	testredis.WaitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return testredis.CaughtUp(s.Primary, s.Replica) }, nil)

	if err := s.Primary.Do("ACL", "DELUSER", "repl").Error(); err != nil {
		t.Fatal(err)
	}
	testredis.WaitUntil(t, 5*time.Second, "the replica is still connected", func() bool {
		return s.Primary.Info("replication")["connected_slaves"] == "0"
	}, nil)
	// The old primary's clock is an hour ahead: its next log entries get
	// ids from then on (an entry for the version in force, which a
	// follower takes for a gap: it reads the key set whole, which changes
	// nothing).
	keys, _ := keyspace.New("")
	ahead := time.Now().Add(time.Hour).UnixMilli()
	if err := s.Primary.Do("XADD", keys.Log, fmt.Sprintf("%d-0", ahead), "v", fmt.Sprint(s.Primary.Version(keys.Version)), "ids", "[]").Error(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := keyops.Revoke(rs, recB.ID, time.Now(), nil); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	testredis.Eventually(t, 2*time.Second, "the revoke is not in force", func() bool { return !admits(st, rawB) })

	s.Primary.Kill()
	s.WaitFailover(t)
	// One change after the failover (by a new command, which asks the
	// Sentinels where the primary is): the new primary is at the version
	// the store holds, with another key set.
	rawC, _ := teststores.AddKey(t, records(t, testredis.AtURL(t, s.URL), ""), "c")
	start := time.Now()
	testredis.Eventually(t, 5*time.Second, "the key added after the failover is not in force", func() bool { return admits(st, rawC) })
	if !admits(st, rawB) || !admits(st, rawA) {
		t.Errorf("the store does not hold the new primary's key set: a admitted %v, b admitted %v", admits(st, rawA), admits(st, rawB))
	}
	if logs.FilterMessageSnippet("failover").Len() == 0 {
		t.Errorf("no warning that changes were lost:\n%v", logs.All())
	}
	t.Logf("the key added after the failover was in force %s after the add", time.Since(start).Round(time.Millisecond))
}
