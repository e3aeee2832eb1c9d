package redis

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testredis"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// Two servers of a fleet (two live stores on one key set, each with its
// own limiter) count one key together: what one admitted is taken off what
// the other may admit once both have exchanged counts; refused requests
// are not counted; with Redis down each goes on limiting from what it has,
// says so once, counts the failure, and sends what it could not once Redis
// is back.
func TestRedisSharesRateLimitCounts(t *testing.T) {
	r := testredis.Start(t)
	teststores.AddKey(t, records(t, r, "rl:"), "a") // a store opens on a key set that exists
	a, logs, err := openLoggedRedisStore(t, r, "rl:", "")
	if err != nil {
		t.Fatal(err)
	}
	b := mustOpenRedisStore(t, r, "rl:")
	la, lb := ratelimit.New(ratelimit.Options{Fleet: true}), ratelimit.New(ratelimit.Options{Fleet: true})
	xa, xb := a.Exchange(la), b.Exchange(lb)
	limits := []ratelimit.Limit{{Requests: 10, Window: 24 * time.Hour}} // a window that rolls over at midnight UTC alone
	ctx := context.Background()
	admit := func(l *ratelimit.Limiter, n int) (admitted int) {
		for range n {
			if l.Allow("key-1", limits, time.Now().UnixNano()).Allowed {
				admitted++
			}
		}
		return admitted
	}

	if got := admit(la, 6); got != 6 {
		t.Fatalf("server A admitted %d of 6", got)
	}
	if err := xa(ctx); err != nil {
		t.Fatal(err)
	}
	if err := xb(ctx); err != nil { // B has nothing to send: it reads nothing either
		t.Fatal(err)
	}
	admit(lb, 1) // B now has a count of its own, so it learns the fleet's total at its next round
	if err := xb(ctx); err != nil {
		t.Fatal(err)
	}
	if got := admit(lb, 10); got != 3 {
		t.Errorf("server B admitted %d more after A's 6 and its own 1, want 3 (the limit is 10 for the fleet)", got)
	}
	if err := xb(ctx); err != nil { // B tells its 3
		t.Fatal(err)
	}
	// A learns of B's counts at its next round after a request of its
	// own: the overshoot a fleet allows, one interval's admissions.
	if got := admit(la, 1); got != 1 {
		t.Fatalf("server A, which last saw the fleet at 6, admitted %d of 1", got)
	}
	if err := xa(ctx); err != nil {
		t.Fatal(err)
	}
	if got := admit(la, 5); got != 0 {
		t.Errorf("server A admitted %d once it knew the fleet had spent the limit", got)
	}
	if n, _ := r.Do("HGET", "{rl:}rl:86400:"+strconv.FormatInt(time.Now().Unix()/86400, 10), "key-1").AsInt64(); n != 11 {
		t.Errorf("the fleet's count in Redis is %d, want 11 (refused requests not counted)", n)
	}
	if ttl, _ := r.Do("PTTL", "{rl:}rl:86400:"+strconv.FormatInt(time.Now().Unix()/86400, 10)).AsInt64(); ttl <= 24*3600*1000 || ttl > (2*24*3600+60)*1000 {
		t.Errorf("the window's hash expires in %d ms, want after the next window ends (1 to 2 days and a minute)", ttl)
	}

	// Redis down: limiting goes on from what each has, logged once.
	lc := ratelimit.New(ratelimit.Options{Fleet: true})
	xc := a.Exchange(lc)
	admit(lc, 2)
	r.Kill()
	for range 3 {
		if err := xc(ctx); err == nil {
			t.Fatal("a round with Redis down succeeded")
		}
	}
	if n := logs.FilterMessage("cannot share rate-limit counts through Redis; each server limits from the counts it has until it can, and then catches up").Len(); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
	if v, _ := testkeys.CounterValue(t, "caddy_apikey_rate_limit_syncs_total", a.Name(), "error"); v != 3 {
		t.Errorf("rate_limit_syncs_total{result=error} = %v, want 3", v)
	}
	if got := admit(lc, 10); got != 8 {
		t.Errorf("with Redis down, a limiter admitted %d more after 2, want 8", got)
	}
}
