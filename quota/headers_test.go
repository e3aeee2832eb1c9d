package quota

import (
	"net/http"
	"testing"
	"time"
)

// A period's decision has a reset, in the headers and the placeholders; a
// fixed allowance's has none.
func TestHeadersAndPlaceholders(t *testing.T) {
	now := time.Date(2025, 3, 31, 23, 59, 0, 0, time.UTC)
	_, _, end := Month.At(now)
	for _, c := range []struct {
		name  string
		d     Decision
		reset string
	}{
		{"month", Decision{Outcome: Spent, Limit: 1000, Remaining: 7, Reset: end.UnixNano()}, "60"},
		{"fixed", Decision{Outcome: Spent, Limit: 1000, Remaining: 7, Reset: Never.UnixNano()}, ""},
	} {
		hdr := http.Header{}
		WriteHeaders(hdr, c.d, now.UnixNano())
		if hdr.Get("X-Quota-Limit") != "1000" || hdr.Get("X-Quota-Remaining") != "7" || hdr.Get("X-Quota-Reset") != c.reset {
			t.Errorf("%s: headers %v, want limit 1000, remaining 7, reset %q", c.name, hdr, c.reset)
		}
		p := c.d.Placeholders(now.UnixNano())
		if v, ok := p.Placeholder("http.auth.apikey.quota.limit"); !ok || v != int64(1000) {
			t.Errorf("%s: {http.auth.apikey.quota.limit} = %v, %v", c.name, v, ok)
		}
		if v, ok := p.Placeholder("http.auth.apikey.quota.remaining"); !ok || v != int64(7) {
			t.Errorf("%s: {http.auth.apikey.quota.remaining} = %v, %v", c.name, v, ok)
		}
		v, ok := p.Placeholder("http.auth.apikey.quota.reset")
		if ok != (c.reset != "") || ok && v != int64(60) {
			t.Errorf("%s: {http.auth.apikey.quota.reset} = %v, %v; want set: %v", c.name, v, ok, c.reset != "")
		}
		if _, ok := p.Placeholder("http.auth.apikey.rate_limit.limit"); ok {
			t.Errorf("%s: a quota's placeholders resolve a rate limit's", c.name)
		}
	}
}
