package keyops

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// ErrNoQuotaState is what a quota grant on a store that keeps no quota
// state (not a stores.QuotaStore) returns, wrapped.
var ErrNoQuotaState = errors.New("keeps no quota state")

// SetQuota gives the one key that ref names a quota, or with nil drops
// its quota (the key is no longer metered). It returns the record as it is
// then, and whether it changed. The key's state (units used and granted
// this period) is left as it is: a new allowance counts what was used
// already.
func SetQuota(st stores.RecordStore, ref string, q *keyset.QuotaSpec, waiting func()) (rec keyset.Record, changed bool, err error) {
	if _, _, err := keyset.ParseQuota(q); err != nil {
		return keyset.Record{}, false, InputError(err.Error())
	}
	audited := func() []audit.Entry {
		return []audit.Entry{entry(audit.Quota, &rec, time.Now(), map[string]any{"quota": q})}
	}
	err = editNamed(st, ref, "set the quota of", true, waiting, audited, func(doc *keyfile.Doc, i int) error {
		r := &doc.Records[i]
		if sameQuota(r.Quota, q) {
			rec = r.Record
			return keyfile.ErrNoChange
		}
		if err := r.SetQuota(q); err != nil {
			return InputError(err.Error())
		}
		rec, changed = r.Record, true
		return nil
	})
	return rec, changed, err
}

func sameQuota(a, b *keyset.QuotaSpec) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

// ParseQuota reads a quota as the commands take it (10000/month,
// 500/day, 1000/none) into a record's form.
func ParseQuota(s string) (*keyset.QuotaSpec, error) {
	q, err := quota.Parse(strings.TrimSpace(s))
	if err != nil {
		return nil, InputError(err.Error())
	}
	return keyset.QuotaSpecOf(q), nil
}

// Grant is what a quota grant did: the key, its quota, the period the
// units were granted for (quota.Period.At) and the key's state in it after
// the grant.
type Grant struct {
	Record keyset.Record
	Quota  quota.Quota
	Units  int64
	State  QuotaState
}

// GrantQuota adds units to the allowance of the one key that ref names,
// for the period of its quota that holds now (a negative number takes
// back units granted before, but not below none granted). st must be the
// store itself (a stores.QuotaStore; not stores.By's wrapper): the grant
// is not an edit of the key's record but of its quota state. Its audit
// entry, made by who, is written first (stores.AuditWriter): a store that
// keeps an audit log and cannot write it grants nothing.
func GrantQuota(st stores.RecordStore, ref string, units int64, who audit.Who, now time.Time) (Grant, error) {
	var g Grant
	if units == 0 || units > quota.MaxRequests || units < -quota.MaxRequests {
		return g, InputError(fmt.Sprintf("grant %d units: want a whole number from 1 to %d, or from -1 to -%d to take units back", units, int64(quota.MaxRequests), int64(quota.MaxRequests)))
	}
	qs, ok := st.(stores.QuotaStore)
	if !ok {
		return g, fmt.Errorf("key store %s %w: units cannot be granted there", st, ErrNoQuotaState)
	}
	rec, err := findOne(st, ref, "grant units to")
	if err != nil {
		return g, err
	}
	q, has, err := keyset.ParseQuota(rec.Quota)
	switch {
	case err != nil:
		return g, err // cannot happen: the store's records are checked
	case !has:
		return g, &RefError{Code: "NO_QUOTA", Msg: fmt.Sprintf("key %s %q (%s) has no quota to grant units of; give it one first (caddy apikey quota %s 10000/month)",
			Printable(rec.ID), Printable(rec.Label), Printable(rec.KeyPrefix), Printable(rec.KeyPrefix))}
	}
	period, _, ends := q.Period.At(now)
	e := []audit.Entry{entry(audit.Quota, &rec, now, map[string]any{"granted": units, "period": period})}
	audit.Stamp(e, now, who)
	switch w := st.(type) {
	case stores.AuditWriter:
		if err := w.WriteAudit(e); err != nil {
			return g, fmt.Errorf("audit log of %s: %w; nothing was granted", st, err)
		}
	case stores.AuditReader:
		return g, fmt.Errorf("key store %s keeps an audit log but cannot write a grant to it; nothing was granted", st)
	}
	state, err := qs.GrantQuota(rec.ID, period, units, ends)
	if err != nil {
		return g, fmt.Errorf("granting units of key %s's quota in %s: %w", Printable(rec.ID), st, err)
	}
	return Grant{Record: rec, Quota: q, Units: units, State: stateOf(q, state, period, ends)}, nil
}

// findOne returns the record of the one key that ref names, read from the
// store without an edit.
func findOne(st stores.RecordStore, ref, verb string) (keyset.Record, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return keyset.Record{}, InputError(fmt.Sprintf("name the key to %s by its id or key_prefix", verb))
	}
	records, _, err := st.Read()
	if err != nil {
		return keyset.Record{}, err
	}
	i, err := findNamed(records, st, ref)
	if err != nil {
		return keyset.Record{}, err
	}
	return records[i].Record, nil
}

// QuotaState is a key's quota state in one period, as list and the admin
// API show it: the units used (spent, and held by the servers that took
// them), granted on top of the allowance, and left; when the period ends
// (null for a fixed allowance, which never starts again).
type QuotaState struct {
	Period    string  `json:"period"`
	Used      int64   `json:"used"`
	Granted   int64   `json:"granted"`
	Remaining int64   `json:"remaining"`
	EndsAt    *string `json:"ends_at"`
}

// stateOf is state, of a key with quota q in the period named period
// that ends at ends, as listed.
func stateOf(q quota.Quota, state quota.State, period string, ends time.Time) QuotaState {
	s := QuotaState{Period: period, Used: state.Used, Granted: state.Granted, Remaining: state.Left(q.Requests)}
	if q.Period != quota.None {
		at := ends.UTC().Format(time.RFC3339)
		s.EndsAt = &at
	}
	return s
}

// AddQuotaStates fills in the quota state at now of the listed keys that
// have a quota, if st keeps quota state (a stores.QuotaStore): one read
// for them all. If it cannot be read, each such key says why in
// QuotaStateError instead.
func AddQuotaStates(st stores.RecordStore, keys []Listed, now time.Time) {
	qs, ok := st.(stores.QuotaStore)
	if !ok {
		return
	}
	type metered struct {
		q      quota.Quota
		period string
		ends   time.Time
		at     int
	}
	var all []metered
	periods := make(map[string]string)
	for i := range keys {
		q, has, err := keyset.ParseQuota(keys[i].Quota)
		if err != nil || !has {
			continue
		}
		period, _, ends := q.Period.At(now)
		all = append(all, metered{q, period, ends, i})
		periods[keys[i].ID] = period
	}
	if len(all) == 0 {
		return
	}
	states, err := qs.QuotaStates(periods)
	for _, m := range all {
		l := &keys[m.at]
		if err != nil {
			l.QuotaStateError = err.Error()
			continue
		}
		state := states[l.ID] // none: nothing used yet
		if state.Period != "" && state.Period != m.period {
			state = quota.State{Period: m.period}
		}
		qstate := stateOf(m.q, state, m.period, m.ends)
		l.QuotaState = &qstate
	}
}
