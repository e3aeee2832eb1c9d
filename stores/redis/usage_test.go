package redis

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// Two servers add usage counts of the same keys and hours: the record
// store reads their sums, by hour then result, without zero counts nor
// other keys' counts. Each hour's hash expires once it is older than the
// retention (one PEXPIREAT per hash and call); an hour already past it is
// not written; a row of an unknown result fails the call before anything
// is written.
func TestRedisUsageCountsAddUp(t *testing.T) {
	r := testredis.Start(t)
	a, b := bankOnly(t, r, "uc:"), bankOnly(t, r, "uc:")
	rs := records(t, r, "uc:")
	c := r.Client()
	ctx := context.Background()
	now := usagecount.Hour(time.Now())
	h0, h1, h2 := now.Add(-2*time.Hour), now.Add(-time.Hour), now
	keep := 3 * time.Hour

	before := commandStats(t, c)
	if err := a.AddUsageCounts(ctx, []usagecount.Row{
		{ID: "k1", Hour: h0.Add(17 * time.Minute), Result: "admitted", N: 5},
		{ID: "k1", Hour: h0, Result: "rate_limited", N: 2},
		{ID: "k1", Hour: h2, Result: "quota_exceeded", N: 1},
		{ID: "k:2", Hour: h1, Result: "admitted", N: 9},
		{ID: "k1", Hour: h1, Result: "revoked", N: 0},
	}, keep); err != nil {
		t.Fatal(err)
	}
	if diff, total := commandsSince(t, c, before); diff["hincrby"] != 4 || diff["pexpireat"] != 3 || total != 7 {
		t.Errorf("commands for 4 counts in 3 hours: %v, want 4 HINCRBY and 3 PEXPIREAT", diff)
	}
	if err := b.AddUsageCounts(ctx, []usagecount.Row{
		{ID: "k1", Hour: h0, Result: "admitted", N: 7},
		{ID: "k1", Hour: h2, Result: "admitted", N: 3},
		{ID: "k1", Hour: h2, Result: "quota_exceeded", N: 4},
	}, keep); err != nil {
		t.Fatal(err)
	}
	want := []usagecount.Row{
		{ID: "k1", Hour: h0, Result: "admitted", N: 12},
		{ID: "k1", Hour: h0, Result: "rate_limited", N: 2},
		{ID: "k1", Hour: h2, Result: "admitted", N: 3},
		{ID: "k1", Hour: h2, Result: "quota_exceeded", N: 5},
	}
	got, err := rs.ReadUsageCounts("k1", h0.Add(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("key k1's counts:\n got %v\nwant %v", got, want)
	}
	if got, err := rs.ReadUsageCounts("k1", h1); err != nil || !reflect.DeepEqual(got, want[2:]) {
		t.Errorf("key k1's counts since the hour before: %v, %v; want %v", got, err, want[2:])
	}
	if got, err := rs.ReadUsageCounts("k:2", time.Time{}); err != nil || len(got) != 1 || got[0].N != 9 || !got[0].Hour.Equal(h1) {
		t.Errorf("key k:2's counts since ever: %v, %v; want 9 admitted at %s", got, err, h1)
	}
	if got, err := rs.ReadUsageCounts("k", h0); err != nil || len(got) != 0 {
		t.Errorf("the counts of a key whose id starts another's: %v, %v; want none", got, err)
	}

	for _, h := range []time.Time{h0, h2} {
		key := "{uc:}usage:" + h.Format("2006010215")
		if at, err := r.Do("PEXPIRETIME", key).AsInt64(); err != nil || at != h.Add(time.Hour+keep).UnixMilli() {
			t.Errorf("%s expires at %d (%v), want the hour's end plus 3h: %d", key, at, err, h.Add(time.Hour+keep).UnixMilli())
		}
	}
	if n, _ := r.Do("EXISTS", "{uc:}usage:"+h1.Format("2006010215")).AsInt64(); n != 1 {
		t.Error("the hour of key k:2's counts is missing")
	}

	old := now.Add(-5 * time.Hour)
	if err := a.AddUsageCounts(ctx, []usagecount.Row{{ID: "k1", Hour: old, Result: "admitted", N: 1}}, keep); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.Do("EXISTS", "{uc:}usage:"+old.Format("2006010215")).AsInt64(); n != 0 {
		t.Error("counts of an hour past the retention were written")
	}
	if err := a.AddUsageCounts(ctx, []usagecount.Row{{ID: "k1", Hour: h1, Result: "admitted", N: 1}, {ID: "k1", Hour: h1, Result: "teapot", N: 1}}, keep); err == nil || !strings.Contains(err.Error(), `"teapot" is not one of`) {
		t.Errorf("a row of an unknown result: %v, want it refused", err)
	}
	if n, _ := r.Do("HEXISTS", "{uc:}usage:"+h1.Format("2006010215"), "k1:admitted").AsInt64(); n != 0 {
		t.Error("a call refused for one row wrote another")
	}

	// The default retention, for a keep of 0.
	if err := a.AddUsageCounts(ctx, []usagecount.Row{{ID: "k3", Hour: h1, Result: "expired", N: 1}}, 0); err != nil {
		t.Fatal(err)
	}
	if at, _ := r.Do("PEXPIRETIME", "{uc:}usage:"+h1.Format("2006010215")).AsInt64(); at != h1.Add(time.Hour+usagecount.DefaultRetention).UnixMilli() {
		t.Errorf("with keep 0 the hour expires at %d, want after usagecount.DefaultRetention", at)
	}

	// A hand-edited count that is not a number is named.
	r.Do("HSET", "{uc:}usage:"+h2.Format("2006010215"), "k1:revoked", "x")
	if _, err := rs.ReadUsageCounts("k1", h2); err == nil || !strings.Contains(err.Error(), "k1:revoked") {
		t.Errorf("a count that is not a number: %v, want an error naming it", err)
	}
}

// A day of a thousand keys, written in more than one pipeline, reads back
// whole.
func TestRedisUsageCountsInBatches(t *testing.T) {
	r := testredis.Start(t)
	s := bankOnly(t, r, "ub:")
	rs := records(t, r, "ub:")
	now := usagecount.Hour(time.Now())
	var rows []usagecount.Row
	for h := range 24 {
		for k := range 100 {
			rows = append(rows, usagecount.Row{ID: "k" + strconv.Itoa(k), Hour: now.Add(-time.Duration(h) * time.Hour), Result: usagecount.Results[k%usagecount.NumResults], N: int64(h + 1)})
		}
	}
	if err := s.AddUsageCounts(context.Background(), rows, 0); err != nil {
		t.Fatal(err)
	}
	got, err := rs.ReadUsageCounts("k3", now.Add(-23*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 24 || got[0].N != 24 || got[23].N != 1 || got[0].Result != usagecount.Results[3] {
		t.Errorf("key k3's day: %v, want 24 hours of %s, 24 down to 1", got, usagecount.Results[3])
	}
	for i := 1; i < len(got); i++ {
		if !got[i-1].Hour.Before(got[i].Hour) {
			t.Fatalf("rows not by hour: %v", got)
		}
	}
}

// Redis frozen: adding counts gives up within the answer time-out, and
// says so.
func TestRedisUsageCountsFailFastWhenRedisIsDown(t *testing.T) {
	testkeys.Slow(t, "waits out a 1s answer time-out")
	r := testredis.Start(t)
	slow := &testredis.Server{T: t, Port: r.Port, URL: r.URL + "?dial_timeout=1s&write_timeout=1s"}
	s := bankOnly(t, slow, "ud:")
	pid := r.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	start := time.Now()
	err := s.AddUsageCounts(context.Background(), []usagecount.Row{{ID: "a", Hour: time.Now(), Result: "admitted", N: 1}}, 0)
	if took := time.Since(start); err == nil || !strings.Contains(err.Error(), "Redis did not answer within 1s") || took > 3*time.Second {
		t.Errorf("adding counts with Redis frozen: %v after %s, want it to give up after 1s and say so", err, took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap the time-out", err)
	}
}
