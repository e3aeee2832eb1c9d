package keyfile

import (
	"slices"

	"github.com/go-json-experiment/json"

	"github.com/caddy-apikey/caddy-apikey/keyset"
)

// SetQuota gives the record a quota: its quota member, in place, or as a
// new last member. nil removes the member (no quota: the key is not
// metered). A quota that keyset.ParseQuota refuses leaves the record as it
// was.
func (r *Record) SetQuota(q *keyset.QuotaSpec) error {
	if _, _, err := keyset.ParseQuota(q); err != nil {
		return err
	}
	r.Split()
	i := slices.IndexFunc(r.members, func(m Member) bool { return m.Name == "quota" })
	if q == nil {
		if i >= 0 {
			r.members = slices.Delete(r.members, i, i+1)
		}
		r.Quota = nil
		return nil
	}
	value, err := json.Marshal(q)
	if err != nil {
		return err // cannot happen: a number and a string
	}
	if i < 0 {
		r.members = append(r.members, Member{Name: "quota"})
		i = len(r.members) - 1
	}
	r.members[i].Value = value
	c := *q
	r.Quota = &c
	return nil
}
