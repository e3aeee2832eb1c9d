package live

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/stores/redis/internal/keyspace"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

var _ usagecount.Writer = (*Set)(nil)

// AddUsageCounts adds rows to the key set's usage counts in Redis (see
// usagecount.Writer and keyspace.AddUsageCounts); DefaultRetention if keep
// is not positive. A row whose result is not one of usagecount.Results,
// or whose count is negative, fails the call before anything is written.
func (s *Set) AddUsageCounts(ctx context.Context, rows []usagecount.Row, keep time.Duration) error {
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
	if err := keyspace.AddUsageCounts(ctx, c, s.rk, rows, keep, time.Now(), keyspace.AnswerTimeout(s.opt)); err != nil {
		return s.usageError(err)
	}
	return nil
}

// usageError names the key set in an error of AddUsageCounts.
func (s *Set) usageError(err error) error {
	return fmt.Errorf("adding usage counts in Redis %s (prefix %s): %w", s.shown, s.rk.Prefix, err)
}
