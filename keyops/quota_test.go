package keyops

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testquota"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// quotaNow is in December 2026: its month ends on 2027-01-01, its day on
// 2026-12-04.
var quotaNow = time.Date(2026, 12, 3, 19, 30, 0, 0, time.UTC)

func TestParseQuota(t *testing.T) {
	for in, want := range map[string]keyset.QuotaSpec{
		"10000/month": {Requests: 10000, Period: "month"},
		" 500/day ":   {Requests: 500, Period: "day"},
		"1000/none":   {Requests: 1000, Period: "none"},
		"0/day":       {Requests: 0, Period: "day"},
	} {
		got, err := ParseQuota(in)
		if err != nil || *got != want {
			t.Errorf("ParseQuota(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"10000":                "write it as <requests>/<period>",
		"10000/week":           `must be "day", "month" or "none"`,
		"ten/month":            "not a whole number",
		"-5/day":               "must be from 0",
		"1e3/day":              "not a whole number",
		"10000/Month":          `period "Month"`,
		"":                     "write it as",
		"1125899906842625/day": "must be from 0 to 1125899906842624",
	} {
		_, err := ParseQuota(in)
		var ie InputError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseQuota(%q): %v, want an InputError saying %q", in, err, want)
		}
	}
}

// quotaStore is a key file with one key without a quota, and the file
// store over it.
func quotaStore(t *testing.T) (filestore.Records, testkeys.Key) {
	t.Helper()
	k := testkeys.New("metered", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001", "team": "x"})
	return filestore.Records{Path: testkeys.WriteKeys(t, "", k)}, k
}

// Create gives a new key the quota asked, which its record and its
// audit entry hold; a quota a record may not hold makes no key.
func TestCreateWithQuota(t *testing.T) {
	st := filestore.Records{Path: filepath.Join(t.TempDir(), "keys.json"), MayCreate: true}
	spec := &keyset.QuotaSpec{Requests: 10000, Period: "month"}
	_, rec, err := Create(st, AddOptions{Label: "metered", Quota: spec}, cmdNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Quota == nil || *rec.Quota != *spec {
		t.Errorf("the new record's quota: %+v", rec.Quota)
	}
	if got := testkeys.FileRecord(t, st.Path, rec.ID).Quota; got == nil || *got != *spec {
		t.Errorf("the key file's record holds %+v", got)
	}
	entries, err := st.ReadAudit(audit.Filter{})
	if err != nil || len(entries) != 1 || !reflect.DeepEqual(entries[0].Changes["quota"], map[string]any{"requests": float64(10000), "period": "month"}) {
		t.Errorf("audit: %+v, %v", entries, err)
	}
	before := testkeys.ReadFile(t, st.Path)
	if _, _, err := Create(st, AddOptions{Label: "bad", Quota: &keyset.QuotaSpec{Requests: 1, Period: "week"}}, cmdNow, nil); err == nil || !strings.Contains(err.Error(), `"week"`) {
		t.Errorf("a quota of 1/week: %v", err)
	}
	if testkeys.ReadFile(t, st.Path) != before {
		t.Error("a refused create changed the key file")
	}
}

// SetQuota sets, changes and drops a key's quota, changing nothing when
// it is the quota the key has; each change is an audit entry with the new
// quota (null when dropped); a bad quota or key changes nothing. The
// members the plugin does not know stay.
func TestSetQuota(t *testing.T) {
	st, k := quotaStore(t)
	by := stores.By(st, audit.Who{Via: audit.ViaCommand, User: "ops", Host: "h"})
	steps := []struct {
		q       *keyset.QuotaSpec
		changed bool
	}{
		{&keyset.QuotaSpec{Requests: 10000, Period: "month"}, true},
		{&keyset.QuotaSpec{Requests: 10000, Period: "month"}, false},
		{&keyset.QuotaSpec{Requests: 50, Period: "day"}, true},
		{nil, true},
		{nil, false},
	}
	for i, s := range steps {
		rec, changed, err := SetQuota(by, k.Record["key_prefix"].(string), s.q, nil)
		if err != nil || changed != s.changed || !sameQuota(rec.Quota, s.q) {
			t.Fatalf("step %d (%+v): %+v changed %v, %v", i, s.q, rec.Quota, changed, err)
		}
		got := testkeys.FileRecord(t, st.Path, k.ID())
		if !sameQuota(got.Quota, s.q) || testkeys.Members(got).GetString("team") != "x" {
			t.Errorf("step %d: the key file holds %+v, members %v", i, got.Quota, testkeys.Members(got).Names())
		}
	}
	entries, err := st.ReadAudit(audit.Filter{})
	if err != nil || len(entries) != 3 {
		t.Fatalf("audit: %d entries, %v", len(entries), err)
	}
	for i, want := range []any{map[string]any{"requests": float64(10000), "period": "month"}, map[string]any{"requests": float64(50), "period": "day"}, nil} {
		e := entries[i]
		if e.Action != audit.Quota || e.KeyID != k.ID() || e.Who.User != "ops" || !reflect.DeepEqual(e.Changes["quota"], want) {
			t.Errorf("entry %d: %+v, want quota %v", i, e, want)
		}
		if _, ok := e.Changes["quota"]; !ok {
			t.Errorf("entry %d has no quota member", i)
		}
	}

	before := testkeys.ReadFile(t, st.Path)
	for _, c := range []struct {
		ref  string
		q    *keyset.QuotaSpec
		want string
	}{
		{k.ID(), &keyset.QuotaSpec{Requests: -1, Period: "day"}, "must be from 0"},
		{k.ID(), &keyset.QuotaSpec{Requests: 1, Period: ""}, `period ""`},
		{"bbbb", &keyset.QuotaSpec{Requests: 1, Period: "day"}, `no key in`},
		{" ", nil, "name the key to set the quota of"},
	} {
		if _, _, err := SetQuota(by, c.ref, c.q, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SetQuota(%q, %+v): %v, want %q", c.ref, c.q, err, c.want)
		}
	}
	if testkeys.ReadFile(t, st.Path) != before {
		t.Error("a refused SetQuota changed the key file")
	}
}

// recordsOnly is a store's records alone: no quota state, no usage
// counts, no audit log.
type recordsOnly struct{ stores.RecordStore }

// auditReaderOnly keeps quota state and an audit log it cannot write a
// grant to.
type auditReaderOnly struct{ *testquota.Store }

func (auditReaderOnly) ReadAudit(audit.Filter) ([]audit.Entry, error) { return nil, nil }
func (auditReaderOnly) WriteAudit()                                   {} // not stores.AuditWriter's

// withoutAudit keeps quota state and no audit log.
type withoutAudit struct {
	stores.RecordStore
	qs *testquota.Store
}

func (s withoutAudit) QuotaStates(p map[string]string) (map[string]quota.State, error) {
	return s.qs.QuotaStates(p)
}
func (s withoutAudit) GrantQuota(id, period string, n int64, ends time.Time) (quota.State, error) {
	return s.qs.GrantQuota(id, period, n, ends)
}

// stalePeriods answers every state it has, of any period.
type stalePeriods struct{ *testquota.Store }

func (s stalePeriods) QuotaStates(periods map[string]string) (map[string]quota.State, error) {
	out := make(map[string]quota.State)
	for id := range periods {
		out[id] = s.State(id)
	}
	return out, nil
}

// GrantQuota grants units (or takes them back, not below none) for the
// period of now in the key's quota, through the store's quota state, after
// writing its audit entry; the answer is the key's state then. It refuses
// a key without a quota, a number of 0 or beyond the bound, a store
// without quota state, and grants nothing when its audit entry cannot be
// written.
func TestGrantQuota(t *testing.T) {
	st, k := quotaStore(t)
	who := audit.Who{Via: audit.ViaAdminAPI, RemoteAddr: "10.0.0.9:4000"}
	qs := testquota.New(st)

	_, err := GrantQuota(qs, k.ID(), 500, who, quotaNow)
	var re *RefError
	if !errors.As(err, &re) || re.Code != "NO_QUOTA" || !strings.Contains(err.Error(), "has no quota") {
		t.Errorf("a key without a quota: %v", err)
	}
	if _, _, err := SetQuota(st, k.ID(), &keyset.QuotaSpec{Requests: 10000, Period: "month"}, nil); err != nil {
		t.Fatal(err)
	}
	qs.SetState(k.ID(), quota.State{Period: "2026-12", Used: 9990})
	g, err := GrantQuota(qs, "aaaa1111", 500, who, quotaNow)
	ends := "2027-01-01T00:00:00Z"
	want := QuotaState{Period: "2026-12", Used: 9990, Granted: 500, Remaining: 510, EndsAt: &ends}
	if err != nil || g.Units != 500 || g.Record.ID != k.ID() || g.Quota != (quota.Quota{Requests: 10000, Period: quota.Month}) || !reflect.DeepEqual(g.State, want) {
		t.Fatalf("grant 500: %+v, %v; want state %+v", g, err, want)
	}
	if gs := qs.Grants(); len(gs) != 1 || gs[0] != (testquota.Grant{ID: k.ID(), Period: "2026-12", N: 500, Ends: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}) {
		t.Errorf("grants: %+v", gs)
	}
	e := qs.Written()
	if len(e) != 1 || e[0].Action != audit.Quota || e[0].KeyID != k.ID() || e[0].Who != who || e[0].Time != quotaNow.Format(time.RFC3339Nano) ||
		!reflect.DeepEqual(e[0].Changes, map[string]any{"granted": int64(500), "period": "2026-12"}) {
		t.Errorf("audit entry: %+v", e)
	}

	// Taken back, not below none granted; a day's quota grants for today.
	if g, err := GrantQuota(qs, k.ID(), -800, who, quotaNow); err != nil || g.State.Granted != 0 || g.State.Remaining != 10 {
		t.Errorf("grant -800: %+v, %v", g.State, err)
	}
	if _, _, err := SetQuota(st, k.ID(), &keyset.QuotaSpec{Requests: 100, Period: "day"}, nil); err != nil {
		t.Fatal(err)
	}
	day := "2026-12-04T00:00:00Z"
	if g, err := GrantQuota(qs, k.ID(), 7, who, quotaNow); err != nil || !reflect.DeepEqual(g.State, QuotaState{Period: "2026-12-03", Granted: 7, Remaining: 107, EndsAt: &day}) {
		t.Errorf("a day's grant: %+v, %v", g.State, err)
	}
	if _, _, err := SetQuota(st, k.ID(), &keyset.QuotaSpec{Requests: 100, Period: "none"}, nil); err != nil {
		t.Fatal(err)
	}
	if g, err := GrantQuota(qs, k.ID(), 1, who, quotaNow); err != nil || g.State.Period != "none" || g.State.EndsAt != nil || g.State.Remaining != 101 {
		t.Errorf("a fixed allowance's grant: %+v, %v", g.State, err)
	}

	n := len(qs.Grants())
	for _, c := range []struct {
		name  string
		st    stores.RecordStore
		ref   string
		units int64
		want  string
		is    error
	}{
		{"zero", qs, k.ID(), 0, "grant 0 units", nil},
		{"too many", qs, k.ID(), quota.MaxRequests + 1, "from 1 to 1125899906842624", nil},
		{"too few", qs, k.ID(), -quota.MaxRequests - 1, "from -1 to -1125899906842624", nil},
		{"unknown key", qs, "bbbb2222", 5, `no key in ` + st.Path + ` has the id or key_prefix "bbbb2222"`, nil},
		{"no ref", qs, "", 5, "name the key to grant units to", nil},
		{"no quota state", recordsOnly{st}, k.ID(), 5, "key store " + st.Path + " keeps no quota state", ErrNoQuotaState},
		{"no quota state, by who", stores.By(qs, who), k.ID(), 5, "keeps no quota state", ErrNoQuotaState},
		{"an audit log it cannot write to", auditReaderOnly{qs}, k.ID(), 5, "keeps an audit log but cannot write a grant to it; nothing was granted", nil},
	} {
		_, err := GrantQuota(c.st, c.ref, c.units, who, quotaNow)
		if err == nil || !strings.Contains(err.Error(), c.want) || c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	qs.AuditFails = errors.New("disk full")
	if _, err := GrantQuota(qs, k.ID(), 5, who, quotaNow); err == nil || !strings.Contains(err.Error(), "disk full; nothing was granted") {
		t.Errorf("audit fails: %v", err)
	}
	qs.AuditFails, qs.GrantFails = nil, testquota.ErrDown
	if _, err := GrantQuota(qs, k.ID(), 5, who, quotaNow); !errors.Is(err, testquota.ErrDown) || !strings.Contains(err.Error(), "granting units of key "+k.ID()) {
		t.Errorf("grant fails: %v", err)
	}
	if len(qs.Grants()) != n {
		t.Errorf("refused grants were made: %+v", qs.Grants()[n:])
	}
	// A store without an audit log grants all the same.
	if g, err := GrantQuota(withoutAudit{st, testquota.New(st)}, k.ID(), 3, who, quotaNow); err != nil || g.State.Granted != 3 {
		t.Errorf("without an audit log: %+v, %v", g, err)
	}
}

// List shows each key's quota and, on a store with quota state, its state
// this period: a state of another period counts as none used; a key
// without a quota has none; a state that cannot be read is said per key,
// the keys listed all the same.
func TestListQuotaStates(t *testing.T) {
	keys := []testkeys.Key{
		testkeys.New("month", map[string]any{"quota": map[string]any{"requests": 10000, "period": "month"}}),
		testkeys.New("day, last period's state", map[string]any{"quota": map[string]any{"requests": 100, "period": "day"}}),
		testkeys.New("fixed", map[string]any{"quota": map[string]any{"requests": 50, "period": "none"}}),
		testkeys.New("none", nil),
		testkeys.New("overspent by a grant taken back", map[string]any{"quota": map[string]any{"requests": 10, "period": "month"}}),
	}
	st := filestore.Records{Path: testkeys.WriteKeys(t, "", keys...)}
	qs := testquota.New(st)
	qs.SetState(keys[0].ID(), quota.State{Period: "2026-12", Used: 1200, Granted: 300})
	qs.SetState(keys[1].ID(), quota.State{Period: "2026-12-02", Used: 100})
	qs.SetState(keys[2].ID(), quota.State{Period: "none", Used: 49})
	qs.SetState(keys[4].ID(), quota.State{Period: "2026-12", Used: 15})

	month, day := "2027-01-01T00:00:00Z", "2026-12-04T00:00:00Z"
	want := []*QuotaState{
		{Period: "2026-12", Used: 1200, Granted: 300, Remaining: 9100, EndsAt: &month},
		{Period: "2026-12-03", Remaining: 100, EndsAt: &day},
		{Period: "none", Used: 49, Remaining: 1},
		nil,
		{Period: "2026-12", Used: 15, Remaining: 0, EndsAt: &month},
	}
	listed, err := List(qs, quotaNow)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range listed {
		if !reflect.DeepEqual(l.QuotaState, want[i]) || l.QuotaStateError != "" {
			t.Errorf("%s: state %+v (%q), want %+v", l.Label, l.QuotaState, l.QuotaStateError, want[i])
		}
		if wantQ := keys[i].Rec().Quota; !sameQuota(l.Quota, wantQ) {
			t.Errorf("%s: quota %+v, want %+v", l.Label, l.Quota, wantQ)
		}
	}

	// A store that answers a state of another period: none used in this one.
	listed, err = List(stalePeriods{qs}, quotaNow)
	if err != nil || !reflect.DeepEqual(listed[1].QuotaState, want[1]) || !reflect.DeepEqual(listed[0].QuotaState, want[0]) {
		t.Errorf("a state of another period: %+v, %+v, %v", listed[0].QuotaState, listed[1].QuotaState, err)
	}

	// A store without quota state: the quotas, no state.
	listed, err = List(recordsOnly{st}, quotaNow)
	if err != nil || listed[0].Quota == nil || listed[0].QuotaState != nil || listed[0].QuotaStateError != "" {
		t.Errorf("without quota state: %+v, %v", listed[0], err)
	}
	// A state that cannot be read.
	qs.StatesFail = testquota.ErrDown
	listed, err = List(qs, quotaNow)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range listed {
		if l.QuotaState != nil || (l.QuotaStateError == testquota.ErrDown.Error()) != (want[i] != nil) {
			t.Errorf("%s, state unreadable: %+v %q", l.Label, l.QuotaState, l.QuotaStateError)
		}
	}
}

// A rotated key keeps the old one's quota (its state starts anew: it is
// another key).
func TestRotateKeepsQuota(t *testing.T) {
	st, k := quotaStore(t)
	spec := &keyset.QuotaSpec{Requests: 10000, Period: "month"}
	if _, _, err := SetQuota(st, k.ID(), spec, nil); err != nil {
		t.Fatal(err)
	}
	r, err := Rotate(st, RotateOptions{Ref: k.ID(), Grace: "1h"}, time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := testkeys.FileRecord(t, st.Path, r.Added.ID).Quota; got == nil || *got != *spec {
		t.Errorf("the new key's quota: %+v", got)
	}
}
