package keyspace

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// usageBatch bounds the commands of one pipeline of usage counts.
const usageBatch = 1000

// maxUsageRead is how far back ReadUsageCounts reads at most: a year and
// a day of hours (8 784 hashes).
const maxUsageRead = 366 * 24 * time.Hour

// AddUsageCounts adds rows (checked by the caller) to the key set's usage
// counts: one HINCRBY a row, and one PEXPIREAT an hour's hash per
// pipeline (the hour's end plus keep), in pipelines of up to usageBatch
// commands, each answered within answer (AnswerWithin). Rows of an hour
// already past keep at now are left out, and so are rows of no requests.
func AddUsageCounts(ctx context.Context, c rueidis.Client, k Layout, rows []usagecount.Row, keep time.Duration, now time.Time, answer time.Duration) error {
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
		cctx, cancel, explain := AnswerWithin(ctx, answer)
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
		key := k.UsageHash(hour)
		cmds = append(cmds, c.B().Hincrby().Key(key).Field(row.ID+":"+row.Result).Increment(row.N).Build())
		expires[key] = until.UnixMilli()
		if len(cmds)+len(expires) >= usageBatch {
			if err := send(); err != nil {
				return err
			}
		}
	}
	return send()
}

// ReadUsageCounts reads key id's usage counts from the hour that holds
// since to the hour that holds now (at most maxUsageRead back), sorted by
// hour then by result, without zero counts: one HMGET of the key's fields
// per hour's hash, in pipelines of usageBatch.
func ReadUsageCounts(ctx context.Context, c rueidis.Client, k Layout, id string, since time.Time) ([]usagecount.Row, error) {
	now := usagecount.Hour(time.Now())
	from := usagecount.Hour(since)
	if oldest := now.Add(-maxUsageRead); from.Before(oldest) {
		from = oldest
	}
	fields := make([]string, len(usagecount.Results))
	for i, res := range usagecount.Results {
		fields[i] = id + ":" + res
	}
	var out []usagecount.Row
	cmds := make(rueidis.Commands, 0, usageBatch)
	hours := make([]time.Time, 0, usageBatch)
	for h := from; !h.After(now); {
		cmds, hours = cmds[:0], hours[:0]
		for ; !h.After(now) && len(cmds) < usageBatch; h = h.Add(time.Hour) {
			cmds = append(cmds, c.B().Hmget().Key(k.UsageHash(h)).Field(fields...).Build())
			hours = append(hours, h)
		}
		for i, rep := range c.DoMulti(ctx, cmds...) {
			vals, err := rep.ToArray()
			if err != nil {
				return nil, err
			}
			if len(vals) != len(fields) {
				return nil, unusableReply(fmt.Sprintf("redis: %d values in the reply to HMGET %s, want %d", len(vals), k.UsageHash(hours[i]), len(fields)))
			}
			for j, v := range vals {
				n, ok, err := optInt(v)
				if err != nil {
					return nil, fmt.Errorf("%s field %s: %w", k.UsageHash(hours[i]), fields[j], err)
				}
				if ok && n != 0 {
					out = append(out, usagecount.Row{ID: id, Hour: hours[i], Result: usagecount.Results[j], N: n})
				}
			}
		}
	}
	return out, nil
}
