// Package shared holds what the apikey handlers of one key set (named by
// its store) share in a process, across routes and config reloads: the
// rate limiter, with its sweeper and, for a store that shares counts with
// a fleet, their exchange; the quota meter on the store's quota state; the
// usage counts' flusher; and the events about the key set's keys. The
// first handler of a key set makes its State; the last one to let go of
// it stops it.
package shared

import (
	"context"
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-apikey/caddy-apikey/internal/keyevents"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// Store is a key store, as the apikey handler serves from it: what State
// needs is its key set in force, and what it offers beyond: quota state
// (quota.Bank), usage counts (usagecount.Writer), and rate-limit counts
// shared with a fleet (apikey.LimiterSharer's ShareLimiter).
type Store interface {
	KeySet() *keyset.KeySet
}

// limiterSharer is apikey.LimiterSharer.
type limiterSharer interface {
	ShareLimiter(l *ratelimit.Limiter) (stop func())
}

// State is what the handlers of one key set share.
type State struct {
	Limiter *ratelimit.Limiter
	Meter   *quota.Meter
	Counts  *usagecount.Flusher // nil: the store keeps no usage counts
	Events  *keyevents.Events
	stop    func()
}

// Destruct stops the state, when its last handler lets go of it.
func (s *State) Destruct() error {
	s.stop()
	return nil
}

// states holds the State of each key set in use, by its store's name.
var states = caddy.NewUsagePool()

// sweepEvery is how often a limiter frees the state of idle keys, and the
// expiring keys are looked for.
const sweepEvery = time.Minute

// Acquire returns the state of the key set of store, named name, making
// it on the first use. Each Acquire is matched by a Release.
func Acquire(name string, store Store) *State {
	val, _, _ := states.LoadOrNew(name, func() (caddy.Destructor, error) {
		sharer, fleet := store.(limiterSharer)
		l := ratelimit.New(ratelimit.Options{Fleet: fleet})
		ev := keyevents.New(name, store.KeySet)
		done := make(chan struct{})
		go func() {
			// Every second until the config runs and the expiring
			// keys have been looked at, then every sweepEvery.
			t := time.NewTicker(time.Second)
			defer t.Stop()
			var looked, swept time.Time
			for {
				select {
				case <-done:
					return
				case now := <-t.C:
					if now.Sub(swept) >= sweepEvery {
						l.Sweep(now.UnixNano())
						swept = now
					}
					if now.Sub(looked) >= sweepEvery && ev.AnnounceExpiring(now) {
						looked = now
					}
				}
			}
		}()
		stopSync := func() {}
		if fleet {
			stopSync = sharer.ShareLimiter(l)
		}
		s := &State{Limiter: l, Events: ev, Meter: newMeter(name, store)}
		if w, ok := store.(usagecount.Writer); ok {
			s.Counts = usagecount.NewFlusher(name, w)
		}
		s.stop = func() {
			close(done)
			stopSync()
			s.Meter.Close()
			if s.Counts != nil {
				s.Counts.Stop()
			}
		}
		return s, nil
	})
	return val.(*State)
}

// Release lets go of one use of the state of the key set named name; the
// last one stops it.
func Release(name string) {
	_, _ = states.Delete(name)
}

// Flush writes the pending usage counts of the key set named name now, and
// has its quota meter ask its bank about the keys it refused, if the key
// set is in use.
func Flush(name string) {
	states.Range(func(key, value any) bool {
		if key == name {
			s := value.(*State)
			if s.Counts != nil {
				s.Counts.Flush()
			}
			if s.Meter != nil {
				s.Meter.Sync()
			}
			return false
		}
		return true
	})
}

// newMeter makes the quota meter of the key store named name: on the
// store's quota state if it keeps one (a quota.Bank), logging each outage
// of it once; on none otherwise, so that keys with a quota are refused.
func newMeter(name string, store Store) *quota.Meter {
	bank, ok := store.(quota.Bank)
	if !ok {
		return quota.NewMeter(noBank{}, quota.Options{})
	}
	return quota.NewMeter(bank, quota.Options{Trouble: func(err error) {
		log := caddy.Log().Named("http.handlers.apikey")
		if err != nil {
			log.Error("cannot reach the quota state of the key store: each server spends the units it holds, then refuses keys with a quota (503 QUOTA_UNAVAILABLE, or admits them with quota_outage admit) until it is back; check the store",
				zap.String("key_store", name), zap.Error(err))
			return
		}
		log.Info("the quota state of the key store can be reached again", zap.String("key_store", name))
	}})
}

// noBank is the bank of a key store that keeps no quota state: keys with
// a quota are refused (fail closed), which the handler's Provision warns
// about.
type noBank struct{}

var errNoBank = errors.New("the key store keeps no quota state")

func (noBank) TakeQuota(context.Context, []quota.Take) ([]quota.Taken, error) { return nil, errNoBank }
func (noBank) GiveQuota(context.Context, []quota.Give) error                  { return errNoBank }
