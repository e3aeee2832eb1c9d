package keyops

import (
	"time"

	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// Listed is one key as `caddy apikey list --json` prints it: the record
// without its hash, plus its status. rotated_from is null but for a key
// that rotate made.
type Listed struct {
	ID          string   `json:"id"`
	Label       string   `json:"label"`
	KeyPrefix   string   `json:"key_prefix"`
	CreatedAt   *string  `json:"created_at"`
	LastUsedAt  *string  `json:"last_used_at"`
	ExpiresAt   *string  `json:"expires_at"`
	RevokedAt   *string  `json:"revoked_at"`
	Scopes      []string `json:"scopes"`
	RotatedFrom *string  `json:"rotated_from"`
	Status      string   `json:"status"`
	// RateLimits are the key's own rate limits, as its record holds
	// them: absent when it has none of its own (the handler's defaults
	// apply), [] when it has none at all.
	RateLimits []keyset.RateLimit `json:"rate_limits,omitzero"`
	// Quota is the key's quota, as its record holds it: absent when it
	// has none (it is not metered).
	Quota *keyset.QuotaSpec `json:"quota,omitempty"`
	// QuotaState is the key's quota state in the period that holds now,
	// when it has a quota and the store keeps quota state; absent
	// otherwise. If that state cannot be read, QuotaStateError says why.
	QuotaState      *QuotaState `json:"quota_state,omitempty"`
	QuotaStateError string      `json:"quota_state_error,omitempty"`
}

// List returns the store's records as list --json and the admin API
// show them: without hashes, with their status, and the quota state of
// those with a quota if the store keeps it (see AddQuotaStates: st must
// be the store itself to be seen as a stores.QuotaStore).
func List(st stores.RecordStore, now time.Time) ([]Listed, error) {
	records, ks, err := st.Read()
	if err != nil {
		return nil, err
	}
	out := make([]Listed, len(records))
	for i := range records {
		out[i] = NewListed(&records[i].Record, ks.At(i), now)
	}
	AddQuotaStates(st, out, now)
	return out, nil
}

// NewListed is rec, whose key is k, as list --json shows it.
func NewListed(rec *keyset.Record, k *keyset.Key, now time.Time) Listed {
	l := Listed{
		ID: rec.ID, Label: rec.Label, KeyPrefix: rec.KeyPrefix,
		CreatedAt: rec.CreatedAt, LastUsedAt: rec.LastUsedAt,
		ExpiresAt: rec.ExpiresAt, RevokedAt: rec.RevokedAt,
		Scopes: rec.Scopes, RotatedFrom: rec.RotatedFrom, Status: k.State(now).String(),
		RateLimits: rec.RateLimits, Quota: rec.Quota,
	}
	if l.Scopes == nil {
		l.Scopes = []string{}
	}
	return l
}

// ListOne is rec as List shows it at now, its quota state read from st
// (see AddQuotaStates).
func ListOne(st stores.RecordStore, rec keyset.Record, now time.Time) Listed {
	k, _, _ := keyset.FromRecord(&rec) // cannot fail: the store's records are checked
	l := []Listed{NewListed(&rec, k, now)}
	AddQuotaStates(st, l, now)
	return l[0]
}

// Show returns the one key that ref names (its id, its key_prefix, or
// the start of its id) as List shows it.
func Show(st stores.RecordStore, ref string, now time.Time) (Listed, error) {
	rec, err := findOne(st, ref, "show")
	if err != nil {
		return Listed{}, err
	}
	return ListOne(st, rec, now), nil
}
