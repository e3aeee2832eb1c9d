package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"go.uber.org/zap"
)

// A server on Sentinels that misses the +switch-master event (its Sentinel
// connection down at that moment) stayed on the old primary, a replica by
// then, until it was restarted: its usage writes and the admin API's
// changes failed, and it followed the key set only as long as that replica
// did. It now asks the Sentinels every sentinelRefresh. Played without a
// failover, so that no event is sent: the replica is made the primary and
// the Sentinels are told to watch it (SENTINEL REMOVE, MONITOR), then the
// old primary is made its replica.
func TestRedisSentinelSwitchWithoutEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and three Sentinels")
	}
	s := testredis.StartSentinels(t, "", "", "")
	rs := records(t, testredis.AtURL(t, s.URL), "")
	raw, _ := teststores.AddKey(t, rs, "a")
	st := openTopologyStore(t, s.URL, "", zap.NewNop())
	role := func() string {
		c, err := st.Connect()
		if err != nil {
			return err.Error()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := c.Do(ctx, c.B().Role().Build()).ToArray()
		if err != nil || len(r) == 0 {
			return fmt.Sprint(err)
		}
		name, _ := r[0].ToString()
		return name
	}
	if got := role(); got != "master" {
		t.Fatalf("the store's client is on a %s", got)
	}
	testredis.WaitUntil(t, 5*time.Second, "the replica did not catch up", func() bool { return testredis.CaughtUp(s.Primary, s.Replica) }, nil)

	mustDo := func(n *testredis.Node, args ...string) {
		t.Helper()
		if err := n.Do(args...).Error(); err != nil {
			t.Fatalf("%s on %s: %v", strings.Join(args, " "), n.Addr(), err)
		}
	}
	mustDo(s.Replica, "REPLICAOF", "NO", "ONE")
	for _, sn := range s.Sentinels {
		mustDo(sn, "SENTINEL", "REMOVE", testredis.MasterSet)
		mustDo(sn, "SENTINEL", "MONITOR", testredis.MasterSet, "127.0.0.1", strconv.Itoa(s.Replica.Port), "2")
		mustDo(sn, "SENTINEL", "SET", testredis.MasterSet, "down-after-milliseconds", "1000", "failover-timeout", "2000")
	}
	mustDo(s.Primary, "REPLICAOF", "127.0.0.1", strconv.Itoa(s.Replica.Port))
	took := testredis.WaitUntil(t, 3*sentinelRefresh, "the store's client stayed on the old primary", func() bool { return role() == "master" }, func() string { return "its role: " + role() })
	t.Logf("the store's client was on the new primary %v after the switch", took.Round(time.Millisecond))

	rawB, _ := teststores.AddKey(t, records(t, testredis.AtURL(t, s.URL), ""), "b")
	testredis.Eventually(t, 5*time.Second, "a key added on the new primary is not in force", func() bool { return admits(st, rawB) && admits(st, raw) })
}
