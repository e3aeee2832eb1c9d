// Package quota meters each key's quota: an allowance of units (requests,
// or more per request on a route with a cost) per calendar period, spent
// in memory on the request path and never beyond the allowance, even
// across crashes and servers.
//
// # How it never overspends
//
// The allowance lives in a Bank (the key file's state file, or Redis). A
// server never spends a unit it did not take from the bank first: it
// takes a block of at most Quota.Block units (1 % of the allowance, or one
// unit, or the route's cost if that is more), which the bank writes down
// as used before it answers, spends it in memory, and takes the next block
// in the background when it runs below half. A server that stops gives
// back what it holds. A server that crashes (kill -9, power loss) cannot
// give back the block it held: those units stay counted as used until the
// period ends. So, with N crashes in a period, a key's admitted requests
// are between allowance − N × block and the allowance, never above.
//
// # The request path
//
// Meter.Spend is one map lookup and one atomic compare-and-swap when the
// server holds enough units; no I/O, no allocation. When it holds too few
// and a block is on its way, it waits for it at most MaxWait; a key whose
// bank says there are no units left is refused until the period ends, an
// operator grants more, or its allowance is raised (looked at again every
// SyncInterval while requests come).
package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Period is how often a quota's allowance starts again: each day or month
// at midnight UTC, on calendar boundaries, or never (a fixed allowance).
type Period uint8

// The periods.
const (
	None Period = iota
	Day
	Month
)

var periodNames = [...]string{"none", "day", "month"}

// String is the period as records and commands write it: none, day, month.
func (p Period) String() string {
	if int(p) < len(periodNames) {
		return periodNames[p]
	}
	return "period(" + strconv.Itoa(int(p)) + ")"
}

// ParsePeriod reads "day", "month" or "none".
func ParsePeriod(s string) (Period, error) {
	for i, n := range periodNames {
		if s == n {
			return Period(i), nil
		}
	}
	return 0, fmt.Errorf(`period %q: must be "day", "month" or "none"`, s)
}

// At returns the name of the period that holds t (UTC: "2026-12-03" for a
// day, "2026-12" for a month, "none" for a fixed allowance), when it
// starts and when it ends (the zero time and the far future for none).
func (p Period) At(t time.Time) (name string, start, end time.Time) {
	t = t.UTC()
	y, m, d := t.Date()
	switch p {
	case Day:
		start = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
		return start.Format(time.DateOnly), start, start.AddDate(0, 0, 1)
	case Month:
		start = time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
		return start.Format("2006-01"), start, start.AddDate(0, 1, 0)
	}
	return "none", time.Time{}, Never
}

// Never is the end of a period that does not end: the latest time whose
// unix nanoseconds an int64 holds (in 2262).
var Never = time.Unix(0, math.MaxInt64).UTC()

// MaxRequests bounds a quota's allowance, so that sums of allowances and
// grants stay far from overflowing.
const MaxRequests = 1 << 50

// Quota is a key's allowance: Requests units per Period.
type Quota struct {
	Requests int64
	Period   Period
}

// Check reports a quota that cannot be used.
func (q Quota) Check() error {
	if q.Requests < 0 || q.Requests > MaxRequests {
		return fmt.Errorf("quota requests %d: must be from 0 to %d", q.Requests, int64(MaxRequests))
	}
	if int(q.Period) >= len(periodNames) {
		return fmt.Errorf("quota period %d is unknown", q.Period)
	}
	return nil
}

// Block is the most units of this quota a server holds at a time: 1 % of
// the allowance, or one unit if that is more.
func (q Quota) Block() int64 { return max(q.Requests/100, 1) }

// String writes the quota as the commands take it: 10000/month.
func (q Quota) String() string { return strconv.FormatInt(q.Requests, 10) + "/" + q.Period.String() }

// Parse reads a quota as the commands write it: <requests>/<period>, e.g.
// 10000/month, 500/day, 1000/none.
func Parse(s string) (Quota, error) {
	n, p, ok := strings.Cut(s, "/")
	if !ok {
		return Quota{}, fmt.Errorf("quota %q: write it as <requests>/<period>, e.g. 10000/month (periods: day, month, none)", s)
	}
	req, err := strconv.ParseInt(n, 10, 64)
	if err != nil {
		return Quota{}, fmt.Errorf("quota %q: %q is not a whole number of requests", s, n)
	}
	per, err := ParsePeriod(p)
	if err != nil {
		return Quota{}, fmt.Errorf("quota %q: %v", s, err)
	}
	q := Quota{Requests: req, Period: per}
	return q, q.Check()
}

// Take asks a bank for units of one key's quota in one period.
type Take struct {
	ID        string    // the key's id
	Period    string    // the period's name (Period.At)
	Allowance int64     // the quota's requests, as this server's key set has them
	Want      int64     // units wanted: at most what the bank has left is taken
	Owed      int64     // units already spent (admitted while the bank was down): charged first, whatever is left
	Ends      time.Time // when the period ends: its state may be dropped some time after (Never: kept)
}

// Taken is a bank's answer to a Take.
type Taken struct {
	Got  int64 // units now the asking server's to spend, 0 to Want, written down as used
	Left int64 // units the bank has left for the period after this take (≥ 0)
}

// Give hands units a server took and did not spend back to its bank.
type Give struct {
	ID     string
	Period string
	N      int64
}

// Bank is where a key set's quota state lives, shared by every server of
// the key set. TakeQuota must write the units it hands out as used,
// durably, before it returns; both calls are atomic per key and safe for
// several servers at once. For each Take, in one step: used += Owed; left
// = max(allowance + granted − used, 0); got = min(Want, left); used +=
// got; answer {got, left − got}. GiveQuota lowers used by N, not below 0,
// in the named period only (a period that is over is left alone). The
// answers are in the order of the takes.
type Bank interface {
	TakeQuota(ctx context.Context, takes []Take) ([]Taken, error)
	GiveQuota(ctx context.Context, gives []Give) error
}

// State is one key's quota state in a bank, for one period: the units
// used (taken by servers: those spent, and those still held by a running
// server or stranded by one that crashed) and granted on top of the
// allowance for this period (caddy apikey quota --grant).
type State struct {
	Period  string `json:"period"`
	Used    int64  `json:"used"`
	Granted int64  `json:"granted,omitzero"`
}

// Left is how many units are left of allowance in state.
func (s State) Left(allowance int64) int64 { return max(allowance+s.Granted-s.Used, 0) }

// ErrUnavailable is what a bank's caller sees when the state cannot be
// reached (wrapped).
var ErrUnavailable = errors.New("quota state unavailable")
