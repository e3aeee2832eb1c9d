package keyops

import (
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// entry is the audit entry of action on the key rec at now, with what
// changed. Its who is the edit's (stores.Edit.Who).
func entry(action string, rec *keyset.Record, now time.Time, changes map[string]any) audit.Entry {
	return audit.Entry{
		Time:      now.UTC().Format(time.RFC3339Nano),
		Action:    action,
		KeyID:     rec.ID,
		Label:     rec.Label,
		KeyPrefix: rec.KeyPrefix,
		Changes:   changes,
	}
}

// createdChanges is what a new key's record holds, for its audit entry:
// its members but the hash (and the key_prefix and label, in the entry
// already).
func createdChanges(rec *keyset.Record) map[string]any {
	c := map[string]any{"created_at": deref(rec.CreatedAt)}
	if len(rec.Scopes) > 0 {
		c["scopes"] = rec.Scopes
	}
	if rec.ExpiresAt != nil {
		c["expires_at"] = *rec.ExpiresAt
	}
	if rec.RevokedAt != nil {
		c["revoked_at"] = *rec.RevokedAt
	}
	if rec.RotatedFrom != nil {
		c["rotated_from"] = *rec.RotatedFrom
	}
	if rec.RateLimits != nil {
		c["rate_limits"] = rec.RateLimits
	}
	if rec.Quota != nil {
		c["quota"] = rec.Quota
	}
	return c
}

func deref(s *string) any {
	if s == nil {
		return nil
	}
	return *s
}
