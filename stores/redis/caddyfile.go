package redis

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
)

// UnmarshalCaddyfile sets up the Redis store from Caddyfile tokens, as
// apikey's `redis` subdirective (the shorthand) and `store redis` read it:
//
//	redis <url> {
//	    prefix         <prefix>
//	    cache_file     <path>
//	    usage_interval <duration> | off
//	}
func (r *Store) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store's name
	if !d.NextArg() {
		return d.ArgErr()
	}
	r.URL = d.Val()
	// Checked here too, to name the file and line; a URL that starts
	// with a placeholder is checked once replaced.
	if err := checkScheme(r.URL, "redis %s"); err != nil {
		return d.WrapErr(err)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "prefix":
			if !d.AllArgs(&r.Prefix) {
				return d.ArgErr()
			}
		case "cache_file":
			if !d.AllArgs(&r.CacheFile) {
				return d.ArgErr()
			}
		case "usage_interval":
			dur, err := storecore.ParseIntervalArg(d)
			if err != nil {
				return err
			}
			r.UsageInterval = dur
		default:
			return d.WrapErr(storecore.UnknownOption(d.Val(), "redis option", Options, storecore.HandlerSubdirectives,
				"goes in apikey's block, not in the redis block"))
		}
	}
	return nil
}

// Options are the subdirectives of the redis block.
var Options = []string{"prefix", "cache_file", "usage_interval"}

// Interface guard
var _ caddyfile.Unmarshaler = (*Store)(nil)
