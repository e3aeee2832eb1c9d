package live

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
)

// RateSyncInterval is how often each server adds its rate-limit counts to
// the fleet's in Redis and takes back the fleet's (see stores/redis's
// RateSyncInterval).
const RateSyncInterval = 100 * time.Millisecond

// ShareLimiter adds this server's rate-limit counts to the fleet's, in the
// key set's Redis, every RateSyncInterval, and gives the limiter the
// fleet's totals back, until stop is called (see stores/redis's
// Store.ShareLimiter).
func (s *Set) ShareLimiter(l *ratelimit.Limiter) (stop func()) {
	ctx, cancel := context.WithCancel(s.life.Ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(RateSyncInterval)
		defer t.Stop()
		x := &rateExchange{s: s, l: l}
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				x.round(ctx)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// rateExchange is the exchange of one limiter's counts with the fleet.
type rateExchange struct {
	s       *Set
	l       *ratelimit.Limiter
	buf     []ratelimit.Delta
	totals  []int64
	failing storecore.Trouble
}

// round sends what the limiter has not told the fleet yet and hands it
// the fleet's totals; a failure is logged once until a round goes through.
func (x *rateExchange) round(ctx context.Context) error {
	x.buf = x.l.Pending(time.Now().UnixNano(), x.buf[:0])
	if len(x.buf) == 0 {
		return nil
	}
	var err error
	x.totals, err = x.s.exchangeCounts(ctx, x.buf, x.totals[:0])
	if ctx.Err() != nil {
		return ctx.Err() // stopping: no outage
	}
	x.s.metrics.RateSynced(err)
	if err != nil {
		if x.failing.Start() {
			x.s.log().Error("cannot share rate-limit counts through Redis; each server limits from the counts it has until it can, and then catches up", x.s.fields(zap.Error(err))...)
		}
		return err
	}
	if x.failing.End() {
		x.s.log().Info("sharing rate-limit counts through Redis works again", x.s.fields()...)
	}
	x.l.Synced(x.buf, x.totals)
	return nil
}

// exchangeCounts adds each delta's count to its window's hash and appends
// the totals Redis then holds to totals, in the deltas' order.
func (s *Set) exchangeCounts(ctx context.Context, deltas []ratelimit.Delta, totals []int64) ([]int64, error) {
	p := s.client.Load()
	if p == nil {
		return totals, errors.New("not connected to Redis yet")
	}
	return keyspace.ExchangeCounts(ctx, *p, s.rk, deltas, totals, keyspace.AnswerTimeout(s.opt))
}
