package apikey

import "github.com/caddy-apikey/caddy-apikey/internal/keyevents"

// The events the handler emits through Caddy's events app (when one is
// configured: a subscription of another module, such as an exec or a
// webhook handler). Each carries the key's id, label and key_prefix and
// the store's name; never the key or its hash. The admin API emits
// apikey_created, apikey_revoked and apikey_rotated (package admin).
const (
	// EventExpiring: a key expires within expiry_notice (7 days by
	// default), emitted once per key by each server while it runs; the
	// data has expires_at.
	EventExpiring = keyevents.Expiring
	// EventRateLimited: a key was refused for its rate limit for the first
	// time in a window of the limit that refused it, once per key per
	// window; the data has the limit ("100/1m") and retry_after (seconds).
	EventRateLimited = keyevents.RateLimited
)

// DefaultExpiryNotice is how long before a key's expiry apikey_expiring
// is emitted, when expiry_notice is not given.
const DefaultExpiryNotice = keyevents.DefaultNotice
