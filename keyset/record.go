package keyset

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// Record is one API key as the key file stores it. The members are those of
// the reference application's records, plus the optional lifecycle members
// expires_at, revoked_at and scopes (absent means "no limit"), rate_limits
// (absent or null: the handler's default limits; an empty list: no limits
// for this key), and rotated_from, the id of the key that `caddy apikey
// rotate` made this one to replace (for people and scripts: the handler
// does not use it). Members it does not know stay in the file: the keyfile
// package keeps them.
type Record struct {
	ID          string      `json:"id"`
	Label       string      `json:"label"`
	KeyHash     string      `json:"key_hash"`
	KeyPrefix   string      `json:"key_prefix"`
	CreatedAt   *string     `json:"created_at"`
	LastUsedAt  *string     `json:"last_used_at"`
	ExpiresAt   *string     `json:"expires_at,omitempty"`
	RevokedAt   *string     `json:"revoked_at,omitempty"`
	Scopes      []string    `json:"scopes,omitempty"`
	RateLimits  []RateLimit `json:"rate_limits,omitzero"` // nil: absent; empty: []
	RotatedFrom *string     `json:"rotated_from,omitempty"`
	Quota       *QuotaSpec  `json:"quota,omitempty"`
}

// QuotaSpec is a record's quota as the record holds it: requests per
// period, the period "day" or "month" (calendar days and months, UTC) or
// "none" (a fixed allowance), as in
//
//	"quota": {"requests": 10000, "period": "month"}
type QuotaSpec struct {
	Requests int64  `json:"requests"`
	Period   string `json:"period"`
}

// QuotaSpecOf is a quota as a record holds it.
func QuotaSpecOf(q quota.Quota) *QuotaSpec {
	return &QuotaSpec{Requests: q.Requests, Period: q.Period.String()}
}

// ParseQuota checks a record's quota and returns it parsed; nil gives
// false.
func ParseQuota(spec *QuotaSpec) (quota.Quota, bool, error) {
	if spec == nil {
		return quota.Quota{}, false, nil
	}
	p, err := quota.ParsePeriod(spec.Period)
	if err != nil {
		return quota.Quota{}, false, fmt.Errorf("quota: %v", err)
	}
	q := quota.Quota{Requests: spec.Requests, Period: p}
	if err := q.Check(); err != nil {
		return quota.Quota{}, false, fmt.Errorf("quota: %v", err)
	}
	return q, true, nil
}

// RateLimit is one of a record's rate limits as the record holds it:
// requests per window, the window a Caddy duration as written ("1m",
// "1d"; see ratelimit.ParseWindow), as in
//
//	"rate_limits": [{"requests": 100, "window": "1m"}, {"requests": 10, "window": "1s"}]
type RateLimit struct {
	Requests int64  `json:"requests"`
	Window   string `json:"window"`
}

// RateLimitOf is a limit as a record holds it, its window written in the
// largest unit that holds it whole.
func RateLimitOf(l ratelimit.Limit) RateLimit {
	return RateLimit{Requests: l.Requests, Window: ratelimit.FormatWindow(l.Window)}
}

// RateLimitsOf is limits as a record holds them: nil for nil (the
// handler's defaults), an empty list for an empty one (no limits).
func RateLimitsOf(limits []ratelimit.Limit) []RateLimit {
	if limits == nil {
		return nil
	}
	out := make([]RateLimit, len(limits))
	for i, l := range limits {
		out[i] = RateLimitOf(l)
	}
	return out
}

// ParseRateLimits checks a record's rate limits and returns them parsed:
// each request count from 1 to ratelimit.MaxRequests, each window a Caddy
// duration from 1s to 366d in whole seconds, at most ratelimit.MaxLimits
// of them, no two with the same window. nil gives nil; an empty list, an
// empty list.
func ParseRateLimits(rs []RateLimit) ([]ratelimit.Limit, error) {
	if rs == nil {
		return nil, nil
	}
	if len(rs) > ratelimit.MaxLimits {
		return nil, fmt.Errorf("rate_limits: at most %d limits, not %d", ratelimit.MaxLimits, len(rs))
	}
	out := make([]ratelimit.Limit, len(rs))
	for i, r := range rs {
		w, err := ratelimit.ParseWindow(r.Window)
		if err == nil {
			out[i] = ratelimit.Limit{Requests: r.Requests, Window: w}
			err = out[i].Check()
		}
		if err != nil {
			return nil, fmt.Errorf("rate_limits: limit %d: %w", i+1, err)
		}
	}
	if err := ratelimit.CheckLimits(out); err != nil {
		return nil, fmt.Errorf("rate_limits: %w", err)
	}
	return out, nil
}

// RecordError is a problem with the n-th record, whose id is id ("" when
// not known).
func RecordError(n int, id string, err error) error {
	if id != "" {
		return fmt.Errorf("record %d (id %q): %w", n, id, err)
	}
	return fmt.Errorf("record %d: %w", n, err)
}

// CheckScope rejects a scope that could not be told apart in
// {http.auth.user.scopes} (comma-joined) or in the Caddyfile: empty, or with
// a comma or white space.
func CheckScope(s string) error {
	if s == "" || strings.ContainsAny(s, ", \t\r\n") {
		return fmt.Errorf("scope %q must be non-empty, without spaces or commas", s)
	}
	return nil
}

// HashKey returns the key_hash of a raw key: lowercase SHA-256 hex.
func HashKey(raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(sum[:])
}

// DecodeKeyHash parses a key_hash: 64 hexadecimal digits.
func DecodeKeyHash(s string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if s == "" {
		return sum, errors.New(`"key_hash" is missing or empty`)
	}
	if len(s) != hex.EncodedLen(sha256.Size) {
		return sum, fmt.Errorf("key_hash must be 64 hexadecimal digits (a SHA-256), got %d characters", len(s))
	}
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		return sum, errors.New("key_hash must be 64 hexadecimal digits (a SHA-256)")
	}
	return sum, nil
}

// timestampLayout is how this plugin writes times: ISO 8601 with a numeric
// offset and microseconds, as Python's datetime.isoformat() writes them, so
// both programs read each other's files.
const timestampLayout = "2006-01-02T15:04:05.000000-07:00"

// FormatTimestamp writes a time as records hold it.
func FormatTimestamp(t time.Time) string { return t.UTC().Format(timestampLayout) }

// Timestamp formats an optional time as records hold it.
func Timestamp(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := FormatTimestamp(*t)
	return &s
}

// ParseTimestamp reads an ISO 8601 time as written by this plugin, by Python's
// isoformat() (with or without fraction, with or without offset; a time
// without an offset is taken as UTC) or as RFC 3339.
func ParseTimestamp(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not an ISO 8601 time such as 2026-11-25T20:14:31+00:00", s)
}

// UnixNanoClamped is t in unix nanoseconds, clamped to what an int64 holds
// (years 1678 to 2262), where t.UnixNano would overflow: a time before the
// range is long past, one after it is as good as never.
func UnixNanoClamped(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, math.MinInt64)):
		return math.MinInt64
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}
