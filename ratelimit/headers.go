package ratelimit

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// Policy is the RateLimit-Policy header of limits (IETF httpapi draft's
// structured field): each limit named by its window, with its quota (q)
// and window in seconds (w), e.g. "1m";q=100;w=60, "1s";q=10;w=1.
func Policy(limits []Limit) string {
	var b strings.Builder
	for i, lim := range limits {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`"` + FormatWindow(lim.Window) + `";q=` + strconv.FormatInt(lim.Requests, 10) + ";w=" + strconv.FormatInt(int64(lim.Window/time.Second), 10))
	}
	return b.String()
}

// headerValues are the values of the rate-limit headers of one response,
// made in one allocation: the strings point into buf.
type headerValues struct {
	values [5]string
	buf    [96]byte
}

// WriteHeaders sets the rate-limit headers of a response for d, decided
// under limits whose Policy is policy: RateLimit-Policy and RateLimit
// (IETF httpapi draft), X-RateLimit-Limit, -Remaining and -Reset
// (seconds), each a slice of its own, as later handlers may change values
// in place. It allocates once.
func WriteHeaders(hdr http.Header, policy string, d Decision) {
	hv := new(headerValues)
	// One formatting of each number: `"1m";r=<remaining>;t=<reset>`, then
	// the limit; X-RateLimit-Remaining and -Reset are parts of RateLimit.
	b := append(hv.buf[:0], '"')
	b = AppendWindow(b, d.Limit.Window)
	b = append(b, `";r=`...)
	rem0 := len(b)
	b = strconv.AppendInt(b, d.Remaining, 10)
	rem1 := len(b)
	b = append(b, ";t="...)
	reset0 := len(b)
	b = strconv.AppendInt(b, d.ResetSeconds(), 10)
	rl := len(b)
	b = strconv.AppendInt(b, d.Limit.Requests, 10)
	if len(b) > len(hv.buf) { // cannot happen: numbers of at most 19 digits are fewer
		b = bytes.Clone(b)
	}
	s := unsafe.String(unsafe.SliceData(b), len(b))
	hv.values = [5]string{policy, s[:rl], s[rl:], s[rem0:rem1], s[reset0:rl]}
	v := hv.values[:]
	hdr["Ratelimit-Policy"] = v[0:1:1]
	hdr["Ratelimit"] = v[1:2:2]
	hdr["X-Ratelimit-Limit"] = v[2:3:3]
	hdr["X-Ratelimit-Remaining"] = v[3:4:4]
	hdr["X-Ratelimit-Reset"] = v[4:5:5]
}

// Placeholder resolves the apikey handler's placeholders of d:
// {http.auth.apikey.rate_limit.limit}, .remaining and .reset (seconds).
func (d Decision) Placeholder(name string) (any, bool) {
	switch name {
	case "http.auth.apikey.rate_limit.limit":
		return d.Limit.Requests, true
	case "http.auth.apikey.rate_limit.remaining":
		return d.Remaining, true
	case "http.auth.apikey.rate_limit.reset":
		return d.ResetSeconds(), true
	}
	return nil, false
}
