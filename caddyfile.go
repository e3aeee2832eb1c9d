package apikey

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	redisstore "github.com/caddy-apikey/caddy-apikey/stores/redis"
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

// parseCaddyfile reads the apikey directive: apikey [<matcher>]
// [<keys_file>] {...}. A matcher that is read where a key file was meant
// leaves every other path of the site served with no key, so the
// arguments are read as directiveArgs says, refusing what could be read
// both ways.
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
	hasMatcher, err := directiveArgs(args, blockStore(seg))
	if err != nil {
		return nil, h.WrapErr(err)
	}
	var matcherSet caddy.ModuleMap
	if hasMatcher {
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

// directiveArgs tells whether the first of the directive's arguments is a
// matcher, given which subdirective of the block gives the key store
// ("keys_file", "redis" or ""), or why the arguments are refused.
//
// Caddy reads "*", "@name" and anything starting with "/" as a matcher.
// An absolute path is both a plausible key file and a plausible path
// matcher, and read as a matcher it protects that one path only. So, like
// Caddy's root directive:
//
//   - a lone "/…" argument is the key file when the block gives no store;
//   - with a store in the block, a lone "/…" is a matcher only if it holds
//     a "*" (no key file path may); any other is refused, since it may be
//     a key file left in place when the store moved to the block;
//   - two arguments are a matcher then the key file, and the matcher must
//     look like one: "apikey keys.json /api/*" is refused, saying the
//     matcher goes first;
//   - a path matcher ending in "/" matches that path alone, not what is
//     under it, which is never what a guard on it means: refused, with the
//     pattern or the named matcher to write instead.
func directiveArgs(args []string, store string) (bool, error) {
	switch len(args) {
	case 0:
		return false, nil
	case 1:
		a := args[0]
		switch {
		case a == "*" || strings.HasPrefix(a, "@"):
			return true, nil
		case strings.HasPrefix(a, "/"):
			if strings.HasSuffix(a, "/") {
				return false, dirMatcherError(a, store == "")
			}
			if strings.Contains(a, "*") {
				if store == "" {
					return false, fmt.Errorf("%s is a path matcher and there is no key store: write apikey %s <keys_file>, or give keys_file or redis in the block", a, a)
				}
				return true, nil
			}
			if store != "" {
				return false, fmt.Errorf("apikey %s with %s in its block: %s could be a key file or a path matcher, and as a path matcher it would leave every other path of the site served with no key, so it is refused. "+
					"For the %s in the block on the whole site, drop the argument (apikey { %s … }); "+
					"to guard part of the site, write a path pattern (apikey /api/* { … }) or a named matcher (@guarded path %s, then apikey @guarded { … })",
					a, store, a, storeName(store), store, a)
			}
			return false, nil // the key file, as root's lone argument is its path
		case strings.Contains(a, "*"):
			return false, globFileError(a)
		}
		return false, nil // a relative key file
	case 2:
		m, f := args[0], args[1]
		if !isMatcherToken(m) {
			if isMatcherToken(f) {
				return false, fmt.Errorf("apikey %s %s: the matcher goes first: apikey %s %s", m, f, f, m)
			}
			return false, fmt.Errorf("apikey %s %s: two arguments are a matcher then the key file, and %s is not a matcher (a matcher is *, /path or @name); give one key file: apikey [<matcher>] <keys_file>", m, f, m)
		}
		if looksLikeMatcher(f) {
			if !looksLikeMatcher(m) {
				return false, fmt.Errorf("apikey %s %s: the matcher goes first: apikey %s %s", m, f, f, m)
			}
			return false, fmt.Errorf("apikey %s %s: two matchers; give one matcher, then the key file: apikey [<matcher>] <keys_file>", m, f)
		}
		if strings.HasPrefix(m, "/") && strings.HasSuffix(m, "/") {
			return false, dirMatcherError(m, false)
		}
		if strings.Contains(f, "*") {
			return false, globFileError(f)
		}
		return true, nil
	}
	return false, fmt.Errorf("too many arguments (%d): apikey [<matcher>] [<keys_file>]", len(args))
}

// isMatcherToken tells whether Caddy reads a as a matcher token.
func isMatcherToken(a string) bool {
	return a == "*" || strings.HasPrefix(a, "@") || strings.HasPrefix(a, "/")
}

// looksLikeMatcher tells whether a can only be a matcher: no key file is
// "*", "@name" or a path with a "*".
func looksLikeMatcher(a string) bool {
	return a == "*" || strings.HasPrefix(a, "@") || strings.HasPrefix(a, "/") && strings.Contains(a, "*")
}

// dirMatcherError refuses a path matcher ending in "/".
func dirMatcherError(a string, noStore bool) error {
	var msg string
	if a == "/" {
		msg = "the path matcher / matches the path / alone, so every other path of the site would be served with no key; " +
			"to guard the whole site give no matcher (apikey <keys_file>), or write a named matcher (@root path /) to guard / alone"
	} else {
		msg = fmt.Sprintf("the path matcher %s matches the path %s alone, not what is under it, which would be served with no key; "+
			"write %s* to guard everything under it, or a named matcher (@guarded path %s) to guard that one path", a, a, a, a)
	}
	if noStore {
		msg = a + " ends in /, so it is not a key file; and " + msg
	}
	return fmt.Errorf("%s", msg)
}

// globFileError refuses a key file argument that holds a "*".
func globFileError(a string) error {
	return fmt.Errorf("%s is not a matcher (a path matcher starts with /) and a key file path holds no *: give one key file's path", a)
}

// storeName names the store that subdirective gives.
func storeName(subdirective string) string {
	if subdirective == "redis" {
		return "Redis key set"
	}
	return "key file"
}

// blockStore returns the subdirective of the directive's block that gives
// the key store, "keys_file" or "redis", or "" if none does.
func blockStore(seg caddyfile.Segment) string {
	depth := 0
	for i, tok := range seg {
		switch tok.Text {
		case "{":
			depth++
		case "}":
			depth--
		case "keys_file", "redis", "store":
			// Only a line's first token is a subdirective; `header
			// keys_file` is an argument.
			if depth == 1 && tok.Line != seg[i-1].Line {
				return tok.Text
			}
		}
	}
	return ""
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	apikey [<matcher>] [<keys_file>] {
//	    keys_file       <path>
//	    redis           <url> {
//	        prefix      <prefix>
//	        cache_file  <path>
//	    }
//	    store           <name> ...
//	    header          <field> [<scheme>]
//	    query           <param> | off
//	    realm           <realm>
//	    scope           <scope>...
//	    optional
//	    hide_credentials
//	    handle_errors
//	    usage_interval  <duration> | off
//	    reload_interval <duration> | off
//	    key_format      <prefix>
//	    rate_limit      <requests> <window> | off
//	    rate_limit_headers off
//	    expiry_notice   <duration> | off
//	    cost            <units>
//	    quota           off
//	    quota_headers
//	    quota_outage    refuse | admit
//	    usage_retention <duration> | off
//	}
//
// The key file may be given inline or with keys_file, not both; redis
// takes the keys from a Redis key set instead (see the stores/redis package), and then
// reload_interval does not apply. `store <name> …` names any store module
// (http.handlers.apikey.stores.<name>, this plugin's or another's), which
// reads the rest of the line and its block itself: `store file <path>` and
// `store redis <url> { … }` are the long forms of the key file and redis. `header` may
// be repeated; when it is given, it replaces the default headers
// (`Authorization` with the `Bearer` scheme, then `X-API-Key`). `query off`
// reads no query parameter. `scope` may be repeated; the key must hold every
// scope listed. `key_format acme_live_` opts in to the checksummed key
// format with that prefix (see Handler.KeyFormat).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	inline := false
	if d.NextArg() {
		h.KeysFile, inline = d.Val(), true
		if strings.Contains(h.KeysFile, "*") {
			return d.WrapErr(globFileError(h.KeysFile))
		}
	}
	if d.NextArg() {
		return d.ArgErr()
	}

	var redis *redisstore.Store
	var store caddyfile.Unmarshaler
	storeName := ""
	for d.NextBlock(0) {
		switch d.Val() {
		case "store":
			if store != nil || redis != nil || h.KeysFile != "" {
				return d.Err("a key store is already given; give one: a key file, redis or store")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			storeName = d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "http.handlers.apikey.stores."+storeName)
			if err != nil {
				return err
			}
			store = unm

		case "redis":
			if redis != nil || store != nil {
				return d.Err("a key store is already given; give one: a key file, redis or store")
			}
			if h.KeysFile != "" {
				return d.WrapErr(bothStores(h.KeysFile, inline))
			}
			unm, err := caddyfile.UnmarshalModule(d, "http.handlers.apikey.stores.redis")
			if err != nil {
				return err
			}
			redis = unm.(*redisstore.Store)

		case "keys_file":
			if h.KeysFile != "" {
				return d.Err("key file already given")
			}
			if !d.AllArgs(&h.KeysFile) {
				return d.ArgErr()
			}
			if redis != nil {
				return d.WrapErr(bothStores(h.KeysFile, false))
			}
			if strings.Contains(h.KeysFile, "*") {
				return d.WrapErr(globFileError(h.KeysFile))
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
			dur, err := storecore.ParseIntervalArg(d)
			if err != nil {
				return err
			}
			h.UsageInterval = dur

		case "reload_interval":
			dur, err := storecore.ParseIntervalArg(d)
			if err != nil {
				return err
			}
			h.ReloadInterval = dur

		case "key_format":
			if h.KeyFormat != nil {
				return d.Err("key_format already given")
			}
			var prefix string
			if !d.AllArgs(&prefix) {
				return d.Err("key_format takes one argument, the keys' prefix: key_format acme_live_")
			}
			f, err := keyformat.New(prefix)
			if err != nil {
				return d.WrapErr(err)
			}
			h.KeyFormat = f

		case "rate_limit":
			args := d.RemainingArgs()
			switch {
			case len(args) == 1 && args[0] == "off":
				if len(h.RateLimits) > 0 || h.RateLimitsOff {
					return d.Err("rate_limit off goes alone: it turns every rate limit off on this route")
				}
				h.RateLimitsOff = true
			case len(args) == 2:
				if h.RateLimitsOff {
					return d.Err("rate_limit off is given already: it turns every rate limit off on this route")
				}
				requests, err := ratelimit.ParseRequests(args[0])
				if err != nil {
					return d.Errf("rate_limit %s %s: %v", args[0], args[1], err)
				}
				window, err := ratelimit.ParseWindow(args[1])
				if err != nil {
					return d.Errf("rate_limit %s %s: %v", args[0], args[1], err)
				}
				h.RateLimits = append(h.RateLimits, keyset.RateLimitOf(ratelimit.Limit{Requests: requests, Window: window}))
				if _, err := keyset.ParseRateLimits(h.RateLimits); err != nil {
					return d.Errf("rate_limit %s %s: %v", args[0], args[1], err)
				}
			default:
				return d.Err("rate_limit takes a number of requests and a window, e.g. rate_limit 100 1m, or off")
			}

		case "cost":
			var arg string
			if !d.AllArgs(&arg) {
				return d.Err("cost takes one argument: the units of a key's quota a request spends, e.g. cost 10")
			}
			n, err := strconv.ParseInt(arg, 10, 64)
			if err != nil || n < 1 || n > quota.MaxRequests {
				return d.Errf("cost %s: must be a whole number from 1 to %d (quota off spends nothing)", arg, int64(quota.MaxRequests))
			}
			h.Cost = n

		case "quota":
			var arg string
			if !d.AllArgs(&arg) || arg != "off" {
				return d.Err("quota takes one argument, off (it turns quotas off on this route; a key's quota is in its record)")
			}
			h.QuotasOff = true

		case "quota_headers":
			if d.NextArg() {
				return d.Err("quota_headers takes no argument (it turns the X-Quota-* headers on)")
			}
			h.QuotaHeaders = true

		case "quota_outage":
			var arg string
			if !d.AllArgs(&arg) || arg != OutageRefuse && arg != OutageAdmit {
				return d.Errf("quota_outage takes one argument, %s (the default) or %s", OutageRefuse, OutageAdmit)
			}
			h.QuotaOutage = arg

		case "usage_retention":
			dur, err := storecore.ParseIntervalArg(d)
			if err != nil {
				return err
			}
			if dur > 0 && time.Duration(dur) < time.Hour {
				return d.Errf("usage_retention %s: must be an hour or more, or off", time.Duration(dur))
			}
			h.UsageRetention = dur

		case "expiry_notice":
			dur, err := storecore.ParseIntervalArg(d)
			if err != nil {
				return err
			}
			h.ExpiryNotice = dur

		case "rate_limit_headers":
			var arg string
			if !d.AllArgs(&arg) || arg != "off" {
				return d.Err("rate_limit_headers takes one argument, off (the headers are on by default)")
			}
			h.RateLimitHeadersOff = true

		default:
			return d.WrapErr(storecore.UnknownOption(d.Val(), "subdirective", storecore.HandlerSubdirectives, redisstore.Options,
				"is an option of the redis block: redis <url> { "+d.Val()+" … }"))
		}
	}

	switch {
	case store != nil && (h.UsageInterval != 0 || h.ReloadInterval != 0):
		return d.Err("usage_interval and reload_interval go in the store's block when a store is given: store " + storeName + " { … }")
	case store != nil:
		h.StoreRaw = caddyconfig.JSONModuleObject(store, "backend", storeName, nil)
	case redis != nil && h.ReloadInterval != 0:
		return d.Err("reload_interval applies to a key file; a Redis key set is followed as it changes")
	case redis != nil && redis.UsageInterval != 0 && h.UsageInterval != 0:
		return d.Err("usage_interval is given twice: in apikey's block and in the redis block")
	case redis != nil:
		if h.UsageInterval != 0 {
			redis.UsageInterval, h.UsageInterval = h.UsageInterval, 0
		}
		h.StoreRaw = caddyconfig.JSONModuleObject(redis, "backend", "redis", nil)
	case h.KeysFile == "":
		return d.Err("a key file is required: apikey <keys_file> or keys_file <path> in the block; or redis <url> for a Redis key set")
	}
	return nil
}

// bothStores refuses a key file beside redis. inline tells whether the key
// file is the directive's argument.
func bothStores(keysFile string, inline bool) error {
	given := "keys_file " + keysFile
	if inline {
		given = "the key file " + keysFile + " (the directive's argument; a path matcher starts with /)"
	}
	return fmt.Errorf("give a key file or redis, not both: %s and redis are both given; "+
		"for the Redis key set, drop the key file (to guard part of the site, a matcher goes first: apikey /api/* { redis … })", given)
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
