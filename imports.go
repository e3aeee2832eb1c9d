package apikey

// The modules that a Caddy build gets with this plugin, beside the handler
// and its stores (which module.go imports): the admin API's routes and the
// `caddy apikey` commands.
import (
	_ "github.com/caddy-apikey/caddy-apikey/admin"
)
