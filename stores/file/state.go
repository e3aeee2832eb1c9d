package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/caddy-apikey/caddy-apikey/internal/safefile"
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

// stateDoc is a state file's contents. The usage counts stay the bytes
// they were read as, unless a change needs them: a quota take reads and
// writes them without decoding them, and a write of counts decodes only
// the hours it adds to.
type stateDoc struct {
	Quotas map[string]*quotaState
	Usage  []byte // the "usage" object; nil: none
}

// newState is an empty state.
func newState() *stateDoc { return &stateDoc{Quotas: make(map[string]*quotaState)} }

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

// WriteTo writes the state as JSON, the quota states sorted by key id (the
// usage counts are kept sorted by AddUsageCounts).
func (d *stateDoc) WriteTo(w io.Writer) (int64, error) {
	head := []byte(`{"version":` + strconv.Itoa(stateVersion))
	if len(d.Quotas) > 0 {
		q, err := json.Marshal(d.Quotas, json.Deterministic(true))
		if err != nil {
			return 0, err
		}
		head = append(append(head, `,"quotas":`...), q...)
	}
	var n int64
	for _, part := range [][]byte{head, usageLead(d.Usage), d.Usage, []byte("}\n")} {
		m, err := w.Write(part)
		n += int64(m)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func usageLead(usage []byte) []byte {
	if usage == nil {
		return nil
	}
	return []byte(`,"usage":`)
}

// member is a member of a JSON object: its name and its value, as bytes.
type member struct {
	name  string
	value []byte
}

// members splits the JSON object obj into its members, in order, the
// values slices of obj. It checks the JSON's syntax, not that the names
// are distinct: see sortMembers.
func members(obj []byte) ([]member, error) {
	dec := jsontext.NewDecoder(bytes.NewBuffer(obj), jsontext.AllowDuplicateNames(true))
	tok, err := dec.ReadToken()
	if err != nil {
		return nil, err
	}
	if tok.Kind() != '{' {
		return nil, fmt.Errorf("not a JSON object but a JSON %s", keyfile.KindName(tok.Kind()))
	}
	var ms []member
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, err
		}
		name := tok.String()
		v, err := dec.ReadValue()
		if err != nil {
			return nil, err
		}
		end := int(dec.InputOffset())
		ms = append(ms, member{name: name, value: obj[end-len(v) : end]})
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, errors.New("more after the JSON object")
	}
	return ms, nil
}

// sortMembers sorts members by name and refuses a name given twice.
func sortMembers(ms []member) error {
	slices.SortFunc(ms, func(a, b member) int { return strings.Compare(a.name, b.name) })
	for i := 1; i < len(ms); i++ {
		if ms[i].name == ms[i-1].name {
			return fmt.Errorf("%q is there twice", ms[i].name)
		}
	}
	return nil
}

// appendObject appends the JSON object of members ms.
func appendObject(b []byte, ms []member) []byte {
	b = append(b, '{')
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		b, _ = jsontext.AppendQuote(b, m.name) // names are valid UTF-8: they were read as JSON or are key ids
		b = append(b, ':')
		b = append(b, m.value...)
	}
	return append(b, '}')
}

// parseState reads a state file's contents, checking the quota states;
// the usage counts are checked as JSON only (AddUsageCounts and
// ReadUsageCounts check what they read of them).
func parseState(data []byte) (*stateDoc, error) {
	top, err := members(data)
	if err != nil {
		return nil, fmt.Errorf("not a state file of caddy-apikey: %v", err)
	}
	var version, quotas, usage []byte
	seen := make(map[string]bool, len(top))
	for _, m := range top {
		if seen[m.name] {
			return nil, fmt.Errorf("member %q is there twice", m.name)
		}
		seen[m.name] = true
		switch m.name {
		case "version":
			version = m.value
		case "quotas":
			quotas = m.value
		case "usage":
			usage = m.value
		}
	}
	var v int
	switch {
	case version == nil:
		return nil, errors.New(`not a state file of caddy-apikey: it has no "version"`)
	case json.Unmarshal(version, &v) != nil:
		return nil, fmt.Errorf(`"version" must be a whole number, not %s`, version)
	case v != stateVersion:
		return nil, fmt.Errorf("version %d, which this caddy-apikey does not read (it reads version %d): was it written by a newer one?", v, stateVersion)
	}
	for _, m := range top {
		if !slices.Contains([]string{"version", "quotas", "usage"}, m.name) {
			return nil, fmt.Errorf("unknown member %q", m.name)
		}
	}
	d := newState()
	if quotas != nil {
		if err := json.Unmarshal(quotas, &d.Quotas, json.RejectUnknownMembers(true)); err != nil {
			return nil, fmt.Errorf(`"quotas": %v`, err)
		}
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
	if d.Quotas == nil { // "quotas": null
		d.Quotas = make(map[string]*quotaState)
	}
	switch k := jsontext.Value(usage).Kind(); {
	case usage == nil, k == 'n':
	case k == '{':
		d.Usage = usage
	default:
		return nil, fmt.Errorf(`"usage" must be an object, not a JSON %s`, keyfile.KindName(k))
	}
	return d, nil
}

// hourCounts are the usage counts of one key and hour to add, by index in
// usagecount.Results.
type hourCounts = [usagecount.NumResults]int64

// addUsage adds counts (key id -> hour -> counts) to the usage counts, and
// drops the hours before cutoff. It decodes only the hours it adds to; it
// reports whether anything changed.
func (d *stateDoc) addUsage(adds map[string]map[string]*hourCounts, cutoff string) (bool, error) {
	var ids []member
	if d.Usage != nil {
		var err error
		if ids, err = members(d.Usage); err != nil {
			return false, fmt.Errorf(`"usage": %v`, err)
		}
	}
	changed := false
	out := ids[:0]
	for _, m := range ids {
		v, ch, err := mergeHours(m.value, adds[m.name], cutoff)
		if err != nil {
			return false, fmt.Errorf(`"usage" of key %q: %v`, m.name, err)
		}
		delete(adds, m.name)
		changed = changed || ch
		if v != nil {
			out = append(out, member{m.name, v})
		}
	}
	for id, a := range adds {
		v, _, err := mergeHours(nil, a, cutoff)
		if err != nil {
			return false, err
		}
		if v != nil {
			out = append(out, member{id, v})
			changed = true
		}
	}
	if !changed {
		return false, nil
	}
	if err := sortMembers(out); err != nil {
		return false, fmt.Errorf(`"usage": key %v`, err)
	}
	if len(out) == 0 {
		d.Usage = nil
	} else {
		d.Usage = appendObject(make([]byte, 0, len(d.Usage)+len(adds)*64), out)
	}
	return true, nil
}

// mergeHours adds counts to one key's hours (the JSON object hours, or
// nil) and drops those before cutoff. It returns the new object (nil if
// no hour is left) and whether it changed.
func mergeHours(hours []byte, adds map[string]*hourCounts, cutoff string) ([]byte, bool, error) {
	var ms []member
	if hours != nil {
		var err error
		if ms, err = members(hours); err != nil {
			return nil, false, err
		}
	}
	changed := false
	out := ms[:0]
	for _, m := range ms {
		if !hourShaped(m.name) {
			return nil, false, fmt.Errorf(`%q is not the start of an hour in UTC, such as "2026-12-03T14:00:00Z"`, m.name)
		}
		if m.name < cutoff {
			changed = true
			continue
		}
		if a := adds[m.name]; a != nil {
			var counts map[string]int64
			if err := json.Unmarshal(m.value, &counts); err != nil {
				return nil, false, fmt.Errorf("%s: %v", m.name, err)
			}
			if counts == nil { // null
				counts = make(map[string]int64)
			}
			for i, n := range a {
				if n > 0 {
					counts[usagecount.Results[i]] += n
				}
			}
			v, err := json.Marshal(counts, json.Deterministic(true))
			if err != nil {
				return nil, false, err
			}
			m.value = v
			changed = true
			delete(adds, m.name)
		}
		out = append(out, m)
	}
	for h, a := range adds {
		if h < cutoff {
			continue
		}
		counts := make(map[string]int64)
		for i, n := range a {
			if n > 0 {
				counts[usagecount.Results[i]] = n
			}
		}
		v, err := json.Marshal(counts, json.Deterministic(true))
		if err != nil {
			return nil, false, err
		}
		out = append(out, member{h, v})
		changed = true
	}
	if !changed {
		return hours, false, nil
	}
	if len(out) == 0 {
		return nil, true, nil
	}
	if err := sortMembers(out); err != nil {
		return nil, false, fmt.Errorf("hour %v", err)
	}
	return appendObject(nil, out), true, nil
}

// hourShaped reports whether s has the shape of an hour as written
// (hourLayout), which sorts in the order of time; checkHours checks it is
// one.
func hourShaped(s string) bool {
	if len(s) != len(hourLayout) || s[13:] != ":00:00Z" {
		return false
	}
	for i := range 13 {
		if c := s[i]; c != hourLayout[i] && (c < '0' || c > '9' || hourLayout[i] < '0' || hourLayout[i] > '9') {
			return false
		}
	}
	return true
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

// readStateIn reads the state file name in dir: an empty state if there is
// none (fi nil).
func readStateIn(dir *os.Root, name string) (*stateDoc, fs.FileInfo, error) {
	path := filepath.Join(dir.Name(), name)
	data, fi, err := safefile.ReadCompanionIn(dir, name, MaxStateSize)
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return newState(), nil, nil
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

// ErrStateGone is what a running Caddy's file store answers, wrapped,
// when the state file it read or wrote is gone: its keys' quotas would
// otherwise start afresh, unused, in the middle of their period.
var ErrStateGone = errors.New("it is gone, though this server read or wrote it before; the quotas stay refused beyond the units each server holds until it is back: restore it from a backup, or restart Caddy to start the quotas and usage counts afresh (every key's quota then counts as unused this period)")

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
	if f.seen != nil {
		if fi == nil && f.seen.Load() {
			return fmt.Errorf("state file %s: %w", filepath.Join(dir.Name(), stateName), ErrStateGone)
		}
		if fi != nil {
			f.seen.Store(true)
		}
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
	// First the temporary files a writer killed mid-write left.
	safefile.RemoveStaleTemporaries(dir, stateName)
	if _, err = safefile.ReplaceIn(dir, stateName, "state file", d, like, nil); err != nil {
		return err
	}
	if f.seen != nil {
		f.seen.Store(true)
	}
	return nil
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

// TakeQuota applies each take (quota.Apply) in one write of the state
// file, durable before it returns. A take for a period newer than the
// key's state starts the new period's state; one for an older period (a
// server whose clock is behind, at a period's end) gets nothing and
// changes nothing, so that two servers on either side of midnight never
// start the same period twice.
func (f Records) TakeQuota(ctx context.Context, takes []quota.Take) ([]quota.Taken, error) {
	out := make([]quota.Taken, len(takes))
	if len(takes) == 0 {
		return out, nil
	}
	err := f.updateState(ctx, func(d *stateDoc, now time.Time) error {
		d.dropExpired(now)
		for i, t := range takes {
			q := d.Quotas[t.ID]
			if q != nil && quota.Older(t.Period, q.Period) {
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
		if q != nil && quota.Older(period, q.Period) {
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
	adds := make(map[string]map[string]*hourCounts)
	for _, r := range rows {
		i := usagecount.ResultIndex(r.Result)
		if r.N <= 0 || r.ID == "" || i < 0 {
			continue
		}
		hours := adds[r.ID]
		if hours == nil {
			hours = make(map[string]*hourCounts)
			adds[r.ID] = hours
		}
		h := usagecount.Hour(r.Hour).Format(hourLayout)
		c := hours[h]
		if c == nil {
			c = new(hourCounts)
			hours[h] = c
		}
		c[i] += r.N
	}
	return f.updateState(ctx, func(d *stateDoc, now time.Time) error {
		changed, err := d.addUsage(adds, usagecount.Hour(now.Add(-keep)).Format(hourLayout))
		switch {
		case err != nil:
			return &StateError{Path: StatePath(f.Path), Err: err}
		case !changed:
			return errNoChange
		}
		return nil
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
	if d.Usage == nil {
		return nil, nil
	}
	path := StatePath(f.Path)
	ids, err := members(d.Usage)
	if err != nil {
		return nil, &StateError{Path: path, Err: fmt.Errorf(`"usage": %v`, err)}
	}
	var raw []byte
	for _, m := range ids {
		if m.name != id {
			continue
		}
		if raw != nil {
			return nil, &StateError{Path: path, Err: fmt.Errorf(`"usage": key %q is there twice`, id)}
		}
		raw = m.value
	}
	if raw == nil {
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
