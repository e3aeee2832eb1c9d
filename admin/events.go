package admin

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// The events the admin API emits through Caddy's events app (when one is
// configured) once a change is made, with the key's id, label and
// key_prefix, the store's name, and who asked: the request's remote
// address and, when Caddy's remote admin authenticated it by a client
// certificate, the certificate's subject.
// Changes made by `caddy apikey` run outside Caddy and emit none.
const (
	EventCreated = "apikey_created"
	EventRevoked = "apikey_revoked"
	// EventRotated's key is the new one; old_id and old_key_prefix name
	// the one it replaces.
	EventRotated = "apikey_rotated"
)

// useEvents notes the config's context, whose events app (if configured)
// gets the events.
func (a *API) useEvents(ctx caddy.Context) {
	a.emit = func(name string, data map[string]any) {
		app, err := ctx.AppIfConfigured("events")
		if err != nil {
			return // no events app: nothing subscribes
		}
		if events, ok := app.(*caddyevents.App); ok && storecore.EventsRunning(events) {
			events.Emit(ctx, name, data)
		}
	}
}

// event emits name about rec, changed in st at the request r, with more
// data.
func (a *API) event(name string, st stores.Live, rec keyset.Record, r *http.Request, more map[string]any) {
	if a.emit == nil {
		return
	}
	data := map[string]any{"id": rec.ID, "label": rec.Label, "key_prefix": rec.KeyPrefix, "store": st.Name(), "remote_addr": r.RemoteAddr}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		// Caddy's remote admin authenticates by client certificate.
		data["identity"] = r.TLS.PeerCertificates[0].Subject.String()
	}
	for k, v := range more {
		data[k] = v
	}
	a.emit(name, data)
}
