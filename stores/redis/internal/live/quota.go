package live

import (
	"context"
	"fmt"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
)

// The live set is its key set's quota bank: every server of the fleet
// takes blocks of a key's quota from the same hash, {prefix}quota:<period>
// (see keyspace.Layout), through the quota script, which applies a call's
// takes (or gives) in one atomic step, as quota.Apply (quota.Return) does.
var _ quota.Bank = (*Set)(nil)

// TakeQuota takes units of keys' quotas from the key set's quota state in
// Redis, for the quota meter (see quota.Bank): each take is written down
// as used before it returns, the whole answered within the connection's
// answer time-out (keyspace.AnswerTimeout) or failed.
func (s *Set) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
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

// GiveQuota gives back units a server took and did not spend (see
// quota.Bank).
func (s *Set) GiveQuota(ctx context.Context, gives []quota.Give) error {
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
func (s *Set) quotaClient() (rueidis.Client, error) {
	p := s.client.Load()
	if p == nil {
		return nil, keyspace.ErrNotConnected
	}
	return *p, nil
}

// quotaError is the error of a quota call of the live store: it wraps
// quota.ErrUnavailable and names the key set.
func (s *Set) quotaError(what string, err error) error {
	return fmt.Errorf("%w: %s in Redis %s (prefix %s): %w", quota.ErrUnavailable, what, s.shown, s.rk.Prefix, err)
}
