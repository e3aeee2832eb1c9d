package redis

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// How a Redis store tells an outage of Redis from the rest: Redis answering
// with what cannot be used, a stall of this process, and how soon it
// catches up once Redis answers again.

// Log lines of the follower, as counted here.
const (
	downLine     = "cannot reach Redis"
	upLine       = "Redis is reachable again"
	unusableLine = "Redis answers, but"
	usableLine   = "can be read again"
)

// reloadErrors is the store's count of failed loads
// (caddy_apikey_reloads_total{result="error"}).
func reloadErrors(s *live.Set) float64 {
	reg := prometheus.NewPedanticRegistry()
	for _, c := range stores.Collectors() {
		reg.MustRegister(c)
	}
	families, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range families {
		if f.GetName() != "caddy_apikey_reloads_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["store"] == s.Name() && labels["result"] == "error" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// lines counts the log lines that hold snippet.
func lines(logs *observer.ObservedLogs, snippet string) int {
	return logs.FilterMessageSnippet(snippet).Len()
}

// A hostile Redis (a version that is not a number, records or log of the
// wrong type) made the follower log "cannot reach Redis" and "Redis is
// reachable again" in turn, about once a second, and count a failed load
// each time. Redis answering with what cannot be used is no outage: it is
// logged once, as its own problem, while it lasts (over rounds asked for
// and the follower's own), and once when it ends; it never says that
// Redis cannot be reached; the keys in force stay.
func TestRedisUnusableAnswersAreNotAnOutage(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis outages and round trips")
	r := testredis.Start(t)
	for i, tc := range []struct {
		name    string
		key     func(keyspace.Layout) string
		corrupt func(k keyspace.Layout, id string)
	}{
		{"version not a number", func(k keyspace.Layout) string { return k.Version }, func(k keyspace.Layout, _ string) {
			r.Do("SET", k.Version, "12abc")
		}},
		{"records of the wrong type, a change logged", func(k keyspace.Layout) string { return k.Records }, func(k keyspace.Layout, id string) {
			r.Do("DEL", k.Records)
			r.Do("SET", k.Records, "x")
			logEntry(r, k, `["`+id+`"]`, `[""]`)
		}},
		{"log of the wrong type", func(k keyspace.Layout) string { return k.Log }, func(k keyspace.Layout, _ string) {
			r.Do("DEL", k.Log)
			r.Do("SET", k.Log, "x")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("u%d:", i)
			k, _ := keyspace.New(prefix)
			rs := records(t, r, prefix)
			raw, rec := teststores.AddKey(t, rs, "a")
			s, logs, err := openLoggedRedisStore(t, r, prefix, "")
			if err != nil {
				t.Fatal(err)
			}
			errorsBefore := reloadErrors(s)
			saved, err := r.Do("DUMP", tc.key(k)).ToString()
			if err != nil {
				t.Fatal(err)
			}

			tc.corrupt(k, rec.ID)
			for range 5 {
				if err := s.Refresh(); err == nil {
					t.Fatal("a check against the hostile key set went through")
				}
			}
			// The follower's own rounds too: a few of them at least.
			calls := followerCalls(r)
			testredis.Eventually(t, 10*time.Second, "the follower made no rounds of its own", func() bool { return followerCalls(r) >= calls+8 })
			if !admits(s, raw) {
				t.Fatal("the keys in force were lost")
			}
			if n, m := lines(logs, downLine), lines(logs, upLine); n+m != 0 {
				t.Errorf("Redis answering with what cannot be used logged %d %q and %d %q: %v", n, downLine, m, upLine, logs.All())
			}
			if n := lines(logs, unusableLine); n != 1 {
				t.Errorf("the problem was logged %d times, want once: %v", n, logs.All())
			}
			if got := reloadErrors(s) - errorsBefore; got != 1 {
				t.Errorf("the problem counted %v failed loads, want 1", got)
			}

			// Mended: once.
			r.Do("DEL", tc.key(k))
			r.Do("RESTORE", tc.key(k), "0", saved)
			rawB, _ := teststores.AddKey(t, rs, "after")
			for range 3 {
				if err := s.Refresh(); err != nil {
					t.Fatalf("check once mended: %v", err)
				}
			}
			if !admits(s, raw) || !admits(s, rawB) {
				t.Fatal("the key set once mended is not in force")
			}
			if n := lines(logs, usableLine); n != 1 {
				t.Errorf("the problem's end was logged %d times, want once: %v", n, logs.All())
			}
			if n, m := lines(logs, downLine), lines(logs, upLine); n+m != 0 {
				t.Errorf("%d %q and %d %q: %v", n, downLine, m, upLine, logs.All())
			}
		})
	}
}

// followerCalls is how many times Redis ran the commands that each round
// of a follower makes, whatever came of them: a read of the log (XREAD),
// the version check's script (EVALSHA_RO).
func followerCalls(r *testredis.Server) int {
	r.T.Helper()
	info, err := r.Do("INFO", "commandstats").ToString()
	if err != nil {
		r.T.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_eval") && name != "cmdstat_xread" {
			continue
		}
		for _, kv := range strings.Split(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				c, _ := strconv.Atoi(v)
				n += c
			}
		}
	}
	return n
}

// openHookedRedisStore is openLoggedRedisStore, the follower's Redis calls
// given their contexts by withTimeout.
func openHookedRedisStore(t testing.TB, r *testredis.Server, prefix string, withTimeout func(context.Context, time.Duration) (context.Context, context.CancelFunc)) (*live.Set, *observer.ObservedLogs) {
	t.Helper()
	opt, shown, err := parseURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := keyspace.New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	s := newLiveSet(opt, shown, keys, "")
	s.Logger = zap.New(core)
	s.Leases().Add(storecore.Settings{Usage: storecore.Interval{Every: time.Hour}, Reload: storecore.Interval{Off: true}})
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	s.WithTimeout = withTimeout
	s.Start()
	t.Cleanup(func() { _ = s.Destruct() })
	return s, logs
}

// stallClock plays stalls of this process: while stalls is above 0, the
// next Redis call of the follower gets a context whose deadline passed 30s
// ago, as a call does when the process stood still (SIGSTOP) 30s past its
// deadline: it fails with a time-out that came late.
type stallClock struct{ stalls atomic.Int32 }

func (c *stallClock) withTimeout(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if c.stalls.Add(-1) >= 0 {
		return context.WithDeadline(parent, time.Now().Add(-30*time.Second))
	}
	c.stalls.Store(0)
	return context.WithTimeout(parent, d)
}

// A Caddy stopped (SIGSTOP) or its machine suspended: the follower's
// blocking read, whose deadline passed meanwhile, fails when it resumes.
// That is no outage: no "cannot reach Redis", no failed load counted, and
// the changes go on reaching the store. A real outage is still said, once,
// at the second failure in a row, even right after a stall.
func TestRedisStallIsNotAnOutage(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis outages and round trips")
	r := testredis.Start(t)
	rs := records(t, r, "")
	raw, _ := teststores.AddKey(t, rs, "a")
	var clock stallClock
	s, logs := openHookedRedisStore(t, r, "", clock.withTimeout)
	errorsBefore := reloadErrors(s)

	for round := range 3 {
		clock.stalls.Store(1)
		testredis.Eventually(t, 5*time.Second, "the follower made no Redis call", func() bool { return clock.stalls.Load() == 0 })
		if err := s.Refresh(); err != nil {
			t.Fatalf("round %d: check after a stall: %v", round, err)
		}
		rawN, _ := teststores.AddKey(t, rs, fmt.Sprint("after stall ", round))
		testredis.Eventually(t, 2*time.Second, "a change after a stall is not in force", func() bool { return admits(s, rawN) })
	}
	// A stall on the check asked for itself.
	clock.stalls.Store(1)
	if err := s.Refresh(); err != nil {
		t.Fatalf("check that stalled: %v", err)
	}
	if n := lines(logs, downLine) + lines(logs, upLine); n != 0 {
		t.Errorf("stalls logged %d lines about reaching Redis: %v", n, logs.All())
	}
	if got := reloadErrors(s) - errorsBefore; got != 0 {
		t.Errorf("stalls counted %v failed loads", got)
	}

	// A stall, then Redis gone for real: said once, at the next failure.
	clock.stalls.Store(1)
	r.Kill()
	if err := s.Refresh(); err == nil {
		t.Fatal("check with Redis down: no error")
	}
	if err := s.Refresh(); err == nil {
		t.Fatal("check with Redis down: no error")
	}
	if n := lines(logs, downLine); n != 1 {
		t.Errorf("the outage was logged %d times, want once: %v", n, logs.All())
	}
	if got := reloadErrors(s) - errorsBefore; got != 1 {
		t.Errorf("the outage counted %v failed loads, want 1", got)
	}
	if !admits(s, raw) {
		t.Fatal("the keys in force were lost")
	}
}

// cutProxy stands between a store and Redis, and can cut the way: while
// cut, the connections it holds are closed and each new one is closed at
// once, as when Redis is down or the network to it fails; each connection
// refused so is signalled on refused, so that a test knows when the
// follower has just tried.
type cutProxy struct {
	ln      net.Listener
	target  string
	refused chan struct{}

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

func startCutProxy(t testing.TB, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, refused: make(chan struct{}, 1000), conns: make(map[net.Conn]bool)}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close()
		p.refused <- struct{}{}
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { _, _ = io.Copy(up, c); up.Close() }()
	_, _ = io.Copy(c, up)
	c.Close()
}

// setCut cuts the way, or opens it again.
func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// nextAttempt waits until the follower tries to connect while the way is
// cut, after any try it made before.
func (p *cutProxy) nextAttempt(t testing.TB) {
	t.Helper()
	for {
		select {
		case <-p.refused:
			continue
		default:
		}
		break
	}
	select {
	case <-p.refused:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not try to reach Redis within 10s")
	}
}

// Once Redis answers again, a change made then is in force within a
// second: the follower tries at least every maxBackoff while Redis is
// down, and its first round once Redis answers checks the version at once
// rather than blocking on the log. Measured over several outages, each
// long enough for the backoff to reach its cap:
//   - the way to Redis cut, and opened again right after a failed attempt
//     (the worst case: the whole wait until the next one);
//   - Redis killed, and restarted with its data;
//   - Redis frozen (SIGSTOP) past its time-outs, then thawed.
func TestRedisCatchesUpWithinASecondOfAnswering(t *testing.T) {
	testkeys.Slow(t, "seconds of Redis outages and round trips")
	const runs = 3
	measure := func(t *testing.T, what string, took []time.Duration) {
		t.Helper()
		worst := slices.Max(took)
		t.Logf("%s: a change in force %v after Redis answered again (worst %v)", what, took, worst)
		if worst >= time.Second {
			t.Errorf("%s: a change took %v to be in force once Redis answered again, want under 1s", what, worst)
		}
	}
	// revoke revokes id at once, and returns how long after back (when
	// Redis answered again) the revoke is in force on s.
	revoke := func(t *testing.T, rs Records, s *live.Set, raw, id string, back time.Time) time.Duration {
		t.Helper()
		if _, _, err := keyops.Revoke(rs, id, time.Now(), nil); err != nil {
			t.Fatalf("revoke once Redis is back: %v", err)
		}
		testredis.Eventually(t, 10*time.Second, "the revoke did not reach the store", func() bool { return !admits(s, raw) })
		return time.Since(back)
	}

	t.Run("way cut", func(t *testing.T) {
		r := testredis.Start(t)
		rs := records(t, r, "")
		teststores.AddKey(t, rs, "first")
		p := startCutProxy(t, fmt.Sprintf("127.0.0.1:%d", r.Port))
		via := &testredis.Server{T: t, URL: "redis://" + p.ln.Addr().String() + "/0"}
		s, logs, err := openLoggedRedisStore(t, via, "", "")
		if err != nil {
			t.Fatal(err)
		}
		var took []time.Duration
		for run := range runs {
			raw, rec := teststores.AddKey(t, rs, fmt.Sprint("run ", run))
			testredis.Eventually(t, 5*time.Second, "the new key is not in force", func() bool { return admits(s, raw) })
			p.setCut(true)
			for range 6 { // the backoff at its cap
				p.nextAttempt(t)
			}
			if n := lines(logs, downLine); n != run+1 {
				t.Fatalf("outage %d: logged %d times", run+1, n)
			}
			p.nextAttempt(t)
			p.setCut(false)
			took = append(took, revoke(t, rs, s, raw, rec.ID, time.Now()))
		}
		measure(t, "way cut", took)
	})

	t.Run("killed and restarted", func(t *testing.T) {
		r := testredis.Start(t)
		rs := records(t, r, "")
		teststores.AddKey(t, rs, "first")
		s, logs, err := openLoggedRedisStore(t, r, "", "")
		if err != nil {
			t.Fatal(err)
		}
		var took []time.Duration
		for run := range runs {
			raw, rec := teststores.AddKey(t, rs, fmt.Sprint("run ", run))
			testredis.Eventually(t, 5*time.Second, "the new key is not in force", func() bool { return admits(s, raw) })
			r.Do("SAVE") // loaded again as Redis starts
			r.Kill()
			testredis.Eventually(t, 10*time.Second, "the outage was not logged", func() bool { return lines(logs, downLine) == run+1 })
			r.Restart() // returns once Redis answers
			back := time.Now()
			rs = records(t, r, "") // the commands' connection is gone with it
			took = append(took, revoke(t, rs, s, raw, rec.ID, back))
		}
		measure(t, "killed and restarted", took)
	})

	t.Run("frozen and thawed", func(t *testing.T) {
		r := testredis.Start(t)
		rs := records(t, r, "")
		teststores.AddKey(t, rs, "first")
		quick := &testredis.Server{T: t, Port: r.Port, URL: r.URL + "?dial_timeout=300ms&write_timeout=300ms"}
		s, logs, err := openLoggedRedisStore(t, quick, "", "")
		if err != nil {
			t.Fatal(err)
		}
		var took []time.Duration
		for run := range runs {
			raw, rec := teststores.AddKey(t, rs, fmt.Sprint("run ", run))
			testredis.Eventually(t, 5*time.Second, "the new key is not in force", func() bool { return admits(s, raw) })
			if err := syscall.Kill(r.Cmd.Process.Pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			testredis.Eventually(t, 20*time.Second, "the outage was not logged", func() bool { return lines(logs, downLine) == run+1 })
			if err := syscall.Kill(r.Cmd.Process.Pid, syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			took = append(took, revoke(t, rs, s, raw, rec.ID, time.Now()))
		}
		measure(t, "frozen and thawed", took)
	})
}
