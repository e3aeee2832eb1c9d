package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// The state file lies beside the key file (beside the file its symbolic
// links lead to, where its lock is): keys.json's is keys.json.state. It
// holds what the servers and the commands count about the keys, which the
// key file, edited by people, does not: each key's quota state in its
// latest period, and its usage counts per hour and result. It is JSON:
//
//	{
//	  "version": 1,
//	  "quotas": {
//	    "k_7Hq2": {"period": "2026-12", "used": 1200, "granted": 500, "ends": "2027-01-01T00:00:00Z"}
//	  },
//	  "usage": {
//	    "k_7Hq2": {
//	      "2026-12-03T14:00:00Z": {"admitted": 1180, "rate_limited": 3},
//	      "2026-12-03T15:00:00Z": {"admitted": 20}
//	    }
//	  }
//	}
//
// "version" is 1; a file of another version is refused, not rewritten.
// "quotas" maps a key's id to its state in the latest period it was used
// or granted in: the period's name (quota.Period.At: "2026-12-03" for a
// day, "2026-12" for a month, "none" for a fixed allowance), the units
// used (taken by servers: spent, held by a running server, or stranded by
// one that crashed), those granted on top of the allowance for the period
// (omitted when 0), and when the period ends (omitted if unknown). A state
// is dropped a day after its period ends (quota.Expired).
// "usage" maps a key's id to its counts: the hour's start (RFC 3339, UTC)
// to the number of requests by result (usagecount.Results; a result with
// no request is omitted). An hour that ended longer ago than the
// retention (35 days by default) is dropped at the next write of counts.
//
// Every change is made under the key file's lock and written durably,
// before the call that makes it returns: a temporary file in the same
// folder, flushed, renamed over the state file, the folder flushed. So a
// crash or a kill leaves the old version or the new one, whole, and a
// server never spends a unit of quota that a crash could make the file
// forget it took. Reading takes no lock: the file is only ever replaced
// whole.

// StateSuffix is what the state file's name adds to the key file's.
const StateSuffix = ".state"

// MaxStateSize bounds what is read of a state file.
const MaxStateSize = 256 << 20

// stateVersion is the version of the state file's format written.
const stateVersion = 1

// StatePath is the path of the state file of the key file at path
// (through its symbolic links: the state file lies beside the file they
// lead to, where its lock is).
func StatePath(path string) string {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	return path + StateSuffix
}

// stateDoc is a state file's contents. The usage counts stay as they were
// read (JSON) unless a change needs them: a quota take reads and writes
// them as bytes, without decoding them.
type stateDoc struct {
	Version int                       `json:"version"`
	Quotas  map[string]*quotaState    `json:"quotas,omitempty"`
	Usage   jsontext.Value            `json:"usage,omitempty"`
	Unknown map[string]jsontext.Value `json:",embed"` // refused: a version 1 file has no other member
}

// quotaState is one key's quota state (quota.State) and when its period
// ends.
type quotaState struct {
	Period  string    `json:"period"`
	Used    int64     `json:"used"`
	Granted int64     `json:"granted,omitzero"`
	Ends    time.Time `json:"ends,omitzero"`
}

func (q *quotaState) state() quota.State {
	return quota.State{Period: q.Period, Used: q.Used, Granted: q.Granted}
}

// usageCounts are the usage counts decoded: id -> hour (RFC 3339) ->
// result -> requests.
type usageCounts map[string]map[string]map[string]int64

// hourLayout is how an hour is written: RFC 3339 in UTC, which sorts as
// text in the order of time.
const hourLayout = "2006-01-02T15:04:05Z"

// StateError is a state file that cannot be used as it is: not JSON, not
// of a version this server reads, not a regular file, too large.
type StateError struct {
	Path string
	Err  error
}

func (e *StateError) Error() string {
	return "state file " + e.Path + ": " + e.Err.Error() +
		"; move it aside to start the quotas and usage counts afresh (every key's quota then counts as unused this period), or restore it from a backup"
}

func (e *StateError) Unwrap() error { return e.Err }

// WriteTo writes the state as JSON, its maps sorted by key.
func (d *stateDoc) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	err := json.MarshalWrite(cw, d, json.Deterministic(true))
	if err == nil {
		_, err = cw.Write([]byte("\n"))
	}
	return cw.n, err
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// parseState reads a state file's contents, checking the quota states;
// the usage counts are checked as JSON only (decodeUsage checks them).
func parseState(data []byte) (*stateDoc, error) {
	var d stateDoc
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("not a state file of caddy-apikey: %v", err)
	}
	switch {
	case d.Version == 0:
		return nil, errors.New(`not a state file of caddy-apikey: it has no "version"`)
	case d.Version != stateVersion:
		return nil, fmt.Errorf("version %d, which this caddy-apikey does not read (it reads version %d): was it written by a newer one?", d.Version, stateVersion)
	case len(d.Unknown) > 0:
		return nil, fmt.Errorf("unknown member %q", slices.Sorted(maps.Keys(d.Unknown))[0])
	}
	for id, q := range d.Quotas {
		switch {
		case q == nil:
			return nil, fmt.Errorf("the quota state of key %q is null", id)
		case q.Period == "":
			return nil, fmt.Errorf("the quota state of key %q has no period", id)
		case q.Used < 0 || q.Granted < 0:
			return nil, fmt.Errorf("the quota state of key %q has a negative count", id)
		}
	}
	if d.Usage != nil {
		if k := d.Usage.Kind(); k != '{' && k != 'n' {
			return nil, fmt.Errorf(`"usage" must be an object, not a JSON %s`, keyfile.KindName(k))
		}
	}
	if d.Quotas == nil {
		d.Quotas = make(map[string]*quotaState)
	}
	return &d, nil
}

// decodeUsage decodes and checks the state's usage counts.
func (d *stateDoc) decodeUsage() (usageCounts, error) {
	u := make(usageCounts)
	if len(d.Usage) == 0 || d.Usage.Kind() == 'n' {
		return u, nil
	}
	if err := json.Unmarshal(d.Usage, &u); err != nil {
		return nil, fmt.Errorf(`"usage": %v`, err)
	}
	for id, hours := range u {
		if err := checkHours(id, hours); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// checkHours checks one key's usage counts.
func checkHours(id string, hours map[string]map[string]int64) error {
	for h, counts := range hours {
		if t, err := time.Parse(hourLayout, h); err != nil || !t.Equal(usagecount.Hour(t)) {
			return fmt.Errorf(`"usage" of key %q: %q is not the start of an hour in UTC, such as "2026-12-03T14:00:00Z"`, id, h)
		}
		for r, n := range counts {
			if n < 0 {
				return fmt.Errorf(`"usage" of key %q at %s: %d %s requests`, id, h, n, r)
			}
		}
	}
	return nil
}

// setUsage puts decoded usage counts back in the state.
func (d *stateDoc) setUsage(u usageCounts) error {
	if len(u) == 0 {
		d.Usage = nil
		return nil
	}
	data, err := json.Marshal(u, json.Deterministic(true))
	if err != nil {
		return err
	}
	d.Usage = data
	return nil
}

// readStateIn reads the state file name in dir: an empty state if there is
// none (fi nil).
func readStateIn(dir *os.Root, name string) (*stateDoc, fs.FileInfo, error) {
	path := filepath.Join(dir.Name(), name)
	data, fi, err := keyfile.ReadCompanionIn(dir, name, MaxStateSize)
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &stateDoc{Version: stateVersion, Quotas: make(map[string]*quotaState)}, nil, nil
	case errors.As(err, &pe):
		return nil, nil, fmt.Errorf("state file %s: %w", path, pe.Err)
	case err != nil:
		return nil, nil, &StateError{Path: path, Err: err}
	}
	d, err := parseState(data)
	if err != nil {
		return nil, nil, &StateError{Path: path, Err: err}
	}
	return d, fi, nil
}

// errNoChange tells updateState that there is nothing to write.
var errNoChange = errors.New("no change")

// readState reads the state file of the key file at f.Path without its
// lock (the file is only ever replaced whole). A missing state file is an
// empty state; a missing key file is an error, so that a mistyped path
// does not read as a key file whose keys were never used.
func (f Records) readState() (*stateDoc, error) {
	if _, err := os.Stat(f.Path); err != nil {
		return nil, &keyfile.Error{Path: f.Path, Err: err}
	}
	path := StatePath(f.Path)
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("state file %s: opening its folder: %w", path, err)
	}
	defer dir.Close()
	d, _, err := readStateIn(dir, filepath.Base(path))
	return d, err
}

// updateState reads the state file under the key file's lock, applies
// change to it and, unless change returns errNoChange, replaces it
// durably. The lock is waited for as long as ctx allows (at most
// keyfile.LockTimeout). A state file that cannot be read is left as it is,
// and so is one whose write fails.
func (f Records) updateState(ctx context.Context, change func(d *stateDoc, now time.Time) error) error {
	if _, err := os.Stat(f.Path); err != nil {
		// Said before taking the lock, which would leave a lock file.
		return &keyfile.Error{Path: f.Path, Err: err}
	}
	timeout := keyfile.LockTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(deadline), 0))
	}
	dir, name, unlock, err := keyfile.LockFolder(f.Path, timeout, nil)
	if err != nil {
		return err
	}
	defer unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	stateName := name + StateSuffix
	d, fi, err := readStateIn(dir, stateName)
	if err != nil {
		return err
	}
	if err := change(d, f.clock()); err != nil {
		if errors.Is(err, errNoChange) {
			return nil
		}
		return err
	}
	like := fi
	if like == nil {
		// A new state file gets the key file's mode and owner, so that
		// one made by `sudo caddy apikey` is one Caddy can read.
		if kfi, err := dir.Lstat(name); err == nil && kfi.Mode().IsRegular() {
			like = kfi
		}
	}
	_, err = keyfile.WriteCompanionIn(dir, stateName, "state file", d, like)
	return err
}

// clock is the time now, for the periods' ends and the hours kept.
func (f Records) clock() time.Time {
	if f.now != nil {
		return f.now()
	}
	return time.Now()
}

// dropExpired drops the quota states of periods that ended more than a
// day ago (quota.Expired).
func (d *stateDoc) dropExpired(now time.Time) {
	for id, q := range d.Quotas {
		if !q.Ends.IsZero() && quota.Expired(q.Ends, now) {
			delete(d.Quotas, id)
		}
	}
}

// olderPeriod reports whether period a comes before b, both of the same
// kind (names of days, or of months, sort as text in the order of time).
// Periods of different kinds (the quota changed) are never older.
func olderPeriod(a, b string) bool { return len(a) == len(b) && a < b }

// TakeQuota applies each take (quota.Apply) in one write of the state
// file, durable before it returns. A take for a period newer than the
// key's state starts the new period's state; one for an older period (a
// server whose clock is behind, at a period's end) gets nothing and
// changes nothing, so that two servers on either side of midnight never
// start the same period twice.
func (f Records) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	out := make([]quota.Taken, len(takes))
	err := f.updateState(ctx, func(d *stateDoc, now time.Time) error {
		d.dropExpired(now)
		for i, t := range takes {
			q := d.Quotas[t.ID]
			if q != nil && olderPeriod(t.Period, q.Period) {
				out[i] = quota.Taken{}
				continue
			}
			if q == nil || q.Period != t.Period {
				q = &quotaState{Period: t.Period}
				d.Quotas[t.ID] = q
			}
			if !t.Ends.IsZero() {
				q.Ends = t.Ends.UTC()
			}
			s := q.state()
			out[i] = quota.Apply(&s, t)
			q.Used, q.Granted = s.Used, s.Granted
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", quota.ErrUnavailable, err)
	}
	return out, nil
}

// GiveQuota applies each give (quota.Return) in one write of the state
// file: units given back for a period the state is no longer in are
// dropped.
func (f Records) GiveQuota(ctx context.Context, gives []quota.Give) error {
	err := f.updateState(ctx, func(d *stateDoc, now time.Time) error {
		changed := false
		for _, g := range gives {
			if q := d.Quotas[g.ID]; q != nil && q.Period == g.Period && g.N > 0 && q.Used > 0 {
				s := q.state()
				quota.Return(&s, g)
				q.Used = s.Used
				changed = true
			}
		}
		if !changed {
			return errNoChange
		}
		d.dropExpired(now)
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: %w", quota.ErrUnavailable, err)
	}
	return nil
}

// QuotaStates returns the state of each key id in periods (id -> the
// period's name), for the keys with a state in that period.
func (f Records) QuotaStates(periods map[string]string) (map[string]quota.State, error) {
	d, err := f.readState()
	if err != nil {
		return nil, err
	}
	out := make(map[string]quota.State)
	for id, period := range periods {
		if q := d.Quotas[id]; q != nil && q.Period == period {
			out[id] = q.state()
		}
	}
	return out, nil
}

// GrantQuota adds n units (negative: takes them back, not below 0
// granted) to key id's allowance for period, durably, and returns the
// key's state then. A grant for a period older than the key's state is
// refused: that period is over.
func (f Records) GrantQuota(id, period string, n int64, ends time.Time) (quota.State, error) {
	if id == "" || period == "" {
		return quota.State{}, errors.New("granting quota: a key id and a period are needed")
	}
	if n > quota.MaxRequests || n < -quota.MaxRequests {
		return quota.State{}, fmt.Errorf("granting quota: %d units is more than the %d a quota may have", n, int64(quota.MaxRequests))
	}
	var st quota.State
	err := f.updateState(context.Background(), func(d *stateDoc, now time.Time) error {
		d.dropExpired(now)
		q := d.Quotas[id]
		if q != nil && olderPeriod(period, q.Period) {
			return fmt.Errorf("granting quota to key %s for %s: that period is over; its quota state is already for %s", id, period, q.Period)
		}
		if q == nil || q.Period != period {
			q = &quotaState{Period: period}
			d.Quotas[id] = q
		}
		if !ends.IsZero() {
			q.Ends = ends.UTC()
		}
		q.Granted = min(max(q.Granted+n, 0), quota.MaxRequests)
		st = q.state()
		return nil
	})
	return st, err
}

// AddUsageCounts adds rows to the usage counts in one write of the state
// file, and drops the hours that ended more than keep ago (keep ≤ 0:
// usagecount.DefaultRetention). Rows with an unknown result or a count
// below 1, and rows of hours already too old to keep, are left out.
func (f Records) AddUsageCounts(ctx context.Context, rows []usagecount.Row, keep time.Duration) error {
	if keep <= 0 {
		keep = usagecount.DefaultRetention
	}
	return f.updateState(ctx, func(d *stateDoc, now time.Time) error {
		u, err := d.decodeUsage()
		if err != nil {
			return &StateError{Path: StatePath(f.Path), Err: err}
		}
		cutoff := usagecount.Hour(now.Add(-keep)).Format(hourLayout)
		changed := false
		for _, r := range rows {
			if r.N <= 0 || r.ID == "" || usagecount.ResultIndex(r.Result) < 0 {
				continue
			}
			h := usagecount.Hour(r.Hour).Format(hourLayout)
			if h < cutoff {
				continue
			}
			hours := u[r.ID]
			if hours == nil {
				hours = make(map[string]map[string]int64)
				u[r.ID] = hours
			}
			counts := hours[h]
			if counts == nil {
				counts = make(map[string]int64, 1)
				hours[h] = counts
			}
			counts[r.Result] += r.N
			changed = true
		}
		for id, hours := range u {
			for h := range hours {
				if h < cutoff {
					delete(hours, h)
					changed = true
				}
			}
			if len(hours) == 0 {
				delete(u, id)
			}
		}
		if !changed {
			return errNoChange
		}
		return d.setUsage(u)
	})
}

// ReadUsageCounts returns the usage counts of key id from the hour that
// holds since on, sorted by hour then by result (in the order of
// usagecount.Results), without zero counts.
func (f Records) ReadUsageCounts(id string, since time.Time) ([]usagecount.Row, error) {
	d, err := f.readState()
	if err != nil {
		return nil, err
	}
	if len(d.Usage) == 0 || d.Usage.Kind() == 'n' {
		return nil, nil
	}
	path := StatePath(f.Path)
	var byID map[string]jsontext.Value
	if err := json.Unmarshal(d.Usage, &byID); err != nil {
		return nil, &StateError{Path: path, Err: fmt.Errorf(`"usage": %v`, err)}
	}
	raw, ok := byID[id]
	if !ok {
		return nil, nil
	}
	var hours map[string]map[string]int64
	if err := json.Unmarshal(raw, &hours); err != nil {
		return nil, &StateError{Path: path, Err: fmt.Errorf(`"usage" of key %q: %v`, id, err)}
	}
	if err := checkHours(id, hours); err != nil {
		return nil, &StateError{Path: path, Err: err}
	}
	from := usagecount.Hour(since).Format(hourLayout)
	var rows []usagecount.Row
	for h, counts := range hours {
		if h < from {
			continue
		}
		t, _ := time.Parse(hourLayout, h)
		for _, r := range usagecount.Results {
			if n := counts[r]; n > 0 {
				rows = append(rows, usagecount.Row{ID: id, Hour: t, Result: r, N: n})
			}
		}
	}
	sortRows(rows)
	return rows, nil
}

// sortRows sorts rows by hour, then by result in the order of
// usagecount.Results.
func sortRows(rows []usagecount.Row) {
	slices.SortFunc(rows, func(a, b usagecount.Row) int {
		if c := a.Hour.Compare(b.Hour); c != 0 {
			return c
		}
		return usagecount.ResultIndex(a.Result) - usagecount.ResultIndex(b.Result)
	})
}

// The state file makes a key file's record store a quota store and a
// reader of usage counts, and its bank and usage writer.
var (
	_ stores.QuotaStore = Records{}
	_ usagecount.Reader = Records{}
	_ quota.Bank        = Records{}
	_ usagecount.Writer = Records{}
)
