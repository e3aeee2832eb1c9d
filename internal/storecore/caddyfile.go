package storecore

import (
	"fmt"
	"strings"
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

// HandlerSubdirectives are the subdirectives of apikey's block: a store's
// block names them as misplaced rather than unknown.
var HandlerSubdirectives = []string{"keys_file", "redis", "store", "header", "query", "realm", "scope", "optional",
	"hide_credentials", "handle_errors", "usage_interval", "reload_interval", "key_format", "rate_limit", "rate_limit_headers", "expiry_notice",
	"cost", "quota", "quota_headers", "quota_outage", "usage_retention"}

// UnknownOption is the error for an unrecognized name in a block whose
// names are known: it says where the name goes when it belongs to the
// other block (otherBlock, with misplaced saying so), or suggests the known
// name it is likely a typo of.
func UnknownOption(name, what string, known, otherBlock []string, misplaced string) error {
	for _, o := range otherBlock {
		if name == o {
			return fmt.Errorf("'%s' %s", name, misplaced)
		}
	}
	if s := suggest(name, known); s != "" {
		return fmt.Errorf("unrecognized %s '%s'; did you mean '%s'?", what, name, s)
	}
	return fmt.Errorf("unrecognized %s '%s' (known: %s)", what, name, strings.Join(known, ", "))
}

// suggest returns the name of known that word is most likely a typo of, or
// "" if none is close: the same name with "-" for "_" or in another case,
// one that starts with word, or one at most two edits away (one, for
// words of up to four letters).
func suggest(word string, known []string) string {
	w := strings.ToLower(strings.ReplaceAll(word, "-", "_"))
	best, bestDist := "", 3
	if len(w) <= 4 {
		bestDist = 2
	}
	for _, k := range known {
		if w == k || len(w) >= 4 && strings.HasPrefix(k, w) {
			return k
		}
		if d := editDistance(w, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
