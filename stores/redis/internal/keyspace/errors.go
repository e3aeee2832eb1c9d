package keyspace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// ErrNoKeySet: the prefix holds no key set (it was never made, or Redis
// lost it).
var ErrNoKeySet = errors.New("no key set")

// ErrRecordsGone: the key set's records hash is gone while its version
// remains. No change removes every record (revoke keeps them), so Redis
// lost them: it is the key set gone (errors.Is ErrNoKeySet).
var ErrRecordsGone error = recordsGone{}

type recordsGone struct{}

func (recordsGone) Error() string {
	return "the key set's records are gone from Redis while its version and change log remain (evicted under a maxmemory-policy allkeys-*, or deleted by hand)"
}
func (recordsGone) Is(target error) bool { return target == ErrNoKeySet }

// ErrIDTaken: a record to add has the id of one already there.
var ErrIDTaken = errors.New("a record with this id is there already")

// ErrVersionMoved: another writer changed the key set between the read
// and the write; the edit is done again on the new version.
var ErrVersionMoved = errors.New("the key set changed meanwhile")

// ErrRecordMoved: another writer changed a record that a change of named
// records changes, between the read and the write; the edit is done again.
var ErrRecordMoved = errors.New("the record changed meanwhile")

// unusableReply is a reply of Redis that cannot be used: Redis answered,
// with what the key set's keys should not hold.
type unusableReply string

func (e unusableReply) Error() string { return string(e) }

// Refused is an error of a script that refused what it was asked, its
// message the one to show as it is (a grant beyond the most allowed).
type Refused string

func (e Refused) Error() string { return string(e) }

// Answered reports whether err is an answer of Redis, rather than a
// failure to reach it: an error reply, a reply of another type than the
// one asked for, or one that cannot be used (unusableReply). Replies that
// say that the server cannot serve now (loading its data, busy with a
// script, cut from its primary or its Cluster) or that it changed under a
// blocking read (a primary made a replica, the log deleted: UNBLOCKED)
// are not: they are the server's state, not what it holds, and are tried
// again as a failure to reach it is.
func Answered(err error) bool {
	var re *rueidis.RedisError
	if errors.As(err, &re) && !re.IsNil() {
		if re.IsLoading() || re.IsClusterDown() || re.IsTryAgain() {
			return false
		}
		code, _, _ := strings.Cut(re.Error(), " ")
		switch code {
		case "BUSY", "MASTERDOWN", "UNBLOCKED":
			return false
		}
		return true
	}
	return rueidis.IsParseErr(err) || errors.As(err, new(unusableReply))
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
