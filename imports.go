package apikey

// The modules and commands that a Caddy build gets with this plugin, beside
// the handler and its stores (which module.go and caddyfile.go import): the
// admin API's routes and the `caddy apikey` commands.
import (
	_ "github.com/caddy-apikey/caddy-apikey/admin"
	_ "github.com/caddy-apikey/caddy-apikey/cli"
)
