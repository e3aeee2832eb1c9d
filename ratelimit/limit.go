package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The bounds of a limit, as a key record or the directive may set them.
const (
	// MaxRequests is the most requests a limit may allow per window.
	MaxRequests = 1_000_000_000
	// MinWindow and MaxWindow bound a limit's window, which is also a
	// whole number of seconds (the headers speak seconds).
	MinWindow = time.Second
	MaxWindow = 366 * 24 * time.Hour
	// MaxLimits is the most limits one key (or one handler's defaults)
	// may have.
	MaxLimits = 8
)

// Limit allows Requests requests per Window, counted over a window that
// slides (see the package documentation).
type Limit struct {
	Requests int64
	Window   time.Duration
}

// String is the limit as `caddy apikey add --rate` takes it: "100/1m".
func (l Limit) String() string {
	return strconv.FormatInt(l.Requests, 10) + "/" + FormatWindow(l.Window)
}

// Check reports a limit out of bounds: requests from 1 to MaxRequests, a
// window from MinWindow to MaxWindow in whole seconds.
func (l Limit) Check() error {
	if l.Requests < 1 || l.Requests > MaxRequests {
		return fmt.Errorf("requests must be a whole number from 1 to %d, not %d", MaxRequests, l.Requests)
	}
	return checkWindow(l.Window)
}

func checkWindow(w time.Duration) error {
	if w < MinWindow || w > MaxWindow {
		return fmt.Errorf("window must be from %s to %s, not %s", FormatWindow(MinWindow), FormatWindow(MaxWindow), FormatWindow(w))
	}
	if w%time.Second != 0 {
		return fmt.Errorf("window must be a whole number of seconds, not %s", w)
	}
	return nil
}

// ParseWindow reads a window as a Caddy duration (caddy.ParseDuration:
// "1s", "1m", "1h", "1d", "1h30m") and checks its bounds.
func ParseWindow(s string) (time.Duration, error) {
	d, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("window %q is not a duration such as 1s, 1m, 1h or 1d", s)
	}
	if err := checkWindow(d); err != nil {
		return 0, err
	}
	return d, nil
}

// FormatWindow writes a window in the largest unit that holds it whole:
// "1d", "2h", "1m", "90s" (as ParseWindow reads it back). A window that is
// not whole seconds is written as time.Duration writes it.
func FormatWindow(w time.Duration) string {
	if w <= 0 || w%time.Second != 0 {
		return w.String()
	}
	return string(AppendWindow(nil, w))
}

// AppendWindow appends FormatWindow(w) to b, for a window of whole seconds.
func AppendWindow(b []byte, w time.Duration) []byte {
	const day = 24 * time.Hour
	switch {
	case w%day == 0:
		return append(strconv.AppendInt(b, int64(w/day), 10), 'd')
	case w%time.Hour == 0:
		return append(strconv.AppendInt(b, int64(w/time.Hour), 10), 'h')
	case w%time.Minute == 0:
		return append(strconv.AppendInt(b, int64(w/time.Minute), 10), 'm')
	}
	return append(strconv.AppendInt(b, int64(w/time.Second), 10), 's')
}

// ParseRequests reads a limit's request count: decimal digits alone, from
// 1 to MaxRequests.
func ParseRequests(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || s == "" || s[0] < '0' || s[0] > '9' || n < 1 || n > MaxRequests {
		return 0, fmt.Errorf("requests must be a whole number from 1 to %d, not %q", MaxRequests, s)
	}
	return n, nil
}

// ParseLimit reads a limit in the form `caddy apikey add --rate` takes:
// requests, a slash, a window ("100/1m", "10/1s", "5000/1d").
func ParseLimit(s string) (Limit, error) {
	reqs, window, ok := strings.Cut(s, "/")
	if !ok {
		return Limit{}, fmt.Errorf("rate limit %q: want requests/window, such as 100/1m", s)
	}
	n, err := ParseRequests(strings.TrimSpace(reqs))
	if err != nil {
		return Limit{}, fmt.Errorf("rate limit %q: %w", s, err)
	}
	w, err := ParseWindow(strings.TrimSpace(window))
	if err != nil {
		return Limit{}, fmt.Errorf("rate limit %q: %w", s, err)
	}
	return Limit{Requests: n, Window: w}, nil
}

// CheckLimits checks a key's (or a handler's) limits together: at most
// MaxLimits, each within bounds, no two with the same window. An empty list
// is valid: no limits.
func CheckLimits(limits []Limit) error {
	if len(limits) > MaxLimits {
		return fmt.Errorf("at most %d rate limits, not %d", MaxLimits, len(limits))
	}
	for i, l := range limits {
		if err := l.Check(); err != nil {
			return fmt.Errorf("rate limit %d: %w", i+1, err)
		}
		for j := range i {
			if limits[j].Window == l.Window {
				return fmt.Errorf("rate limits %d and %d have the same window, %s; give each window one limit", j+1, i+1, FormatWindow(l.Window))
			}
		}
	}
	return nil
}
