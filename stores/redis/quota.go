package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
)

// The live store is its key set's quota bank: every server of the fleet
// takes blocks of a key's quota from the same hash, {prefix}quota:<period>
// (see keyspace.Layout), through the quota script, which applies a call's
// takes (or gives) in one atomic step, as quota.Apply (quota.Return) does.
var (
	_ quota.Bank        = (*Store)(nil)
	_ quota.Bank        = (*liveSet)(nil)
	_ stores.QuotaStore = Records{}
)

// TakeQuota takes units of keys' quotas from the key set's quota state in
// Redis, for the quota meter (see quota.Bank): each take is written down
// as used before it returns. The takes go in runs of the quota script of
// up to keyspace.QuotaBatch, all in one pipeline, the whole answered
// within the connection's answer time-out (keyspace.AnswerTimeout) or failed.
func (r *Store) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	return r.store.TakeQuota(ctx, takes)
}

// GiveQuota gives back units a server took and did not spend (see
// quota.Bank).
func (r *Store) GiveQuota(ctx context.Context, gives []quota.Give) error {
	return r.store.GiveQuota(ctx, gives)
}

// TakeQuota is Store.TakeQuota.
func (s *liveSet) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	if len(takes) == 0 {
		return nil, nil
	}
	for _, t := range takes {
		if err := checkTake(t); err != nil {
			return nil, fmt.Errorf("taking quota: %w", err)
		}
	}
	c, err := s.quotaClient()
	if err != nil {
		return nil, s.quotaError("taking quota", err)
	}
	out, err := keyspace.TakeQuota(ctx, c, s.rk, takes, keyspace.AnswerTimeout(s.opt))
	if err != nil {
		return nil, s.quotaError("taking quota", err)
	}
	return out, nil
}

// GiveQuota is Store.GiveQuota.
func (s *liveSet) GiveQuota(ctx context.Context, gives []quota.Give) error {
	if len(gives) == 0 {
		return nil
	}
	for _, g := range gives {
		if g.N < 0 || g.N > quota.MaxRequests {
			return fmt.Errorf("giving back quota: %d units of key %q: must be from 0 to %d", g.N, g.ID, int64(quota.MaxRequests))
		}
	}
	c, err := s.quotaClient()
	if err != nil {
		return s.quotaError("giving back quota", err)
	}
	if err := keyspace.GiveQuota(ctx, c, s.rk, gives, keyspace.AnswerTimeout(s.opt)); err != nil {
		return s.quotaError("giving back quota", err)
	}
	return nil
}

// checkTake refuses a take whose numbers the bank cannot use.
func checkTake(t quota.Take) error {
	switch {
	case t.Allowance < 0 || t.Allowance > quota.MaxRequests:
		return fmt.Errorf("key %q: allowance %d: must be from 0 to %d", t.ID, t.Allowance, int64(quota.MaxRequests))
	case t.Want > quota.MaxRequests:
		return fmt.Errorf("key %q: %d units wanted: at most %d", t.ID, t.Want, int64(quota.MaxRequests))
	case t.Owed < 0 || t.Owed > quota.MaxRequests:
		return fmt.Errorf("key %q: %d units owed: must be from 0 to %d", t.ID, t.Owed, int64(quota.MaxRequests))
	}
	return nil
}

// quotaClient returns the live store's client.
func (s *liveSet) quotaClient() (rueidis.Client, error) {
	p := s.client.Load()
	if p == nil {
		return nil, keyspace.ErrNotConnected
	}
	return *p, nil
}

// quotaError is the error of a quota call of the live store: it wraps
// quota.ErrUnavailable and names the key set.
func (s *liveSet) quotaError(what string, err error) error {
	return fmt.Errorf("%w: %s in Redis %s (prefix %s): %w", quota.ErrUnavailable, what, s.shown, s.rk.Prefix, err)
}

// QuotaStates returns the quota state of each key id in its period (id ->
// the period's name), for those that have one (see stores.QuotaStore):
// one HMGET per period's hash (per 1 000 keys), in one pipeline.
func (r Records) QuotaStates(periods map[string]string) (map[string]quota.State, error) {
	if r.client == nil {
		return nil, r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	out, err := keyspace.QuotaStates(ctx, r.client, r.keys, periods)
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return out, nil
}

// GrantQuota adds n units to key id's allowance for period, in one atomic
// step (the quota script), never below 0 granted nor above
// quota.MaxRequests, and returns the key's state then (see
// stores.QuotaStore). The period's hash then expires a day after ends.
func (r Records) GrantQuota(id, period string, n int64, ends time.Time) (quota.State, error) {
	if r.client == nil {
		return quota.State{}, r.wrap(keyspace.ErrNotConnected)
	}
	if n < -quota.MaxRequests || n > quota.MaxRequests {
		return quota.State{}, fmt.Errorf("granting %d units: must be from %d to %d", n, -int64(quota.MaxRequests), int64(quota.MaxRequests))
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	st, err := keyspace.GrantQuota(ctx, r.client, r.keys, id, period, n, ends)
	if refused := new(keyspace.Refused); errors.As(err, refused) {
		return quota.State{}, err
	}
	if err != nil {
		return quota.State{}, r.fail(ctx, err)
	}
	return st, nil
}
