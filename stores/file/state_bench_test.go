package file

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-json-experiment/json"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// benchState returns the record store of a key file whose state file holds
// the quota states of keys keys and, for each, usage counts of days days
// (an hour's admitted count for every hour), on the clock of dec3.
func benchState(b *testing.B, keys, days int) Records {
	rs, path := stateRecords(b, dec3)
	d := newState()
	u := make(map[string]map[string]map[string]int64)
	for k := range keys {
		id := fmt.Sprintf("k_%06d", k)
		d.Quotas[id] = &quotaState{Period: "2026-12", Used: 100, Ends: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
		if days > 0 {
			u[id] = make(map[string]map[string]int64)
			for h := range days * 24 {
				u[id][usagecount.Hour(dec3).Add(-time.Duration(h)*time.Hour).Format(hourLayout)] = map[string]int64{"admitted": int64(h)}
			}
		}
	}
	if len(u) > 0 {
		var err error
		if d.Usage, err = json.Marshal(u, json.Deterministic(true)); err != nil {
			b.Fatal(err)
		}
	}
	f, err := os.Create(StatePath(path))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.WriteTo(f); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return rs
}

// BenchmarkTakeQuota measures one take of one key's quota: the lock, the
// state file read, the take, the write flushed to disk and renamed.
func BenchmarkTakeQuota(b *testing.B) {
	for _, c := range []struct{ keys, days int }{{1, 0}, {100, 0}, {100, 35}} {
		b.Run(fmt.Sprintf("keys=%d/usage-days=%d", c.keys, c.days), func(b *testing.B) {
			rs := benchState(b, c.keys, c.days)
			takes := []quota.Take{monthTake("k_000000", 1<<40, 100, 0)}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if got, err := rs.TakeQuota(ctx, takes); err != nil || got[0].Got != 100 {
					b.Fatal(got, err)
				}
			}
		})
	}
}

// BenchmarkAddUsageCounts measures one write of 1 000 rows of usage counts
// (1 000 keys, one hour, admitted).
func BenchmarkAddUsageCounts(b *testing.B) {
	for _, c := range []struct{ keys, days int }{{0, 0}, {100, 35}} {
		b.Run(fmt.Sprintf("keys=%d/usage-days=%d", c.keys, c.days), func(b *testing.B) {
			rs := benchState(b, c.keys, c.days)
			rows := make([]usagecount.Row, 1000)
			for i := range rows {
				rows[i] = usagecount.Row{ID: fmt.Sprintf("k_%06d", i), Hour: dec3, Result: "admitted", N: 3}
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := rs.AddUsageCounts(ctx, rows, usagecount.DefaultRetention); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
