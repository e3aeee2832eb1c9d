package redis

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// The live store keeps usage counts, and its record store reads them: one
// hash per hour, {prefix}usage:<YYYYMMDDHH> (see layout), of counts by
// "<id>:<result>", which every server adds to (HINCRBY) and which expires
// once the hour is older than the retention.
var (
	_ usagecount.Writer = (*Store)(nil)
	_ usagecount.Writer = (*liveSet)(nil)
	_ usagecount.Reader = Records{}
)

// usageBatch bounds the commands of one pipeline of usage counts.
const usageBatch = 1000

// maxUsageRead is how far back ReadUsageCounts reads at most: a year and
// a day of hours (8 784 hashes).
const maxUsageRead = 366 * 24 * time.Hour

// usageHash is the Redis key of the usage counts of the hour that starts
// at hour (UTC).
func (k layout) usageHash(hour time.Time) string { return k.usage + hour.UTC().Format("2006010215") }

// AddUsageCounts adds rows to the key set's usage counts in Redis (see
// usagecount.Writer): one HINCRBY a row, and one PEXPIREAT an hour's hash
// per call (the hour's end plus keep; DefaultRetention if keep is not
// positive), in pipelines of up to usageBatch commands, each answered
// within the connection's answer time-out. Rows of an hour already past
// keep are left out, and so are rows of no requests. A row whose result is
// not one of usagecount.Results, or whose count is negative, fails the
// call before anything is written. A call that fails part way may have
// added some of its rows: the caller sends them again only if it accepts
// counting them twice.
func (r *Store) AddUsageCounts(ctx context.Context, rows []usagecount.Row, keep time.Duration) error {
	return r.store.AddUsageCounts(ctx, rows, keep)
}

// AddUsageCounts is Store.AddUsageCounts.
func (s *liveSet) AddUsageCounts(ctx context.Context, rows []usagecount.Row, keep time.Duration) error {
	if keep <= 0 {
		keep = usagecount.DefaultRetention
	}
	for _, row := range rows {
		if usagecount.ResultIndex(row.Result) < 0 {
			return fmt.Errorf("usage counts of key %q: result %q is not one of %s", row.ID, row.Result, strings.Join(usagecount.Results[:], ", "))
		}
		if row.N < 0 {
			return fmt.Errorf("usage counts of key %q: a count of %d requests", row.ID, row.N)
		}
	}
	c, err := s.quotaClient()
	if err != nil {
		return s.usageError(err)
	}
	now := time.Now()
	cmds := make(rueidis.Commands, 0, min(len(rows), usageBatch)+8)
	expires := make(map[string]int64) // hash -> unix ms, in this batch
	send := func() error {
		for key, at := range expires {
			cmds = append(cmds, c.B().Pexpireat().Key(key).MillisecondsTimestamp(at).Build())
		}
		clear(expires)
		if len(cmds) == 0 {
			return nil
		}
		cctx, cancel, explain := s.answerWithin(ctx)
		defer cancel()
		for _, rep := range c.DoMulti(cctx, cmds...) {
			if err := rep.Error(); err != nil {
				return explain(err)
			}
		}
		cmds = cmds[:0]
		return nil
	}
	for _, row := range rows {
		hour := usagecount.Hour(row.Hour)
		until := hour.Add(time.Hour + keep)
		if row.N == 0 || !until.After(now) {
			continue
		}
		key := s.rk.usageHash(hour)
		cmds = append(cmds, c.B().Hincrby().Key(key).Field(row.ID+":"+row.Result).Increment(row.N).Build())
		expires[key] = until.UnixMilli()
		if len(cmds)+len(expires) >= usageBatch {
			if err := send(); err != nil {
				return s.usageError(err)
			}
		}
	}
	if err := send(); err != nil {
		return s.usageError(err)
	}
	return nil
}

// usageError names the key set in an error of AddUsageCounts.
func (s *liveSet) usageError(err error) error {
	return fmt.Errorf("adding usage counts in Redis %s (prefix %s): %w", s.shown, s.rk.prefix, err)
}

// ReadUsageCounts reads key id's usage counts from the hour that holds
// since to the hour that holds now (at most maxUsageRead back), sorted by
// hour then by result, without zero counts (see usagecount.Reader): one
// HMGET of the key's fields per hour's hash, in pipelines of usageBatch.
func (r Records) ReadUsageCounts(id string, since time.Time) ([]usagecount.Row, error) {
	if r.client == nil {
		return nil, r.wrap(errNotConnected)
	}
	now := usagecount.Hour(time.Now())
	from := usagecount.Hour(since)
	if oldest := now.Add(-maxUsageRead); from.Before(oldest) {
		from = oldest
	}
	fields := make([]string, len(usagecount.Results))
	for i, res := range usagecount.Results {
		fields[i] = id + ":" + res
	}
	ctx, cancel := context.WithTimeout(context.Background(), editTimeout)
	defer cancel()
	var out []usagecount.Row
	cmds := make(rueidis.Commands, 0, usageBatch)
	hours := make([]time.Time, 0, usageBatch)
	for h := from; !h.After(now); {
		cmds, hours = cmds[:0], hours[:0]
		for ; !h.After(now) && len(cmds) < usageBatch; h = h.Add(time.Hour) {
			cmds = append(cmds, r.client.B().Hmget().Key(r.keys.usageHash(h)).Field(fields...).Build())
			hours = append(hours, h)
		}
		for i, rep := range r.client.DoMulti(ctx, cmds...) {
			vals, err := rep.ToArray()
			if err != nil {
				return nil, r.fail(ctx, err)
			}
			if len(vals) != len(fields) {
				return nil, r.wrap(unusableReply(fmt.Sprintf("redis: %d values in the reply to HMGET %s, want %d", len(vals), r.keys.usageHash(hours[i]), len(fields))))
			}
			for j, v := range vals {
				n, ok, err := optInt(v)
				if err != nil {
					return nil, r.wrap(fmt.Errorf("%s field %s: %w", r.keys.usageHash(hours[i]), fields[j], err))
				}
				if ok && n != 0 {
					out = append(out, usagecount.Row{ID: id, Hour: hours[i], Result: usagecount.Results[j], N: n})
				}
			}
		}
	}
	return out, nil
}
