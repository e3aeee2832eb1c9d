package shared_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	apikey "github.com/caddy-apikey/caddy-apikey"
	"github.com/caddy-apikey/caddy-apikey/internal/shared"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// fleetStore is a store that shares rate-limit counts with a fleet and
// keeps usage counts, noting what the shared state asks of it.
type fleetStore struct {
	ks            *keyset.KeySet
	shares, stops int
}

func (s *fleetStore) KeySet() *keyset.KeySet { return s.ks }
func (s *fleetStore) ShareLimiter(l *ratelimit.Limiter) func() {
	s.shares++
	return func() { s.stops++ }
}
func (s *fleetStore) AddUsageCounts(context.Context, []usagecount.Row, time.Duration) error {
	return nil
}

// The handler's LimiterSharer is what package shared looks for.
var _ apikey.LimiterSharer = (*fleetStore)(nil)

// The handlers of one key set share one state, made by the first and
// stopped by the last to let go, with every goroutine it started
// (synctest.Test fails if one is left), through a minute and more of the
// sweeper's work.
func TestOneStatePerKeySet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := &fleetStore{ks: testkeys.KeySet(t, testkeys.New("one", nil).Rec())}
		a := shared.Acquire("shared-test", st)
		b := shared.Acquire("shared-test", st)
		if a != b || st.shares != 1 {
			t.Fatalf("two states (%p, %p) or %d shares for one key set", a, b, st.shares)
		}
		if a.Limiter == nil || a.Meter == nil || a.Counts == nil || a.Events == nil {
			t.Fatalf("state %+v lacks a part", a)
		}
		time.Sleep(2 * time.Minute) // the sweeper's rounds, on the bubble's clock
		shared.Flush("shared-test")
		shared.Release("shared-test")
		if st.stops != 0 {
			t.Fatal("the state stopped while a handler still holds it")
		}
		shared.Release("shared-test")
		if st.stops != 1 {
			t.Fatalf("the fleet's sharing stopped %d times, want once", st.stops)
		}
		if c := shared.Acquire("shared-test", st); c == a || st.shares != 2 {
			t.Errorf("after the last release, a new state (%p, the old %p), shared again (%d)", c, a, st.shares)
		}
		shared.Release("shared-test")
	})
}
