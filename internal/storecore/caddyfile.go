package storecore

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// ParseIntervalArg reads the one argument of an interval subdirective: a
// positive duration, or "off" (stored as a negative duration).
func ParseIntervalArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
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
