package keyops

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testquota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

func hour(day, h int) time.Time { return time.Date(2026, 12, day, h, 0, 0, 0, time.UTC) }

// ReadUsage gives the store's rows of the key over the days asked, the
// last of them today (UTC), and their sums by day (every day of the
// span, {} for one without requests) and in total; rows before the span,
// after today or of another key are left out.
func TestReadUsage(t *testing.T) {
	st, k := quotaStore(t)
	qs := testquota.New(st)
	qs.AddRows(
		usagecount.Row{ID: k.ID(), Hour: hour(1, 23), Result: "admitted", N: 1000}, // before a 3-day span
		usagecount.Row{ID: k.ID(), Hour: hour(1, 23), Result: "admitted", N: 1000},
		usagecount.Row{ID: k.ID(), Hour: hour(2, 0), Result: "admitted", N: 5},
		usagecount.Row{ID: k.ID(), Hour: hour(2, 0), Result: "rate_limited", N: 2},
		usagecount.Row{ID: k.ID(), Hour: hour(2, 13), Result: "admitted", N: 7},
		usagecount.Row{ID: k.ID(), Hour: hour(3, 19), Result: "quota_exceeded", N: 3},
		usagecount.Row{ID: k.ID(), Hour: hour(3, 19), Result: "admitted", N: 1},
		usagecount.Row{ID: k.ID(), Hour: hour(4, 0), Result: "admitted", N: 99}, // tomorrow: a clock ahead
		usagecount.Row{ID: "other", Hour: hour(3, 1), Result: "admitted", N: 40},
	)
	u, err := ReadUsage(qs, k.Record["key_prefix"].(string), 3, quotaNow)
	if err != nil {
		t.Fatal(err)
	}
	if u.ID != k.ID() || u.Label != "metered" || u.KeyPrefix != k.Record["key_prefix"] || !u.Since.Equal(hour(1, 0)) {
		t.Errorf("usage of %q (%s) since %v", u.Label, u.ID, u.Since)
	}
	wantRows := []usagecount.Row{
		{ID: k.ID(), Hour: hour(1, 23), Result: "admitted", N: 2000},
		{ID: k.ID(), Hour: hour(2, 0), Result: "admitted", N: 5},
		{ID: k.ID(), Hour: hour(2, 0), Result: "rate_limited", N: 2},
		{ID: k.ID(), Hour: hour(2, 13), Result: "admitted", N: 7},
		{ID: k.ID(), Hour: hour(3, 19), Result: "admitted", N: 1},
		{ID: k.ID(), Hour: hour(3, 19), Result: "quota_exceeded", N: 3},
	}
	if !reflect.DeepEqual(u.Rows, wantRows) {
		t.Errorf("rows\n%+v\nwant\n%+v", u.Rows, wantRows)
	}
	wantDays := []UsageDay{
		{"2026-12-01", map[string]int64{"admitted": 2000}},
		{"2026-12-02", map[string]int64{"admitted": 12, "rate_limited": 2}},
		{"2026-12-03", map[string]int64{"admitted": 1, "quota_exceeded": 3}},
	}
	if !reflect.DeepEqual(u.Days, wantDays) {
		t.Errorf("days %+v\nwant %+v", u.Days, wantDays)
	}
	if want := map[string]int64{"admitted": 2013, "rate_limited": 2, "quota_exceeded": 3}; !reflect.DeepEqual(u.Totals, want) {
		t.Errorf("totals %v", u.Totals)
	}

	// One day: today's alone; a key with no counts: empty, not null.
	u, err = ReadUsage(qs, k.ID(), 1, quotaNow)
	if err != nil || len(u.Days) != 1 || len(u.Rows) != 2 || u.Totals["admitted"] != 1 {
		t.Errorf("one day: %+v, %v", u, err)
	}
	u, err = ReadUsage(qs, k.ID(), 7, hour(20, 5))
	if err != nil || u.Rows == nil || len(u.Rows) != 0 || u.Totals == nil || len(u.Days) != 7 || u.Days[0].Day != "2026-12-14" || u.Days[6].Counts == nil {
		t.Errorf("no counts: %+v, %v", u, err)
	}

	for _, c := range []struct {
		name string
		st   stores.RecordStore
		ref  string
		days int
		want string
		is   error
	}{
		{"no days", qs, k.ID(), 0, "days 0: want 1 to 35", nil},
		{"beyond the retention", qs, k.ID(), 36, "days 36: want 1 to 35 (the counts are kept 35 days)", nil},
		{"unknown key", qs, "cccc", 7, `has the id or key_prefix "cccc"`, nil},
		{"no usage counts", recordsOnly{st}, k.ID(), 7, "key store " + st.Path + " keeps no usage counts", ErrNoUsageCounts},
	} {
		_, err := ReadUsage(c.st, c.ref, c.days, quotaNow)
		if err == nil || !strings.Contains(err.Error(), c.want) || c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	qs.UsageFails = testquota.ErrDown
	if _, err := ReadUsage(qs, k.ID(), 7, quotaNow); !errors.Is(err, testquota.ErrDown) || !strings.Contains(err.Error(), "usage counts of key "+k.ID()) {
		t.Errorf("a reader that fails: %v", err)
	}
}

func TestUsageSince(t *testing.T) {
	for _, c := range []struct {
		days int
		now  time.Time
		want time.Time
	}{
		{1, quotaNow, hour(3, 0)},
		{7, quotaNow, time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)},
		{35, time.Date(2027, 1, 2, 0, 0, 0, 0, time.FixedZone("CET", 3600)), time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)},
	} {
		if got := UsageSince(c.days, c.now); !got.Equal(c.want) {
			t.Errorf("UsageSince(%d, %v) = %v, want %v", c.days, c.now, got, c.want)
		}
	}
}
