package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/live"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// bankOnly is a live store on r's key set at prefix that is only
// connected: no follower, no writers, so that the Redis commands seen are
// its quota's and usage counts' alone. It needs no key set in Redis.
func bankOnly(t testing.TB, r *testredis.Server, prefix string) *live.Set {
	t.Helper()
	opt, shown, err := parseURL(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := keyspace.New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	s := newLiveSet(opt, shown, keys, "")
	t.Cleanup(s.ReleaseMetrics)
	c, err := s.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return s
}

// commandStats reads INFO commandstats: calls by command name (evalsha,
// hget...).
func commandStats(t testing.TB, c rueidis.Client) map[string]int64 {
	t.Helper()
	info, err := c.Do(context.Background(), c.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int64)
	for line := range strings.Lines(info) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			t.Fatalf("INFO commandstats: %q", line)
		}
		out[name] = n
	}
	return out
}

// commandsSince is what the counts of commandStats grew by since before,
// without the INFO calls that read them and the HELLO that starts a
// connection (a rueidis client opens its connections as it needs them,
// the test's own one included).
func commandsSince(t testing.TB, c rueidis.Client, before map[string]int64) (map[string]int64, int64) {
	t.Helper()
	after := commandStats(t, c)
	diff := make(map[string]int64)
	var total int64
	for name, n := range after {
		if name == "info" || name == "hello" {
			continue
		}
		if d := n - before[name]; d != 0 {
			diff[name] = d
			total += d
		}
	}
	return diff, total
}

// The Redis bank answers each take as quota.MemoryBank, the reference,
// does, and holds the same state: a seeded random sequence of batches of
// takes (with owed units, wants above what is left, a key twice in one
// batch), gives (some to a period the key has left, which leave its
// current period alone), grants, and a new period now and then, run on
// both.
func TestRedisQuotaBankMatchesMemoryBank(t *testing.T) {
	r := testredis.Start(t)
	s := bankOnly(t, r, "qm:")
	rs := records(t, r, "qm:")
	mem := quota.NewMemoryBank()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(19, 1))
	ids := []string{"k1", "k2", "key:with:colons", "k4"}
	day := time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)
	periodOf := make(map[string]int) // id -> day index
	name := func(d int) string { n, _, _ := quota.Day.At(day.AddDate(0, 0, d)); return n }
	ends := func(d int) time.Time { _, _, e := quota.Day.At(day.AddDate(0, 0, d)); return e }
	allowance := map[string]int64{"k1": 100, "k2": 7, "key:with:colons": 1000, "k4": 0}
	for step := range 400 {
		switch op := rng.IntN(10); {
		case op < 6: // a batch of takes
			var takes []quota.Take
			for range 1 + rng.IntN(5) {
				id := ids[rng.IntN(len(ids))]
				d := periodOf[id]
				takes = append(takes, quota.Take{ID: id, Period: name(d), Allowance: allowance[id], Want: rng.Int64N(40) - 2, Owed: max(0, rng.Int64N(10)-7), Ends: ends(d)})
			}
			want, _ := mem.TakeQuota(ctx, takes)
			got, err := s.TakeQuota(ctx, takes)
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			for i := range takes {
				if got[i] != want[i] {
					t.Fatalf("step %d: take %+v: Redis answered %+v, MemoryBank %+v", step, takes[i], got[i], want[i])
				}
			}
		case op < 8: // gives, one of them maybe to the period before
			var gives []quota.Give
			for range 1 + rng.IntN(3) {
				id := ids[rng.IntN(len(ids))]
				d := periodOf[id]
				if rng.IntN(4) == 0 && d > 0 {
					d--
				}
				gives = append(gives, quota.Give{ID: id, Period: name(d), N: rng.Int64N(30)})
			}
			if err := mem.GiveQuota(ctx, gives); err != nil {
				t.Fatal(err)
			}
			if err := s.GiveQuota(ctx, gives); err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
		case op < 9: // a grant
			id := ids[rng.IntN(len(ids))]
			d := periodOf[id]
			n := rng.Int64N(20)
			mem.Grant(id, name(d), n)
			st, err := rs.GrantQuota(id, name(d), n, ends(d))
			if err != nil {
				t.Fatal(err)
			}
			if want := mem.State(id); st != want {
				t.Fatalf("step %d: grant of %d to %s: Redis's state %+v, MemoryBank's %+v", step, n, id, st, want)
			}
		default: // a key moves on to the next day
			periodOf[ids[rng.IntN(len(ids))]]++
		}
		// The state of every key that has one, in its latest period.
		periods := make(map[string]string)
		for _, id := range ids {
			if mem.State(id).Period != "" {
				periods[id] = mem.State(id).Period
			}
		}
		states, err := rs.QuotaStates(periods)
		if err != nil {
			t.Fatal(err)
		}
		for id := range periods {
			if want := mem.State(id); states[id] != want {
				t.Fatalf("step %d: key %s: Redis holds %+v, MemoryBank %+v", step, id, states[id], want)
			}
		}
	}
	if states, err := rs.QuotaStates(map[string]string{"never-used": name(0)}); err != nil || len(states) != 0 {
		t.Errorf("the state of a key that took nothing: %v, %v; want none", states, err)
	}
	if st, err := rs.GrantQuota("k1", name(periodOf["k1"]), -1_000_000, ends(periodOf["k1"])); err != nil || st.Granted != 0 {
		t.Errorf("taking back more than was granted: %+v, %v; want 0 granted", st, err)
	}
	if _, err := rs.GrantQuota("k9", name(0), quota.MaxRequests, ends(0)); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.GrantQuota("k9", name(0), 1, ends(0)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("granting past quota.MaxRequests: %v, want it refused", err)
	}
}

// Each period's hash expires a day after the period ends (quota.Expired),
// a fixed allowance's never; a give to a key without a state makes none; a
// value that is not a number fails the whole call and writes nothing.
func TestRedisQuotaStateExpiresAndIsChecked(t *testing.T) {
	r := testredis.Start(t)
	s := bankOnly(t, r, "qe:")
	ctx := context.Background()
	now := time.Now()
	dayName, _, dayEnd := quota.Day.At(now)
	monthName, _, monthEnd := quota.Month.At(now)
	_, err := s.TakeQuota(ctx, []quota.Take{
		{ID: "a", Period: dayName, Allowance: 10, Want: 1, Ends: dayEnd},
		{ID: "b", Period: monthName, Allowance: 10, Want: 1, Ends: monthEnd},
		{ID: "c", Period: "none", Allowance: 10, Want: 1, Ends: quota.Never},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		period string
		want   int64
	}{{dayName, dayEnd.Add(24 * time.Hour).UnixMilli()}, {monthName, monthEnd.Add(24 * time.Hour).UnixMilli()}, {"none", -1}} {
		if got, err := r.Do("PEXPIRETIME", "{qe:}quota:"+c.period).AsInt64(); err != nil || got != c.want {
			t.Errorf("{qe:}quota:%s expires at %d (%v), want %d", c.period, got, err, c.want)
		}
	}
	if !quota.Expired(dayEnd, dayEnd.Add(24*time.Hour+time.Millisecond)) {
		t.Error("quota.Expired disagrees with the expiry")
	}

	if err := s.GiveQuota(ctx, []quota.Give{{ID: "a", Period: "1999-01-01", N: 5}, {ID: "nobody", Period: dayName, N: 5}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.Do("EXISTS", "{qe:}quota:1999-01-01").AsInt64(); n != 0 {
		t.Error("a give to a period with no state made a hash (which would never expire)")
	}
	if n, _ := r.Do("HEXISTS", "{qe:}quota:"+dayName, "u:nobody").AsInt64(); n != 0 {
		t.Error("a give to a key with no state made one")
	}

	r.Do("HSET", "{qe:}quota:"+dayName, "g:z", "lots")
	_, err = s.TakeQuota(ctx, []quota.Take{{ID: "a", Period: dayName, Allowance: 10, Want: 3, Ends: dayEnd}, {ID: "z", Period: dayName, Allowance: 10, Want: 3, Ends: dayEnd}})
	if err == nil || !errors.Is(err, quota.ErrUnavailable) || !strings.Contains(err.Error(), "g:z holds lots, not a whole number") {
		t.Errorf("a take on a field that holds no number: %v, want it to fail and name the field", err)
	}
	if used, _ := r.Do("HGET", "{qe:}quota:"+dayName, "u:a").AsInt64(); used != 1 {
		t.Errorf("key a's used is %d after a failed call, want 1 as before: a call is applied whole or not at all", used)
	}
	if _, err := s.TakeQuota(ctx, []quota.Take{{ID: "a", Period: dayName, Allowance: 10, Owed: -1}}); err == nil {
		t.Error("a take with units owed below 0 was sent")
	}

	// A script flushed from Redis (a restart) is sent again whole.
	r.Do("SCRIPT", "FLUSH")
	if got, err := s.TakeQuota(ctx, []quota.Take{{ID: "a", Period: dayName, Allowance: 10, Want: 3, Ends: dayEnd}}); err != nil || got[0] != (quota.Taken{Got: 3, Left: 6}) {
		t.Errorf("a take after SCRIPT FLUSH: %v, %v; want 3 got, 6 left", got, err)
	}
}

// A round of takes of more keys than one script run takes goes as several
// runs in one pipeline, answered in order.
func TestRedisQuotaTakesInBatches(t *testing.T) {
	r := testredis.Start(t)
	s := bankOnly(t, r, "qb:")
	c := r.Client()
	n := 2*keyspace.QuotaBatch + 17
	takes := make([]quota.Take, n)
	for i := range takes {
		takes[i] = quota.Take{ID: "k" + strconv.Itoa(i), Period: "none", Allowance: int64(i), Want: 5, Ends: quota.Never}
	}
	before := commandStats(t, c)
	got, err := s.TakeQuota(context.Background(), takes)
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range got {
		want := quota.Taken{Got: min(5, int64(i)), Left: max(int64(i)-5, 0)}
		if g != want {
			t.Fatalf("take %d: %+v, want %+v", i, g, want)
		}
	}
	// The script's SHA is known, but Redis has not seen it yet: one
	// EVALSHA a run, each answered NOSCRIPT, then one EVAL a run.
	if diff, _ := commandsSince(t, c, before); diff["evalsha"] != 3 || diff["eval"] != 3 {
		t.Errorf("commands for %d takes: %v, want 3 runs of EVALSHA and 3 of EVAL (NOSCRIPT the first time)", n, diff)
	}
	before = commandStats(t, c)
	if _, err := s.TakeQuota(context.Background(), takes); err != nil {
		t.Fatal(err)
	}
	if diff, _ := commandsSince(t, c, before); diff["evalsha"] != 3 || diff["eval"] != 0 {
		t.Errorf("commands for %d takes, the script loaded: %v, want 3 runs of EVALSHA alone", n, diff)
	}
}

// failable is a bank that fails every call once dead is set, as a server
// that crashed can no longer reach its bank: what it held stays taken.
type failable struct {
	quota.Bank
	dead atomic.Bool
}

var errCrashed = errors.New("this server crashed")

func (f *failable) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	if f.dead.Load() {
		return nil, errCrashed
	}
	return f.Bank.TakeQuota(ctx, takes)
}

func (f *failable) GiveQuota(ctx context.Context, gives []quota.Give) error {
	if f.dead.Load() {
		return errCrashed
	}
	return f.Bank.GiveQuota(ctx, gives)
}

// Three servers (three live stores and their quota meters) spend one
// key's quota of 100 000 concurrently through one redis-server: together
// they admit exactly 100 000. Then again with one of them crashing
// midway (it stops spending, never gives back what it holds): the others
// admit the rest but what it held, at most one block (1 000).
func TestRedisQuotaMetersShareOneQuota(t *testing.T) {
	const allowance = 100_000
	q := quota.Quota{Requests: allowance, Period: quota.None}
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			r := testredis.Start(t)
			teststores.AddKey(t, records(t, r, "qf:"), "a")
			var banks [3]*failable
			var meters [3]*quota.Meter
			for i := range meters {
				banks[i] = &failable{Bank: &Store{store: mustOpenRedisStore(t, r, "qf:")}}
				meters[i] = quota.NewMeter(banks[i], quota.Options{})
				t.Cleanup(meters[i].Close) // after the counts are checked: the crashed one's gives fail
			}
			var admitted [3]atomic.Int64
			var total atomic.Int64
			var stopCrashed atomic.Bool
			var wg, crashedWG sync.WaitGroup
			for i, m := range meters {
				for range 3 {
					w := &wg
					if crash && i == 0 {
						w = &crashedWG
					}
					w.Go(func() {
						for {
							if crash && i == 0 && stopCrashed.Load() || total.Load() > 2*allowance {
								return // crashed, or a bank that overspends: stop, and the counts say so
							}
							switch d := m.Spend("key-1", q, 1, time.Now().UnixNano()); d.Outcome {
							case quota.Spent:
								admitted[i].Add(1)
								total.Add(1)
							case quota.Exceeded:
								return
							case quota.Unavailable: // a block on its way for longer than MaxWait
							default:
								t.Errorf("outcome %d", d.Outcome)
								return
							}
						}
					})
				}
			}
			if crash {
				testredis.Eventually(t, time.Minute, "half the quota spent", func() bool { return total.Load() >= allowance/2 })
				stopCrashed.Store(true)
				crashedWG.Wait()
				banks[0].dead.Store(true)
			}
			wg.Wait()
			crashedWG.Wait()
			sum := total.Load()
			used, _ := r.Do("HGET", "{qf:}quota:none", "u:key-1").AsInt64()
			t.Logf("admitted by each server: %d, %d, %d; in all %d; used in Redis %d", admitted[0].Load(), admitted[1].Load(), admitted[2].Load(), sum, used)
			if used != allowance {
				t.Errorf("Redis holds %d units used, want all %d taken", used, allowance)
			}
			if !crash {
				if sum != allowance {
					t.Errorf("three servers admitted %d, want exactly %d", sum, allowance)
				}
				return
			}
			stranded := meters[0].Held("key-1")
			t.Logf("the crashed server stranded %d units (block %d)", stranded, q.Block())
			if sum+stranded != allowance {
				t.Errorf("admitted %d and stranded %d: want them to make the quota, %d", sum, stranded, allowance)
			}
			if sum > allowance || sum < allowance-q.Block() {
				t.Errorf("admitted %d with a server crashed, want from %d to %d", sum, allowance-q.Block(), allowance)
			}
			for i := 1; i < 3; i++ {
				if held := meters[i].Held("key-1"); held != 0 {
					t.Errorf("surviving server %d still holds %d units after it refused the key", i, held)
				}
			}
			if admitted[1].Load() == 0 || admitted[2].Load() == 0 {
				t.Error("a surviving server admitted nothing")
			}
		})
	}
}

// Redis killed, or frozen (SIGSTOP): a take and a give fail within the
// connection's answer time-out, saying so, as quota.ErrUnavailable; a
// meter on the store then refuses what it does not hold (Unavailable).
func TestRedisQuotaFailsFastWhenRedisIsDown(t *testing.T) {
	testkeys.Slow(t, "waits out a 1s answer time-out")
	r := testredis.Start(t)
	slow := &testredis.Server{T: t, Port: r.Port, URL: r.URL + "?dial_timeout=1s&write_timeout=1s"}
	s := bankOnly(t, slow, "qd:")
	rs := records(t, slow, "qd:")
	ctx := context.Background()
	take := []quota.Take{{ID: "a", Period: "none", Allowance: 100, Want: 1, Ends: quota.Never}}
	if _, err := s.TakeQuota(ctx, take); err != nil {
		t.Fatal(err)
	}

	pid := r.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	start := time.Now()
	_, err := s.TakeQuota(ctx, take)
	took := time.Since(start)
	if !errors.Is(err, quota.ErrUnavailable) || !strings.Contains(err.Error(), "Redis did not answer within 1s") {
		t.Errorf("a take with Redis frozen: %v, want quota.ErrUnavailable saying that Redis did not answer within 1s", err)
	}
	if took < time.Second || took > 3*time.Second {
		t.Errorf("a take with Redis frozen gave up after %s, want the answer time-out (1s)", took)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	err = s.GiveQuota(short, []quota.Give{{ID: "a", Period: "none", N: 1}})
	if took := time.Since(start); err == nil || !strings.Contains(err.Error(), "Redis did not answer within") || took > 2*time.Second {
		t.Errorf("a give with Redis frozen and 300ms allowed: %v after %s, want it to give up after 300ms", err, took)
	}
	for what, call := range map[string]func() error{
		"reading quota states": func() error { _, err := rs.QuotaStates(map[string]string{"a": "none"}); return err },
		"granting":             func() error { _, err := rs.GrantQuota("a", "none", 1, quota.Never); return err },
		"reading usage counts": func() error { _, err := rs.ReadUsageCounts("a", time.Now()); return err },
	} {
		start := time.Now()
		err := call()
		if took := time.Since(start); err == nil || !strings.Contains(err.Error(), "Redis did not answer within 1s") || took > 3*time.Second {
			t.Errorf("%s with Redis frozen: %v after %s, want it to give up after 1s and say so", what, err, took)
		}
	}
	m := quota.NewMeter(s, quota.Options{})
	defer m.Close()
	start = time.Now()
	if d := m.Spend("b", quota.Quota{Requests: 100, Period: quota.None}, 1, time.Now().UnixNano()); d.Outcome != quota.Unavailable {
		t.Errorf("a meter on a frozen Redis: outcome %d, want Unavailable", d.Outcome)
	}
	if took := time.Since(start); took > quota.MaxWait+time.Second {
		t.Errorf("a request waited %s for a frozen Redis, want at most MaxWait (%s)", took, quota.MaxWait)
	}

	_ = syscall.Kill(pid, syscall.SIGCONT)
	r.Kill()
	start = time.Now()
	_, err = s.TakeQuota(ctx, take)
	if !errors.Is(err, quota.ErrUnavailable) || time.Since(start) > 2*time.Second {
		t.Errorf("a take with Redis killed: %v after %s, want quota.ErrUnavailable within the time-out", err, time.Since(start))
	}
	if err := s.GiveQuota(ctx, []quota.Give{{ID: "a", Period: "none", N: 1}}); !errors.Is(err, quota.ErrUnavailable) {
		t.Errorf("a give with Redis killed: %v, want quota.ErrUnavailable", err)
	}
}

// One round of the meter that takes for one key is one command from the
// server to Redis (EVALSHA), which runs, inside Redis, an HMGET of the
// key's fields, an HSET of its used units and, for a period that ends, a
// PEXPIREAT of the period's hash: four in INFO commandstats, three for a
// fixed allowance. A give is EVALSHA, HMGET and HSET.
func TestRedisQuotaCommandsPerRound(t *testing.T) {
	r := testredis.Start(t)
	s := bankOnly(t, r, "qc:")
	c := r.Client()
	ctx := context.Background()
	name, _, end := quota.Month.At(time.Now())
	month := []quota.Take{{ID: "a", Period: name, Allowance: 1000, Want: 10, Ends: end}}
	fixed := []quota.Take{{ID: "a", Period: "none", Allowance: 1000, Want: 10, Ends: quota.Never}}
	if _, err := s.TakeQuota(ctx, month); err != nil { // loads the script (NOSCRIPT, then EVAL)
		t.Fatal(err)
	}
	for _, c2 := range []struct {
		what string
		call func() error
		want map[string]int64
	}{
		{"a take in a month", func() error { _, err := s.TakeQuota(ctx, month); return err }, map[string]int64{"evalsha": 1, "hmget": 1, "hset": 1, "pexpireat": 1}},
		{"a take of a fixed allowance", func() error { _, err := s.TakeQuota(ctx, fixed); return err }, map[string]int64{"evalsha": 1, "hmget": 1, "hset": 1}},
		{"a give", func() error { return s.GiveQuota(ctx, []quota.Give{{ID: "a", Period: name, N: 3}}) }, map[string]int64{"evalsha": 1, "hmget": 1, "hset": 1}},
	} {
		before := commandStats(t, c)
		if err := c2.call(); err != nil {
			t.Fatal(err)
		}
		if diff, _ := commandsSince(t, c, before); !reflect.DeepEqual(diff, c2.want) {
			t.Errorf("%s: commands %v, want %v", c2.what, diff, c2.want)
		}
	}
}

// BenchmarkTakeQuota is one round of a meter that takes for one key: one
// TakeQuota of one take, against a real redis-server on loopback. It
// reports the commands Redis counts per round (INFO commandstats: the
// EVALSHA and the commands its script runs).
func BenchmarkTakeQuota(b *testing.B) {
	r := testredis.Start(b)
	s := bankOnly(b, r, "qbench:")
	c := r.Client()
	ctx := context.Background()
	name, _, end := quota.Month.At(time.Now())
	take := []quota.Take{{ID: "key-1", Period: name, Allowance: quota.MaxRequests, Want: 1, Ends: end}}
	if _, err := s.TakeQuota(ctx, take); err != nil {
		b.Fatal(err)
	}
	before := commandStats(b, c)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.TakeQuota(ctx, take); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	diff, total := commandsSince(b, c, before)
	b.ReportMetric(float64(total)/float64(b.N), "redis-cmds/op")
	b.ReportMetric(float64(diff["evalsha"])/float64(b.N), "round-trips/op")
}

// A server spending one key's quota of 1 000 000 a month (a block of
// 10 000) at 10 000 requests/s, paced for 3 s: every request admitted,
// and the Redis commands it costs per second measured (INFO
// commandstats). The meter takes when it holds less than half a block,
// topping up to a block: a take per ~5 000 requests, two a second, each
// four commands in Redis (one from the server).
func TestRedisQuotaCommandsAt10kRequestsPerSecond(t *testing.T) {
	testkeys.Slow(t, "3 s of paced requests")
	const rate, dur = 10_000, 3 * time.Second
	r := testredis.Start(t)
	s := bankOnly(t, r, "q10k:")
	c := r.Client()
	q := quota.Quota{Requests: 1_000_000, Period: quota.Month}
	if _, err := s.TakeQuota(context.Background(), []quota.Take{{ID: "warm-up", Period: "none", Want: 1, Ends: quota.Never}}); err != nil {
		t.Fatal(err) // Redis now has the script: no EVAL below
	}
	m := quota.NewMeter(s, quota.Options{})
	before := commandStats(t, c)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	sent, refused := 0, 0
	for elapsed := time.Duration(0); elapsed < dur; elapsed = time.Since(start) {
		for due := int(elapsed * rate / time.Second); sent < due; sent++ {
			if !m.Spend("key-1", q, 1, time.Now().UnixNano()).Allowed() {
				refused++
			}
		}
		<-tick.C // pacing: the requests due by now, every millisecond
	}
	took := time.Since(start)
	diff, total := commandsSince(t, c, before)
	m.Close() // gives back what it holds: not counted above
	perSec := func(n int64) float64 { return float64(n) / took.Seconds() }
	t.Logf("%d requests in %s (%.0f/s), %d refused; Redis commands %v: %.2f/s in all, %.2f/s from the server (EVALSHA); formula: %.2f takes/s",
		sent, took.Round(time.Millisecond), float64(sent)/took.Seconds(), refused, diff, perSec(total), perSec(diff["evalsha"]+diff["eval"]), float64(rate)/float64(q.Block()-(q.Block()+1)/2+1))
	if refused != 0 {
		t.Errorf("%d of %d requests refused, with the quota far from spent", refused, sent)
	}
	takes := diff["evalsha"] + diff["eval"]
	if most := int64(sent)/(q.Block()/2) + 2; takes > most || takes < 1 {
		t.Errorf("%d takes for %d requests, want from 1 to %d (one per half a block, and the first)", takes, sent, most)
	}
}

// On a Redis Cluster, for key sets served by two primaries: a take of two
// periods at once (one script run on two hashes, in the key set's slot), a
// give, a grant and the states, and usage counts added and read.
func TestRedisClusterQuotaAndUsage(t *testing.T) {
	testkeys.Slow(t, "starts a Redis Cluster of three primaries")
	cl := testredis.StartCluster(t, false)
	for _, prefix := range clusterPrefixes(t, cl) {
		t.Run(prefix, func(t *testing.T) {
			at := testredis.AtURL(t, cl.URL)
			s, rs := bankOnly(t, at, prefix), records(t, at, prefix)
			ctx := context.Background()
			day, _, dayEnd := quota.Day.At(time.Now())
			got, err := s.TakeQuota(ctx, []quota.Take{
				{ID: "a", Period: day, Allowance: 10, Want: 4, Ends: dayEnd},
				{ID: "b", Period: "none", Allowance: 3, Want: 4, Ends: quota.Never},
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := []quota.Taken{{Got: 4, Left: 6}, {Got: 3, Left: 0}}; !reflect.DeepEqual(got, want) {
				t.Errorf("takes: %v, want %v", got, want)
			}
			if err := s.GiveQuota(ctx, []quota.Give{{ID: "a", Period: day, N: 1}}); err != nil {
				t.Fatal(err)
			}
			if st, err := rs.GrantQuota("b", "none", 5, quota.Never); err != nil || st != (quota.State{Period: "none", Used: 3, Granted: 5}) {
				t.Errorf("grant: %+v, %v", st, err)
			}
			states, err := rs.QuotaStates(map[string]string{"a": day, "b": "none"})
			if err != nil {
				t.Fatal(err)
			}
			if want := map[string]quota.State{"a": {Period: day, Used: 3}, "b": {Period: "none", Used: 3, Granted: 5}}; !reflect.DeepEqual(states, want) {
				t.Errorf("states: %v, want %v", states, want)
			}
			hour := usagecount.Hour(time.Now())
			if err := s.AddUsageCounts(ctx, []usagecount.Row{{ID: "a", Hour: hour, Result: "admitted", N: 2}}, 0); err != nil {
				t.Fatal(err)
			}
			if rows, err := rs.ReadUsageCounts("a", hour); err != nil || len(rows) != 1 || rows[0].N != 2 {
				t.Errorf("usage counts: %v, %v; want 2 admitted", rows, err)
			}
		})
	}
}
