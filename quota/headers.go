package quota

import (
	"net/http"
	"strconv"
)

// WriteHeaders sets the quota headers of a response for d at now (unix
// nanoseconds): X-Quota-Limit, X-Quota-Remaining and X-Quota-Reset
// (seconds until the period ends; none for a fixed allowance).
func WriteHeaders(hdr http.Header, d Decision, now int64) {
	hdr["X-Quota-Limit"] = []string{strconv.FormatInt(d.Limit, 10)}
	hdr["X-Quota-Remaining"] = []string{strconv.FormatInt(d.Remaining, 10)}
	if d.Reset < Never.UnixNano() {
		hdr["X-Quota-Reset"] = []string{strconv.FormatInt(d.ResetSeconds(now), 10)}
	}
}

// Placeholders are the values of the apikey handler's placeholders of a
// decision, as of when it was made: {http.auth.apikey.quota.limit},
// .remaining and .reset (seconds; unset for a fixed allowance).
type Placeholders struct {
	limit, remaining int64
	reset            int64 // seconds until the period ends; -1: a fixed allowance
}

// Placeholders returns d's placeholders at now (unix nanoseconds).
func (d Decision) Placeholders(now int64) Placeholders {
	reset := int64(-1)
	if d.Reset < Never.UnixNano() {
		reset = d.ResetSeconds(now)
	}
	return Placeholders{limit: d.Limit, remaining: d.Remaining, reset: reset}
}

// Placeholder resolves one of p's placeholders, by its name.
func (p Placeholders) Placeholder(name string) (any, bool) {
	switch name {
	case "http.auth.apikey.quota.limit":
		return p.limit, true
	case "http.auth.apikey.quota.remaining":
		return p.remaining, true
	case "http.auth.apikey.quota.reset":
		return p.reset, p.reset >= 0
	}
	return nil, false
}
