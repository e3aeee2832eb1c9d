package apikey

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

func quotaRecord(id, raw string, q string) keyset.Record {
	rec := keyset.Record{ID: id, Label: id, KeyHash: keyset.HashKey(raw), KeyPrefix: raw[:11]}
	if q != "" {
		parsed, err := quota.Parse(q)
		if err != nil {
			panic(err)
		}
		rec.Quota = keyset.QuotaSpecOf(parsed)
	}
	return rec
}

// A key's quota on the request path: exactly the allowance admitted, then
// 429 QUOTA_EXCEEDED with Retry-After until the period ends, in the JSON
// shape of the other refusals, counted as quota_exceeded; the placeholders
// and the opt-in headers; a route's cost; quota off; keys without a quota
// not metered; rate-limited requests spend nothing.
func TestQuotaOnTheRequestPath(t *testing.T) {
	daily, fixed, free := "sk_quota_daily_key", "sk_quota_fixed_key", "sk_quota_free_key1"
	ks := testkeys.KeySet(t, quotaRecord("id-daily", daily, "5/day"), quotaRecord("id-fixed", fixed, "6/none"), quotaRecord("id-free", free, ""))
	bank := quota.NewMemoryBank()
	h := newQuotaHandler(&Handler{KeysFile: "keys.json", QuotaHeaders: true}, ks, bank)
	t.Cleanup(func() { h.Cleanup() })

	for i := range 5 {
		w, passed, repl := limitedCall(t, h, daily)
		if !passed {
			t.Fatalf("request %d of 5 refused: %d %s", i+1, w.Code, w.Body)
		}
		remaining := strconv.Itoa(4 - i)
		if v, _ := repl.GetString("http.auth.apikey.quota.remaining"); v != remaining {
			t.Errorf("request %d: {http.auth.apikey.quota.remaining} = %q, want %s", i+1, v, remaining)
		}
		if got := w.Header().Get("X-Quota-Remaining"); got != remaining || w.Header().Get("X-Quota-Limit") != "5" {
			t.Errorf("request %d: X-Quota-Remaining %q, X-Quota-Limit %q", i+1, got, w.Header().Get("X-Quota-Limit"))
		}
		if v, _ := repl.GetString("http.auth.user.id"); v != "id-daily" {
			t.Errorf("{http.auth.user.id} = %q", v)
		}
	}
	w, passed, _ := limitedCall(t, h, daily)
	if passed || w.Code != http.StatusTooManyRequests {
		t.Fatalf("request over the quota: passed %v, %d", passed, w.Code)
	}
	if code, _ := testkeys.RefusalOf(t, w.Body.String()); code != CodeQuotaExceeded {
		t.Errorf("refusal code %q, want QUOTA_EXCEEDED", code)
	}
	_, _, end := quota.Day.At(time.Now())
	retry, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if err != nil || retry < 1 || time.Duration(retry)*time.Second > time.Until(end)+time.Second {
		t.Errorf("Retry-After %q, want the seconds until %s", w.Header().Get("Retry-After"), end)
	}
	if s := bank.State("id-daily"); s.Used != 5 {
		t.Errorf("the bank has %d used, want 5", s.Used)
	}

	// A fixed allowance: no Retry-After (it never renews), no reset.
	h2 := newQuotaHandler(&Handler{KeysFile: "keys2.json", Cost: 4}, ks, bank)
	t.Cleanup(func() { h2.Cleanup() })
	if w, passed, repl := limitedCall(t, h2, fixed); !passed {
		t.Fatalf("a request of cost 4 of 6 refused: %d", w.Code)
	} else if v, _ := repl.GetString("http.auth.apikey.quota.remaining"); v != "2" || w.Header().Get("X-Quota-Remaining") != "" {
		t.Errorf("remaining %q after cost 4 of 6 (headers off: %q)", v, w.Header().Get("X-Quota-Remaining"))
	} else if _, ok := repl.Get("http.auth.apikey.quota.reset"); ok {
		t.Error("{http.auth.apikey.quota.reset} is set for a fixed allowance")
	}
	w, passed, _ = limitedCall(t, h2, fixed)
	if passed || w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "" {
		t.Errorf("cost 4 with 2 left: passed %v, %d, Retry-After %q (want none)", passed, w.Code, w.Header().Get("Retry-After"))
	}

	// quota off, and a key without a quota: never metered.
	off := newQuotaHandler(&Handler{KeysFile: "keys3.json", QuotasOff: true}, ks, bank)
	t.Cleanup(func() { off.Cleanup() })
	for range 3 {
		if w, passed, _ := limitedCall(t, off, daily); !passed {
			t.Fatalf("quota off refused: %d", w.Code)
		}
		if w, passed, repl := limitedCall(t, h, free); !passed {
			t.Fatalf("a key without a quota refused: %d", w.Code)
		} else if _, ok := repl.Get("http.auth.apikey.quota.remaining"); ok || w.Header().Get("X-Quota-Limit") != "" {
			t.Error("a key without a quota has quota placeholders or headers")
		}
	}

	// Rate-limited requests spend nothing.
	fresh := "sk_quota_fresh_key"
	ks2 := testkeys.KeySet(t, quotaRecord("id-fresh", fresh, "100/month"))
	bank2 := quota.NewMemoryBank()
	rl := newQuotaHandler(&Handler{KeysFile: "keys4.json", RateLimits: []keyset.RateLimit{{Requests: 2, Window: "1h"}}}, ks2, bank2)
	for range 5 {
		limitedCall(t, rl, fresh)
	}
	rl.Cleanup() // gives back what its server holds
	if s := bank2.State("id-fresh"); s.Used != 2 {
		t.Errorf("2 admitted of 5 (rate limit 2/1h): the bank has %d used, want 2", s.Used)
	}
}

// The quota state out of reach: refused with 503 QUOTA_UNAVAILABLE and
// Retry-After (the default), or admitted and charged once it is back
// (quota_outage admit); a store that keeps no quota state refuses keys
// with a quota.
func TestQuotaOutage(t *testing.T) {
	raw := "sk_quota_outage_key"
	ks := testkeys.KeySet(t, quotaRecord("id-q", raw, "1000/month"))
	bank := quota.NewMemoryBank()
	bank.Fail = errors.New("state file is broken")
	refuse := newQuotaHandler(&Handler{KeysFile: "keys.json"}, ks, bank)
	t.Cleanup(func() { refuse.Cleanup() })
	w, passed, _ := limitedCall(t, refuse, raw)
	if passed || w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("bank down: passed %v, %d, Retry-After %q", passed, w.Code, w.Header().Get("Retry-After"))
	}
	if code, _ := testkeys.RefusalOf(t, w.Body.String()); code != CodeQuotaUnavailable {
		t.Errorf("code %q, want QUOTA_UNAVAILABLE", code)
	}

	ks2 := testkeys.KeySet(t, quotaRecord("id-q", raw, "1000/month"))
	bank2 := quota.NewMemoryBank()
	bank2.Fail = errors.New("down")
	admit := newQuotaHandler(&Handler{KeysFile: "keys2.json", QuotaOutage: OutageAdmit}, ks2, bank2)
	for range 3 {
		if w, passed, _ := limitedCall(t, admit, raw); !passed {
			t.Fatalf("quota_outage admit refused: %d", w.Code)
		}
	}
	admit.Cleanup() // settles what it owes
	if s := bank2.State("id-q"); s.Used != 0 {
		t.Fatalf("bank still down, yet %d used", s.Used)
	}

	none := newMemoryHandler(&Handler{KeysFile: "keys3.json"}, testkeys.KeySet(t, quotaRecord("id-q", raw, "1000/month")))
	t.Cleanup(func() { none.Cleanup() })
	if w, passed, _ := limitedCall(t, none, raw); passed || w.Code != http.StatusServiceUnavailable {
		t.Fatalf("a store without quota state: passed %v, %d", passed, w.Code)
	}
}

// Usage counts: each request whose key matched a record is counted by
// result, per key.
func TestUsageCountsByResult(t *testing.T) {
	ok, expired := "sk_counts_ok_key1", "sk_counts_expired"
	past := "2020-01-01T00:00:00+00:00"
	exp := quotaRecord("id-expired", expired, "")
	exp.ExpiresAt = &past
	ks := testkeys.KeySet(t, quotaRecord("id-ok", ok, "2/day"), exp)
	w := &rowsWriter{}
	h := newQuotaHandler(&Handler{KeysFile: "keys.json", Scopes: nil}, ks, quota.NewMemoryBank())
	counts := usagecount.NewFlusher("test", w)
	h.counts = counts
	t.Cleanup(func() { h.Cleanup(); counts.Stop() })
	for range 3 {
		limitedCall(t, h, ok)
	}
	limitedCall(t, h, expired)
	limitedCall(t, h, "sk_counts_unknown")
	counts.Flush()
	got := map[string]int64{}
	for _, r := range w.rows {
		got[r.ID+" "+r.Result] += r.N
		if !r.Hour.Equal(usagecount.Hour(time.Now())) && !r.Hour.Equal(usagecount.Hour(time.Now().Add(-time.Minute))) {
			t.Errorf("row hour %s", r.Hour)
		}
	}
	want := map[string]int64{"id-ok admitted": 2, "id-ok quota_exceeded": 1, "id-expired expired": 1}
	if len(got) != len(want) {
		t.Errorf("counts %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d, want %d (all: %v)", k, got[k], n, got)
		}
	}
	// A second flush writes only what is new.
	limitedCall(t, h, expired)
	counts.Flush()
	if last := w.rows[len(w.rows)-1]; len(w.rows) != 4 || last.ID != "id-expired" || last.N != 1 {
		t.Errorf("after one more request, rows %v", w.rows)
	}
}

type rowsWriter struct{ rows []usagecount.Row }

func (w *rowsWriter) AddUsageCounts(_ context.Context, rows []usagecount.Row, _ time.Duration) error {
	w.rows = append(w.rows, rows...)
	return nil
}

// The directive: cost, quota off, quota_headers, quota_outage,
// usage_retention; wrong arguments named with their line.
func TestQuotaCaddyfile(t *testing.T) {
	var h Handler
	d := caddyfile.NewTestDispenser(`apikey keys.json {
		cost 10
		quota_headers
		quota_outage admit
		usage_retention 90d
	}`)
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if h.Cost != 10 || !h.QuotaHeaders || h.QuotaOutage != OutageAdmit || time.Duration(h.UsageRetention) != 90*24*time.Hour {
		t.Errorf("parsed %+v", h)
	}
	for _, tc := range []struct{ block, want string }{
		{"cost 0", "cost 0: must be"},
		{"cost ten", "cost ten"},
		{"cost", "cost takes"},
		{"quota on", "quota takes one argument, off"},
		{"quota_headers on", "quota_headers takes no argument"},
		{"quota_outage open", "quota_outage takes"},
		{"usage_retention 5m", "an hour or more"},
		{"quota_header", "did you mean 'quota_headers'"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("apikey keys.json {\n " + tc.block + "\n}"))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Testfile:") {
			t.Errorf("%q: %v, want %q and the line", tc.block, err, tc.want)
		}
	}
	for _, bad := range []Handler{{KeysFile: "k.json", Cost: -1}, {KeysFile: "k.json", QuotaOutage: "open"}, {KeysFile: "k.json", UsageRetention: 1}} {
		if err := bad.setup(); err == nil {
			t.Errorf("setup of %+v succeeded", bad)
		}
	}
}
