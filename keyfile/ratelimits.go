package keyfile

import (
	"slices"

	"github.com/go-json-experiment/json"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// SetRateLimits gives the record its own rate limits: its rate_limits
// member, in place, or as a new last member. nil removes the member (the
// handler's defaults apply again); an empty list writes [] (no limits for
// this key). Limits that keyset.ParseRateLimits refuses leave the record
// as it was.
func (r *Record) SetRateLimits(limits []keyset.RateLimit) error {
	if _, err := keyset.ParseRateLimits(limits); err != nil {
		return err
	}
	r.Split()
	i := slices.IndexFunc(r.members, func(m Member) bool { return m.Name == "rate_limits" })
	if limits == nil {
		if i >= 0 {
			r.members = slices.Delete(r.members, i, i+1)
		}
		r.RateLimits = nil
		return nil
	}
	value, err := json.Marshal(limits)
	if err != nil {
		return err // cannot happen: numbers and strings
	}
	if i < 0 {
		r.members = append(r.members, Member{Name: "rate_limits"})
		i = len(r.members) - 1
	}
	r.members[i].Value = value
	r.RateLimits = slices.Clone(limits)
	return nil
}
