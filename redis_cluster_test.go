package apikey

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

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyops"
)

// clusterPrefixes are the default prefix and a custom one whose key set
// the Cluster serves from another primary, so that the tests cover two
// nodes. Each key set's four Redis keys must share one slot, that of its
// hash tag "{<prefix>}".
func clusterPrefixes(t *testing.T, cl *clusterSetup) []string {
	t.Helper()
	slotOf := func(prefix string) int {
		keys, err := newRedisKeys(prefix)
		if err != nil {
			t.Fatal(err)
		}
		slot := cl.keySlot(t, "{"+keys.prefix+"}")
		for _, k := range []string{keys.records, keys.used, keys.version, keys.log} {
			if got := cl.keySlot(t, k); got != slot {
				t.Fatalf("prefix %q: %s is in slot %d, %s in slot %d: a script on the key set would fail with CROSSSLOT", keys.prefix, keys.records, slot, k, got)
			}
		}
		return slot
	}
	def := cl.owner(slotOf(""))
	for i := range 100 {
		custom := fmt.Sprintf("team-%d:", i)
		if cl.owner(slotOf(custom)) != def {
			return []string{defaultRedisPrefix, custom}
		}
	}
	t.Fatal("no custom prefix on another primary than the default one")
	return nil
}

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
	cl := startCluster(t, false)
	for _, prefix := range clusterPrefixes(t, cl) {
		t.Run(prefix, func(t *testing.T) {
			cli := func(args ...string) (string, string) { return redisCLI(t, cl.URL, prefix, args...) }
			if _, stderr, err := apikeyCommand(t, "", "add", "--label", "first", "--redis", cl.URL, "--prefix", prefix); err == nil || !strings.Contains(stderr, "holds no key set") {
				t.Fatalf("add without --create on an empty prefix: %v\n%s", err, stderr)
			}
			stdout, _ := cli("add", "--create", "--label", "first")
			rawA := strings.TrimSpace(stdout)
			stores := []*redisKeyStore{
				mustOpenRedisStore(t, topologyURL(t, cl.URL), prefix),
				mustOpenRedisStore(t, topologyURL(t, cl.URL), prefix),
			}
			inForce := func(what, raw string, want bool) {
				t.Helper()
				for i, s := range stores {
					eventually(t, time.Second, fmt.Sprintf("store %d: %s", i, what), func() bool { return admits(s, raw) == want })
				}
			}
			inForce("the first key is not in force", rawA, true)
			// And a Caddy server, configured with the Cluster URL in its
			// Caddyfile.
			caddy := startFleetCaddy(t, "on the Cluster", "redis "+cl.URL+" {\n\t\t\tprefix "+prefix+"\n\t\t}")

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

			k1, k2 := newTestKey("imported 1", nil), newTestKey("imported 2", map[string]any{"x-team": "ops"})
			if stdout, _ = cli("import", "--file", writeKeys(t, "", k1, k2)); !strings.Contains(stdout, "Imported 2 keys") {
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
			k, sum := stores[0].keys.Load().Lookup(rawC)
			stores[0].usage.Mark(k, sum, time.Now().UnixNano())
			stores[0].askFlush()
			if stores[0].writes.Load() == 0 {
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

			waitAll(t, []*fleetCaddy{caddy}, rawC, 200, time.Now())
			for _, raw := range []string{rawA, rawB, k2.Raw} {
				waitAll(t, []*fleetCaddy{caddy}, raw, 403, time.Now())
			}

			// Propagation: adds and revokes through a record store, as
			// the commands write them, until both stores have them.
			rs := topologyURL(t, cl.URL).records(prefix)
			var lat []time.Duration
			for i := range 50 {
				start := time.Now()
				raw, rec := addRedisKey(t, rs, fmt.Sprintf("p%d", i))
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
				len(lat), percentile(lat, 0.5), percentile(lat, 0.99), lat[len(lat)-1])

			// The four keys are in one slot, held by its primary.
			keys, _ := newRedisKeys(prefix)
			owner := cl.primaries[cl.owner(cl.keySlot(t, keys.records))]
			if n, err := owner.do("EXISTS", keys.records, keys.used, keys.version, keys.log).AsInt64(); err != nil || n != 4 {
				t.Errorf("the primary of the key set's slot holds %d of its 4 keys (%v)", n, err)
			}
			for i, s := range stores {
				if got := s.syncs.Load(); got != 1 {
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
	cl := startCluster(t, true)
	stdout, _ := redisCLI(t, cl.URL, "", "add", "--create", "--label", "good")
	good := strings.TrimSpace(stdout)
	stdout, _ = redisCLI(t, cl.URL, "", "add", "--label", "doomed")
	doomed := strings.TrimSpace(stdout)
	stores := []*redisKeyStore{
		mustOpenRedisStore(t, topologyURL(t, cl.URL), ""),
		mustOpenRedisStore(t, topologyURL(t, cl.URL), ""),
	}
	keys, _ := newRedisKeys("")
	i := cl.owner(cl.keySlot(t, keys.version))
	primary, replica := cl.primaries[i], cl.replicas[i]
	version := primary.version(keys)
	waitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return caughtUp(primary, replica) }, nil)
	for j, s := range stores {
		eventually(t, time.Second, fmt.Sprintf("store %d: the second key is not in force", j), func() bool { return admits(s, doomed) })
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

	primary.kill()
	live := append(append([]*redisNode{}, cl.primaries[:i]...), cl.primaries[i+1:]...)
	live = append(live, cl.replicas...)
	failover := waitUntil(t, 20*time.Second, "the replica did not take over", func() bool {
		role, err := replica.do("ROLE").ToArray()
		if err != nil || len(role) == 0 {
			return false
		}
		if r, _ := role[0].ToString(); r != "master" {
			return false
		}
		for _, n := range live {
			if n.clusterInfo()["cluster_state"] != "ok" {
				return false
			}
		}
		return true
	}, func() string { return replica.log() })

	start := time.Now()
	if stdout, _ = redisCLI(t, cl.URL, "", "revoke", doomed[:11]); !strings.Contains(stdout, "Revoked") {
		t.Fatalf("revoke after the failover: %q", stdout)
	}
	for j, s := range stores {
		eventually(t, 5*time.Second, fmt.Sprintf("store %d: the key revoked after the failover is still admitted", j), func() bool { return !admits(s, doomed) })
	}
	revoked := time.Since(start)
	stdout, _ = redisCLI(t, cl.URL, "", "add", "--label", "after the failover")
	fresh := strings.TrimSpace(stdout)
	start = time.Now()
	for j, s := range stores {
		eventually(t, 5*time.Second, fmt.Sprintf("store %d: the key added after the failover is not in force", j), func() bool { return admits(s, fresh) })
	}
	added := time.Since(start)
	stop()
	if n := replica.version(keys); n != version+2 {
		t.Errorf("the new primary holds version %d, want %d", n, version+2)
	}
	t.Logf("Cluster failover (node timeout 1s) took %s after kill -9 of the key set's primary; a revoke made after it was in force on both stores in %s, an add in %s; %d lookups of the good key admitted, %d refused",
		failover.Round(time.Millisecond), revoked.Round(time.Millisecond), added.Round(time.Millisecond), answered.Load(), refused.Load())
	if refused.Load() != 0 || answered.Load() == 0 {
		t.Fatalf("the good key was refused %d times (admitted %d)", refused.Load(), answered.Load())
	}
}
