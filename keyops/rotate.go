package keyops

import (
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
)

// DefaultGrace is how long rotate leaves the old key valid when --grace is
// not given: a day, time enough for its users to pick up the new key
// without leaving a key that is meant to go in force for long.
const DefaultGrace = "24h"

// RotateOptions are the flags and argument of `caddy apikey rotate`.
type RotateOptions struct {
	Ref     string // the key to replace: id, key_prefix or id prefix
	Grace   string // how long the old key stays valid, e.g. 24h or 7d; "" for DefaultGrace
	Expires string // the new key's expiry, as for add; "" for never
	// Format is the new key's format (--key-format); nil for the default
	// format, whatever the old key's.
	Format *keyformat.Format
}

// Rotation is what a Rotation did: the new raw key, the new record, the old
// one as it was, and what became of it.
type Rotation struct {
	Raw          string        // the new key, to show once
	Added, Old   keyset.Record // the new key's record; the old one's as it was
	OldNote      string        // what became of the old key, for people
	OldExpiresAt *string       // the old key's expires_at after the rotation
	OldRevokedAt *string       // its revoked_at after the rotation
}

// Rotate replaces the key that opts.Ref names with a new one (see
// rotateKey).
func Rotate(st stores.RecordStore, opts RotateOptions, now time.Time, waiting func()) (Rotation, error) {
	var r Rotation
	if strings.TrimSpace(opts.Grace) == "" {
		opts.Grace = DefaultGrace
	}
	grace, err := parseGrace(opts.Grace)
	if err != nil {
		return r, err
	}
	expiresAt, err := expiryFlag(opts.Expires, now)
	if err != nil {
		return r, err
	}
	raw, keyPrefix, err := NewKey(opts.Format)
	if err != nil {
		return r, err
	}
	r.Raw = raw
	// Not alone: a Rotation checks that no other record replaces the key.
	audited := func() []audit.Entry {
		c := map[string]any{"old_id": r.Old.ID, "new_id": r.Added.ID, "new_key_prefix": r.Added.KeyPrefix}
		if r.OldExpiresAt != nil {
			c["expires_at"] = *r.OldExpiresAt
		}
		if r.OldRevokedAt != nil {
			c["revoked_at"] = *r.OldRevokedAt
		}
		if r.Added.ExpiresAt != nil {
			c["new_expires_at"] = *r.Added.ExpiresAt
		}
		return []audit.Entry{entry(audit.Rotate, &r.Old, now, c)}
	}
	err = editNamed(st, opts.Ref, "rotate", false, waiting, audited, func(doc *keyfile.Doc, i int) error {
		rec := &doc.Records[i]
		r.Old = rec.Record
		k, _, err := keyset.FromRecord(&rec.Record)
		if err != nil {
			return err // cannot happen: the file was checked whole
		}
		who := fmt.Sprintf("key %s %q (%s)", Printable(rec.ID), Printable(rec.Label), Printable(rec.KeyPrefix))
		switch k.State(now) {
		case keyset.Revoked:
			return &RefError{Code: "KEY_NOT_ACTIVE", Msg: fmt.Sprintf("%s was revoked at %s; only an active key can be rotated (make a new one with caddy apikey add)", who, Printable(*rec.RevokedAt))}
		case keyset.Expired:
			return &RefError{Code: "KEY_NOT_ACTIVE", Msg: fmt.Sprintf("%s expired at %s; only an active key can be rotated (make a new one with caddy apikey add)", who, Printable(*rec.ExpiresAt))}
		}
		// A second Rotation of one key would leave two replacements in
		// force: the one to rotate now is the replacement.
		if j := slices.IndexFunc(doc.Records, func(r keyfile.Record) bool { return r.RotatedFrom != nil && *r.RotatedFrom == rec.ID }); j >= 0 {
			next := &doc.Records[j]
			return &RefError{Code: "ALREADY_ROTATED", Msg: fmt.Sprintf("%s was already rotated: key %s (%s) replaces it; rotate that one instead, or revoke the old one to end its grace", who, Printable(next.ID), Printable(next.KeyPrefix))}
		}
		oldID := strings.Clone(rec.ID)
		next, err := newRecord(doc, r.Raw, keyPrefix, keyset.Record{Label: rec.Label, Scopes: slices.Clone(rec.Scopes), ExpiresAt: keyset.Timestamp(expiresAt), RotatedFrom: &oldID, RateLimits: slices.Clone(rec.RateLimits), Quota: cloneQuota(rec.Quota)}, now)
		if err != nil {
			return err
		}
		r.Added = next.Record
		// The members this plugin does not know, as they are, in their
		// order, after the known ones.
		next.AddMembers(rec.UnknownMembers()...)

		// The old key: revoked now, or valid until the grace ends but
		// never longer than it was.
		switch end := now.Add(grace); {
		case grace == 0:
			if err := rec.Set("revoked_at", *r.Added.CreatedAt); err != nil {
				return err
			}
			r.OldNote = "revoked at " + *r.Added.CreatedAt
		case expiresBefore(k, keyset.UnixNanoClamped(end)):
			r.OldNote = fmt.Sprintf("still expires at %s, before the %s grace ends", Printable(*rec.ExpiresAt), strings.TrimSpace(opts.Grace))
		default:
			until := keyset.FormatTimestamp(end)
			if err := rec.Set("expires_at", until); err != nil {
				return err
			}
			r.OldNote = fmt.Sprintf("expires at %s (%s grace)", until, strings.TrimSpace(opts.Grace))
		}
		r.OldExpiresAt, r.OldRevokedAt = rec.ExpiresAt, rec.RevokedAt
		// Last: appending may move the records, and rec with them.
		doc.Records = append(doc.Records, next)
		return nil
	})
	return r, err
}

// parseGrace reads --grace: a duration (24h, 30m, 7d), 0 for none.
func parseGrace(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	d, err := caddy.ParseDuration(s)
	switch {
	case err != nil:
		return 0, InputError(fmt.Sprintf("--grace %q: want a duration such as 24h, 30m or 7d, or 0 to revoke the old key at once", s))
	case d < 0:
		return 0, InputError(fmt.Sprintf("--grace %s: the duration must not be negative; 0 revokes the old key at once", s))
	}
	return d, nil
}

// expiresBefore reports whether key k expires at or before t (unix
// nanoseconds).
func expiresBefore(k *keyset.Key, t int64) bool {
	at, ok := k.ExpiresAt()
	return ok && at <= t
}

// cloneQuota is a copy of a record's quota, for a rotated key's record.
func cloneQuota(q *keyset.QuotaSpec) *keyset.QuotaSpec {
	if q == nil {
		return nil
	}
	c := *q
	return &c
}
