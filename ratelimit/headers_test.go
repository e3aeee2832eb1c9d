package ratelimit

import (
	"net/http"
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	limits := []Limit{{Requests: 10, Window: time.Second}, {Requests: 1000, Window: time.Hour}}
	if got, want := Policy(limits), `"1s";q=10;w=1, "1h";q=1000;w=3600`; got != want {
		t.Errorf("Policy = %s, want %s", got, want)
	}
	if got := Policy(nil); got != "" {
		t.Errorf("Policy(nil) = %q", got)
	}
}

// The headers of one decision, each a slice of its own, in one
// allocation; and the placeholders of the same decision.
func TestWriteHeaders(t *testing.T) {
	d := Decision{Allowed: true, Limit: Limit{Requests: 100, Window: time.Minute}, Remaining: 42, Reset: 1500 * time.Millisecond}
	hdr := http.Header{}
	WriteHeaders(hdr, `"1m";q=100;w=60`, d)
	want := map[string]string{
		"Ratelimit-Policy":      `"1m";q=100;w=60`,
		"Ratelimit":             `"1m";r=42;t=2`,
		"X-Ratelimit-Limit":     "100",
		"X-Ratelimit-Remaining": "42",
		"X-Ratelimit-Reset":     "2",
	}
	for name, v := range want {
		if got := hdr[name]; len(got) != 1 || got[0] != v || cap(got) != 1 {
			t.Errorf("%s: %q (cap %d), want [%q] with a slice of its own", name, got, cap(got), v)
		}
	}
	if len(hdr) != len(want) {
		t.Errorf("headers %v, want only %v", hdr, want)
	}
	if n := testing.AllocsPerRun(100, func() { WriteHeaders(hdr, "p", d) }); n != 1 {
		t.Errorf("WriteHeaders allocates %v times, want 1", n)
	}
	for name, v := range map[string]int64{"limit": 100, "remaining": 42, "reset": 2} {
		if got, ok := d.Placeholder("http.auth.apikey.rate_limit." + name); !ok || got != v {
			t.Errorf("{http.auth.apikey.rate_limit.%s} = %v, %v; want %d", name, got, ok, v)
		}
	}
	if _, ok := d.Placeholder("http.auth.apikey.quota.limit"); ok {
		t.Error("a rate limit's decision resolves a quota placeholder")
	}
}

// BenchmarkWriteHeaders is the rate-limit headers' share of a limited
// request (into a header map that holds them already, as the handler's
// benchmarks reuse one):
//
//	go test -run '^$' -bench BenchmarkWriteHeaders -benchmem ./ratelimit
func BenchmarkWriteHeaders(b *testing.B) {
	hdr := make(http.Header)
	d := Decision{Allowed: true, Limit: Limit{Requests: 1_000_000_000, Window: time.Hour}, Remaining: 999_999_000}
	policy := Policy([]Limit{d.Limit})
	b.ReportAllocs()
	for b.Loop() {
		WriteHeaders(hdr, policy, d)
	}
}
