package keyspace

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// LogPage is the most entries one read of the change log returns.
const LogPage = 1000

// ReadLog reads the key set's change log after entry id after, at most
// LogPage entries, blocking up to block when there are none yet (0: not
// at all; a blocking read ends at once when ctx is cancelled). It returns
// none, and no error, when the log has no entry after that one.
func ReadLog(ctx context.Context, c rueidis.Client, k Layout, after string, block time.Duration) ([]rueidis.XRangeEntry, error) {
	xread := c.B().Xread().Count(LogPage)
	var built rueidis.Completed
	if block > 0 {
		// UnblockOnCancel: stopping the store (cancelling ctx) ends the
		// blocking read at once, rather than when it times out.
		built = xread.Block(block.Milliseconds()).Streams().Key(k.Log).Id(after).Build().UnblockOnCancel()
	} else {
		built = xread.Streams().Key(k.Log).Id(after).Build()
	}
	streams, err := c.Do(ctx, built).AsXRead()
	if rueidis.IsRedisNil(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return streams[k.Log], nil
}

// EntryVersion reads the version a log entry says its change made (its
// field v).
func EntryVersion(e rueidis.XRangeEntry) (int64, error) {
	return strconv.ParseInt(e.FieldValues["v"], 10, 64)
}

// EntryIDs reads the ids of the records a log entry's change changed (its
// field ids) and, if the entry says them (its field was, as many), the
// key_hash each had before ("" for a new record, "?" if it could not be
// read); was is nil otherwise.
func EntryIDs(e rueidis.XRangeEntry) (ids, was []string, err error) {
	if err := json.Unmarshal([]byte(e.FieldValues["ids"]), &ids); err != nil {
		return nil, nil, err
	}
	if json.Unmarshal([]byte(e.FieldValues["was"]), &was) != nil || len(was) != len(ids) {
		was = nil
	}
	return ids, was, nil
}

// ReadChanged reads the records with these ids, as changes of a key set
// (KeySet.With): each id maps to its record, or to nil if it has none now
// (deleted) or if its record cannot be used (named among problems).
func ReadChanged(ctx context.Context, c rueidis.Client, k Layout, ids []string) (changes map[string]*keyset.Record, problems []error, err error) {
	var vals []rueidis.RedisMessage
	if len(ids) > 0 { // an entry may name none (not one of ours)
		if vals, err = c.Do(ctx, c.B().Hmget().Key(k.Records).Field(ids...).Build()).ToArray(); err != nil {
			return nil, nil, err
		}
		if len(vals) != len(ids) {
			return nil, nil, unusableReply(fmt.Sprintf("redis: HMGET of %d fields answered %d values", len(ids), len(vals)))
		}
	}
	changes = make(map[string]*keyset.Record, len(ids))
	records := make([]keyfile.Record, len(ids))
	var rd keyfile.RecordReader
	for i, v := range vals {
		changes[ids[i]] = nil
		js, err := v.ToString()
		switch {
		case rueidis.IsRedisNil(err): // deleted
		case err != nil:
			return nil, nil, err
		default:
			if err := rd.Read(ids[i], js, &records[i]); err != nil {
				problems = append(problems, err)
				continue
			}
			changes[ids[i]] = &records[i].Record
		}
	}
	return changes, problems, nil
}
