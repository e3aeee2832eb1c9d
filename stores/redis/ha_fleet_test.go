package redis

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testfleet"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
)

// Every command on a Cluster of three primaries, for the default prefix
// and a custom one (served by two different primaries): add (which makes
// the key set only with --create), list, revoke, rotate, import, export,
// and a revoke through a running store's record store (the admin API's
// path); two stores and a Caddy server follow each key set from its log,
// and a store writes last-used times; the key set's four Redis keys are in
// one slot, on its primary.
func TestRedisClusterCommandsAndStores(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster of three primaries")
	}
	cl := testredis.StartCluster(t, false)
	for _, prefix := range clusterPrefixes(t, cl) {
		t.Run(prefix, func(t *testing.T) {
			cli := func(args ...string) (string, string) { return redisCLI(t, cl.URL, prefix, args...) }
			if _, stderr, err := testkeys.RunCommand(t, "", "add", "--label", "first", "--redis", cl.URL, "--prefix", prefix); err == nil || !strings.Contains(stderr, "holds no key set") {
				t.Fatalf("add without --create on an empty prefix: %v\n%s", err, stderr)
			}
			stdout, _ := cli("add", "--create", "--label", "first")
			rawA := strings.TrimSpace(stdout)
			stores := []*live.Set{
				mustOpenRedisStore(t, testredis.AtURL(t, cl.URL), prefix),
				mustOpenRedisStore(t, testredis.AtURL(t, cl.URL), prefix),
			}
			inForce := func(what, raw string, want bool) {
				t.Helper()
				for i, s := range stores {
					testredis.Eventually(t, time.Second, fmt.Sprintf("store %d: %s", i, what), func() bool { return admits(s, raw) == want })
				}
			}
			inForce("the first key is not in force", rawA, true)
			// And a Caddy server, configured with the Cluster URL in its
			// Caddyfile.
			caddy := testfleet.StartCaddy(t, "on the Cluster", "redis "+cl.URL+" {\n\t\t\tprefix "+prefix+"\n\t\t}")

			stdout, _ = cli("add", "--label", "second", "--scope", "read")
			rawB := strings.TrimSpace(stdout)
			inForce("the added key is not in force", rawB, true)

			stdout, _ = cli("list", "--json")
			var listed []keyops.Listed
			if err := json.Unmarshal([]byte(stdout), &listed); err != nil || len(listed) != 2 || listed[1].Label != "second" || len(listed[1].Scopes) != 1 {
				t.Fatalf("list --json: %v\n%s", err, stdout)
			}

			if stdout, _ = cli("revoke", rawB[:11]); !strings.Contains(stdout, "Revoked") {
				t.Fatalf("revoke: %q", stdout)
			}
			inForce("the revoked key is still admitted", rawB, false)

			stdout, _ = cli("rotate", "--grace", "0", rawA[:11])
			rawC := strings.TrimSpace(stdout)
			inForce("the rotated key is still admitted", rawA, false)
			inForce("the new key is not in force", rawC, true)

			k1, k2 := testkeys.New("imported 1", nil), testkeys.New("imported 2", map[string]any{"x-team": "ops"})
			if stdout, _ = cli("import", "--file", testkeys.WriteKeys(t, "", k1, k2)); !strings.Contains(stdout, "Imported 2 keys") {
				t.Fatalf("import: %q", stdout)
			}
			inForce("an imported key is not in force", k1.Raw, true)
			inForce("an imported key is not in force", k2.Raw, true)

			// The admin API's write path: the record store of a running store.
			if _, _, err := keyops.Revoke(stores[0].Records(), k2.Record["id"].(string), time.Now(), nil); err != nil {
				t.Fatalf("revoke through the store's record store: %v", err)
			}
			inForce("the key revoked through a store is still admitted", k2.Raw, false)

			// Last-used times, written by a store, read by list.
			k, sum := stores[0].KeySet().Lookup(rawC)
			stores[0].Usage().Mark(k, sum, time.Now().UnixNano())
			stores[0].AskFlush()
			if stores[0].Writes() == 0 {
				t.Fatal("no usage write")
			}
			stdout, _ = cli("list", "--json")
			listed = nil
			if err := json.Unmarshal([]byte(stdout), &listed); err != nil {
				t.Fatal(err)
			}
			usedSeen := false
			for _, l := range listed {
				usedSeen = usedSeen || (l.KeyPrefix == rawC[:11] && l.LastUsedAt != nil)
			}
			if !usedSeen {
				t.Errorf("list does not show the new key's last use:\n%s", stdout)
			}

			out := filepath.Join(t.TempDir(), "export.json")
			cli("export", "--file", out)
			ks, err := keyfile.ReadKeySet(out)
			if err != nil {
				t.Fatal(err)
			}
			if ks.Len() != 5 {
				t.Errorf("export: %d keys, want 5", ks.Len())
			}
			for raw, want := range map[string]bool{rawA: false, rawB: false, rawC: true, k1.Raw: true, k2.Raw: false} {
				k, _ := ks.Lookup(raw)
				if (k != nil && !k.Revoked()) != want {
					t.Errorf("export: key %s admitted = %v, want %v", raw[:11], !want, want)
				}
			}

			testfleet.WaitAll(t, []*testfleet.Caddy{caddy}, rawC, 200, time.Now())
			for _, raw := range []string{rawA, rawB, k2.Raw} {
				testfleet.WaitAll(t, []*testfleet.Caddy{caddy}, raw, 403, time.Now())
			}

			// Propagation: adds and revokes through a record store, as
			// the commands write them, until both stores have them.
			rs := records(t, testredis.AtURL(t, cl.URL), prefix)
			var lat []time.Duration
			for i := range 50 {
				start := time.Now()
				raw, rec := teststores.AddKey(t, rs, fmt.Sprintf("p%d", i))
				inForce("an added key is not in force", raw, true)
				lat = append(lat, time.Since(start))
				start = time.Now()
				if _, _, err := keyops.Revoke(rs, rec.ID, time.Now(), nil); err != nil {
					t.Fatal(err)
				}
				inForce("a revoked key is still admitted", raw, false)
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			t.Logf("propagation on the Cluster to 2 stores over %d changes (write and in force): p50 %s, p99 %s, max %s",
				len(lat), testfleet.Percentile(lat, 0.5), testfleet.Percentile(lat, 0.99), lat[len(lat)-1])

			// The four keys are in one slot, held by its primary.
			keys, _ := keyspace.New(prefix)
			owner := cl.Primaries[cl.Owner(cl.KeySlot(t, keys.Records))]
			if n, err := owner.Do("EXISTS", keys.Records, keys.Used, keys.Version, keys.Log).AsInt64(); err != nil || n != 4 {
				t.Errorf("the primary of the key set's slot holds %d of its 4 keys (%v)", n, err)
			}
			for i, s := range stores {
				if got := s.Syncs(); got != 1 {
					t.Errorf("store %d read the key set whole %d times, want 1: the changes come from the log", i, got)
				}
			}
		})
	}
}

// A Cluster of three primaries with a replica each: the primary of the
// key set's slot is killed (-9); the stores answer from memory meanwhile,
// its replica takes over, and the stores follow the key set on it: a
// revoke and an add made after the failover are in force within 5s.
func TestRedisClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster of six nodes and waits for a failover")
	}
	cl := testredis.StartCluster(t, true)
	stdout, _ := redisCLI(t, cl.URL, "", "add", "--create", "--label", "good")
	good := strings.TrimSpace(stdout)
	stdout, _ = redisCLI(t, cl.URL, "", "add", "--label", "doomed")
	doomed := strings.TrimSpace(stdout)
	stores := []*live.Set{
		mustOpenRedisStore(t, testredis.AtURL(t, cl.URL), ""),
		mustOpenRedisStore(t, testredis.AtURL(t, cl.URL), ""),
	}
	keys, _ := keyspace.New("")
	i := cl.Owner(cl.KeySlot(t, keys.Version))
	primary, replica := cl.Primaries[i], cl.Replicas[i]
	version := primary.Version(keys.Version)
	testredis.WaitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return testredis.CaughtUp(primary, replica) }, nil)
	for j, s := range stores {
		testredis.Eventually(t, time.Second, fmt.Sprintf("store %d: the second key is not in force", j), func() bool { return admits(s, doomed) })
	}

	// "Requests": lookups of the good key on every store, until the end.
	var answered, refused atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if admits(s, good) {
					answered.Add(1)
				} else {
					refused.Add(1)
				}
				time.Sleep(100 * time.Microsecond)
			}
		})
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			close(done)
			wg.Wait()
		}
	}
	defer stop()

	primary.Kill()
	live := append(append([]*testredis.Node{}, cl.Primaries[:i]...), cl.Primaries[i+1:]...)
	live = append(live, cl.Replicas...)
	failover := testredis.WaitUntil(t, 20*time.Second, "the replica did not take over", func() bool {
		role, err := replica.Do("ROLE").ToArray()
		if err != nil || len(role) == 0 {
			return false
		}
		if r, _ := role[0].ToString(); r != "master" {
			return false
		}
		for _, n := range live {
			if n.ClusterInfo()["cluster_state"] != "ok" {
				return false
			}
		}
		return true
	}, func() string { return replica.Log() })

	start := time.Now()
	if stdout, _ = redisCLI(t, cl.URL, "", "revoke", doomed[:11]); !strings.Contains(stdout, "Revoked") {
		t.Fatalf("revoke after the failover: %q", stdout)
	}
	for j, s := range stores {
		testredis.Eventually(t, 5*time.Second, fmt.Sprintf("store %d: the key revoked after the failover is still admitted", j), func() bool { return !admits(s, doomed) })
	}
	revoked := time.Since(start)
	stdout, _ = redisCLI(t, cl.URL, "", "add", "--label", "after the failover")
	fresh := strings.TrimSpace(stdout)
	start = time.Now()
	for j, s := range stores {
		testredis.Eventually(t, 5*time.Second, fmt.Sprintf("store %d: the key added after the failover is not in force", j), func() bool { return admits(s, fresh) })
	}
	added := time.Since(start)
	stop()
	if n := replica.Version(keys.Version); n != version+2 {
		t.Errorf("the new primary holds version %d, want %d", n, version+2)
	}
	t.Logf("Cluster failover (node timeout 1s) took %s after kill -9 of the key set's primary; a revoke made after it was in force on both stores in %s, an add in %s; %d lookups of the good key admitted, %d refused",
		failover.Round(time.Millisecond), revoked.Round(time.Millisecond), added.Round(time.Millisecond), answered.Load(), refused.Load())
	if refused.Load() != 0 || answered.Load() == 0 {
		t.Fatalf("the good key was refused %d times (admitted %d)", refused.Load(), answered.Load())
	}
}

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
	s := testredis.StartSentinels(t, password, "", "")
	stdout, _ := redisCLI(t, s.URL, "fleet:", "add", "--create", "--label", "good")
	good := strings.TrimSpace(stdout)
	stdout, _ = redisCLI(t, s.URL, "fleet:", "add", "--label", "doomed")
	doomed := strings.TrimSpace(stdout)
	configured := strings.Replace(s.URL, ":"+password+"@", ":{env.APIKEY_TEST_REDIS_PASSWORD}@", 1)
	fleet := testfleet.Start(t, testredis.AtURL(t, configured), 3, "")
	testfleet.WaitAll(t, fleet, doomed, 200, time.Now())

	wrong, _ := keyops.GenerateKey()
	var ok200, refused, fivexx, admittedWrong atomic.Int64
	stopLoad := testfleet.UnderLoad(fleet, func(c *testfleet.Caddy) {
		switch st := c.Status(good); {
		case st == 200:
			ok200.Add(1)
		case st >= 500:
			fivexx.Add(1)
		default:
			refused.Add(1)
		}
		if st := c.Status(wrong); st == 200 {
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
	testredis.WaitUntil(t, 5*time.Second, "no request answered before the kill", func() bool { return ok200.Load() > 0 }, nil)

	before := ok200.Load()
	s.Primary.Kill()
	// A command while no primary answers: a prompt error that names the
	// key set's URL, without its password (or, on a machine slow enough
	// for the failover to be done already, success).
	start := time.Now()
	_, stderr, err := testkeys.RunCommand(t, "", "add", "--label", "during the failover", "--redis", s.URL, "--prefix", "fleet:")
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a command during the failover took %s", took)
	}
	if shown := redactURL(s.URL); err != nil && (!strings.Contains(stderr, shown) || strings.Contains(stderr, password)) {
		t.Errorf("a command during the failover said %q; want an error naming %s", stderr, shown)
	}
	failover := s.WaitFailover(t)
	during := ok200.Load() - before

	start = time.Now()
	stdout, _ = redisCLI(t, s.URL, "fleet:", "revoke", doomed[:11])
	if !strings.Contains(stdout, "Revoked") {
		t.Fatalf("revoke after the failover: %q", stdout)
	}
	inForce := testfleet.WaitAll(t, fleet, doomed, 403, start)
	if inForce > 5*time.Second {
		t.Errorf("the revoke made after the failover took %s to be in force everywhere, want ≤ 5s", inForce)
	}
	stdout, _ = redisCLI(t, s.URL, "fleet:", "add", "--label", "after the failover")
	fresh := strings.TrimSpace(stdout)
	added := testfleet.WaitAll(t, fleet, fresh, 200, time.Now())

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
		if logs := c.Logs(); strings.Contains(logs, password) {
			t.Errorf("caddy %s logged the Redis password:\n%s", c.Name, logs)
		}
	}
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
	primary := testredis.StartNode(t, "redis-server", "user repl on >replpass ~* &* +@all\nmin-replicas-to-write 1\nmin-replicas-max-lag 10\n")
	replica := testredis.StartNode(t, "redis-server", fmt.Sprintf("replicaof 127.0.0.1 %d\nmasteruser repl\nmasterauth replpass\n", primary.Port))
	testredis.WaitUntil(t, 10*time.Second, "the replica is not in sync", func() bool { return testredis.CaughtUp(primary, replica) }, replica.Log)
	url := "redis://" + primary.Addr() + "/0"
	stdout, _ := redisCLI(t, url, "", "add", "--create", "--label", "a")
	raw := strings.TrimSpace(stdout)
	s := mustOpenRedisStore(t, testredis.AtURL(t, url), "")

	if err := primary.Do("ACL", "DELUSER", "repl").Error(); err != nil {
		t.Fatal(err)
	}
	testredis.WaitUntil(t, 5*time.Second, "the replica is still connected", func() bool {
		return primary.Info("replication")["connected_slaves"] == "0"
	}, nil)
	_, stderr, err := testkeys.RunCommand(t, "", "revoke", raw[:11], "--redis", url)
	if err == nil || !strings.Contains(stderr, "NOREPLICAS") {
		t.Fatalf("revoke with no replica following: %v\n%s", err, stderr)
	}
	if !admits(s, raw) {
		t.Fatal("the refused revoke is in force")
	}

	if err := primary.Do("ACL", "SETUSER", "repl", "on", ">replpass", "~*", "&*", "+@all").Error(); err != nil {
		t.Fatal(err)
	}
	testredis.WaitUntil(t, 10*time.Second, "the replica did not come back", func() bool {
		return primary.Info("replication")["min_slaves_good_slaves"] == "1"
	}, replica.Log)
	redisCLI(t, url, "", "revoke", raw[:11])
	testredis.Eventually(t, time.Second, "the revoke is not in force", func() bool { return !admits(s, raw) })
	t.Logf("with no replica following, the command said: %s", strings.TrimSpace(stderr))
}
