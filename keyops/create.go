package keyops

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddyserver/caddy/v2"
	"github.com/google/uuid"
)

// AddOptions are the flags of `caddy apikey add`.
type AddOptions struct {
	Label   string
	Expires string   // a duration from now or a time; "" for never
	Scopes  []string // may hold comma-separated lists
	// Format is the new key's format (--key-format); nil for the default
	// format (GenerateKey's).
	Format *keyformat.Format
	// RateLimits are the key's own rate limits (--rate); nil for none of
	// its own (the handler's defaults apply).
	RateLimits []keyset.RateLimit
	// Quota is the key's quota (--quota); nil for none (not metered).
	Quota *keyset.QuotaSpec
}

// Create makes a new key as opts say and adds its record to the store;
// it returns the raw key and the record. waiting, if not nil, is called if
// the store's lock is held by another writer.
func Create(st stores.RecordStore, opts AddOptions, now time.Time, waiting func()) (string, keyset.Record, error) {
	label := strings.TrimSpace(opts.Label)
	if label == "" {
		return "", keyset.Record{}, InputError("a label is required (--label): name who or what will use the key")
	}
	expiresAt, err := expiryFlag(opts.Expires, now)
	if err != nil {
		return "", keyset.Record{}, err
	}
	scopes, err := normalizeScopes(opts.Scopes)
	if err != nil {
		return "", keyset.Record{}, err
	}
	if _, err := keyset.ParseRateLimits(opts.RateLimits); err != nil {
		return "", keyset.Record{}, InputError(err.Error())
	}
	if _, _, err := keyset.ParseQuota(opts.Quota); err != nil {
		return "", keyset.Record{}, InputError(err.Error())
	}
	raw, keyPrefix, err := NewKey(opts.Format)
	if err != nil {
		return "", keyset.Record{}, err
	}
	var added keyset.Record
	err = st.Edit(stores.Edit{Create: true, OnlyAdds: true, Waiting: waiting, Audit: func() []audit.Entry {
		return []audit.Entry{entry(audit.Create, &added, now, createdChanges(&added))}
	}, Change: func(doc *keyfile.Doc) error {
		r, err := newRecord(doc, raw, keyPrefix, keyset.Record{Label: label, Scopes: scopes, ExpiresAt: keyset.Timestamp(expiresAt), RateLimits: opts.RateLimits, Quota: opts.Quota}, now)
		if err != nil {
			return err
		}
		added = r.Record
		doc.Records = append(doc.Records, r)
		return nil
	}})
	if err != nil {
		return "", keyset.Record{}, err
	}
	return raw, added, nil
}

// newRecord makes the record of the new key raw, whose key_prefix is
// keyPrefix, from rec (its label, scopes, expiry, rotated_from): an id that
// no record of doc has yet (doc is the file as it is now, under the lock: a
// collision is next to impossible, but a duplicate id would make the whole
// file unloadable), the key's hash and prefix, and created_at now. The members come in the reference
// application's order, then the optional ones only when they are given.
func newRecord(doc *keyfile.Doc, raw, keyPrefix string, rec keyset.Record, now time.Time) (keyfile.Record, error) {
	rec.ID = uuid.NewString()
	for slices.ContainsFunc(doc.Records, func(r keyfile.Record) bool { return r.ID == rec.ID }) {
		rec.ID = uuid.NewString()
	}
	rec.KeyHash, rec.KeyPrefix, rec.CreatedAt = keyset.HashKey(raw), keyPrefix, keyset.Timestamp(&now)
	return keyfile.NewRecord(rec)
}

// NewKey returns a new raw key in format f and its key_prefix: for nil, the
// default format's key (GenerateKey) and its first 11 characters ("sk_" and
// 8), as the reference application shows them; for a format, its key and
// its prefix with the first keyformat.ShownLen random characters.
func NewKey(f *keyformat.Format) (raw, keyPrefix string, err error) {
	if f == nil {
		raw, err = GenerateKey()
		if err != nil {
			return "", "", err
		}
		return raw, raw[:11], nil
	}
	if raw, err = f.Generate(); err != nil {
		return "", "", err
	}
	return raw, f.KeyPrefix(raw), nil
}

// GenerateKey returns a new raw key: "sk_" and 32 random bytes in URL-safe
// base64 without padding (43 characters), as the reference application's
// secrets.token_urlsafe(32) makes them.
func GenerateKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating key: %w", err)
	}
	return "sk_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// expiryFlag reads an optional --expires: nil when it is not given.
func expiryFlag(s string, now time.Time) (*time.Time, error) {
	if s == "" {
		return nil, nil
	}
	t, err := parseExpiry(s, now)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// parseExpiry reads --expires: a duration from now (90d, 12h, 30m or any Go
// duration) or a time (RFC 3339, or ISO 8601 as the key file holds them, or
// a date). The result must lie in the future.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := keyset.ParseTimestamp(s); err == nil {
		if !t.After(now) {
			return time.Time{}, InputError(fmt.Sprintf("--expires %s is in the past; give a future time or a duration such as 90d", s))
		}
		return t, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil {
		return time.Time{}, InputError(fmt.Sprintf("--expires %q: want a duration from now such as 90d, 12h or 30m, or a time such as 2027-01-31T00:00:00Z", s))
	}
	if d <= 0 {
		return time.Time{}, InputError(fmt.Sprintf("--expires %s: the duration must be positive", s))
	}
	return now.Add(d), nil
}

// normalizeScopes splits comma-separated scopes, drops duplicates and checks
// each scope as the key file loader does.
func normalizeScopes(in []string) ([]string, error) {
	var out []string
	for _, arg := range in {
		for s := range strings.SplitSeq(arg, ",") {
			s = strings.TrimSpace(s)
			if err := keyset.CheckScope(s); err != nil {
				return nil, InputError(fmt.Sprintf("--scope %q: %v", arg, err))
			}
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out, nil
}
