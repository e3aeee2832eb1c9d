package apikey

import (
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
)

// The events the handler emits through Caddy's events app (when one is
// configured: a subscription of another module, such as an exec or a
// webhook handler). Each carries the key's id, label and key_prefix and
// the store's name; never the key or its hash. The admin API emits
// apikey_created, apikey_revoked and apikey_rotated (package admin).
const (
	// EventExpiring: a key expires within expiry_notice (7 days by
	// default), emitted once per key by each server while it runs; the
	// data has expires_at.
	EventExpiring = "apikey_expiring"
	// EventRateLimited: a key was refused for its rate limit for the first
	// time in a window of the limit that refused it, once per key per
	// window; the data has the limit ("100/1m") and retry_after (seconds).
	EventRateLimited = "apikey_rate_limited"
)

// DefaultExpiryNotice is how long before a key's expiry apikey_expiring
// is emitted, when expiry_notice is not given.
const DefaultExpiryNotice = 7 * 24 * time.Hour

// keyEvents emits the events about the keys of one key set; the handlers
// of the key set share it (storeShared).
type keyEvents struct {
	store string
	keys  func() *keyset.KeySet

	mu        sync.Mutex
	emitter   func(name string, data map[string]any) bool // the newest config's events app; nil: none
	before    time.Duration                               // expiry notice; negative: off
	announced map[string]bool                             // ids whose apikey_expiring was emitted
	refused   map[string]refusedIn                        // ids: the window of the last apikey_rate_limited
}

// refusedIn is a window of one limit: its index and length.
type refusedIn struct{ index, length int64 }

func newKeyEvents(store string, keys func() *keyset.KeySet) *keyEvents {
	return &keyEvents{store: store, keys: keys, before: DefaultExpiryNotice,
		announced: make(map[string]bool), refused: make(map[string]refusedIn)}
}

// use makes the events app of ctx's config (if one is configured) the one
// events go to, notice the expiry notice and keys the key set looked at:
// the newest config's handler has the last word.
func (e *keyEvents) use(ctx caddy.Context, notice caddy.Duration, keys func() *keyset.KeySet) {
	var emit func(string, map[string]any) bool
	if ctx.Context != nil {
		if app, err := ctx.AppIfConfigured("events"); err == nil {
			if events, ok := app.(*caddyevents.App); ok {
				emit = func(name string, data map[string]any) bool {
					// Not before the config runs: its events app
					// takes its subscriptions as it starts.
					if !storecore.EventsRunning(events) {
						return false
					}
					events.Emit(ctx, name, data)
					return true
				}
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.emitter, e.keys = emit, keys
	switch {
	case notice == 0:
		e.before = DefaultExpiryNotice
	default:
		e.before = time.Duration(notice)
	}
}

// emit sends an event about key, with more data, and reports whether it
// could: not while the config whose events app gets it is not running yet.
// The events app runs its handlers in the caller: the request path emits
// in the background (emitLater).
func (e *keyEvents) emit(name string, key *keyset.Key, more map[string]any) bool {
	e.mu.Lock()
	emit := e.emitter
	e.mu.Unlock()
	if emit == nil {
		return false
	}
	data := map[string]any{"id": key.ID, "label": key.Label, "key_prefix": key.Prefix, "store": e.store}
	for k, v := range more {
		data[k] = v
	}
	return emit(name, data)
}

// emitLater is emit in the background, for the request path.
func (e *keyEvents) emitLater(name string, key *keyset.Key, more map[string]any) {
	go e.emit(name, key, more)
}

// rateLimited emits apikey_rate_limited for key, refused by d at now,
// unless it was emitted already in this window of the refusing limit.
func (e *keyEvents) rateLimited(key *keyset.Key, d ratelimit.Decision, now int64) {
	length := int64(d.Limit.Window)
	if length <= 0 {
		return
	}
	w := refusedIn{index: now / length, length: length}
	e.mu.Lock()
	if e.refused[key.ID] == w {
		e.mu.Unlock()
		return
	}
	if len(e.refused) >= 10_000 { // forget the windows that are over
		for id, r := range e.refused {
			if (r.index+1)*r.length <= now {
				delete(e.refused, id)
			}
		}
	}
	e.refused[key.ID] = w
	e.mu.Unlock()
	e.emitLater(EventRateLimited, key, map[string]any{"limit": d.Limit.String(), "retry_after": d.RetryAfterSeconds()})
}

// announceExpiring emits apikey_expiring for each key of the key set in
// force that is not revoked and expires within the notice from now, once
// per key. It reports false if it could not look: the config is not
// running yet.
func (e *keyEvents) announceExpiring(now time.Time) bool {
	e.mu.Lock()
	before, on, keys := e.before, e.emitter != nil, e.keys
	e.mu.Unlock()
	ks := keys()
	if before < 0 || !on || ks == nil {
		return true // nothing to say
	}
	from, until := now.UnixNano(), now.Add(before).UnixNano()
	var due []*keyset.Key
	ks.Each(func(_ [32]byte, k *keyset.Key) {
		at, expires := k.ExpiresAt()
		if expires && at > from && at <= until && !k.Revoked() {
			due = append(due, k)
		}
	})
	for _, k := range due {
		e.mu.Lock()
		seen := e.announced[k.ID]
		e.mu.Unlock()
		if seen {
			continue
		}
		at, _ := k.ExpiresAt()
		if !e.emit(EventExpiring, k, map[string]any{"expires_at": time.Unix(0, at).UTC().Format(time.RFC3339), "expires_in": strconv.FormatInt(int64(time.Until(time.Unix(0, at)).Round(time.Second)/time.Second), 10) + "s"}) {
			return false
		}
		e.mu.Lock()
		e.announced[k.ID] = true
		e.mu.Unlock()
	}
	return true
}
