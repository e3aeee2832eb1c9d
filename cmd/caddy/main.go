// Command caddy is Caddy with its standard modules and the apikey plugin,
// as xcaddy builds it from a clone of this repository:
//
//	xcaddy build v2.11.9 --with github.com/caddy-apikey/caddy-apikey@v0.0.0=.
//
// Build it at the repository's root with `go build -o caddy ./cmd/caddy`.
// (The short `xcaddy build --with github.com/caddy-apikey/caddy-apikey`
// works only once a tagged release of the module is published.)
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-apikey/caddy-apikey"
)

func main() {
	caddycmd.Main()
}
