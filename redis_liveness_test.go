package apikey

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
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
func reloadErrors(s *redisKeyStore) float64 {
	var m dto.Metric
	if err := s.metrics.reloadError.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
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
	r := startRedis(t)
	for i, tc := range []struct {
		name    string
		key     func(redisKeys) string
		corrupt func(k redisKeys, id string)
	}{
		{"version not a number", func(k redisKeys) string { return k.version }, func(k redisKeys, _ string) {
			r.do("SET", k.version, "12abc")
		}},
		{"records of the wrong type, a change logged", func(k redisKeys) string { return k.records }, func(k redisKeys, id string) {
			r.do("DEL", k.records)
			r.do("SET", k.records, "x")
			logEntry(r, k, `["`+id+`"]`, `[""]`)
		}},
		{"log of the wrong type", func(k redisKeys) string { return k.log }, func(k redisKeys, _ string) {
			r.do("DEL", k.log)
			r.do("SET", k.log, "x")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("u%d:", i)
			k, _ := newRedisKeys(prefix)
			rs := r.records(prefix)
			raw, rec := addRedisKey(t, rs, "a")
			s, logs, err := openLoggedRedisStore(t, r, prefix, "")
			if err != nil {
				t.Fatal(err)
			}
			errorsBefore := reloadErrors(s)
			saved, err := r.do("DUMP", tc.key(k)).ToString()
			if err != nil {
				t.Fatal(err)
			}

			tc.corrupt(k, rec.ID)
			for range 5 {
				if err := s.askSync(); err == nil {
					t.Fatal("a check against the hostile key set went through")
				}
			}
			// The follower's own rounds too: a few of them at least.
			calls := followerCalls(r)
			eventually(t, 10*time.Second, "the follower made no rounds of its own", func() bool { return followerCalls(r) >= calls+8 })
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
			r.do("DEL", tc.key(k))
			r.do("RESTORE", tc.key(k), "0", saved)
			rawB, _ := addRedisKey(t, rs, "after")
			for range 3 {
				if err := s.askSync(); err != nil {
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
func followerCalls(r *testRedis) int {
	r.t.Helper()
	info, err := r.do("INFO", "commandstats").ToString()
	if err != nil {
		r.t.Fatal(err)
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
func openHookedRedisStore(t testing.TB, r *testRedis, prefix string, withTimeout func(context.Context, time.Duration) (context.Context, context.CancelFunc)) (*redisKeyStore, *observer.ObservedLogs) {
	t.Helper()
	opt, shown, err := redisURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := newRedisKeys(prefix)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	s := newRedisKeyStore(opt, shown, keys, "")
	s.logger = zap.New(core)
	s.leases.add(storeSettings{usage: interval{every: time.Hour}, reload: interval{off: true}})
	if err := s.open(); err != nil {
		t.Fatal(err)
	}
	s.withTimeout = withTimeout
	s.start()
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
	r := startRedis(t)
	rs := r.records("")
	raw, _ := addRedisKey(t, rs, "a")
	var clock stallClock
	s, logs := openHookedRedisStore(t, r, "", clock.withTimeout)
	errorsBefore := reloadErrors(s)

	for round := range 3 {
		clock.stalls.Store(1)
		eventually(t, 5*time.Second, "the follower made no Redis call", func() bool { return clock.stalls.Load() == 0 })
		if err := s.askSync(); err != nil {
			t.Fatalf("round %d: check after a stall: %v", round, err)
		}
		rawN, _ := addRedisKey(t, rs, fmt.Sprint("after stall ", round))
		eventually(t, 2*time.Second, "a change after a stall is not in force", func() bool { return admits(s, rawN) })
	}
	// A stall on the check asked for itself.
	clock.stalls.Store(1)
	if err := s.askSync(); err != nil {
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
	r.kill()
	if err := s.askSync(); err == nil {
		t.Fatal("check with Redis down: no error")
	}
	if err := s.askSync(); err == nil {
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
