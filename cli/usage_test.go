package cli

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testquota"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/usagecount"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

func TestSparkline(t *testing.T) {
	for _, c := range []struct {
		in   []int64
		want string
	}{
		{[]int64{0, 1, 2, 3, 4, 5, 6, 7, 8}, " ▁▂▃▄▅▆▇█"},
		{[]int64{1, 1000}, "▁█"},      // a count above none is never blank
		{[]int64{5, 9, 1, 0}, "▅█▁ "}, // rounded up: 5×8/9 = 4.4 is ▅
		{[]int64{16, 8, 15}, "█▄█"},   // 15×8/16 = 7.5 is █
		{[]int64{7}, "█"},             // the peak alone
		{[]int64{0, 0}, "  "},         // none: blanks
		{[]int64{1 << 50, 1}, "█▁"},   // no overflow
		{nil, ""},
	} {
		if got := sparkline(c.in); got != c.want {
			t.Errorf("sparkline(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestUsageResults(t *testing.T) {
	for _, c := range []struct {
		totals map[string]int64
		want   []string
	}{
		{nil, []string{"admitted"}},
		{map[string]int64{"rate_limited": 2}, []string{"admitted", "rate_limited"}},
		{map[string]int64{"quota_exceeded": 1, "admitted": 5, "revoked": 3, "expired": 0, "zzz_new": 1, "aaa_new": 2}, []string{"admitted", "revoked", "quota_exceeded", "aaa_new", "zzz_new"}},
	} {
		if got := usageResults(c.totals); !reflect.DeepEqual(got, c.want) {
			t.Errorf("usageResults(%v) = %v, want %v", c.totals, got, c.want)
		}
	}
}

// usageFixture is a key file with one key, and a store over it with usage
// counts on 2026-12-02 and 03: admitted 8 and 4 in the first two hours,
// 1 at 06:00 and 2 at 19:00 on the 3rd, rate_limited 3 then.
func usageFixture(t *testing.T) (*testquota.Store, testkeys.Key) {
	t.Helper()
	k := testkeys.New("free plan", map[string]any{"id": "0b6f7f52-4d7e-4c55-9a4b-8a3f0d6e2c11"})
	qs := testquota.New(filestore.Records{Path: testkeys.WriteKeys(t, "", k)})
	h := func(day, hour int) time.Time { return time.Date(2026, 12, day, hour, 0, 0, 0, time.UTC) }
	qs.AddRows(
		usagecount.Row{ID: k.ID(), Hour: h(2, 0), Result: "admitted", N: 8},
		usagecount.Row{ID: k.ID(), Hour: h(2, 1), Result: "admitted", N: 4},
		usagecount.Row{ID: k.ID(), Hour: h(3, 6), Result: "admitted", N: 1},
		usagecount.Row{ID: k.ID(), Hour: h(3, 19), Result: "admitted", N: 2},
		usagecount.Row{ID: k.ID(), Hour: h(3, 19), Result: "rate_limited", N: 3},
	)
	return qs, k
}

var usageNow = time.Date(2026, 12, 3, 19, 30, 0, 0, time.UTC)

// The table by day and the chart, hour by hour over two days: one cell per
// hour up to now's, each line scaled to its peak.
func TestPrintUsageByHour(t *testing.T) {
	qs, k := usageFixture(t)
	u, err := keyops.ReadUsage(qs, k.ID(), 2, usageNow)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printUsage(&out, u, usageNow, false); err != nil {
		t.Fatal(err)
	}
	prefix := k.Record["key_prefix"].(string)
	sp := strings.Repeat
	want := `Requests with key 0b6f7f52-4d7e-4c55-9a4b-8a3f0d6e2c11 "free plan" (` + prefix + `), 2026-12-02 to 2026-12-03 (UTC):

DAY         ADMITTED  RATE_LIMITED
2026-12-02  12        0
2026-12-03  3         3
TOTAL       15        3

Requests per hour, 2026-12-02 00:00 to 2026-12-03 19:00 UTC (each line scaled to its own peak):
  admitted      │█▄` + sp(" ", 28) + "▁" + sp(" ", 12) + `▂│ peak 8/hour
  rate_limited  │` + sp(" ", 43) + `█│ peak 3/hour
`
	if out.String() != want {
		t.Errorf("usage:\n%s\nwant:\n%s", out.String(), want)
	}
	if strings.Contains(out.String(), k.Raw) {
		t.Error("usage shows the raw key")
	}
}

// Over more than two days, one cell per day; a day without requests is a
// row of zeros and a blank.
func TestPrintUsageByDay(t *testing.T) {
	qs, k := usageFixture(t)
	u, err := keyops.ReadUsage(qs, k.ID(), 7, usageNow)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printUsage(&out, u, usageNow, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	want := []string{
		"DAY         ADMITTED  RATE_LIMITED",
		"2026-11-27  0         0",
		"2026-11-28  0         0",
		"2026-11-29  0         0",
		"2026-11-30  0         0",
		"2026-12-01  0         0",
		"2026-12-02  12        0",
		"2026-12-03  3         3",
		"TOTAL       15        3",
		"",
		"Requests per day, 2026-11-27 to 2026-12-03 UTC (each line scaled to its own peak):",
		"  admitted      │     █▂│ peak 12/day",
		"  rate_limited  │      █│ peak 3/day",
		"",
	}
	if len(lines) != 2+len(want) || !reflect.DeepEqual(lines[2:], want) {
		t.Errorf("usage:\n%s\nwant, after the heading:\n%s", out.String(), strings.Join(want, "\n"))
	}
	if !strings.HasPrefix(lines[0], "Requests with key 0b6f7f52-4d7e-4c55-9a4b-8a3f0d6e2c11 \"free plan\"") || !strings.HasSuffix(lines[0], "2026-11-27 to 2026-12-03 (UTC):") {
		t.Errorf("heading %q", lines[0])
	}

	// No counts at all: the admitted column of zeros, and no chart.
	u, err = keyops.ReadUsage(qs, k.ID(), 3, time.Date(2027, 1, 10, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := printUsage(&out, u, usageNow, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "DAY         ADMITTED\n2027-01-08  0\n") || !strings.HasSuffix(out.String(), "TOTAL       0\n\nNo requests with this key in these days.\n") {
		t.Errorf("without counts:\n%s", out.String())
	}
}

// --json: the rows, by day and in total; lists and maps never null.
func TestPrintUsageJSON(t *testing.T) {
	qs, k := usageFixture(t)
	u, err := keyops.ReadUsage(qs, k.ID(), 2, usageNow)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := printUsage(&out, u, usageNow, true); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	want := map[string]any{
		"id": k.ID(), "label": "free plan", "key_prefix": k.Record["key_prefix"], "since": "2026-12-02T00:00:00Z",
		"rows": []any{
			map[string]any{"id": k.ID(), "hour": "2026-12-02T00:00:00Z", "result": "admitted", "n": float64(8)},
			map[string]any{"id": k.ID(), "hour": "2026-12-02T01:00:00Z", "result": "admitted", "n": float64(4)},
			map[string]any{"id": k.ID(), "hour": "2026-12-03T06:00:00Z", "result": "admitted", "n": float64(1)},
			map[string]any{"id": k.ID(), "hour": "2026-12-03T19:00:00Z", "result": "admitted", "n": float64(2)},
			map[string]any{"id": k.ID(), "hour": "2026-12-03T19:00:00Z", "result": "rate_limited", "n": float64(3)},
		},
		"days": []any{
			map[string]any{"day": "2026-12-02", "counts": map[string]any{"admitted": float64(12)}},
			map[string]any{"day": "2026-12-03", "counts": map[string]any{"admitted": float64(3), "rate_limited": float64(3)}},
		},
		"totals": map[string]any{"admitted": float64(15), "rate_limited": float64(3)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("--json:\n%s\nwant\n%s", out.String(), mustJSON(t, want))
	}

	u, err = keyops.ReadUsage(qs, k.ID(), 1, time.Date(2027, 1, 10, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := printUsage(&out, u, usageNow, true); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, `"rows": []`) || !strings.Contains(s, `"counts": {}`) || !strings.Contains(s, `"totals": {}`) {
		t.Errorf("no counts, --json:\n%s", s)
	}
}
