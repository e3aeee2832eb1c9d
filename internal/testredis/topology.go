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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// The HA tests run the Redis topologies a fleet runs on in production, on
// free loopback ports: a primary with a replica watched by three Sentinels,
// and a Cluster of three primaries (with a replica each, for a failover).
// Each process gets its config file in its own t.TempDir() (Sentinel
// rewrites its own), and is killed when the test ends. A test fails, never
// skips, when redis-server or redis-sentinel cannot start: .ci/test
// installs both.

// Node is one redis-server or redis-sentinel process.
type Node struct {
	T    testing.TB
	Bin  string // redis-server or redis-sentinel
	Port int
	Dir  string
	Conf string
	// password is the one the node requires ("": none), for the test's
	// own calls.
	Password string

	mu    sync.Mutex
	cmd   *exec.Cmd
	admin rueidis.Client // this node's own connection, for the test's calls
}

// NeedBinaries fails the test if a program it runs is not installed.
func NeedBinaries(t testing.TB, bins ...string) {
	t.Helper()
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (apt-get install -y redis-server redis-sentinel; .ci/test does it): %v", bin, err)
		}
	}
}

// StartNode writes a config file (the lines common to every node, and
// then extra) and starts bin on it, on a free loopback port; it is killed
// when the test ends.
func StartNode(t testing.TB, bin, extra string) *Node {
	t.Helper()
	NeedBinaries(t, bin)
	n := &Node{T: t, Bin: bin, Port: FreePort(t), Dir: t.TempDir()}
	n.Conf = filepath.Join(n.Dir, strings.TrimPrefix(bin, "redis-")+".conf")
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n", n.Port, n.Dir, filepath.Join(n.Dir, "log"))
	if bin == "redis-server" {
		// No persistence; a replica's first sync at once (Redis 7.0
		// waits 5s by default for more replicas to join it).
		conf += "save \"\"\nappendonly no\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n"
	}
	if err := os.WriteFile(n.Conf, []byte(conf+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	n.Restart()
	t.Cleanup(n.Kill)
	return n
}

func (n *Node) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.Port) }

// Restart runs the node on its config file and waits until it answers PING.
func (n *Node) Restart() {
	n.T.Helper()
	cmd := exec.Command(n.Bin, n.Conf)
	DieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		n.T.Fatalf("starting %s: %v", n.Bin, err)
	}
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", n.Addr())
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
			n.T.Fatalf("%s on port %d did not answer within 10s: %v\n%s", n.Bin, n.Port, err, n.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the node at once (SIGKILL), as a crash would.
func (n *Node) Kill() {
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

// Log is the node's log file, for failure messages.
func (n *Node) Log() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "log"))
	return string(b)
}

// Client is a connection to this node alone (not following a topology),
// for the test's own calls.
func (n *Node) Client() rueidis.Client {
	n.T.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.admin == nil {
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{n.Addr()}, Password: n.Password, ForceSingleClient: true,
			DisableCache: true, DisableRetry: true, ConnWriteTimeout: 5 * time.Second,
		})
		if err != nil {
			n.T.Fatalf("connecting to %s: %v", n.Addr(), err)
		}
		n.admin = c
	}
	return n.admin
}

// Do runs a command on this node.
func (n *Node) Do(args ...string) rueidis.RedisResult {
	n.T.Helper()
	c := n.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Do(ctx, c.B().Arbitrary(args...).Build())
}

// Info returns a section of INFO as a map (field -> value).
func (n *Node) Info(section string) map[string]string {
	n.T.Helper()
	return n.Fields("INFO", section)
}

// ClusterInfo is CLUSTER INFO as a map (field -> value).
func (n *Node) ClusterInfo() map[string]string {
	n.T.Helper()
	return n.Fields("CLUSTER", "INFO")
}

// Fields runs a command whose reply is lines of "field:value".
func (n *Node) Fields(args ...string) map[string]string {
	n.T.Helper()
	s, err := n.Do(args...).ToString()
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

// Version is the key set's version on this node (0: none), or -1 if the
// node does not answer.
func (n *Node) Version(key string) int64 {
	n.T.Helper()
	v, err := n.Do("GET", key).AsInt64()
	switch {
	case rueidis.IsRedisNil(err):
		return 0
	case err != nil:
		return -1
	}
	return v
}

// WaitUntil polls cond every 20ms until it holds, failing the test with
// what and the details detail gives after timeout. It returns how long it
// took.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool, detail func() string) time.Duration {
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

// Sentinels is a primary, a replica and three Sentinels watching them
// as the master set "mymaster", with failover timings of seconds.
type Sentinels struct {
	Primary, Replica *Node
	Sentinels        []*Node
	// URL is the Sentinel URL the plugin and the commands take:
	// redis://[:<password>@]<sentinel 1>?master_set=mymaster&addr=<sentinel 2>&addr=<sentinel 3>
	URL string
}

// MasterSet is the name under which the Sentinels watch the primary.
const MasterSet = "mymaster"

// StartSentinels starts the primary and the replica (each with the
// extra config lines given; both requiring password, if not ""), waits
// until the replica is in sync, then starts the three Sentinels, and waits
// until each knows the replica and the two others: a failover can then
// happen.
func StartSentinels(t testing.TB, password, primaryConf, replicaConf string) *Sentinels {
	t.Helper()
	NeedBinaries(t, "redis-server", "redis-sentinel")
	s := &Sentinels{}
	auth, sentinelAuth, userinfo := "", "", ""
	if password != "" {
		// Each may become the primary: both require the password and
		// use it with the other; the Sentinels use it with both.
		auth = fmt.Sprintf("requirepass %[1]s\nmasterauth %[1]s\n", password)
		sentinelAuth = fmt.Sprintf("sentinel auth-pass %s %s\n", MasterSet, password)
		userinfo = ":" + password + "@"
	}
	s.Primary = StartNode(t, "redis-server", auth+primaryConf)
	s.Replica = StartNode(t, "redis-server", fmt.Sprintf("replicaof 127.0.0.1 %d\n%s%s", s.Primary.Port, auth, replicaConf))
	s.Primary.Password, s.Replica.Password = password, password
	WaitUntil(t, 10*time.Second, "the replica is not in sync with the primary", func() bool {
		return s.Replica.Info("replication")["master_link_status"] == "up"
	}, s.Replica.Log)
	// down-after 1s: the primary is deemed down 1s after it stops
	// answering; the failover then takes a second or two, or is tried
	// again 4s (twice the failover-timeout) later after a split vote of
	// the Sentinels (once in the few dozen failovers run here).
	conf := fmt.Sprintf(`sentinel monitor %[1]s 127.0.0.1 %[2]d 2
sentinel down-after-milliseconds %[1]s 1000
sentinel failover-timeout %[1]s 2000
sentinel parallel-syncs %[1]s 1
sentinel announce-ip 127.0.0.1
`, MasterSet, s.Primary.Port) + sentinelAuth
	addrs := make([]string, 3)
	for i := range 3 {
		n := StartNode(t, "redis-sentinel", conf)
		s.Sentinels = append(s.Sentinels, n)
		addrs[i] = n.Addr()
	}
	s.URL = fmt.Sprintf("redis://%s%s?master_set=%s&addr=%s&addr=%s", userinfo, addrs[0], MasterSet, addrs[1], addrs[2])
	for _, sn := range s.Sentinels {
		WaitUntil(t, 15*time.Second, "Sentinel "+sn.Addr()+" does not know the replica and the two other Sentinels", func() bool {
			return s.Knows(sn)
		}, sn.Log)
	}
	return s
}

// Knows reports whether Sentinel sn sees the primary up, the replica up
// and the two other Sentinels.
func (s *Sentinels) Knows(sn *Node) bool {
	replicas, err := sn.Do("SENTINEL", "REPLICAS", MasterSet).ToArray()
	if err != nil || len(replicas) != 1 {
		return false
	}
	r, err := replicas[0].AsStrMap()
	if err != nil || r["flags"] != "slave" || r["master-link-status"] != "ok" {
		return false
	}
	others, err := sn.Do("SENTINEL", "SENTINELS", MasterSet).ToArray()
	return err == nil && len(others) == 2
}

// MasterAddr is where Sentinel sn says the primary is.
func (s *Sentinels) MasterAddr(sn *Node) string {
	a, err := sn.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MasterSet).AsStrSlice()
	if err != nil || len(a) != 2 {
		return ""
	}
	return net.JoinHostPort(a[0], a[1])
}

// WaitFailover waits until every Sentinel names the replica as the primary
// and the replica says it is one, and returns how long that took.
func (s *Sentinels) WaitFailover(t testing.TB) time.Duration {
	t.Helper()
	return WaitUntil(t, 25*time.Second, "the Sentinels did not promote the replica", func() bool {
		for _, sn := range s.Sentinels {
			if s.MasterAddr(sn) != s.Replica.Addr() {
				return false
			}
		}
		role, err := s.Replica.Do("ROLE").ToArray()
		if err != nil || len(role) == 0 {
			return false
		}
		r, _ := role[0].ToString()
		return r == "master"
	}, func() string { return s.Sentinels[0].Log() })
}

// Cluster is a Redis Cluster on loopback: primaries[i] serves the
// slots of the i-th third, and replicas[i], if any, replicates it.
type Cluster struct {
	Primaries, Replicas []*Node
	// URL is the Cluster URL the plugin and the commands take:
	// redis://<primary 1>?addr=<primary 2>&addr=<primary 3>
	URL string
}

// clusterRanges are the slots each primary serves.
var clusterRanges = [3][2]int{{0, 5460}, {5461, 10922}, {10923, 16383}}

// StartCluster starts three primaries and, with replicas, a replica of each,
// and makes them one Cluster by hand (as redis-cli --cluster create does):
// config epochs, slots, MEET, REPLICATE; it waits until every node sees the
// whole Cluster, in state ok, and each replica is in sync.
func StartCluster(t testing.TB, replicas bool) *Cluster {
	t.Helper()
	NeedBinaries(t, "redis-server")
	// cluster-node-timeout 1000: a primary that stops answering is
	// failed over in two or three seconds.
	// The bus port is a free one too (port+10000 may be taken, or past
	// 65535).
	bus := make(map[*Node]int)
	node := func() *Node {
		port := FreePort(t)
		n := StartNode(t, "redis-server", fmt.Sprintf("cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 1000\ncluster-announce-ip 127.0.0.1\ncluster-port %d\n", port))
		bus[n] = port
		return n
	}
	cl := &Cluster{}
	var all []*Node
	for range 3 {
		cl.Primaries = append(cl.Primaries, node())
	}
	all = append(all, cl.Primaries...)
	if replicas {
		for range 3 {
			cl.Replicas = append(cl.Replicas, node())
		}
		all = append(all, cl.Replicas...)
	}
	for i, n := range all {
		if err := n.Do("CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(i+1)).Error(); err != nil {
			t.Fatalf("CLUSTER SET-CONFIG-EPOCH on %s: %v", n.Addr(), err)
		}
	}
	for i, n := range cl.Primaries {
		r := clusterRanges[i]
		if err := n.Do("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(r[0]), strconv.Itoa(r[1])).Error(); err != nil {
			t.Fatalf("CLUSTER ADDSLOTSRANGE on %s: %v", n.Addr(), err)
		}
	}
	for _, n := range all[1:] {
		if err := all[0].Do("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(n.Port), strconv.Itoa(bus[n])).Error(); err != nil {
			t.Fatalf("CLUSTER MEET: %v", err)
		}
	}
	clusterLog := func() string {
		var b strings.Builder
		for _, n := range all {
			s, err := n.Do("CLUSTER", "NODES").ToString()
			fmt.Fprintf(&b, "%s: %v %v %v\n%s\n", n.Addr(), n.ClusterInfo()["cluster_state"], n.Info("replication")["master_link_status"], err, s)
		}
		return b.String()
	}
	WaitUntil(t, 20*time.Second, "the nodes do not all know each other", func() bool {
		for _, n := range all {
			if n.ClusterInfo()["cluster_known_nodes"] != strconv.Itoa(len(all)) {
				return false
			}
		}
		return true
	}, clusterLog)
	for i, rep := range cl.Replicas {
		id, err := cl.Primaries[i].Do("CLUSTER", "MYID").ToString()
		if err != nil {
			t.Fatal(err)
		}
		WaitUntil(t, 10*time.Second, "CLUSTER REPLICATE failed", func() bool {
			return rep.Do("CLUSTER", "REPLICATE", id).Error() == nil
		}, func() string { return fmt.Sprint(rep.Do("CLUSTER", "REPLICATE", id).Error()) })
	}
	WaitUntil(t, 20*time.Second, "the Cluster is not ok on every node", func() bool {
		for _, n := range all {
			if n.ClusterInfo()["cluster_state"] != "ok" {
				return false
			}
			nodes, err := n.Do("CLUSTER", "NODES").ToString()
			if err != nil || strings.Count(nodes, "slave") != len(cl.Replicas) ||
				strings.Contains(nodes, "fail") || strings.Contains(nodes, "handshake") || strings.Contains(nodes, "noaddr") {
				return false
			}
		}
		for _, rep := range cl.Replicas {
			if rep.Info("replication")["master_link_status"] != "up" {
				return false
			}
		}
		return true
	}, clusterLog)
	cl.URL = fmt.Sprintf("redis://%s?addr=%s&addr=%s", cl.Primaries[0].Addr(), cl.Primaries[1].Addr(), cl.Primaries[2].Addr())
	return cl
}

// KeySlot is the Cluster slot of a Redis key, as the Cluster computes it.
func (cl *Cluster) KeySlot(t testing.TB, key string) int {
	t.Helper()
	slot, err := cl.Primaries[0].Do("CLUSTER", "KEYSLOT", key).AsInt64()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	return int(slot)
}

// Owner is the index of the primary that serves a slot (as set up).
func (cl *Cluster) Owner(slot int) int {
	for i, r := range clusterRanges {
		if slot >= r[0] && slot <= r[1] {
			return i
		}
	}
	panic("no such slot")
}

// CaughtUp reports whether replica has all that primary wrote: its
// replication offset is the primary's.
func CaughtUp(primary, replica *Node) bool {
	want := primary.Info("replication")["master_repl_offset"]
	return want != "" && replica.Info("replication")["slave_repl_offset"] == want
}
