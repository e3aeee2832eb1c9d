package apikey

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("apikey", parseCaddyfile)
	// Authentication comes before everything it protects, and beside
	// Caddy's own basic_auth.
	httpcaddyfile.RegisterDirectiveOrder("apikey", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var handler Handler
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return &handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	apikey [<matcher>] [<keys_file>] {
//	    keys_file       <path>
//	    header          <field> [<scheme>]
//	    query           <param> | off
//	    realm           <realm>
//	    scope           <scope>...
//	    optional
//	    hide_credentials
//	    handle_errors
//	    usage_interval  <duration> | off
//	    reload_interval <duration> | off
//	}
//
// The key file may be given inline or with keys_file, not both. `header` may
// be repeated; when it is given, it replaces the default headers
// (`Authorization` with the `Bearer` scheme, then `X-API-Key`). `query off`
// reads no query parameter. `scope` may be repeated; the key must hold every
// scope listed.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	if d.NextArg() {
		h.KeysFile = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}

	for d.NextBlock(0) {
		switch d.Val() {
		case "keys_file":
			if h.KeysFile != "" {
				return d.Err("key file already given")
			}
			if !d.AllArgs(&h.KeysFile) {
				return d.ArgErr()
			}

		case "header":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			src := HeaderSource{Name: args[0]}
			if len(args) == 2 {
				src.Scheme = args[1]
			}
			h.Headers = append(h.Headers, src)

		case "query":
			var param string
			if !d.AllArgs(&param) {
				return d.ArgErr()
			}
			if h.Query != nil {
				return d.Err("query already given")
			}
			if param == "off" {
				param = ""
			}
			h.Query = &param

		case "realm":
			if h.Realm != "" {
				return d.Err("realm already given")
			}
			if !d.AllArgs(&h.Realm) {
				return d.ArgErr()
			}

		case "scope":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Scopes = append(h.Scopes, args...)

		case "optional":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.Optional = true

		case "hide_credentials":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.HideCredentials = true

		case "handle_errors":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.HandleErrors = true

		case "usage_interval":
			dur, err := parseIntervalArg(d)
			if err != nil {
				return err
			}
			h.UsageInterval = dur

		case "reload_interval":
			dur, err := parseIntervalArg(d)
			if err != nil {
				return err
			}
			h.ReloadInterval = dur

		default:
			return d.Errf("unrecognized subdirective '%s'", d.Val())
		}
	}

	if h.KeysFile == "" {
		return d.Err("a key file is required: apikey <keys_file>, or keys_file <path> in the block")
	}
	return nil
}

// parseIntervalArg reads the one argument of an interval subdirective: a
// positive duration, or "off" (stored as a negative duration).
func parseIntervalArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	var arg string
	if !d.AllArgs(&arg) {
		return 0, d.ArgErr()
	}
	if arg == "off" {
		return caddy.Duration(-1), nil
	}
	dur, err := caddy.ParseDuration(arg)
	if err != nil {
		return 0, d.Errf("%s: %v", name, err)
	}
	if dur <= 0 {
		return 0, d.Errf("%s must be a positive duration or off, got %s", name, arg)
	}
	if dur < time.Millisecond {
		return 0, d.Errf("%s %s is too short", name, arg)
	}
	return caddy.Duration(dur), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
