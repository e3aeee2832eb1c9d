package redis

import (
	"context"
	"time"

	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// The live store keeps usage counts, and its record store reads them: one
// hash per hour, {prefix}usage:<YYYYMMDDHH> (see keyspace.Layout), of
// counts by "<id>:<result>", which every server adds to (HINCRBY) and
// which expires once the hour is older than the retention.
var (
	_ usagecount.Writer = (*Store)(nil)
	_ usagecount.Reader = Records{}
)

// AddUsageCounts adds rows to the key set's usage counts in Redis (see
// usagecount.Writer): one HINCRBY a row, and one PEXPIREAT an hour's hash
// per call (the hour's end plus keep; DefaultRetention if keep is not
// positive), in pipelines of up to 1 000 commands, each answered within
// the connection's answer time-out. Rows of an hour already past keep are
// left out, and so are rows of no requests. A row whose result is not one
// of usagecount.Results, or whose count is negative, fails the call before
// anything is written. A call that fails part way may have added some of
// its rows: the caller sends them again only if it accepts counting them
// twice.
func (r *Store) AddUsageCounts(ctx context.Context, rows []usagecount.Row, keep time.Duration) error {
	return r.store.AddUsageCounts(ctx, rows, keep)
}

// ReadUsageCounts reads key id's usage counts from the hour that holds
// since to the hour that holds now (at most a year and a day back),
// sorted by hour then by result, without zero counts (see
// usagecount.Reader): one HMGET of the key's fields per hour's hash,
// pipelined.
func (r Records) ReadUsageCounts(id string, since time.Time) ([]usagecount.Row, error) {
	if r.client == nil {
		return nil, r.wrap(keyspace.ErrNotConnected)
	}
	ctx, cancel := context.WithTimeout(context.Background(), keyspace.EditTimeout)
	defer cancel()
	out, err := keyspace.ReadUsageCounts(ctx, r.client, r.keys, id, since)
	if err != nil {
		return nil, r.fail(ctx, err)
	}
	return out, nil
}
