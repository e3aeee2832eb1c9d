package configcheck

import (
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Caddy drops request headers whose names contain "_" or "." unless the
// server lists them; a handler configured to read such a header would never
// see a key in it. The handler's Provision warns about each one.

// droppedHeader is a configured header that Caddy's server drops from every
// request before a handler sees it, with what to do about it.
type droppedHeader struct{ name, problem, fix string }

// droppedHeaders returns the configured headers (names, as configured)
// that srv drops from every request. Caddy drops each request header whose
// name contains "_" or ".", unless the server's expected_underscore_headers
// or expected_dot_headers lists it; and a header that they list makes Caddy drop its spelling with
// "-" in place of the "_" or ".". A name with both "_" and "." is kept only
// for an exact (not a "prefix*") entry. srv is nil when the server is not
// known: then every name with "_" or "." is returned, as one that the
// server must list.
//
// This mirrors Caddy's filter (Server.ServeHTTP, v2.11); the handler warns
// rather than fails on what it finds, since the filter is marked
// experimental and could change under it.
func droppedHeaders(names []string, srv *caddyhttp.Server) []droppedHeader {
	var underscore, dot []string
	if srv != nil {
		underscore, dot = srv.ExpectedUnderscoreHeaders, srv.ExpectedDotHeaders
	}
	const (
		uOpt = "expected_underscore_headers"
		dOpt = "expected_dot_headers"
	)
	listFix := func(opt, name string) string {
		return fmt.Sprintf("list it in the server's %s (Caddyfile: global option `servers { %s %s }`), or read the key from a header without \"_\" or \".\"", opt, opt, name)
	}
	var out []droppedHeader
	for _, name := range names {
		k := http.CanonicalHeaderKey(name)
		hasU, hasD := strings.ContainsRune(k, '_'), strings.ContainsRune(k, '.')
		switch {
		case hasU && hasD:
			if srv == nil || !(listsExactly(underscore, k) || listsExactly(dot, k)) {
				out = append(out, droppedHeader{name,
					`Caddy drops request headers whose names contain both "_" and "." unless the server lists the exact name (not a "prefix*" entry)`,
					listFix(uOpt, name)})
			}
		case hasU:
			if srv == nil || !allowsAlias(underscore, k) {
				out = append(out, droppedHeader{name,
					`Caddy drops request headers whose names contain "_" unless the server lists them`,
					listFix(uOpt, name)})
			}
		case hasD:
			if srv == nil || !allowsAlias(dot, k) {
				out = append(out, droppedHeader{name,
					`Caddy drops request headers whose names contain "." unless the server lists them`,
					listFix(dOpt, name)})
			}
		default:
			for _, list := range []struct {
				opt     string
				entries []string
				sep     string
			}{{uOpt, underscore, "_"}, {dOpt, dot, "."}} {
				if e, ok := hyphenatedVariant(list.entries, list.sep, k); ok {
					out = append(out, droppedHeader{name,
						fmt.Sprintf(`the server's %s lists %q, so Caddy drops its spelling with "-" instead of %q`, list.opt, e, list.sep),
						"read the key from the header that " + list.opt + " lists, or take the entry out"})
					break
				}
			}
		}
	}
	return out
}

// WarnDroppedHeaders logs a warning for each header name an apikey handler
// reads a key from (as configured) that srv (nil if not known) drops
// before the handler sees it.
func WarnDroppedHeaders(logger *zap.Logger, names []string, srv *caddyhttp.Server) {
	for _, d := range droppedHeaders(names, srv) {
		fields := []zap.Field{zap.String("header", d.name), zap.String("problem", d.problem), zap.String("fix", d.fix)}
		if srv == nil {
			logger.Warn("a configured header may never reach this handler: Caddy drops it unless the server lists it, and the server is not known here", fields...)
			continue
		}
		fields = append(fields, zap.String("server", srv.Name()))
		logger.Warn("a configured header never reaches this handler: Caddy drops it from every request", fields...)
	}
}

// listsExactly tells whether entries has a non-glob entry for the canonical
// header name k.
func listsExactly(entries []string, k string) bool {
	for _, e := range entries {
		if !strings.HasSuffix(e, "*") && http.CanonicalHeaderKey(e) == k {
			return true
		}
	}
	return false
}

// allowsAlias tells whether entries (exact names or "prefix*" globs) keep
// the canonical header name k.
func allowsAlias(entries []string, k string) bool {
	for _, e := range entries {
		if p, glob := strings.CutSuffix(e, "*"); glob {
			if strings.HasPrefix(k, http.CanonicalHeaderKey(p)) {
				return true
			}
		} else if http.CanonicalHeaderKey(e) == k {
			return true
		}
	}
	return false
}

// hyphenatedVariant returns the entry of entries (with separator sep) whose
// spelling with "-" for sep Caddy drops and which matches the canonical
// header name k.
func hyphenatedVariant(entries []string, sep, k string) (string, bool) {
	for _, e := range entries {
		p, glob := strings.CutSuffix(e, "*")
		drop := http.CanonicalHeaderKey(strings.ReplaceAll(p, sep, "-"))
		if (glob && strings.HasPrefix(k, drop)) || (!glob && drop == k) {
			return e, true
		}
	}
	return "", false
}
