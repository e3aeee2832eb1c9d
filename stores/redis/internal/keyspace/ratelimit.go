package keyspace

import (
	"context"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// rateBatch bounds the commands of one exchange sent at once.
const rateBatch = 1000

// ExchangeCounts adds each delta's count to its window's hash and appends
// the totals Redis then holds to totals, in the deltas' order; each batch
// of rateBatch deltas is answered within answer or fails.
func ExchangeCounts(ctx context.Context, c rueidis.Client, k Layout, deltas []ratelimit.Delta, totals []int64, answer time.Duration) ([]int64, error) {
	cmds := make(rueidis.Commands, 0, min(len(deltas), rateBatch)+8)
	expiring := make(map[string]bool) // the windows' hashes given an expiry in this exchange
	for start := 0; start < len(deltas); start += rateBatch {
		batch := deltas[start:min(start+rateBatch, len(deltas))]
		cmds = cmds[:0]
		for _, d := range batch {
			cmds = append(cmds, c.B().Hincrby().Key(k.RateWindow(d.Window, d.Index)).Field(d.Key).Increment(d.N).Build())
		}
		// Each window's hash is gone once the window and the next are
		// over (the next weighs this one), with a minute to spare for
		// clocks: one expiry per hash, however many keys it counts.
		for _, d := range batch {
			key := k.RateWindow(d.Window, d.Index)
			if expiring[key] {
				continue
			}
			expiring[key] = true
			expires := time.Unix(0, d.Start()+2*int64(d.Window)).Add(time.Minute)
			cmds = append(cmds, c.B().Pexpireat().Key(key).MillisecondsTimestamp(expires.UnixMilli()).Build())
		}
		cctx, cancel := context.WithTimeout(ctx, answer)
		replies := c.DoMulti(cctx, cmds...)
		cancel()
		for i := range batch {
			n, err := replies[i].AsInt64()
			if err != nil {
				return totals, err
			}
			totals = append(totals, n)
		}
		for _, r := range replies[len(batch):] {
			if err := r.Error(); err != nil {
				return totals, err
			}
		}
	}
	return totals, nil
}
