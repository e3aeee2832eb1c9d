package file

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// stateRecords returns the record store of a new key file with one key,
// on a clock set to now, and the key file's path.
func stateRecords(t testing.TB, now time.Time) (Records, string) {
	t.Helper()
	path := testkeys.WriteKeys(t, "", testkeys.New("k", nil))
	return Records{Path: path, now: func() time.Time { return now }}, path
}

var dec3 = time.Date(2026, 12, 3, 14, 30, 0, 0, time.UTC)

// monthTake is a take of key id's quota of allowance a month, in the
// month of dec3.
func monthTake(id string, allowance, want, owed int64) quota.Take {
	name, _, end := quota.Month.At(dec3)
	return quota.Take{ID: id, Period: name, Allowance: allowance, Want: want, Owed: owed, Ends: end}
}

// TestStateTakesAsMemoryBank runs the same random sequence of takes,
// gives and grants, over several keys and periods, on the state file and
// on quota.MemoryBank, the reference: every answer and every state must
// be the same.
func TestStateTakesAsMemoryBank(t *testing.T) {
	// On the first of the days the keys' periods go through: none of
	// their states is old enough to drop.
	rs, _ := stateRecords(t, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	mem := quota.NewMemoryBank()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	ids := []string{"a", "b", "c"}
	periods := []string{"2026-12-01", "2026-12-02", "2026-12-03"} // days, in order
	cur := map[string]int{}                                       // each key's period: only ever moves on
	allowance := map[string]int64{"a": 10, "b": 1000, "c": 0}
	ends := func(p string) time.Time {
		d, _ := time.Parse(time.DateOnly, p)
		return d.AddDate(0, 0, 1)
	}
	for step := 0; step < 200; step++ {
		id := ids[rng.IntN(len(ids))]
		if rng.IntN(40) == 0 && cur[id] < len(periods)-1 {
			cur[id]++
		}
		p := periods[cur[id]]
		switch op := rng.IntN(10); {
		case op < 6:
			var takes []quota.Take
			for n := 1 + rng.IntN(3); n > 0; n-- {
				k := ids[rng.IntN(len(ids))]
				takes = append(takes, quota.Take{ID: k, Period: periods[cur[k]], Allowance: allowance[k],
					Want: rng.Int64N(30) - 2, Owed: max(rng.Int64N(10)-7, 0), Ends: ends(periods[cur[k]])})
			}
			got, err := rs.TakeQuota(ctx, takes)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := mem.TakeQuota(ctx, takes)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d: takes %+v: state file answers %+v, memory bank %+v", step, takes, got, want)
			}
		case op < 8:
			gives := []quota.Give{{ID: id, Period: p, N: rng.Int64N(20)}}
			if rng.IntN(4) == 0 && cur[id] > 0 {
				gives[0].Period = periods[cur[id]-1] // a period that is over: ignored
			}
			if err := rs.GiveQuota(ctx, gives); err != nil {
				t.Fatal(err)
			}
			_ = mem.GiveQuota(ctx, gives)
		default:
			n := rng.Int64N(50) - 10
			st, err := rs.GrantQuota(id, p, n, ends(p))
			if err != nil {
				t.Fatal(err)
			}
			before := mem.State(id)
			mem.Grant(id, p, n)
			want := mem.State(id)
			if want.Granted < 0 { // the state file never goes below 0 granted
				mem.Grant(id, p, -want.Granted)
				want = mem.State(id)
			}
			if st != want {
				t.Fatalf("step %d: grant %d to %s (was %+v): state file %+v, memory bank %+v", step, n, id, before, st, want)
			}
		}
		periodsNow := map[string]string{}
		for _, k := range ids {
			periodsNow[k] = periods[cur[k]]
		}
		states, err := rs.QuotaStates(periodsNow)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ids {
			want := mem.State(k)
			if want.Period != periodsNow[k] {
				want = quota.State{}
			}
			if got := states[k]; got != want {
				t.Fatalf("step %d: key %s: state file %+v, memory bank %+v", step, k, got, want)
			}
		}
	}
}

// A take for a period older than the key's state (a server whose clock is
// behind, at midnight) gets nothing and changes nothing; a grant for it
// is refused.
func TestStateOlderPeriodGetsNothing(t *testing.T) {
	rs, _ := stateRecords(t, dec3)
	ctx := context.Background()
	day := func(d int, want int64) quota.Take {
		t0 := time.Date(2026, 12, d, 0, 0, 0, 0, time.UTC)
		return quota.Take{ID: "a", Period: t0.Format(time.DateOnly), Allowance: 100, Want: want, Ends: t0.AddDate(0, 0, 1)}
	}
	if got, err := rs.TakeQuota(ctx, []quota.Take{day(3, 10)}); err != nil || got[0] != (quota.Taken{Got: 10, Left: 90}) {
		t.Fatalf("take: %+v, %v", got, err)
	}
	got, err := rs.TakeQuota(ctx, []quota.Take{day(2, 10)})
	if err != nil || got[0] != (quota.Taken{}) {
		t.Fatalf("take for the day before: %+v, %v; want nothing", got, err)
	}
	if _, err := rs.GrantQuota("a", "2026-12-02", 5, time.Time{}); err == nil || !strings.Contains(err.Error(), "that period is over") {
		t.Fatalf("grant for the day before: %v", err)
	}
	st, err := rs.QuotaStates(map[string]string{"a": "2026-12-03"})
	if err != nil || st["a"] != (quota.State{Period: "2026-12-03", Used: 10}) {
		t.Fatalf("state %+v, %v; want the 3rd's, untouched", st, err)
	}
	// The quota's period changed from a day to a month: a new state.
	if got, err := rs.TakeQuota(ctx, []quota.Take{monthTake("a", 100, 1, 0)}); err != nil || got[0] != (quota.Taken{Got: 1, Left: 99}) {
		t.Fatalf("take for the month: %+v, %v", got, err)
	}
}

// A period's state is dropped a day after it ends; before, it stays.
func TestStateDropsExpiredPeriods(t *testing.T) {
	now := dec3
	rs, path := stateRecords(t, now)
	rs.now = func() time.Time { return now }
	ctx := context.Background()
	if _, err := rs.TakeQuota(ctx, []quota.Take{monthTake("old", 10, 5, 0)}); err != nil {
		t.Fatal(err)
	}
	_, _, end := quota.Month.At(dec3)
	now = end.Add(23 * time.Hour)
	if _, err := rs.TakeQuota(ctx, []quota.Take{monthTake("other", 10, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(testkeys.ReadFile(t, StatePath(path)), `"old"`) {
		t.Fatal("a period's state was dropped less than a day after it ended")
	}
	now = end.Add(25 * time.Hour)
	if _, err := rs.GrantQuota("other", "2026-12", 1, end); err != nil {
		t.Fatal(err)
	}
	if data := testkeys.ReadFile(t, StatePath(path)); strings.Contains(data, `"old"`) {
		t.Fatalf("a period's state was kept more than a day after it ended:\n%s", data)
	}
}

// Two record stores on the same key file (one through a symbolic link to
// it), used by many goroutines at once, never hand out more than the
// allowance between them, and hand it all out; what is given back is
// taken again.
func TestStateConcurrentTakesNeverOverspend(t *testing.T) {
	rs, path := stateRecords(t, dec3)
	link := filepath.Join(t.TempDir(), "keys-link.json")
	if err := os.Symlink(path, link); err != nil {
		t.Skip("no symbolic links here:", err)
	}
	both := []Records{rs, {Path: link, now: rs.now}}
	const allowance, goroutines = 500, 8
	var taken, given atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := both[g%2]
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				got, err := r.TakeQuota(context.Background(), []quota.Take{monthTake("k", allowance, 1+rng.Int64N(12), 0)})
				if err != nil {
					errs <- err
					return
				}
				if got[0].Got == 0 {
					return
				}
				taken.Add(got[0].Got)
				if rng.IntN(5) == 0 { // a server that stops gives back part of its block
					n := rng.Int64N(got[0].Got + 1)
					if err := r.GiveQuota(context.Background(), []quota.Give{{ID: "k", Period: "2026-12", N: n}}); err != nil {
						errs <- err
						return
					}
					given.Add(n)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if spent := taken.Load() - given.Load(); spent != allowance {
		t.Fatalf("%d units taken and %d given back: %d spent, want exactly the allowance %d", taken.Load(), given.Load(), spent, allowance)
	}
	st, err := rs.QuotaStates(map[string]string{"k": "2026-12"})
	if err != nil || st["k"].Used != allowance {
		t.Fatalf("state %+v, %v; want %d used", st, err, allowance)
	}
}

// Grants add to the allowance of the period, may be taken back but not
// below 0, and a take sees them.
func TestStateGrants(t *testing.T) {
	rs, _ := stateRecords(t, dec3)
	ctx := context.Background()
	if got, _ := rs.TakeQuota(ctx, []quota.Take{monthTake("k", 10, 50, 0)}); got[0] != (quota.Taken{Got: 10}) {
		t.Fatalf("take: %+v", got)
	}
	st, err := rs.GrantQuota("k", "2026-12", 25, time.Time{})
	if err != nil || st != (quota.State{Period: "2026-12", Used: 10, Granted: 25}) {
		t.Fatalf("grant: %+v, %v", st, err)
	}
	if got, _ := rs.TakeQuota(ctx, []quota.Take{monthTake("k", 10, 50, 0)}); got[0] != (quota.Taken{Got: 25}) {
		t.Fatalf("take after the grant: %+v", got)
	}
	if st, _ := rs.GrantQuota("k", "2026-12", -100, time.Time{}); st.Granted != 0 {
		t.Fatalf("granted %d after taking back more than was granted, want 0", st.Granted)
	}
	if _, err := rs.GrantQuota("k", "2026-12", quota.MaxRequests+1, time.Time{}); err == nil {
		t.Fatal("a grant past quota.MaxRequests was taken")
	}
}

// A missing state file is an empty state, made by the first write with
// the key file's mode; a missing key file is an error, and nothing is
// made beside it.
func TestStateMissing(t *testing.T) {
	rs, path := stateRecords(t, dec3)
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	st, err := rs.QuotaStates(map[string]string{"k": "2026-12"})
	if err != nil || len(st) != 0 {
		t.Fatalf("no state file: %+v, %v; want no state", st, err)
	}
	if rows, err := rs.ReadUsageCounts("k", time.Time{}); err != nil || rows != nil {
		t.Fatalf("no state file: usage %+v, %v", rows, err)
	}
	if err := rs.GiveQuota(context.Background(), []quota.Give{{ID: "k", Period: "2026-12", N: 3}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(StatePath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a give that changed nothing made the state file: %v", err)
	}
	if _, err := rs.TakeQuota(context.Background(), []quota.Take{monthTake("k", 10, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(StatePath(path))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("new state file has mode %v, want the key file's 0640", fi.Mode().Perm())
	}

	missing := Records{Path: filepath.Join(t.TempDir(), "keys.jsn")}
	if _, err := missing.TakeQuota(context.Background(), []quota.Take{monthTake("k", 10, 1, 0)}); err == nil || !strings.Contains(err.Error(), "key file "+missing.Path) {
		t.Fatalf("take on a missing key file: %v", err)
	}
	if _, err := missing.QuotaStates(map[string]string{"k": "2026-12"}); err == nil {
		t.Fatal("quota states of a missing key file: no error")
	}
	if _, err := missing.ReadUsageCounts("k", time.Time{}); err == nil {
		t.Fatal("usage counts of a missing key file: no error")
	}
	if left, _ := os.ReadDir(filepath.Dir(missing.Path)); len(left) != 0 {
		t.Fatalf("files made beside a missing key file: %v", left)
	}
}

// Usage counts add up across calls, are read back by hour and result in
// order from the hour that holds since, and hours older than keep are
// dropped.
func TestStateUsageCounts(t *testing.T) {
	now := dec3
	rs, path := stateRecords(t, now)
	rs.now = func() time.Time { return now }
	ctx := context.Background()
	h := usagecount.Hour(dec3)
	row := func(id string, hour time.Time, result string, n int64) usagecount.Row {
		return usagecount.Row{ID: id, Hour: hour, Result: result, N: n}
	}
	keep := 48 * time.Hour
	for range 3 {
		if err := rs.AddUsageCounts(ctx, []usagecount.Row{
			row("a", h, "rate_limited", 1),
			row("a", h.Add(17*time.Minute), "admitted", 5), // the same hour
			row("a", h.Add(-time.Hour), "admitted", 2),
			row("b", h, "admitted", 7),
			row("a", h, "no_such_result", 9),              // left out
			row("a", h, "revoked", 0),                     // left out
			row("a", h.Add(-72*time.Hour), "admitted", 1), // too old to keep
		}, keep); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := rs.ReadUsageCounts("a", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := []usagecount.Row{row("a", h.Add(-time.Hour), "admitted", 6), row("a", h, "admitted", 15), row("a", h, "rate_limited", 3)}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("rows %+v, want %+v", rows, want)
	}
	if rows, _ := rs.ReadUsageCounts("a", h.Add(59*time.Minute)); !reflect.DeepEqual(rows, want[1:]) {
		t.Fatalf("rows since the hour: %+v, want %+v", rows, want[1:])
	}
	if rows, _ := rs.ReadUsageCounts("nobody", time.Time{}); rows != nil {
		t.Fatalf("rows of a key without counts: %+v", rows)
	}
	if data := testkeys.ReadFile(t, StatePath(path)); strings.Contains(data, "no_such_result") {
		t.Fatalf("an unknown result was written:\n%s", data)
	}

	// 48 hours on, the hour before h is dropped at the next write.
	now = now.Add(keep)
	if err := rs.AddUsageCounts(ctx, []usagecount.Row{row("b", usagecount.Hour(now), "admitted", 1)}, keep); err != nil {
		t.Fatal(err)
	}
	rows, _ = rs.ReadUsageCounts("a", time.Time{})
	if !reflect.DeepEqual(rows, want[1:]) {
		t.Fatalf("rows after %s: %+v, want %+v", keep, rows, want[1:])
	}
	// A quota take keeps the counts as they are.
	if _, err := rs.TakeQuota(ctx, []quota.Take{monthTake("a", 10, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	if rows, _ := rs.ReadUsageCounts("b", time.Time{}); len(rows) != 2 || rows[0].N != 21 {
		t.Fatalf("b's rows after a quota take: %+v", rows)
	}
	now = now.Add(keep + time.Hour) // b's last hour ended more than keep ago
	if err := rs.AddUsageCounts(ctx, nil, keep); err != nil {
		t.Fatal(err)
	}
	if data := testkeys.ReadFile(t, StatePath(path)); strings.Contains(data, `"usage"`) {
		t.Fatalf("every hour is older than keep, yet counts are left:\n%s", data)
	}
}

// The state file is JSON in the documented form, which a state written
// by hand in that form is read as.
func TestStateFileFormat(t *testing.T) {
	rs, path := stateRecords(t, dec3)
	written := `{"version":1,"quotas":{"k_1":{"period":"2026-12","used":1200,"granted":500,"ends":"2027-01-01T00:00:00Z"}},` +
		`"usage":{"k_1":{"2026-12-03T14:00:00Z":{"admitted":1180,"rate_limited":3}}}}`
	testkeys.WriteFile(t, StatePath(path), written)
	st, err := rs.QuotaStates(map[string]string{"k_1": "2026-12"})
	if err != nil || st["k_1"] != (quota.State{Period: "2026-12", Used: 1200, Granted: 500}) {
		t.Fatalf("state %+v, %v", st, err)
	}
	rows, err := rs.ReadUsageCounts("k_1", time.Time{})
	if err != nil || len(rows) != 2 || rows[0].N != 1180 || rows[1].Result != "rate_limited" {
		t.Fatalf("rows %+v, %v", rows, err)
	}
	if _, err := rs.GrantQuota("k_1", "2026-12", 0, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(testkeys.ReadFile(t, StatePath(path))); got != written {
		t.Fatalf("rewritten as\n%s\nwant\n%s", got, written)
	}
}

// Bad state files: each is an error naming the file and saying what to
// do, from every call, and is left as it was.
func TestStateFileCorrupt(t *testing.T) {
	for _, c := range []struct{ name, content, says string }{
		{"not JSON", `{"version":1,"quotas":{`, "not a state file"},
		{"empty", ``, "not a state file"},
		{"an array", `[]`, "not a state file"},
		{"no version", `{"quotas":{}}`, `no "version"`},
		{"a newer version", `{"version":2,"quotas":{}}`, "version 2"},
		{"an unknown member", `{"version":1,"extra":true}`, `unknown member "extra"`},
		{"a negative count", `{"version":1,"quotas":{"k":{"period":"2026-12","used":-1}}}`, "negative"},
		{"no period", `{"version":1,"quotas":{"k":{"used":1}}}`, "no period"},
		{"a duplicate key", `{"version":1,"quotas":{"k":{"period":"2026-12","used":1},"k":{"period":"2026-12","used":0}}}`, "duplicate"},
		{"a member twice", `{"version":1,"quotas":{},"version":1}`, `"version" is there twice`},
		{"a key's usage twice", `{"version":1,"usage":{"k":{},"k":{}}}`, `"k" is there twice`},
		{"an unknown member of a quota state", `{"version":1,"quotas":{"k":{"period":"2026-12","used":1,"usd":2}}}`, "usd"},
		{"usage not an object", `{"version":1,"usage":[1]}`, `"usage" must be an object`},
		{"a bad hour", `{"version":1,"usage":{"k":{"2026-12-03T14:30:00Z":{"admitted":1}}}}`, "start of an hour"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rs, path := stateRecords(t, dec3)
			statePath := StatePath(path)
			testkeys.WriteFile(t, statePath, c.content)
			quotas := c.name != "a bad hour" && c.name != "a key's usage twice" // read by the usage calls alone
			checkStateRefused(t, rs, statePath, c.says, quotas, func() {
				if got := testkeys.ReadFile(t, statePath); got != c.content {
					t.Fatalf("the state file was changed to %q", got)
				}
			})
		})
	}
}

// checkStateRefused checks that every call on rs fails with an error that
// names statePath and holds says and the advice, and calls unchanged after
// each. Hours are checked only by the calls that read the usage counts:
// quotas says whether the quota calls must fail too.
func checkStateRefused(t *testing.T, rs Records, statePath, says string, quotas bool, unchanged func()) {
	t.Helper()
	ctx := context.Background()
	calls := []struct {
		name string
		call func() error
	}{
		{"AddUsageCounts", func() error {
			return rs.AddUsageCounts(ctx, []usagecount.Row{{ID: "k", Hour: dec3, Result: "admitted", N: 1}}, 0)
		}},
		{"ReadUsageCounts", func() error { _, err := rs.ReadUsageCounts("k", time.Time{}); return err }},
	}
	if quotas {
		calls = append(calls, []struct {
			name string
			call func() error
		}{
			{"TakeQuota", func() error { _, err := rs.TakeQuota(ctx, []quota.Take{monthTake("k", 10, 1, 0)}); return err }},
			{"GiveQuota", func() error { return rs.GiveQuota(ctx, []quota.Give{{ID: "k", Period: "2026-12", N: 1}}) }},
			{"GrantQuota", func() error { _, err := rs.GrantQuota("k", "2026-12", 1, time.Time{}); return err }},
			{"QuotaStates", func() error { _, err := rs.QuotaStates(map[string]string{"k": "2026-12"}); return err }},
		}...)
	}
	for _, c := range calls {
		err := c.call()
		if err == nil {
			t.Fatalf("%s: no error", c.name)
		}
		msg := err.Error()
		for _, want := range []string{statePath, says, "move it aside", "restore it from a backup"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: error %q does not say %q", c.name, msg, want)
			}
		}
		if strings.HasPrefix(c.name, "TakeQuota") || strings.HasPrefix(c.name, "GiveQuota") {
			if !errors.Is(err, quota.ErrUnavailable) {
				t.Errorf("%s: error %v is not quota.ErrUnavailable", c.name, err)
			}
		}
		unchanged()
	}
}

// A state file larger than MaxStateSize is refused, unread.
func TestStateFileTooLarge(t *testing.T) {
	rs, path := stateRecords(t, dec3)
	statePath := StatePath(path)
	f, err := os.Create(statePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxStateSize + 1); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	f.Close()
	checkStateRefused(t, rs, statePath, fmt.Sprintf("%d MiB", MaxStateSize>>20), true, func() {
		if fi, err := os.Stat(statePath); err != nil || fi.Size() != MaxStateSize+1 {
			t.Fatalf("the state file changed: %v", err)
		}
	})
}

// A running Caddy's store whose state file goes away after it was there:
// its takes and usage writes fail (ErrStateGone, the meter then refuses
// beyond the units it holds) instead of starting every quota afresh; a
// store that never saw one starts with an empty state.
func TestStateGoneWhileRunning(t *testing.T) {
	rs, path := stateRecords(t, dec3)
	var seen atomic.Bool
	rs.seen = &seen
	if err := rs.GiveQuota(context.Background(), []quota.Give{{ID: "k", Period: "2026-12", N: 1}}); err != nil || seen.Load() {
		t.Fatalf("a give with no state file: %v; the state file taken as seen: %v", err, seen.Load())
	}
	if _, err := rs.TakeQuota(context.Background(), []quota.Take{monthTake("k", 100, 10, 0)}); err != nil {
		t.Fatalf("the first take makes the state file: %v", err)
	}
	if err := os.Remove(StatePath(path)); err != nil {
		t.Fatal(err)
	}
	_, err := rs.TakeQuota(context.Background(), []quota.Take{monthTake("k", 100, 10, 0)})
	if !errors.Is(err, ErrStateGone) || !strings.Contains(err.Error(), StatePath(path)) {
		t.Fatalf("a take once the state file is gone: %v", err)
	}
	if err := rs.AddUsageCounts(context.Background(), []usagecount.Row{{ID: "k", Hour: usagecount.Hour(dec3), Result: "admitted", N: 1}}, usagecount.DefaultRetention); !errors.Is(err, ErrStateGone) {
		t.Fatalf("a usage write once the state file is gone: %v", err)
	}
	if _, err := os.Stat(StatePath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the state file was made again: %v", err)
	}
}
