package file

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
)

// UnmarshalCaddyfile sets up the file store from Caddyfile tokens, as
// apikey's `store file` reads it (the key file argument and keys_file are
// its shorthands):
//
//	store file [<path>] {
//	    path            <path>
//	    usage_interval  <duration> | off
//	    reload_interval <duration> | off
//	}
func (f *Store) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store's name
	if d.NextArg() {
		f.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "path":
			if f.Path != "" {
				return d.Err("the key file's path is already given")
			}
			if !d.AllArgs(&f.Path) {
				return d.ArgErr()
			}
		case "usage_interval", "reload_interval":
			name := d.Val()
			dur, err := storecore.ParseIntervalArg(d)
			if err != nil {
				return err
			}
			if name == "usage_interval" {
				f.UsageInterval = dur
			} else {
				f.ReloadInterval = dur
			}
		default:
			return d.Errf("unrecognized file store option '%s' (known: path, usage_interval, reload_interval)", d.Val())
		}
	}
	if f.Path == "" {
		return d.Err("the key file's path is required: store file <path>")
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Store)(nil)
