package apikey

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/redis/rueidis"
	"go.uber.org/zap"
)

// The HA tests run the Redis topologies a fleet runs on in production, on
// free loopback ports: a primary with a replica watched by three Sentinels,
// and a Cluster of three primaries (with a replica each, for a failover).
// Each process gets its config file in its own t.TempDir() (Sentinel
// rewrites its own), and is killed when the test ends. A test fails, never
// skips, when redis-server or redis-sentinel cannot start: .ci/test
// installs both.

// redisNode is one redis-server or redis-sentinel process.
type redisNode struct {
	t    testing.TB
	bin  string // redis-server or redis-sentinel
	port int
	dir  string
	conf string
	// password is the one the node requires ("": none), for the test's
	// own calls.
	password string

	mu    sync.Mutex
	cmd   *exec.Cmd
	admin rueidis.Client // this node's own connection, for the test's calls
}

// needRedisBinaries fails the test if a program it runs is not installed.
func needRedisBinaries(t testing.TB, bins ...string) {
	t.Helper()
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (apt-get install -y redis-server redis-sentinel; .ci/test does it): %v", bin, err)
		}
	}
}

// startRedisNode writes a config file (the lines common to every node, and
// then extra) and starts bin on it, on a free loopback port; it is killed
// when the test ends.
func startRedisNode(t testing.TB, bin, extra string) *redisNode {
	t.Helper()
	needRedisBinaries(t, bin)
	n := &redisNode{t: t, bin: bin, port: freePort(t), dir: t.TempDir()}
	n.conf = filepath.Join(n.dir, strings.TrimPrefix(bin, "redis-")+".conf")
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n", n.port, n.dir, filepath.Join(n.dir, "log"))
	if bin == "redis-server" {
		// No persistence; a replica's first sync at once (Redis 7.0
		// waits 5s by default for more replicas to join it).
		conf += "save \"\"\nappendonly no\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n"
	}
	if err := os.WriteFile(n.conf, []byte(conf+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	n.start()
	t.Cleanup(n.kill)
	return n
}

func (n *redisNode) addr() string { return "127.0.0.1:" + strconv.Itoa(n.port) }

// start runs the node on its config file and waits until it answers PING.
func (n *redisNode) start() {
	n.t.Helper()
	cmd := exec.Command(n.bin, n.conf)
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("starting %s: %v", n.bin, err)
	}
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", n.addr())
		if err == nil {
			fmt.Fprintf(c, "PING\r\n")
			buf := make([]byte, 7)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			k, _ := io.ReadFull(c, buf)
			c.Close()
			if reply := string(buf[:k]); reply == "+PONG\r\n" || reply == "-NOAUTH" {
				return // up (and, for -NOAUTH, requiring a password)
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s on port %d did not answer within 10s: %v\n%s", n.bin, n.port, err, n.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill stops the node at once (SIGKILL), as a crash would.
func (n *redisNode) kill() {
	n.mu.Lock()
	cmd, admin := n.cmd, n.admin
	n.cmd, n.admin = nil, nil
	n.mu.Unlock()
	if admin != nil {
		admin.Close()
	}
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// log is the node's log file, for failure messages.
func (n *redisNode) log() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "log"))
	return string(b)
}

// client is a connection to this node alone (not following a topology),
// for the test's own calls.
func (n *redisNode) client() rueidis.Client {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.admin == nil {
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{n.addr()}, Password: n.password, ForceSingleClient: true,
			DisableCache: true, DisableRetry: true, ConnWriteTimeout: 5 * time.Second,
		})
		if err != nil {
			n.t.Fatalf("connecting to %s: %v", n.addr(), err)
		}
		n.admin = c
	}
	return n.admin
}

// do runs a command on this node.
func (n *redisNode) do(args ...string) rueidis.RedisResult {
	n.t.Helper()
	c := n.client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Arbitrary(args...).Build())
}

// info returns a section of INFO as a map (field -> value).
func (n *redisNode) info(section string) map[string]string {
	n.t.Helper()
	return n.fields("INFO", section)
}

// clusterInfo is CLUSTER INFO as a map (field -> value).
func (n *redisNode) clusterInfo() map[string]string {
	n.t.Helper()
	return n.fields("CLUSTER", "INFO")
}

// fields runs a command whose reply is lines of "field:value".
func (n *redisNode) fields(args ...string) map[string]string {
	n.t.Helper()
	s, err := n.do(args...).ToString()
	if err != nil {
		return nil
	}
	s = strings.TrimPrefix(s, "txt:") // a RESP3 verbatim string
	out := make(map[string]string)
	for line := range strings.SplitSeq(s, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}

// version is the key set's version on this node (0: none), or -1 if the
// node does not answer.
func (n *redisNode) version(k redisKeys) int64 {
	n.t.Helper()
	v, err := n.do("GET", k.version).AsInt64()
	switch {
	case rueidis.IsRedisNil(err):
		return 0
	case err != nil:
		return -1
	}
	return v
}

// topologyURL is a fake testRedis holding only a URL, so that the helpers
// of redis_test.go that need nothing else (openRedisStore, records) open
// stores and record stores on a Sentinel or Cluster URL.
func topologyURL(t testing.TB, url string) *testRedis { return &testRedis{t: t, URL: url} }

// waitUntil polls cond every 20ms until it holds, failing the test with
// what and the details detail gives after timeout. It returns how long it
// took.
func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool, detail func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			more := ""
			if detail != nil {
				more = "\n" + detail()
			}
			t.Fatalf("after %s: %s%s", timeout, what, more)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// sentinelSetup is a primary, a replica and three Sentinels watching them
// as the master set "mymaster", with failover timings of seconds.
type sentinelSetup struct {
	primary, replica *redisNode
	sentinels        []*redisNode
	// URL is the Sentinel URL the plugin and the commands take:
	// redis://[:<password>@]<sentinel 1>?master_set=mymaster&addr=<sentinel 2>&addr=<sentinel 3>
	URL string
}

// sentinelMasterSet is the name under which the Sentinels watch the primary.
const sentinelMasterSet = "mymaster"

// startSentinelSetup starts the primary and the replica (each with the
// extra config lines given; both requiring password, if not ""), waits
// until the replica is in sync, then starts the three Sentinels, and waits
// until each knows the replica and the two others: a failover can then
// happen.
func startSentinelSetup(t testing.TB, password, primaryConf, replicaConf string) *sentinelSetup {
	t.Helper()
	needRedisBinaries(t, "redis-server", "redis-sentinel")
	s := &sentinelSetup{}
	auth, sentinelAuth, userinfo := "", "", ""
	if password != "" {
		// Each may become the primary: both require the password and
		// use it with the other; the Sentinels use it with both.
		auth = fmt.Sprintf("requirepass %[1]s\nmasterauth %[1]s\n", password)
		sentinelAuth = fmt.Sprintf("sentinel auth-pass %s %s\n", sentinelMasterSet, password)
		userinfo = ":" + password + "@"
	}
	s.primary = startRedisNode(t, "redis-server", auth+primaryConf)
	s.replica = startRedisNode(t, "redis-server", fmt.Sprintf("replicaof 127.0.0.1 %d\n%s%s", s.primary.port, auth, replicaConf))
	s.primary.password, s.replica.password = password, password
	waitUntil(t, 10*time.Second, "the replica is not in sync with the primary", func() bool {
		return s.replica.info("replication")["master_link_status"] == "up"
	}, s.replica.log)
	// down-after 1s: the primary is deemed down 1s after it stops
	// answering; the failover then takes a second or two, or is tried
	// again 4s (twice the failover-timeout) later after a split vote of
	// the Sentinels (once in the few dozen failovers run here).
	conf := fmt.Sprintf(`sentinel monitor %[1]s 127.0.0.1 %[2]d 2
sentinel down-after-milliseconds %[1]s 1000
sentinel failover-timeout %[1]s 2000
sentinel parallel-syncs %[1]s 1
sentinel announce-ip 127.0.0.1
`, sentinelMasterSet, s.primary.port) + sentinelAuth
	addrs := make([]string, 3)
	for i := range 3 {
		n := startRedisNode(t, "redis-sentinel", conf)
		s.sentinels = append(s.sentinels, n)
		addrs[i] = n.addr()
	}
	s.URL = fmt.Sprintf("redis://%s%s?master_set=%s&addr=%s&addr=%s", userinfo, addrs[0], sentinelMasterSet, addrs[1], addrs[2])
	for _, sn := range s.sentinels {
		waitUntil(t, 15*time.Second, "Sentinel "+sn.addr()+" does not know the replica and the two other Sentinels", func() bool {
			return s.knows(sn)
		}, sn.log)
	}
	return s
}

// knows reports whether Sentinel sn sees the primary up, the replica up
// and the two other Sentinels.
func (s *sentinelSetup) knows(sn *redisNode) bool {
	replicas, err := sn.do("SENTINEL", "REPLICAS", sentinelMasterSet).ToArray()
	if err != nil || len(replicas) != 1 {
		return false
	}
	r, err := replicas[0].AsStrMap()
	if err != nil || r["flags"] != "slave" || r["master-link-status"] != "ok" {
		return false
	}
	others, err := sn.do("SENTINEL", "SENTINELS", sentinelMasterSet).ToArray()
	return err == nil && len(others) == 2
}

// masterAddr is where Sentinel sn says the primary is.
func (s *sentinelSetup) masterAddr(sn *redisNode) string {
	a, err := sn.do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", sentinelMasterSet).AsStrSlice()
	if err != nil || len(a) != 2 {
		return ""
	}
	return net.JoinHostPort(a[0], a[1])
}

// waitFailover waits until every Sentinel names the replica as the primary
// and the replica says it is one, and returns how long that took.
func (s *sentinelSetup) waitFailover(t testing.TB) time.Duration {
	t.Helper()
	return waitUntil(t, 25*time.Second, "the Sentinels did not promote the replica", func() bool {
		for _, sn := range s.sentinels {
			if s.masterAddr(sn) != s.replica.addr() {
				return false
			}
		}
		role, err := s.replica.do("ROLE").ToArray()
		if err != nil || len(role) == 0 {
			return false
		}
		r, _ := role[0].ToString()
		return r == "master"
	}, func() string { return s.sentinels[0].log() })
}

// clusterSetup is a Redis Cluster on loopback: primaries[i] serves the
// slots of the i-th third, and replicas[i], if any, replicates it.
type clusterSetup struct {
	primaries, replicas []*redisNode
	// URL is the Cluster URL the plugin and the commands take:
	// redis://<primary 1>?addr=<primary 2>&addr=<primary 3>
	URL string
}

// clusterRanges are the slots each primary serves.
var clusterRanges = [3][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}

// startCluster starts three primaries and, with replicas, a replica of each,
// and makes them one Cluster by hand (as redis-cli --cluster create does):
// config epochs, slots, MEET, REPLICATE; it waits until every node sees the
// whole Cluster, in state ok, and each replica is in sync.
func startCluster(t testing.TB, replicas bool) *clusterSetup {
	t.Helper()
	needRedisBinaries(t, "redis-server")
	// cluster-node-timeout 1000: a primary that stops answering is
	// failed over in two or three seconds.
	// The bus port is a free one too (port+10000 may be taken, or past
	// 65535).
	bus := make(map[*redisNode]int)
	node := func() *redisNode {
		port := freePort(t)
		n := startRedisNode(t, "redis-server", fmt.Sprintf("cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\ncluster-announce-ip 127.0.0.1\ncluster-port %d\n", port))
		bus[n] = port
		return n
	}
	cl := &clusterSetup{}
	var all []*redisNode
	for range 3 {
		cl.primaries = append(cl.primaries, node())
	}
	all = append(all, cl.primaries...)
	if replicas {
		for range 3 {
			cl.replicas = append(cl.replicas, node())
		}
		all = append(all, cl.replicas...)
	}
	for i, n := range all {
		if err := n.do("CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1)).Error(); err != nil {
			t.Fatalf("CLUSTER SET-CONFIG-EPOCH on %s: %v", n.addr(), err)
		}
	}
	for i, n := range cl.primaries {
		r := clusterRanges[i]
		if err := n.do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(r[0]), strconv.Itoa(r[1])).Error(); err != nil {
			t.Fatalf("CLUSTER ADDSLOTSRANGE on %s: %v", n.addr(), err)
		}
	}
	for _, n := range all[1:] {
		if err := all[0].do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(n.port), strconv.Itoa(bus[n])).Error(); err != nil {
			t.Fatalf("CLUSTER MEET: %v", err)
		}
	}
	clusterLog := func() string {
		var b strings.Builder
		for _, n := range all {
			s, err := n.do("CLUSTER", "NODES").ToString()
			fmt.Fprintf(&b, "%s: %v %v %v\n%s\n", n.addr(), n.clusterInfo()["cluster_state"], n.info("replication")["master_link_status"], err, s)
		}
		return b.String()
	}
	waitUntil(t, 20*time.Second, "the nodes do not all know each other", func() bool {
		for _, n := range all {
			if n.clusterInfo()["cluster_known_nodes"] != strconv.Itoa(len(all)) {
				return false
			}
		}
		return true
	}, clusterLog)
	for i, rep := range cl.replicas {
		id, err := cl.primaries[i].do("CLUSTER", "MYID").ToString()
		if err != nil {
			t.Fatal(err)
		}
		waitUntil(t, 10*time.Second, "CLUSTER REPLICATE failed", func() bool {
			return rep.do("CLUSTER", "REPLICATE", id).Error() == nil
		}, func() string { return fmt.Sprint(rep.do("CLUSTER", "REPLICATE", id).Error()) })
	}
	waitUntil(t, 20*time.Second, "the Cluster is not ok on every node", func() bool {
		for _, n := range all {
			if n.clusterInfo()["cluster_state"] != "ok" {
				return false
			}
			nodes, err := n.do("CLUSTER", "NODES").ToString()
			if err != nil || strings.Count(nodes, "slave") != len(cl.replicas) ||
				strings.Contains(nodes, "fail") || strings.Contains(nodes, "handshake") || strings.Contains(nodes, "noaddr") {
				return false
			}
		}
		for _, rep := range cl.replicas {
			if rep.info("replication")["master_link_status"] != "up" {
				return false
			}
		}
		return true
	}, clusterLog)
	cl.URL = fmt.Sprintf("redis://%s?addr=%s&addr=%s", cl.primaries[0].addr(), cl.primaries[1].addr(), cl.primaries[2].addr())
	return cl
}

// keySlot is the Cluster slot of a Redis key, as the Cluster computes it.
func (cl *clusterSetup) keySlot(t testing.TB, key string) int {
	t.Helper()
	slot, err := cl.primaries[0].do("CLUSTER", "KEYSLOT", key).AsInt64()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	return int(slot)
}

// owner is the index of the primary that serves a slot (as set up).
func (cl *clusterSetup) owner(slot int) int {
	for i, r := range clusterRanges {
		if slot >= r[0] && slot <= r[1] {
			return i
		}
	}
	panic("no such slot")
}

// openLoggedRedisStore opens a live store on the key set at prefix of the
// Redis at url, as openRedisStore does, logging to logger; it is stopped
// when the test ends.
func openTopologyStore(t testing.TB, url, prefix string, logger *zap.Logger) *redisKeyStore {
	t.Helper()
	opt, shown, err := redisURL(url)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := newRedisKeys(prefix)
	if err != nil {
		t.Fatal(err)
	}
	s := newRedisKeyStore(opt, shown, keys, "")
	s.logger = logger
	s.leases.Add(storecore.Settings{Usage: storecore.Interval{Every: time.Hour}, Reload: storecore.Interval{Off: true}})
	if err := s.open(); err != nil {
		t.Fatalf("open: %v", err)
	}
	s.start()
	t.Cleanup(func() { _ = s.Destruct() })
	return s
}

// redisCLI runs `caddy apikey <args> --redis url --prefix prefix` as the
// command line does (in this process), and returns its stdout and stderr;
// the test fails if the command does.
func redisCLI(t *testing.T, url, prefix string, args ...string) (stdout, stderr string) {
	t.Helper()
	stdout, stderr, err := apikeyCommand(t, "", append(args, "--redis", url, "--prefix", prefix)...)
	if err != nil {
		t.Fatalf("caddy apikey %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return stdout, stderr
}

// caughtUp reports whether replica has all that primary wrote: its
// replication offset is the primary's.
func caughtUp(primary, replica *redisNode) bool {
	want := primary.info("replication")["master_repl_offset"]
	return want != "" && replica.info("replication")["slave_repl_offset"] == want
}
