// Package usagecount is how many requests each key made, by result, per
// hour: what the handler counts, what a store keeps (for a configurable
// number of days) and what `caddy apikey usage` and the admin API show.
// The counts are kept per key and never as Prometheus labels, whose
// cardinality a million keys would blow up.
package usagecount

import (
	"context"
	"time"
)

// Results are the results counted per key, in this order: those of
// requests that presented a key that matched a record. The names are the
// result label values of caddy_apikey_requests_total, but for admitted
// (there "ok").
var Results = [...]string{"admitted", "revoked", "expired", "insufficient_scope", "rate_limited", "quota_exceeded", "quota_unavailable"}

// The indexes of Results.
const (
	Admitted = iota
	Revoked
	Expired
	InsufficientScope
	RateLimited
	QuotaExceeded
	QuotaUnavailable
	NumResults
)

// ResultIndex returns the index in Results of a result name, or -1.
func ResultIndex(name string) int {
	for i, r := range Results {
		if r == name {
			return i
		}
	}
	return -1
}

// DefaultRetention is how long a store keeps the counts of an hour.
const DefaultRetention = 35 * 24 * time.Hour

// Row is a count: N requests of key ID with Result in the hour that
// starts at Hour (UTC, whole hour).
type Row struct {
	ID     string    `json:"id"`
	Hour   time.Time `json:"hour"`
	Result string    `json:"result"`
	N      int64     `json:"n"`
}

// Hour is the start of the hour that holds t, in UTC.
func Hour(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) }

// Writer is a live store that keeps usage counts: it adds rows to what it
// has (several servers add to the same counts), and drops the hours older
// than keep.
type Writer interface {
	AddUsageCounts(ctx context.Context, rows []Row, keep time.Duration) error
}

// Reader is a record store whose usage counts can be read (caddy apikey
// usage, GET /apikey/keys/{id}/usage): the rows of key id from the hour
// that holds since on, sorted by hour then by result's index in Results,
// without zero counts.
type Reader interface {
	ReadUsageCounts(id string, since time.Time) ([]Row, error)
}
