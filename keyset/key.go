package keyset

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// Key is the in-memory form of one usable record: what the request path
// needs and nothing more, so that a million keys stay small.
type Key struct {
	ID     string
	Label  string
	Prefix string
	Scopes []string

	scopesJoined string
	// limits are the record's own rate limits, shared by the copies of
	// the key and never changed: nil when the record has none of its own
	// (the handler's defaults apply), noLimits when it says none.
	limits    *ownLimits
	quota     quota.Quota // the record's quota, if hasQuota
	hasQuota  bool
	expiresAt int64 // unix nanoseconds, clamped to int64 (see UnixNanoClamped)
	revokedAt int64 // unix nanoseconds, clamped, when revoked
	createdAt int64 // unix nanoseconds, clamped: for a store's snapshot of the key set, which a restore reads
	expires   bool  // the key has an expires_at
	revoked   bool  // the key has a revoked_at
	created   bool  // the key has a created_at that reads as a time

	// usage is created on first use, so keys that are never used cost
	// nothing, and is carried over to the next key set when the store is
	// reloaded.
	usage atomic.Pointer[usageCell]
	// counts, the key's request counts by result, likewise.
	counts atomic.Pointer[countCell]
	// meter is the key's quota holder in its store's quota meter (see
	// QuotaSlot), carried over likewise.
	meter atomic.Pointer[quota.Holder]
}

// State is a key's state at a given time, by the handler's rules.
type State uint8

// The states of a key.
const (
	Active State = iota
	Expired
	Revoked
	NumStates
)

var stateNames = [NumStates]string{"active", "expired", "revoked"}

// String is the state as the commands, the admin API and the metrics name
// it: active, expired or revoked.
func (s State) String() string { return stateNames[s] }

// State is the key's state at time now.
func (k *Key) State(now time.Time) State {
	switch {
	case k.revoked:
		return Revoked
	case k.Expired(now.UnixNano()):
		return Expired
	}
	return Active
}

// Expired reports whether the key is past its expires_at at time now
// (unix nanoseconds).
func (k *Key) Expired(now int64) bool {
	return k.expires && now >= k.expiresAt
}

// Revoked reports whether the key has been revoked.
func (k *Key) Revoked() bool { return k.revoked }

// ExpiresAt returns when the key expires (unix nanoseconds, clamped), if it
// does.
func (k *Key) ExpiresAt() (int64, bool) { return k.expiresAt, k.expires }

// CreatedAt returns when the key was made (unix nanoseconds, clamped), if
// its record says so in a form that reads as a time.
func (k *Key) CreatedAt() (int64, bool) { return k.createdAt, k.created }

// RevokedAt returns when the key was revoked (unix nanoseconds, clamped),
// if it was.
func (k *Key) RevokedAt() (int64, bool) { return k.revokedAt, k.revoked }

// ownLimits are a record's own rate limits, with their RateLimit-Policy
// header, made on the first request that needs it and kept: every
// response under the limits carries it.
type ownLimits struct {
	list   []ratelimit.Limit
	policy atomic.Pointer[string]
}

// noLimits are the limits of a key whose record says it has none.
var noLimits = &ownLimits{list: []ratelimit.Limit{}}

// RateLimits returns the key's own rate limits, parsed and checked when
// the key was made, and whether it has limits of its own: false when its
// record has no rate_limits member (or null), so the handler's defaults
// apply; true with no limits when the record says "rate_limits": [] (none
// for this key). The caller must not change the list.
func (k *Key) RateLimits() ([]ratelimit.Limit, bool) {
	if k.limits == nil {
		return nil, false
	}
	return k.limits.list, true
}

// RateLimitPolicy is the RateLimit-Policy header (ratelimit.Policy) of
// the key's own rate limits, "" when it has none of its own: made once,
// on the first call, for the key and its copies.
func (k *Key) RateLimitPolicy() string {
	own := k.limits
	if own == nil {
		return ""
	}
	if p := own.policy.Load(); p != nil {
		return *p
	}
	p := ratelimit.Policy(own.list)
	own.policy.Store(&p)
	return p
}

// Quota returns the key's quota, if its record has one.
func (k *Key) Quota() (quota.Quota, bool) { return k.quota, k.hasQuota }

// QuotaSlot is where the key keeps its holder in its store's quota meter
// (quota.Meter.SpendVia), so that a request need not look it up by id.
func (k *Key) QuotaSlot() *atomic.Pointer[quota.Holder] { return &k.meter }

// setLimits makes limits, as ParseRateLimits returns them, the key's own.
func (k *Key) setLimits(limits []ratelimit.Limit) {
	switch {
	case limits == nil:
		k.limits = nil
	case len(limits) == 0:
		k.limits = noLimits
	default:
		k.limits = &ownLimits{list: limits}
	}
}

// HasScope reports whether the key holds scope s.
func (k *Key) HasScope(s string) bool { return slices.Contains(k.Scopes, s) }

// Placeholder provides the {http.auth.user.*} placeholders of a request
// authenticated with this key. Registering one provider per request (rather
// than four replacer.Set calls) keeps the hot path to a single allocation.
func (k *Key) Placeholder(name string) (any, bool) {
	switch name {
	case "http.auth.user.id":
		return k.ID, true
	case "http.auth.user.label":
		return k.Label, true
	case "http.auth.user.key_prefix":
		return k.Prefix, true
	case "http.auth.user.scopes":
		return k.scopesJoined, true
	}
	return nil, false
}

// FromRecord checks one record's values and returns its key and the key's
// hash. The key keeps copies of the record's strings.
func FromRecord(rec *Record) (*Key, [sha256.Size]byte, error) {
	k := new(Key)
	sum, err := k.fill(rec)
	return k, sum, err
}

// fill checks one record's values and makes k its key; it returns the
// key's hash.
func (k *Key) fill(rec *Record) ([sha256.Size]byte, error) {
	// The record's strings may be views of the file's bytes (see the
	// keyfile package's unquote) or of a reused buffer: the key keeps
	// copies.
	k.ID, k.Label, k.Prefix = strings.Clone(rec.ID), strings.Clone(rec.Label), strings.Clone(rec.KeyPrefix)
	sum, err := DecodeKeyHash(rec.KeyHash)
	if err != nil {
		return sum, err
	}
	if rec.ExpiresAt != nil {
		t, err := ParseTimestamp(*rec.ExpiresAt)
		if err != nil {
			return sum, fmt.Errorf("expires_at: %v", err)
		}
		k.expires, k.expiresAt = true, UnixNanoClamped(t)
	}
	if rec.RevokedAt != nil {
		t, err := ParseTimestamp(*rec.RevokedAt)
		if err != nil {
			return sum, fmt.Errorf("revoked_at: %v", err)
		}
		k.revoked, k.revokedAt = true, UnixNanoClamped(t)
	}
	if rec.CreatedAt != nil {
		// Kept, not checked: a created_at that is no time is left out.
		if t, err := ParseTimestamp(*rec.CreatedAt); err == nil {
			k.created, k.createdAt = true, UnixNanoClamped(t)
		}
	}
	for _, s := range rec.Scopes {
		if err := CheckScope(s); err != nil {
			return sum, err
		}
	}
	limits, err := ParseRateLimits(rec.RateLimits)
	if err != nil {
		return sum, err
	}
	k.setLimits(limits)
	if k.quota, k.hasQuota, err = ParseQuota(rec.Quota); err != nil {
		return sum, err
	}
	if len(rec.Scopes) > 0 {
		// Clone: Join returns a lone scope as it is, a view.
		k.scopesJoined = strings.Clone(strings.Join(rec.Scopes, ","))
		k.Scopes = strings.Split(k.scopesJoined, ",") // copies, sharing one string
	}
	return sum, nil
}

// copyTo makes c, a zero key of another key set, a copy of k that shares
// its usage cell.
func (k *Key) copyTo(c *Key) {
	c.ID, c.Label, c.Prefix, c.Scopes = k.ID, k.Label, k.Prefix, k.Scopes
	c.scopesJoined, c.expiresAt, c.revokedAt, c.createdAt = k.scopesJoined, k.expiresAt, k.revokedAt, k.createdAt
	c.limits, c.quota, c.hasQuota = k.limits, k.quota, k.hasQuota
	c.expires, c.revoked, c.created = k.expires, k.revoked, k.created
	c.usage.Store(k.usage.Load())
	c.counts.Store(k.counts.Load())
	c.meter.Store(k.meter.Load())
}
