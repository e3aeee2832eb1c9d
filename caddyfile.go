package apikey

import (
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterDirective("apikey", parseCaddyfile)
	// Authentication comes before everything it protects, and beside
	// Caddy's own basic_auth.
	httpcaddyfile.RegisterDirectiveOrder("apikey", httpcaddyfile.Before, "basic_auth")
}

// parseCaddyfile reads the apikey directive. Like Caddy's root directive,
// it does not let the matcher syntax swallow a lone absolute path: a single
// argument is the key file, unless it is a named matcher (@name), the
// wildcard matcher (*) or the block gives keys_file; two arguments are a
// matcher and the key file.
func parseCaddyfile(h httpcaddyfile.Helper) ([]httpcaddyfile.ConfigValue, error) {
	if !h.Next() {
		return nil, h.ArgErr()
	}
	args := h.RemainingArgs() // the arguments on the directive's own line
	h.Reset()
	h.Next()
	seg := h.NextSegment()
	h.Reset()
	h.Next()
	hasMatcher := false
	switch len(args) {
	case 1:
		hasMatcher = strings.HasPrefix(args[0], "@") || args[0] == "*" || blockHas(seg, "keys_file") || blockHas(seg, "redis")
	case 2:
		hasMatcher = true
	}
	var matcherSet caddy.ModuleMap
	if hasMatcher {
		var err error
		if matcherSet, err = h.ExtractMatcherSet(); err != nil {
			return nil, err
		}
	}
	h.Reset()
	var handler Handler
	if err := handler.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return h.NewRoute(matcherSet, &handler), nil
}

// blockHas reports whether the directive's block has subdirective name.
func blockHas(seg caddyfile.Segment, name string) bool {
	depth := 0
	for i, tok := range seg {
		switch tok.Text {
		case "{":
			depth++
		case "}":
			depth--
		case name:
			// Only a line's first token is a subdirective; `header
			// keys_file` is an argument.
			if depth == 1 && tok.Line != seg[i-1].Line {
				return true
			}
		}
	}
	return false
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	apikey [<matcher>] [<keys_file>] {
//	    keys_file       <path>
//	    redis           <url> {
//	        prefix      <prefix>
//	        cache_file  <path>
//	    }
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
// The key file may be given inline or with keys_file, not both; redis
// takes the keys from a Redis key set instead (see RedisStore), and then
// reload_interval does not apply. `header` may
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

	var redis *RedisStore
	for d.NextBlock(0) {
		switch d.Val() {
		case "redis":
			if redis != nil {
				return d.Err("redis already given")
			}
			redis = new(RedisStore)
			if !d.NextArg() {
				return d.ArgErr()
			}
			redis.URL = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			for d.NextBlock(1) {
				switch d.Val() {
				case "prefix":
					if !d.AllArgs(&redis.Prefix) {
						return d.ArgErr()
					}
				case "cache_file":
					if !d.AllArgs(&redis.CacheFile) {
						return d.ArgErr()
					}
				default:
					return d.Errf("unrecognized redis option '%s'", d.Val())
				}
			}

		case "keys_file":
			if h.KeysFile != "" {
				return d.Err("key file already given")
			}
			if !d.AllArgs(&h.KeysFile) {
				return d.ArgErr()
			}

		case "header":
			if n := d.CountRemainingArgs(); n < 1 || n > 2 {
				return d.ArgErr()
			}
			src := HeaderSource{}
			d.Args(&src.Name, &src.Scheme)
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

	switch {
	case redis != nil && h.KeysFile != "":
		return d.Err("give a key file or redis, not both")
	case redis != nil && h.ReloadInterval != 0:
		return d.Err("reload_interval applies to a key file; a Redis key set is followed as it changes")
	case redis != nil:
		redis.UsageInterval, h.UsageInterval = h.UsageInterval, 0
		h.StoreRaw = caddyconfig.JSONModuleObject(redis, "backend", "redis", nil)
	case h.KeysFile == "":
		return d.Err("a key file is required: apikey <keys_file> or keys_file <path> in the block; or redis <url> for a Redis key set")
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
