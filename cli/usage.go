package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// printUsage writes a key's usage counts to w: as JSON, or as a table by
// day, its totals and a chart (see usageChart).
func printUsage(w io.Writer, u keyops.Usage, now time.Time, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(u)
	}
	last := u.Since
	if len(u.Days) > 0 {
		last, _ = time.Parse(time.DateOnly, u.Days[len(u.Days)-1].Day)
	}
	fmt.Fprintf(w, "Requests with key %s %q (%s), %s to %s (UTC):\n\n", keyops.Printable(u.ID), keyops.Printable(u.Label), keyops.Printable(u.KeyPrefix),
		u.Since.Format(time.DateOnly), last.Format(time.DateOnly))
	results := usageResults(u.Totals)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := []string{"DAY"}
	for _, r := range results {
		head = append(head, strings.ToUpper(keyops.Printable(r)))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	row := func(name string, counts map[string]int64) {
		cells := []string{name}
		for _, r := range results {
			cells = append(cells, strconv.FormatInt(counts[r], 10))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	for _, d := range u.Days {
		row(d.Day, d.Counts)
	}
	row("TOTAL", u.Totals)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(u.Rows) == 0 {
		_, err := fmt.Fprintln(w, "No requests with this key in these days.")
		return err
	}
	_, err := io.WriteString(w, usageChart(u, results, now))
	return err
}

// usageResults are the results shown as columns and chart rows: admitted
// first, always, then the others that have a count, in the order of
// usagecount.Results, then any result this version does not know (a newer
// server's), by name.
func usageResults(totals map[string]int64) []string {
	out := []string{usagecount.Results[usagecount.Admitted]}
	for _, r := range usagecount.Results[usagecount.Admitted+1:] {
		if totals[r] != 0 {
			out = append(out, r)
		}
	}
	var unknown []string
	for r, n := range totals {
		if n != 0 && usagecount.ResultIndex(r) < 0 {
			unknown = append(unknown, r)
		}
	}
	slices.Sort(unknown)
	return append(out, unknown...)
}

// chartHours is how many days the chart shows hour by hour: over more
// days, it shows one cell per day.
const chartHours = 2

// usageChart draws one sparkline per result (those of results with a
// count): over the span of days, one cell per hour from the first hour of
// the span to the hour of now when it is at most chartHours days long (at
// most 48 cells), one cell per day beyond (at most keyops.MaxUsageDays
// cells). Each line is scaled to its own peak, which it names.
func usageChart(u keyops.Usage, results []string, now time.Time) string {
	step, layout, unit := time.Hour, "2006-01-02 15:00", "hour"
	cells := int(usagecount.Hour(now).Sub(u.Since)/time.Hour) + 1
	if len(u.Days) > chartHours {
		step, layout, unit = 24*time.Hour, time.DateOnly, "day"
		cells = len(u.Days)
	}
	cells = max(cells, 1)
	series := make(map[string][]int64)
	for _, r := range u.Rows {
		i := int(r.Hour.Sub(u.Since) / step)
		if i < 0 || i >= cells {
			continue
		}
		if series[r.Result] == nil {
			series[r.Result] = make([]int64, cells)
		}
		series[r.Result][i] += r.N
	}
	end := u.Since.Add(time.Duration(cells-1) * step)
	var b strings.Builder
	fmt.Fprintf(&b, "Requests per %s, %s to %s UTC (each line scaled to its own peak):\n", unit, u.Since.Format(layout), end.Format(layout))
	width := 0
	for _, r := range results {
		width = max(width, len(keyops.Printable(r)))
	}
	for _, r := range results {
		s := series[r]
		if s == nil {
			continue
		}
		fmt.Fprintf(&b, "  %-*s  │%s│ peak %d/%s\n", width, keyops.Printable(r), sparkline(s), slices.Max(s), unit)
	}
	return b.String()
}

// sparks are the levels of a sparkline, lowest first.
var sparks = []rune("▁▂▃▄▅▆▇█")

// sparkline draws counts as one character each, scaled to their peak:
// the peak is █, any other count one of ▁ to █ in proportion (rounded
// up, so that a count above none never looks like none), and none is a
// blank.
func sparkline(counts []int64) string {
	peak := int64(0)
	for _, n := range counts {
		peak = max(peak, n)
	}
	out := make([]rune, len(counts))
	for i, n := range counts {
		if n <= 0 {
			out[i] = ' '
			continue
		}
		level := int(math.Ceil(float64(n) * float64(len(sparks)) / float64(peak)))
		out[i] = sparks[min(max(level, 1), len(sparks))-1]
	}
	return string(out)
}
