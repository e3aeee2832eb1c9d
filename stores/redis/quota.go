package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

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
	_ stores.QuotaStore = Records{}
)

// TakeQuota takes units of keys' quotas from the key set's quota state in
// Redis, for the quota meter (see quota.Bank): each take is written down
// as used before it returns. The takes go in runs of the quota script of
// up to 1 000, all in one pipeline, the whole answered within the
// connection's answer time-out (the longer of its dial and write
// time-outs) or failed.
func (r *Store) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	return r.store.TakeQuota(ctx, takes)
}

// GiveQuota gives back units a server took and did not spend (see
// quota.Bank).
func (r *Store) GiveQuota(ctx context.Context, gives []quota.Give) error {
	return r.store.GiveQuota(ctx, gives)
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
