// Package keyevents emits the apikey handler's events about keys through
// Caddy's events app (when one is configured: a subscription of another
// module, such as an exec or a webhook handler): apikey_expiring, before a
// key expires, and apikey_rate_limited, when a key is refused for its rate
// limit. Each carries the key's id, label and key_prefix and the store's
// name; never the key or its hash. The handlers of one key set share one
// Events.
package keyevents

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

// The events' names (the apikey package names them too).
const (
	// Expiring: a key expires within the expiry notice (DefaultNotice by
	// default), emitted once per key by each server while it runs; the
	// data has expires_at and expires_in.
	Expiring = "apikey_expiring"
	// RateLimited: a key was refused for its rate limit for the first
	// time in a window of the limit that refused it, once per key per
	// window; the data has the limit ("100/1m") and retry_after (seconds).
	RateLimited = "apikey_rate_limited"
)

// DefaultNotice is how long before a key's expiry Expiring is emitted,
// when no expiry notice is given.
const DefaultNotice = 7 * 24 * time.Hour

// Events emits the events about the keys of one key set, named store in
// them; the handlers of the key set share it.
type Events struct {
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

// New returns the events of the key set of store, keys its key set in
// force, with the default notice and no events app until Use.
func New(store string, keys func() *keyset.KeySet) *Events {
	return &Events{store: store, keys: keys, before: DefaultNotice,
		announced: make(map[string]bool), refused: make(map[string]refusedIn)}
}

// Use makes the events app of ctx's config (if one is configured) the one
// events go to, notice the expiry notice and keys the key set looked at:
// the newest config's handler has the last word.
func (e *Events) Use(ctx caddy.Context, notice caddy.Duration, keys func() *keyset.KeySet) {
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
		e.before = DefaultNotice
	default:
		e.before = time.Duration(notice)
	}
}

// emit sends an event about key, with more data, and reports whether it
// could: not while the config whose events app gets it is not running yet.
// The events app runs its handlers in the caller: the request path emits
// in the background (emitLater).
func (e *Events) emit(name string, key *keyset.Key, more map[string]any) bool {
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
func (e *Events) emitLater(name string, key *keyset.Key, more map[string]any) {
	go e.emit(name, key, more)
}

// RateLimited emits apikey_rate_limited for key, refused by d at now,
// unless it was emitted already in this window of the refusing limit.
func (e *Events) RateLimited(key *keyset.Key, d ratelimit.Decision, now int64) {
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
	e.emitLater(RateLimited, key, map[string]any{"limit": d.Limit.String(), "retry_after": d.RetryAfterSeconds()})
}

// AnnounceExpiring emits apikey_expiring for each key of the key set in
// force that is not revoked and expires within the notice from now, once
// per key. It reports false if it could not look: the config is not
// running yet.
func (e *Events) AnnounceExpiring(now time.Time) bool {
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
		if !e.emit(Expiring, k, map[string]any{"expires_at": time.Unix(0, at).UTC().Format(time.RFC3339), "expires_in": strconv.FormatInt(int64(time.Until(time.Unix(0, at)).Round(time.Second)/time.Second), 10) + "s"}) {
			return false
		}
		e.mu.Lock()
		e.announced[k.ID] = true
		e.mu.Unlock()
	}
	return true
}
