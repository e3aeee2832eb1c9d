package keyspace

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"

	"github.com/caddy-apikey/caddy-apikey/audit"
)

// AuditLine is an audit entry as the audit stream holds it (its field e):
// its JSON line, without the newline.
func AuditLine(e audit.Entry) (string, error) {
	line, err := audit.Append(nil, e)
	if err != nil {
		return "", err
	}
	return string(line[:len(line)-1]), nil
}

// auditPage is how many entries one XRANGE of the audit stream reads.
const auditPage = 10000

// ReadAudit reads the entries of the key set's audit stream that f keeps,
// oldest first; on an error, those read until then.
func ReadAudit(ctx context.Context, c rueidis.Client, k Layout, f audit.Filter) ([]audit.Entry, error) {
	var out []audit.Entry
	start := "-"
	if !f.Since.IsZero() {
		// The stream's ids are the Redis server's clock: a minute of
		// slack for the writers' clocks, the filter keeps the rest out.
		start = strconv.FormatInt(max(0, f.Since.Add(-time.Minute).UnixMilli()), 10)
	}
	for {
		msgs, err := c.Do(ctx, c.B().Xrange().Key(k.Audit).Start(start).End("+").Count(auditPage).Build()).AsXRange()
		if err != nil {
			return out, err
		}
		for _, m := range msgs {
			e, err := audit.Decode([]byte(m.FieldValues["e"]))
			if err != nil {
				return out, fmt.Errorf("audit stream %s, entry %s: %v", k.Audit, m.ID, err)
			}
			if f.Match(e) {
				out = append(out, e)
			}
		}
		if len(msgs) < auditPage {
			return out, nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// SetAuditMaxEntries sets about how many entries the key set's audit
// stream keeps, for every writer (0: DefaultAuditMaxEntries).
func SetAuditMaxEntries(ctx context.Context, c rueidis.Client, k Layout, n int64) error {
	if n == 0 {
		return c.Do(ctx, c.B().Del().Key(k.AuditMax).Build()).Error()
	}
	return c.Do(ctx, c.B().Set().Key(k.AuditMax).Value(strconv.FormatInt(n, 10)).Build()).Error()
}

// AuditMaxEntries returns the retention of the key set's audit stream.
func AuditMaxEntries(ctx context.Context, c rueidis.Client, k Layout) (int64, error) {
	n, err := c.Do(ctx, c.B().Get().Key(k.AuditMax).Build()).AsInt64()
	switch {
	case rueidis.IsRedisNil(err):
		return DefaultAuditMaxEntries, nil
	case err != nil:
		return 0, err
	case n < 1:
		return DefaultAuditMaxEntries, nil
	}
	return n, nil
}

// WriteAudit appends lines (AuditLine) to the key set's audit stream,
// trimmed to about keep entries, as editScript trims it.
func WriteAudit(ctx context.Context, c rueidis.Client, k Layout, keep int64, lines []string) error {
	cmds := make(rueidis.Commands, 0, len(lines))
	for _, line := range lines {
		cmds = append(cmds, c.B().Xadd().Key(k.Audit).Maxlen().Almost().Threshold(strconv.FormatInt(keep, 10)).Id("*").FieldValue().FieldValue("e", line).Build())
	}
	for _, res := range c.DoMulti(ctx, cmds...) {
		if err := res.Error(); err != nil {
			return err
		}
	}
	return nil
}
