package keyops

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// ErrNoUsageCounts is what reading the usage counts of a store that keeps
// none (not a usagecount.Reader) returns, wrapped.
var ErrNoUsageCounts = errors.New("keeps no usage counts")

// The days of usage counts ReadUsage shows: by default, and at most (the
// stores' default retention: older counts are gone).
const (
	DefaultUsageDays = 7
	MaxUsageDays     = int(usagecount.DefaultRetention / (24 * time.Hour))
)

// Usage is one key's usage counts over whole days (UTC), as `caddy apikey
// usage --json` and GET /apikey/keys/{id}/usage show them: the store's
// rows (one per hour and result with a count), the counts by day (each
// day of the span, {} for one without requests) and their totals.
type Usage struct {
	ID        string           `json:"id"`
	Label     string           `json:"label"`
	KeyPrefix string           `json:"key_prefix"`
	Since     time.Time        `json:"since"` // midnight UTC that starts the first day
	Rows      []usagecount.Row `json:"rows"`
	Days      []UsageDay       `json:"days"`
	Totals    map[string]int64 `json:"totals"`
}

// UsageDay is one day's counts by result: only the results with a count.
type UsageDay struct {
	Day    string           `json:"day"` // 2026-12-03
	Counts map[string]int64 `json:"counts"`
}

// UsageSince is the start of the span of days that ends with the day of
// now (UTC): midnight, days−1 days before today's.
func UsageSince(days int, now time.Time) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d-(days-1), 0, 0, 0, 0, time.UTC)
}

// CheckUsageDays refuses a number of days that ReadUsage does not show.
func CheckUsageDays(days int) error {
	if days < 1 || days > MaxUsageDays {
		return InputError(fmt.Sprintf("days %d: want 1 to %d (the counts are kept %d days)", days, MaxUsageDays, MaxUsageDays))
	}
	return nil
}

// ReadUsage returns the usage counts of the one key that ref names over
// the last days days (today, UTC, the last of them; the hours after
// today, from a server whose clock is ahead, are left out). st must be the store
// itself (a usagecount.Reader; not stores.By's wrapper). It shows what
// the store holds: a running server's counts reach it every usage
// interval.
func ReadUsage(st stores.RecordStore, ref string, days int, now time.Time) (Usage, error) {
	if err := CheckUsageDays(days); err != nil {
		return Usage{}, err
	}
	reader, ok := st.(usagecount.Reader)
	if !ok {
		return Usage{}, fmt.Errorf("key store %s %w", st, ErrNoUsageCounts)
	}
	rec, err := findOne(st, ref, "show the usage of")
	if err != nil {
		return Usage{}, err
	}
	since := UsageSince(days, now)
	until := since.AddDate(0, 0, days) // the end of today
	rows, err := reader.ReadUsageCounts(rec.ID, since)
	if err != nil {
		return Usage{}, fmt.Errorf("usage counts of key %s in %s: %w", Printable(rec.ID), st, err)
	}
	u := Usage{ID: rec.ID, Label: rec.Label, KeyPrefix: rec.KeyPrefix, Since: since, Rows: []usagecount.Row{}, Totals: map[string]int64{}}
	byDay := make(map[string]map[string]int64)
	for _, r := range rows {
		if r.N == 0 || r.Hour.Before(since) || !r.Hour.Before(until) || r.ID != rec.ID {
			// The reader leaves out those before since; those after
			// today are a server's clock ahead of this one.
			continue
		}
		r.Hour = r.Hour.UTC()
		u.Rows = append(u.Rows, r)
		day := r.Hour.Format(time.DateOnly)
		if byDay[day] == nil {
			byDay[day] = make(map[string]int64)
		}
		byDay[day][r.Result] += r.N
		u.Totals[r.Result] += r.N
	}
	for d := range days {
		day := since.AddDate(0, 0, d).Format(time.DateOnly)
		counts := byDay[day]
		if counts == nil {
			counts = map[string]int64{}
		}
		u.Days = append(u.Days, UsageDay{Day: day, Counts: counts})
	}
	return u, nil
}
