package storecore

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
)

// EventsRunning reports whether events is the events app of the config
// that runs, rather than of one being loaded, whose app takes its
// subscriptions as it starts: an event is emitted only into a running app.
func EventsRunning(events *caddyevents.App) bool {
	active := caddy.ActiveContext()
	if active.Context == nil {
		return false
	}
	app, err := active.AppIfConfigured("events")
	return err == nil && app == any(events)
}
