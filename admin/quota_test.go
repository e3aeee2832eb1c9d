package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/testquota"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
	"go.uber.org/zap"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// withState is a store in use whose records keep quota state and usage
// counts in memory (testquota), over a file store's records.
type withState struct {
	stores.Live
	qs *testquota.Store
}

func (s withState) Records() stores.RecordStore { return s.qs }

// bareLive is a store in use whose records keep no quota state, no usage
// counts and no audit log: records alone.
type bareLive struct{ stores.Live }

func (s bareLive) Records() stores.RecordStore { return bareRecords{s.Live.Records()} }

type bareRecords struct{ stores.RecordStore }

// stateAdmin is the admin API, at the fixed time now, over a file store
// of keys whose records keep quota state and usage counts in memory.
func stateAdmin(t *testing.T, now time.Time, keys ...testkeys.Key) (*API, *testquota.Store, string) {
	t.Helper()
	path := testkeys.WriteKeys(t, "", keys...)
	live := startTestStore(t, path)
	qs := testquota.New(live.Records())
	return New(zap.NewNop(), func() []stores.Live { return []stores.Live{withState{live, qs}} }, func() time.Time { return now }), qs, path
}

var adminNow = time.Date(2026, 12, 3, 19, 30, 0, 0, time.UTC)

func decode[T any](t *testing.T, resp *http.Response, body string, status int) T {
	t.Helper()
	var v T
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, status, body)
	}
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return v
}

// PUT /apikey/keys/{id}/quota sets a key's quota (changed: false when it
// has that one), DELETE drops it; each answer is the key with its quota
// state this period; the key file and the audit log hold the change.
func TestAdminQuota(t *testing.T) {
	k := testkeys.New("metered", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001"})
	a, qs, path := stateAdmin(t, adminNow, k)
	qs.SetState(k.ID(), quota.State{Period: "2026-12", Used: 1200})
	ends := "2027-01-01T00:00:00Z"

	resp, body := call(t, a, "PUT", "/apikey/keys/aaaa1111/quota", `{"quota": {"requests": 10000, "period": "month"}}`)
	got := decode[QuotaAnswer](t, resp, body, 200)
	if !got.Changed || got.ID != k.ID() || got.Quota == nil || *got.Quota != (keyset.QuotaSpec{Requests: 10000, Period: "month"}) ||
		!reflect.DeepEqual(got.QuotaState, &keyops.QuotaState{Period: "2026-12", Used: 1200, Remaining: 8800, EndsAt: &ends}) {
		t.Errorf("PUT: %s", body)
	}
	if q := testkeys.FileRecord(t, path, k.ID()).Quota; q == nil || q.Requests != 10000 {
		t.Errorf("the key file holds %+v", q)
	}
	resp, body = call(t, a, "PUT", "/apikey/keys/"+k.Record["key_prefix"].(string)+"/quota", `{"quota": {"period": "month", "requests": 10000}}`)
	if got := decode[QuotaAnswer](t, resp, body, 200); got.Changed {
		t.Errorf("PUT of the same quota: %s", body)
	}
	resp, body = call(t, a, "DELETE", "/apikey/keys/aaaa1111/quota", "")
	got = decode[QuotaAnswer](t, resp, body, 200)
	if !got.Changed || got.Quota != nil || got.QuotaState != nil || strings.Contains(body, `"quota"`) {
		t.Errorf("DELETE: %s", body)
	}
	if q := testkeys.FileRecord(t, path, k.ID()).Quota; q != nil {
		t.Errorf("the key file still holds %+v", q)
	}
	entries, err := filestore.Records{Path: path}.ReadAudit(audit.Filter{})
	if err != nil || len(entries) != 2 || entries[0].Action != audit.Quota || entries[0].Who.Via != audit.ViaAdminAPI || entries[1].Changes["quota"] != nil {
		t.Errorf("audit log: %+v, %v", entries, err)
	}

	before := testkeys.ReadFile(t, path)
	const target = "/apikey/keys/aaaa1111/quota"
	for _, c := range []struct {
		name, method, target, body string
		status                     int
		code                       string
		want                       []string
	}{
		{"no body", "PUT", target, ``, 400, "BAD_REQUEST", []string{"give quota", "DELETE drops"}},
		{"quota null", "PUT", target, `{"quota": null}`, 400, "BAD_REQUEST", []string{"give quota"}},
		{"quota a string", "PUT", target, `{"quota": "10000/month"}`, 400, "BAD_REQUEST", []string{`"quota" must be an object such as {"requests": 10000, "period": "month"}, not a JSON string`}},
		{"no requests", "PUT", target, `{"quota": {"period": "month"}}`, 400, "BAD_REQUEST", []string{`quota must have "requests" and "period"`}},
		{"no period", "PUT", target, `{"quota": {"requests": 5}}`, 400, "BAD_REQUEST", []string{`quota must have "requests" and "period"`}},
		{"requests a string", "PUT", target, `{"quota": {"requests": "5", "period": "day"}}`, 400, "BAD_REQUEST", []string{`"requests" of "quota" must be a whole number, not a JSON string`}},
		{"requests a fraction", "PUT", target, `{"quota": {"requests": 1.5, "period": "day"}}`, 400, "BAD_REQUEST", []string{`"requests" of "quota" must be a whole number`}},
		{"period a number", "PUT", target, `{"quota": {"requests": 5, "period": 30}}`, 400, "BAD_REQUEST", []string{`"period" of "quota" must be a string: "day", "month" or "none", not a JSON number`}},
		{"unknown period", "PUT", target, `{"quota": {"requests": 5, "period": "week"}}`, 400, "BAD_REQUEST", []string{`period "week": must be "day", "month" or "none"`}},
		{"negative", "PUT", target, `{"quota": {"requests": -5, "period": "day"}}`, 400, "BAD_REQUEST", []string{"must be from 0"}},
		{"unknown member of quota", "PUT", target, `{"quota": {"requests": 5, "period": "day", "burst": 2}}`, 400, "BAD_REQUEST", []string{`unknown member "burst"`}},
		{"unknown member", "PUT", target, `{"quota": {"requests": 5, "period": "day"}, "units": 5}`, 400, "BAD_REQUEST", []string{`unknown member "units"`, "the member is quota"}},
		{"DELETE with a body", "DELETE", target, `{"quota": null}`, 400, "BAD_REQUEST", []string{`unknown member "quota"`, "DELETE takes none"}},
		{"unknown key", "PUT", "/apikey/keys/bbbb2222/quota", `{"quota": {"requests": 5, "period": "day"}}`, 404, "KEY_NOT_FOUND", []string{`"bbbb2222"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := call(t, a, c.method, c.target, c.body)
			wantRefusal(t, resp, body, c.status, c.code, c.want...)
		})
	}
	if testkeys.ReadFile(t, path) != before {
		t.Error("a refused request changed the key file")
	}
}

// POST /apikey/keys/{id}/quota/grant grants units for the key's current
// period (or takes them back), through the store's quota state, its audit
// entry naming the request; a key without a quota, a store without quota
// state and bad bodies are refused.
func TestAdminQuotaGrant(t *testing.T) {
	k := testkeys.New("metered", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001", "quota": map[string]any{"requests": 100, "period": "day"}})
	free := testkeys.New("free", map[string]any{"id": "cccc3333-0000-4000-8000-000000000003"})
	a, qs, path := stateAdmin(t, adminNow, k, free)
	qs.SetState(k.ID(), quota.State{Period: "2026-12-03", Used: 100})
	ends := "2026-12-04T00:00:00Z"

	resp, body := call(t, a, "POST", "/apikey/keys/aaaa1111/quota/grant", `{"units": 50}`)
	got := decode[GrantAnswer](t, resp, body, 200)
	if got.Units != 50 || got.Period != "2026-12-03" || got.ID != k.ID() ||
		!reflect.DeepEqual(got.QuotaState, &keyops.QuotaState{Period: "2026-12-03", Used: 100, Granted: 50, Remaining: 50, EndsAt: &ends}) {
		t.Errorf("grant 50: %s", body)
	}
	resp, body = call(t, a, "POST", "/apikey/keys/aaaa1111/quota/grant", `{"units": -80}`)
	if got := decode[GrantAnswer](t, resp, body, 200); got.Units != -80 || got.QuotaState.Granted != 0 || got.QuotaState.Remaining != 0 {
		t.Errorf("grant -80: %s", body)
	}
	if s := qs.State(k.ID()); s != (quota.State{Period: "2026-12-03", Used: 100}) {
		t.Errorf("the store's state: %+v", s)
	}
	e := qs.Written()
	if len(e) != 2 || e[0].Action != audit.Quota || e[0].Who.Via != audit.ViaAdminAPI || e[0].Who.RemoteAddr != "192.0.2.1:1234" ||
		e[0].Changes["granted"] != int64(50) || e[0].Changes["period"] != "2026-12-03" || e[0].Time != adminNow.Format(time.RFC3339Nano) {
		t.Errorf("audit entries: %+v", e)
	}

	const target = "/apikey/keys/aaaa1111/quota/grant"
	for _, c := range []struct {
		name, target, body string
		status             int
		code               string
		want               []string
	}{
		{"no body", target, ``, 400, "BAD_REQUEST", []string{"give units", `{"units": 500}`}},
		{"no units", target, `{}`, 400, "BAD_REQUEST", []string{"give units"}},
		{"zero", target, `{"units": 0}`, 400, "BAD_REQUEST", []string{"grant 0 units"}},
		{"units a string", target, `{"units": "5"}`, 400, "BAD_REQUEST", []string{`"units" must be a whole number of units (negative to take units back), not a JSON string`}},
		{"units a fraction", target, `{"units": 2.5}`, 400, "BAD_REQUEST", []string{`"units" must be a whole number`}},
		{"beyond the bound", target, `{"units": 1125899906842625}`, 400, "BAD_REQUEST", []string{"from 1 to 1125899906842624"}},
		{"unknown member", target, `{"units": 5, "period": "2026-12"}`, 400, "BAD_REQUEST", []string{`unknown member "period"`, "the member is units"}},
		{"no quota", "/apikey/keys/cccc3333/quota/grant", `{"units": 5}`, 409, "NO_QUOTA", []string{"has no quota to grant units of"}},
		{"unknown key", "/apikey/keys/dddd4444/quota/grant", `{"units": 5}`, 404, "KEY_NOT_FOUND", []string{`"dddd4444"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := call(t, a, "POST", c.target, c.body)
			wantRefusal(t, resp, body, c.status, c.code, c.want...)
		})
	}
	if len(qs.Grants()) != 2 || len(qs.Written()) != 2 {
		t.Errorf("refused grants were made: %+v", qs.Grants())
	}

	// A store that keeps no quota state.
	plain := testAdmin(bareLive{startTestStore(t, testkeys.WriteKeys(t, "", k))})
	resp, body = call(t, plain, "POST", target, `{"units": 5}`)
	wantRefusal(t, resp, body, 404, "NO_QUOTA_STATE", "keeps no quota state")
	// A state that fails: the server's error.
	qs.GrantFails = testquota.ErrDown
	resp, body = call(t, a, "POST", target, `{"units": 5}`)
	wantRefusal(t, resp, body, 500, "INTERNAL_ERROR", "key store file:"+path, testquota.ErrDown.Error())
}

// GET /apikey/keys/{id}/usage answers the key's counts over ?days= (7 by
// default) as caddy apikey usage --json prints them, after the hook that
// writes this server's pending counts ran for the store.
func TestAdminUsage(t *testing.T) {
	k := testkeys.New("counted", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001"})
	a, qs, path := stateAdmin(t, adminNow, k)
	qs.AddRows(
		usagecount.Row{ID: k.ID(), Hour: time.Date(2026, 12, 3, 19, 0, 0, 0, time.UTC), Result: "admitted", N: 40},
		usagecount.Row{ID: k.ID(), Hour: time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC), Result: "expired", N: 2},
		usagecount.Row{ID: k.ID(), Hour: time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC), Result: "admitted", N: 1000}, // before 7 days
	)
	var flushed []string
	FlushUsageCounts = func(store string) {
		flushed = append(flushed, store)
		// The pending counts reach the store before it is read.
		qs.AddRows(usagecount.Row{ID: k.ID(), Hour: time.Date(2026, 12, 3, 19, 0, 0, 0, time.UTC), Result: "rate_limited", N: 1})
	}
	t.Cleanup(func() { FlushUsageCounts = nil })

	resp, body := call(t, a, "GET", "/apikey/keys/aaaa1111/usage", "")
	got := decode[keyops.Usage](t, resp, body, 200)
	want, err := keyops.ReadUsage(qs, k.ID(), 7, adminNow)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) || got.Totals["admitted"] != 40 || got.Totals["expired"] != 2 || got.Totals["rate_limited"] != 1 || len(got.Days) != 7 {
		t.Errorf("usage:\n%s\nwant %+v", body, want)
	}
	if !reflect.DeepEqual(flushed, []string{"file:" + path}) {
		t.Errorf("flushed %v, want the store's name once", flushed)
	}
	for _, member := range []string{`"id":`, `"since":"2026-11-27T00:00:00Z"`, `"rows":[`, `"days":[`, `"totals":{`} {
		if !strings.Contains(body, member) {
			t.Errorf("the answer has no %s: %s", member, body)
		}
	}
	resp, body = call(t, a, "GET", "/apikey/keys/aaaa1111/usage?days=1", "")
	if got := decode[keyops.Usage](t, resp, body, 200); len(got.Days) != 1 || got.Totals["expired"] != 0 || got.Totals["admitted"] != 40 {
		t.Errorf("?days=1: %s", body)
	}

	for _, c := range []struct {
		target string
		status int
		code   string
		want   []string
	}{
		{"/apikey/keys/aaaa1111/usage?days=0", 400, "BAD_REQUEST", []string{"?days=0: want a whole number of days from 1 to 35"}},
		{"/apikey/keys/aaaa1111/usage?days=36", 400, "BAD_REQUEST", []string{"?days=36", "kept 35 days"}},
		{"/apikey/keys/aaaa1111/usage?days=week", 400, "BAD_REQUEST", []string{"?days=week"}},
		{"/apikey/keys/aaaa1111/usage?days=1&days=2", 400, "BAD_REQUEST", []string{"given 2 times"}},
		{"/apikey/keys/bbbb2222/usage", 404, "KEY_NOT_FOUND", []string{`"bbbb2222"`}},
	} {
		resp, body := call(t, a, "GET", c.target, "")
		wantRefusal(t, resp, body, c.status, c.code, c.want...)
	}
	plain := testAdmin(bareLive{startTestStore(t, testkeys.WriteKeys(t, "", k))})
	resp, body = call(t, plain, "GET", "/apikey/keys/aaaa1111/usage", "")
	wantRefusal(t, resp, body, 404, "NO_USAGE_COUNTS", "keeps no usage counts")
	qs.UsageFails = errors.New("state file unreadable")
	resp, body = call(t, a, "GET", "/apikey/keys/aaaa1111/usage", "")
	wantRefusal(t, resp, body, 500, "INTERNAL_ERROR", "usage counts of key "+k.ID(), "state file unreadable")
}

// GET /apikey/keys lists each key's quota and its state this period; a
// state that cannot be read is said per key, the keys listed all the same.
func TestAdminListQuotaState(t *testing.T) {
	k := testkeys.New("metered", map[string]any{"quota": map[string]any{"requests": 50, "period": "none"}})
	a, qs, _ := stateAdmin(t, adminNow, k, testkeys.New("free", nil))
	qs.SetState(k.ID(), quota.State{Period: "none", Used: 20, Granted: 5})
	resp, body := call(t, a, "GET", "/apikey/keys", "")
	keys := decode[[]keyops.Listed](t, resp, body, 200)
	if len(keys) != 2 || !reflect.DeepEqual(keys[0].QuotaState, &keyops.QuotaState{Period: "none", Used: 20, Granted: 5, Remaining: 35}) ||
		keys[1].Quota != nil || keys[1].QuotaState != nil || !strings.Contains(body, `"ends_at":null`) {
		t.Errorf("list: %s", body)
	}
	qs.StatesFail = testquota.ErrDown
	resp, body = call(t, a, "GET", "/apikey/keys", "")
	keys = decode[[]keyops.Listed](t, resp, body, 200)
	if keys[0].QuotaState != nil || keys[0].QuotaStateError != testquota.ErrDown.Error() || keys[1].QuotaStateError != "" {
		t.Errorf("state unreadable: %s", body)
	}
}

// The new routes take their methods alone, and the refusal of another
// path names them.
func TestAdminQuotaRouting(t *testing.T) {
	a := testAdmin()
	resp, body := call(t, a, "GET", "/apikey/keys/abcd/quotas", "")
	wantRefusal(t, resp, body, 404, "NOT_FOUND", "PUT and DELETE /apikey/keys/{id}/quota", "POST /apikey/keys/{id}/quota/grant", "GET /apikey/keys/{id}/usage")
	for _, c := range []struct{ method, target, allow string }{
		{"GET", "/apikey/keys/abcd/quota", "DELETE, PUT"},
		{"POST", "/apikey/keys/abcd/quota", "DELETE, PUT"},
		{"GET", "/apikey/keys/abcd/quota/grant", "POST"},
		{"PUT", "/apikey/keys/abcd/quota/grant", "POST"},
		{"POST", "/apikey/keys/abcd/usage", "GET"},
		{"DELETE", "/apikey/keys/abcd/usage", "GET"},
	} {
		resp, body := call(t, a, c.method, c.target, "")
		wantRefusal(t, resp, body, 405, "METHOD_NOT_ALLOWED", c.method, c.allow)
		if got := resp.Header.Get("Allow"); got != c.allow {
			t.Errorf("%s %s: Allow %q, want %q", c.method, c.target, got, c.allow)
		}
	}
}

// FlushUsageCounts runs for the store before the API reads quota state
// (the list, a quota's answer), so that what this server holds is in the
// answer, and after a grant, so that this server sees it at once.
func TestAdminFlushesAroundQuotaState(t *testing.T) {
	k := testkeys.New("metered", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001", "quota": map[string]any{"requests": 100, "period": "month"}})
	a, qs, path := stateAdmin(t, adminNow, k)
	var calls []string
	FlushUsageCounts = func(store string) {
		s := qs.State(k.ID())
		calls = append(calls, store+" granted "+strconv.FormatInt(s.Granted, 10))
		s.Period, s.Used = "2026-12", s.Used+10 // the meter took a block
		qs.SetState(k.ID(), s)
	}
	t.Cleanup(func() { FlushUsageCounts = nil })

	resp, body := call(t, a, "GET", "/apikey/keys", "")
	if keys := decode[[]keyops.Listed](t, resp, body, 200); keys[0].QuotaState == nil || keys[0].QuotaState.Used != 10 {
		t.Errorf("list: %s", body)
	}
	resp, body = call(t, a, "PUT", "/apikey/keys/aaaa1111/quota", `{"quota": {"requests": 200, "period": "month"}}`)
	if got := decode[QuotaAnswer](t, resp, body, 200); got.QuotaState == nil || got.QuotaState.Used != 20 || got.QuotaState.Remaining != 180 {
		t.Errorf("PUT: %s", body)
	}
	resp, body = call(t, a, "POST", "/apikey/keys/aaaa1111/quota/grant", `{"units": 7}`)
	decode[GrantAnswer](t, resp, body, 200)
	store := "file:" + path
	if want := []string{store + " granted 0", store + " granted 0", store + " granted 7"}; !reflect.DeepEqual(calls, want) {
		t.Errorf("FlushUsageCounts calls %q, want %q", calls, want)
	}
}
