package cli

import (
	"encoding/json"
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

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// withQuotaState has the commands that read quota state and usage counts
// (list, quota, usage) see the store their flags name through a
// testquota.Store, one for the whole test: quota state and usage counts in
// memory.
func withQuotaState(t *testing.T) *testquota.Store {
	t.Helper()
	qs := testquota.New(nil)
	storeHook = func(st stores.RecordStore) stores.RecordStore {
		qs.RecordStore = st
		return qs
	}
	t.Cleanup(func() { storeHook = nil })
	return qs
}

// notNearMidnight skips a test that reads the period of now twice, if a
// day (and so maybe a month) could end between the two.
func notNearMidnight(t *testing.T) {
	t.Helper()
	now := time.Now().UTC()
	if next := now.Truncate(24 * time.Hour).Add(24 * time.Hour); next.Sub(now) < 30*time.Second {
		t.Skip("too close to midnight UTC, when the period changes")
	}
}

// caddy apikey add --quota gives a new key a quota; list shows it and its
// use this period (table and --json); quota grants units and takes them
// back, sets, leaves unchanged, shows and drops the quota, each as it
// says; the grants and changes are in the audit log; bad asks change
// nothing.
func TestCommandQuota(t *testing.T) {
	notNearMidnight(t)
	qs := withQuotaState(t)
	path := t.TempDir() + "/keys.json"
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "metered", "--quota", "10000/month")
	if err != nil {
		t.Fatalf("add --quota: %v\n%s", err, stderr)
	}
	raw := strings.TrimSpace(stdout)
	if !strings.Contains(stderr, "  quota:   10000/month\n") || strings.Contains(stderr, raw) {
		t.Errorf("add's details: %q", stderr)
	}
	id := testkeys.ReadDoc(t, path).Records[0].ID
	if q := testkeys.FileRecord(t, path, id).Quota; q == nil || q.Requests != 10000 || q.Period != "month" {
		t.Fatalf("the record's quota = %+v", q)
	}
	month, _, monthEnds := quota.Month.At(time.Now())
	qs.SetState(id, quota.State{Period: month, Used: 1200})

	run := func(args ...string) string {
		t.Helper()
		out, stderr, err := testkeys.RunCommand(t, "", args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, stderr)
		}
		if strings.Contains(out+stderr, raw) {
			t.Fatalf("%v shows the raw key", args)
		}
		return out
	}
	row := func() []string {
		t.Helper()
		lines := strings.Split(strings.TrimSpace(run("list", "--file", path)), "\n")
		if len(lines) != 2 {
			t.Fatalf("list: %q", lines)
		}
		f := strings.Fields(lines[1])
		return f[len(f)-3:]
	}
	if got := strings.Join(row(), " "); got != "10000/month 1200/8800 active" {
		t.Errorf("list: QUOTA, USED/LEFT, STATUS = %q", got)
	}
	var listed []keyops.Listed
	if err := json.Unmarshal([]byte(run("list", "--file", path, "--json")), &listed); err != nil || len(listed) != 1 {
		t.Fatalf("list --json: %v", err)
	}
	ends := monthEnds.Format(time.RFC3339)
	if s := listed[0].QuotaState; listed[0].Quota == nil || *listed[0].Quota != (keyset.QuotaSpec{Requests: 10000, Period: "month"}) || s == nil || *s != (keyops.QuotaState{Period: month, Used: 1200, Remaining: 8800, EndsAt: s.EndsAt}) || *s.EndsAt != ends {
		t.Errorf("list --json: quota %+v, state %+v", listed[0].Quota, s)
	}

	prefix := raw[:11]
	this := "This period (" + month + ", until " + ends + "): "
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--grant", "500"}, "Granted 500 units of the quota of " + prefix + " (metered) for " + month + ".\n" + this + "1200 used, 500 granted, 9300 left.\n"},
		{[]string{"--grant", "-200"}, "Took back 200 units of the quota of " + prefix + " (metered) for " + month + ".\n" + this + "1200 used, 300 granted, 9100 left.\n"},
		{[]string{"--grant=-1000"}, "Took back 1000 units of the quota of " + prefix + " (metered) for " + month + ".\n" + this + "1200 used, 0 granted, 8800 left.\n"},
		{nil, "Quota of " + prefix + " (metered): 10000/month\n" + this + "1200 used, 0 granted, 8800 left.\n"},
		{[]string{"1000/month"}, "Quota of " + prefix + " (metered) now: 1000/month\n" + this + "1200 used, 0 granted, 0 left.\n"},
		{[]string{"1000/month"}, "Quota of " + prefix + " (metered) unchanged: 1000/month\n" + this + "1200 used, 0 granted, 0 left.\n"},
		{[]string{"50/none"}, "Quota of " + prefix + " (metered) now: 50/none\nThis period (none, a fixed allowance): 0 used, 0 granted, 50 left.\n"},
		{[]string{"--none"}, "Quota of " + prefix + " (metered) now: -\n"},
		{nil, "Quota of " + prefix + " (metered): -\n"},
	} {
		if got := run(append([]string{"quota", "--file", path, prefix}, c.args...)...); got != c.want {
			t.Errorf("quota %v:\n%s\nwant\n%s", c.args, got, c.want)
		}
	}
	if got := strings.Join(row(), " "); got != "- - active" {
		t.Errorf("list without a quota: %q", got)
	}
	if q := testkeys.FileRecord(t, path, id).Quota; q != nil {
		t.Errorf("the record still has a quota: %+v", q)
	}
	// The grants: in the store's audit log (testquota's), by this
	// command's user; the changes of the record: in the key file's.
	grants := qs.Written()
	if len(grants) != 3 || grants[0].Action != audit.Quota || grants[0].Who.Via != audit.ViaCommand || grants[0].Changes["granted"] != int64(500) || grants[2].Changes["granted"] != int64(-1000) {
		t.Errorf("the grants' audit entries: %+v", grants)
	}
	entries, err := filestore.Records{Path: path}.ReadAudit(audit.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range entries {
		actions = append(actions, e.Action)
	}
	if strings.Join(actions, ",") != "create,quota,quota,quota" || entries[3].Changes["quota"] != nil {
		t.Errorf("the key file's audit log: %+v", entries)
	}

	before := testkeys.ReadFile(t, path)
	nGrants := len(qs.Grants())
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"quota", prefix, "--grant", "5"}, "has no quota to grant units of; give it one first (caddy apikey quota " + prefix + " 10000/month)"},
		{[]string{"quota", prefix, "10/week"}, `quota "10/week": period "week": must be "day", "month" or "none"`},
		{[]string{"quota", prefix, "10000"}, "write it as <requests>/<period>"},
		{[]string{"quota", prefix, "10/day", "--none"}, "give a quota (e.g. 10000/month), --none or --grant <units>: one of them"},
		{[]string{"quota", prefix, "10/day", "--grant", "5"}, "one of them"},
		{[]string{"quota", prefix, "--none", "--grant", "5"}, "one of them"},
		{[]string{"quota", prefix, "--grant", "0"}, "grant 0 units"},
		{[]string{"quota", prefix, "--grant", "many"}, `invalid argument "many" for "--grant"`},
		{[]string{"quota", "nokey", "10/day"}, `has the id or key_prefix "nokey"`},
		{[]string{"quota"}, "accepts between 1 and 2 arg(s)"},
		{[]string{"quota", prefix, "10/day", "20/day"}, "accepts between 1 and 2 arg(s)"},
		{[]string{"add", "--label", "x", "--quota", "10"}, "--quota \"10\": write it as <requests>/<period>"},
		{[]string{"add", "--label", "x", "--quota", ""}, `--quota "": write it as`},
	} {
		args := append(c.args[:1:1], append([]string{"--file", path}, c.args[1:]...)...)
		_, stderr, err := testkeys.RunCommand(t, "", args...)
		if err == nil || !strings.Contains(err.Error()+stderr, c.want) {
			t.Errorf("%v: %v %q, want %q", args, err, stderr, c.want)
		}
	}
	if testkeys.ReadFile(t, path) != before || len(qs.Grants()) != nGrants {
		t.Error("a refused quota or add changed the key file or the state")
	}
}

// A rotated key keeps the old one's quota, and add shows none for a key
// without.
func TestCommandRotateKeepsQuota(t *testing.T) {
	path := t.TempDir() + "/keys.json"
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "r", "--quota", "500/day")
	if err != nil {
		t.Fatal(err)
	}
	raw := strings.TrimSpace(stdout)
	if _, stderr, err = testkeys.RunCommand(t, "", "rotate", "--file", path, "--grace", "0", raw[:11]); err != nil {
		t.Fatalf("rotate: %v %s", err, stderr)
	}
	if !strings.Contains(stderr, "  quota:   500/day\n") {
		t.Errorf("rotate's details: %q", stderr)
	}
	recs := testkeys.ReadDoc(t, path).Records
	if q := recs[1].Quota; q == nil || q.Requests != 500 || q.Period != "day" {
		t.Errorf("the new key's quota: %+v", q)
	}
	if _, stderr, _ = testkeys.RunCommand(t, "", "add", "--file", path, "--label", "free"); strings.Contains(stderr, "quota") {
		t.Errorf("add without --quota: %q", stderr)
	}
}

// The quota state cannot be read: list shows "?" and says why on stderr,
// once; quota shows the quota and why its use is not shown; on a store
// that keeps no state, "-" and no warning.
func TestCommandQuotaStateUnreadable(t *testing.T) {
	path := testkeys.WriteKeys(t, "",
		testkeys.New("a", map[string]any{"quota": map[string]any{"requests": 10, "period": "day"}}),
		testkeys.New("b", map[string]any{"quota": map[string]any{"requests": 20, "period": "day"}}))
	qs := withQuotaState(t)
	qs.StatesFail = testquota.ErrDown
	stdout, stderr, err := testkeys.RunCommand(t, "", "list", "--file", path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "The quota state of " + path + " cannot be read, so the use of the keys' quotas is not shown: " + testquota.ErrDown.Error() + "\n"; stderr != want {
		t.Errorf("stderr %q, want %q", stderr, want)
	}
	if strings.Count(stdout, " 10/day  ?  ") != 1 || strings.Count(stdout, " 20/day  ?  ") != 1 {
		t.Errorf("list:\n%s", stdout)
	}
	stdout, _, err = testkeys.RunCommand(t, "", "quota", "--file", path, testkeys.ReadDoc(t, path).Records[0].ID)
	if err != nil || !strings.HasSuffix(stdout, ": 10/day\nIts use this period cannot be read: "+testquota.ErrDown.Error()+"\n") {
		t.Errorf("quota: %q %v", stdout, err)
	}
	storeHook = func(st stores.RecordStore) stores.RecordStore { return bare{st} }
	stdout, stderr, err = testkeys.RunCommand(t, "", "list", "--file", path)
	if err != nil || stderr != "" || strings.Count(stdout, "/day  -  ") != 2 {
		t.Errorf("no quota state: %v %q\n%s", err, stderr, stdout)
	}
	stdout, _, err = testkeys.RunCommand(t, "", "quota", "--file", path, testkeys.ReadDoc(t, path).Records[0].ID)
	if err != nil || !strings.HasSuffix(stdout, "Its use is not shown: the key store keeps no quota state.\n") {
		t.Errorf("quota, no quota state: %q %v", stdout, err)
	}
	_, stderr, err = testkeys.RunCommand(t, "", "quota", "--file", path, testkeys.ReadDoc(t, path).Records[0].ID, "--grant", "5")
	if err == nil || stderr != "apikey quota: key store "+path+" keeps no quota state: units cannot be granted there\n" {
		t.Errorf("grant, no quota state: %v %q", err, stderr)
	}
}

// bare is a store with nothing but records: no quota state, no usage
// counts.
type bare struct{ stores.RecordStore }

// caddy apikey usage reads the store's counts of the key named, by id or
// key_prefix, over --days (7 by default), as a table and a chart or as
// --json; bad flags, an unknown key and a store without usage counts are
// errors that say so.
func TestCommandUsage(t *testing.T) {
	notNearMidnight(t)
	qs := withQuotaState(t)
	k := testkeys.New("usage", nil)
	path := testkeys.WriteKeys(t, "", k)
	now := usagecount.Hour(time.Now())
	qs.AddRows(
		usagecount.Row{ID: k.ID(), Hour: now, Result: "admitted", N: 40},
		usagecount.Row{ID: k.ID(), Hour: now, Result: "quota_exceeded", N: 2},
		usagecount.Row{ID: k.ID(), Hour: now.Add(-6 * 24 * time.Hour), Result: "admitted", N: 7},
		usagecount.Row{ID: k.ID(), Hour: now.Add(-7 * 24 * time.Hour), Result: "admitted", N: 1000}, // before the 7 days
	)
	today, first := now.Format(time.DateOnly), now.AddDate(0, 0, -6).Format(time.DateOnly)
	stdout, stderr, err := testkeys.RunCommand(t, "", "usage", "--file", path, k.Record["key_prefix"].(string))
	if err != nil {
		t.Fatalf("usage: %v %s", err, stderr)
	}
	for _, want := range []string{
		"Requests with key " + k.ID() + ` "usage" (` + k.Record["key_prefix"].(string) + "), " + first + " to " + today + " (UTC):\n",
		"DAY         ADMITTED  QUOTA_EXCEEDED\n" + first + "  7         0\n",
		today + "  40        2\nTOTAL       47        2\n",
		"Requests per day, " + first + " to " + today + " UTC",
		"  admitted        │▂     █│ peak 40/day\n",
		"  quota_exceeded  │      █│ peak 2/day\n",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("usage does not show %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, k.Raw) || strings.Contains(stdout, k.Record["key_hash"].(string)) {
		t.Error("usage shows the key or its hash")
	}

	stdout, _, err = testkeys.RunCommand(t, "", "usage", "--file", path, "--days", "1", "--json", k.ID())
	var u keyops.Usage
	if err != nil || json.Unmarshal([]byte(stdout), &u) != nil {
		t.Fatalf("usage --json: %v %s", err, stdout)
	}
	if u.ID != k.ID() || len(u.Days) != 1 || len(u.Rows) != 2 || u.Totals["admitted"] != 40 || u.Totals["quota_exceeded"] != 2 || u.Since.Format(time.DateOnly) != today {
		t.Errorf("usage --days 1 --json: %+v", u)
	}
	stdout, _, err = testkeys.RunCommand(t, "", "usage", "--file", path, "--days", "2", k.ID())
	if err != nil || !strings.Contains(stdout, "Requests per hour, ") || !strings.Contains(stdout, "█│ peak 40/hour\n") {
		t.Errorf("usage --days 2: %v\n%s", err, stdout)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--days", "0", k.ID()}, "apikey usage: --days 0: want 1 to 35 (the counts are kept 35 days)\n"},
		{[]string{"--days", "36", k.ID()}, "apikey usage: --days 36: want 1 to 35"},
		{[]string{"--days", "a week", k.ID()}, `invalid argument "a week" for "--days"`},
		{[]string{"sk_NoSuchKy"}, `apikey usage: no key in ` + path + ` has the id or key_prefix "sk_NoSuchKy"`},
		{[]string{}, "accepts 1 arg(s), received 0"},
	} {
		_, stderr, err := testkeys.RunCommand(t, "", append([]string{"usage", "--file", path}, c.args...)...)
		if err == nil || !strings.Contains(err.Error()+stderr, c.want) {
			t.Errorf("usage %v: %v %q, want %q", c.args, err, stderr, c.want)
		}
	}
	storeHook = func(st stores.RecordStore) stores.RecordStore { return bare{st} }
	_, stderr, err = testkeys.RunCommand(t, "", "usage", "--file", path, k.ID())
	if want := "apikey usage: key store " + path + " keeps no usage counts\n"; err == nil || stderr != want {
		t.Errorf("a store without usage counts: %v %q, want %q", err, stderr, want)
	}
	qs.UsageFails = testquota.ErrDown
	storeHook = func(st stores.RecordStore) stores.RecordStore { qs.RecordStore = st; return qs }
	_, stderr, err = testkeys.RunCommand(t, "", "usage", "--file", path, k.ID())
	if err == nil || !strings.Contains(stderr, "usage counts of key "+k.ID()+" in "+path+": "+testquota.ErrDown.Error()) {
		t.Errorf("counts that cannot be read: %v %q", err, stderr)
	}
}

// The commands exit 1 with a plain message for bad quota and usage flags,
// as the other commands do.
func TestCommandQuotaUsageExitCodes(t *testing.T) {
	path, _ := revokeFixture(t)
	for _, args := range [][]string{
		{"apikey", "usage", "--file", path, "--days", "99", "aaaa1111"},
		{"apikey", "quota", "--file", path, "aaaa1111", "5/fortnight"},
		{"apikey", "quota", "--file", path, "zzzz9999", "--none"},
	} {
		stdout, stderr, code := runCaddyCommand(t, args...)
		if code != 1 || stdout != "" || !strings.HasPrefix(stderr, "caddy apikey "+args[1]+": ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
}
