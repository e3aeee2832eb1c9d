package keyops

import (
	"slices"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/ratelimit"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// SetRateLimits gives the one key that ref names its own rate limits:
// limits, [] for none at all, or nil to drop its own (the handler's
// defaults apply again). It returns the record as it is then, and whether
// it changed.
func SetRateLimits(st stores.RecordStore, ref string, limits []keyset.RateLimit, waiting func()) (rec keyset.Record, changed bool, err error) {
	if _, err := keyset.ParseRateLimits(limits); err != nil {
		return keyset.Record{}, false, InputError(err.Error())
	}
	audited := func() []audit.Entry {
		return []audit.Entry{entry(audit.RateLimits, &rec, time.Now(), map[string]any{"rate_limits": limits})}
	}
	err = editNamed(st, ref, "set the rate limits of", true, waiting, audited, func(doc *keyfile.Doc, i int) error {
		r := &doc.Records[i]
		if (r.RateLimits == nil) == (limits == nil) && slices.Equal(r.RateLimits, limits) {
			rec = r.Record
			return keyfile.ErrNoChange
		}
		if err := r.SetRateLimits(limits); err != nil {
			return InputError(err.Error())
		}
		rec, changed = r.Record, true
		return nil
	})
	return rec, changed, err
}

// ParseRates reads rate limits as the commands take them ("100/1m",
// repeatable) into a record's form.
func ParseRates(rates []string) ([]keyset.RateLimit, error) {
	var out []keyset.RateLimit
	for _, r := range rates {
		l, err := ratelimit.ParseLimit(r)
		if err != nil {
			return nil, InputError(err.Error())
		}
		out = append(out, keyset.RateLimitOf(l))
	}
	if _, err := keyset.ParseRateLimits(out); err != nil {
		return nil, InputError(err.Error())
	}
	return out, nil
}
