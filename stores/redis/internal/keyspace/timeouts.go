package keyspace

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/redis/rueidis"
)

// DefaultTimeout bounds every Redis call but the blocking read of the log
// and the reads and edits of a whole key set (EditTimeout).
const DefaultTimeout = 5 * time.Second

// EditTimeout bounds one read or edit of a key set in Redis, which
// scans the whole set.
const EditTimeout = 2 * time.Minute

// AnswerTimeout is how long a connection made with opt waits for Redis to
// answer before it gives up: its dial time-out (dial_timeout in the URL)
// for a new connection, its write time-out (write_timeout) for one in use,
// whichever is longer.
func AnswerTimeout(opt rueidis.ClientOption) time.Duration {
	return max(cmp.Or(opt.Dialer.Timeout, rueidis.DefaultDialTimeout), cmp.Or(opt.ConnWriteTimeout, DefaultTimeout))
}

// IsTimeout reports whether err is a Redis call's time-out: its context's
// deadline, or its connection's.
func IsTimeout(err error) bool {
	var ne net.Error
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout())
}

// ExplainTimeout says what gave up after how long, for an error of a Redis
// call that timed out, which "context deadline exceeded" or "i/o timeout"
// alone does not: Redis not answering within answer (the connection's
// answer time-out), or, if ctx's own deadline passed, the whole operation
// not done within budget. Other errors are returned as they are.
func ExplainTimeout(ctx context.Context, err error, answer, budget time.Duration) error {
	if !IsTimeout(err) {
		return err
	}
	if ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("Redis did not finish within %s, the time allowed: %w", budget, err)
	}
	return fmt.Errorf("Redis did not answer within %s: %w", answer, err)
}

// AnswerWithin bounds a call of the live store's request-side writers
// (quota, usage counts) by answer, the connection's answer time-out, or
// ctx's deadline if it is sooner: explain then says, of a call's error
// that is a time-out, how long Redis was given.
func AnswerWithin(ctx context.Context, answer time.Duration) (_ context.Context, _ context.CancelFunc, explain func(error) error) {
	budget := answer
	if dl, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(dl).Round(time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	return ctx, cancel, func(err error) error {
		if IsTimeout(err) {
			return fmt.Errorf("Redis did not answer within %s: %w", budget, err)
		}
		return err
	}
}
