package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/internal/teststores"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
)

// The commands on the file store's own quota state and usage counts (its
// state file), with no test store in between. These tests skip until the
// file store keeps them.

// caddy apikey quota --grant on a key file: the state file holds the
// grant, list shows it and the units a server took, and the key file's
// audit log the grant.
func TestCommandQuotaFileStore(t *testing.T) {
	notNearMidnight(t)
	path := t.TempDir() + "/keys.json"
	stdout, stderr, err := testkeys.RunCommand(t, "", "add", "--file", path, "--create", "--label", "metered", "--quota", "100/month")
	if err != nil {
		t.Fatalf("add: %v %s", err, stderr)
	}
	raw := strings.TrimSpace(stdout)
	id := testkeys.ReadDoc(t, path).Records[0].ID
	if _, stderr, err := testkeys.RunCommand(t, "", "quota", "--file", path, raw[:11], "--grant", "5"); err != nil {
		t.Fatalf("grant: %v %s", err, stderr)
	}
	month, _, ends := quota.Month.At(time.Now())
	state := func() keyops.QuotaState {
		t.Helper()
		out, stderr, err := testkeys.RunCommand(t, "", "list", "--file", path, "--json")
		var l []keyops.Listed
		if err != nil || json.Unmarshal([]byte(out), &l) != nil || len(l) != 1 || l[0].QuotaState == nil {
			t.Fatalf("list --json: %v %s %s", err, stderr, out)
		}
		return *l[0].QuotaState
	}
	if s := state(); s.Period != month || s.Granted != 5 || s.Used != 0 || s.Remaining != 105 {
		t.Errorf("after the grant: %+v", s)
	}
	// Units a server takes are used.
	live := teststores.StartFileStore(t, path, -1, -1)
	if bank, ok := any(live).(quota.Bank); ok {
		got, err := bank.TakeQuota(context.Background(), []quota.Take{{ID: id, Period: month, Allowance: 100, Want: 30, Ends: ends}})
		if err != nil || len(got) != 1 || got[0].Got != 30 {
			t.Fatalf("take: %+v %v", got, err)
		}
		if s := state(); s.Used != 30 || s.Remaining != 75 {
			t.Errorf("after a take of 30: %+v", s)
		}
		out, _, _ := testkeys.RunCommand(t, "", "list", "--file", path)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if f := strings.Fields(lines[len(lines)-1]); len(lines) != 2 || strings.Join(f[len(f)-3:], " ") != "100/month 30/75 active" {
			t.Errorf("list:\n%s", out)
		}
	} else {
		t.Log("the live file store is not a quota.Bank: the units used are not checked")
	}
	entries, err := filestore.Records{Path: path}.ReadAudit(audit.Filter{})
	if err != nil || len(entries) != 2 || entries[1].Action != audit.Quota || entries[1].Changes["granted"] != float64(5) || entries[1].Changes["period"] != month {
		t.Errorf("audit log: %+v %v", entries, err)
	}
}

// caddy apikey usage on a key file: the counts a server wrote are shown,
// per result.
func TestCommandUsageFileStore(t *testing.T) {
	if _, ok := any(filestore.Records{}).(usagecount.Reader); !ok {
		t.Skip("the file store keeps no usage counts yet (filestore.Records: usagecount.Reader)")
	}
	notNearMidnight(t)
	k := testkeys.New("counted", nil)
	path := testkeys.WriteKeys(t, "", k)
	live := teststores.StartFileStore(t, path, -1, -1)
	w, ok := any(live).(usagecount.Writer)
	if !ok {
		t.Skip("the live file store writes no usage counts yet (usagecount.Writer)")
	}
	hour := usagecount.Hour(time.Now())
	rows := []usagecount.Row{
		{ID: k.ID(), Hour: hour, Result: "admitted", N: 40},
		{ID: k.ID(), Hour: hour, Result: "rate_limited", N: 3},
		{ID: k.ID(), Hour: hour, Result: "admitted", N: 2}, // added up
	}
	if err := w.AddUsageCounts(context.Background(), rows, usagecount.DefaultRetention); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := testkeys.RunCommand(t, "", "usage", "--file", path, "--days", "1", "--json", k.ID())
	var u keyops.Usage
	if err != nil || json.Unmarshal([]byte(out), &u) != nil {
		t.Fatalf("usage --json: %v %s %s", err, stderr, out)
	}
	if u.Totals["admitted"] != 42 || u.Totals["rate_limited"] != 3 || len(u.Totals) != 2 || len(u.Rows) != 2 {
		t.Errorf("usage: %+v", u)
	}
	out, _, err = testkeys.RunCommand(t, "", "usage", "--file", path, k.Record["key_prefix"].(string))
	if err != nil || !strings.Contains(out, "TOTAL       42        3\n") {
		t.Errorf("usage: %v\n%s", err, out)
	}
}

// The file store's records keep quota state and usage counts, and write
// a grant's audit entry.
var (
	_ stores.QuotaStore  = filestore.Records{}
	_ stores.AuditWriter = filestore.Records{}
	_ usagecount.Reader  = filestore.Records{}
)
