package file

import (
	"context"
	"time"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// The live store keeps its keys' quota state and usage counts in the key
// file's state file (see StatePath), through its record store: the
// handler's quota meter takes and gives back units there, and its usage
// counts are added there in batches.
var (
	_ quota.Bank        = (*Store)(nil)
	_ usagecount.Writer = (*Store)(nil)
)

// TakeQuota takes units of the keys' quotas from the state file, durably
// before it returns (see Records.TakeQuota).
func (f *Store) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	return f.store.state().TakeQuota(ctx, takes)
}

// GiveQuota gives units back to the state file (see Records.GiveQuota).
func (f *Store) GiveQuota(ctx context.Context, gives []quota.Give) error {
	return f.store.state().GiveQuota(ctx, gives)
}

// AddUsageCounts adds usage counts to the state file and drops the hours
// older than keep (see Records.AddUsageCounts).
func (f *Store) AddUsageCounts(ctx context.Context, rows []usagecount.Row, keep time.Duration) error {
	return f.store.state().AddUsageCounts(ctx, rows, keep)
}

// state is the record store of the key file, on the store's clock, for
// its state file: once the state file was there, a missing one is an
// error (ErrStateGone).
func (s *keyFile) state() Records { return Records{Path: s.path, now: s.now, seen: &s.stateSeen} }
