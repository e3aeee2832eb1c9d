package admin

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// The quota and usage routes on the file store's own state file, with no
// test store in between: a quota set, units taken by the server and
// granted, and usage counts written by the server, as the API answers
// them.
func TestAdminQuotaUsageFileStore(t *testing.T) {
	if now := time.Now().UTC(); now.Truncate(24*time.Hour).Add(24*time.Hour).Sub(now) < 30*time.Second {
		t.Skip("too close to midnight UTC, when the period changes")
	}
	k := testkeys.New("metered", map[string]any{"id": "aaaa1111-0000-4000-8000-000000000001"})
	path := testkeys.WriteKeys(t, "", k)
	fs := startFileStore(t, path)
	a := testAdmin(liveStore(t, "file:"+path))
	now := time.Now()
	month, _, ends := quota.Month.At(now)

	resp, body := call(t, a, "PUT", "/apikey/keys/aaaa1111/quota", `{"quota": {"requests": 100, "period": "month"}}`)
	if got := decode[QuotaAnswer](t, resp, body, 200); !got.Changed || got.QuotaState == nil || got.QuotaState.Remaining != 100 {
		t.Fatalf("PUT: %s", body)
	}
	taken, err := fs.TakeQuota(context.Background(), []quota.Take{{ID: k.ID(), Period: month, Allowance: 100, Want: 30, Ends: ends}})
	if err != nil || taken[0].Got != 30 {
		t.Fatalf("take: %+v %v", taken, err)
	}
	resp, body = call(t, a, "POST", "/apikey/keys/aaaa1111/quota/grant", `{"units": 5}`)
	if got := decode[GrantAnswer](t, resp, body, 200); got.QuotaState.Used != 30 || got.QuotaState.Granted != 5 || got.QuotaState.Remaining != 75 {
		t.Errorf("grant: %s", body)
	}
	resp, body = call(t, a, "GET", "/apikey/keys", "")
	if keys := decode[[]keyops.Listed](t, resp, body, 200); keys[0].QuotaState == nil || keys[0].QuotaState.Used != 30 || keys[0].QuotaState.Period != month {
		t.Errorf("list: %s", body)
	}

	hour := usagecount.Hour(now)
	if err := fs.AddUsageCounts(context.Background(), []usagecount.Row{
		{ID: k.ID(), Hour: hour, Result: "admitted", N: 30},
		{ID: k.ID(), Hour: hour, Result: "quota_exceeded", N: 4},
	}, usagecount.DefaultRetention); err != nil {
		t.Fatal(err)
	}
	resp, body = call(t, a, "GET", "/apikey/keys/aaaa1111/usage?days=1", "")
	if u := decode[keyops.Usage](t, resp, body, 200); u.Totals["admitted"] != 30 || u.Totals["quota_exceeded"] != 4 || len(u.Rows) != 2 {
		t.Errorf("usage: %s", body)
	}
}
