// Package testquota is a record store with quota state and usage counts
// in memory, over another store's records, for the tests of the commands,
// the admin API and the key operations while no store of this repository
// keeps them, and for failures a real store cannot be made to have.
package testquota

import (
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/quota"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddy-apikey/caddy-apikey/usagecount"
)

// Store is a stores.RecordStore (its records are those of the store it
// wraps) that is also a stores.QuotaStore, a stores.AuditWriter and a
// usagecount.Reader, in memory. Its audit log is the entries written to
// it through WriteAudit, apart from the wrapped store's.
type Store struct {
	stores.RecordStore

	mu      sync.Mutex
	states  map[string]quota.State // by key id
	rows    []usagecount.Row
	written []audit.Entry
	grants  []Grant

	// StatesFail, GrantFails, AuditFails and UsageFails, if set, make
	// those calls fail with their error.
	StatesFail, GrantFails, AuditFails, UsageFails error
}

// Grant is one call of GrantQuota.
type Grant struct {
	ID, Period string
	N          int64
	Ends       time.Time
}

// New returns a store over records, with no state and no counts.
func New(records stores.RecordStore) *Store {
	return &Store{RecordStore: records, states: make(map[string]quota.State)}
}

// SetState sets key id's state.
func (s *Store) SetState(id string, st quota.State) {
	s.mu.Lock()
	s.states[id] = st
	s.mu.Unlock()
}

// State is key id's state.
func (s *Store) State(id string) quota.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.states[id]
}

// AddRows adds usage counts.
func (s *Store) AddRows(rows ...usagecount.Row) {
	s.mu.Lock()
	s.rows = append(s.rows, rows...)
	s.mu.Unlock()
}

// Written is the audit entries written through WriteAudit.
func (s *Store) Written() []audit.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]audit.Entry(nil), s.written...)
}

// Grants is the calls of GrantQuota that succeeded.
func (s *Store) Grants() []Grant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Grant(nil), s.grants...)
}

// QuotaStates implements stores.QuotaStore.
func (s *Store) QuotaStates(periods map[string]string) (map[string]quota.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.StatesFail != nil {
		return nil, s.StatesFail
	}
	out := make(map[string]quota.State)
	for id, p := range periods {
		if st, ok := s.states[id]; ok && st.Period == p {
			out[id] = st
		}
	}
	return out, nil
}

// GrantQuota implements stores.QuotaStore: a state of another period is
// dropped; granted stays at 0 or more.
func (s *Store) GrantQuota(id, period string, n int64, ends time.Time) (quota.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.GrantFails != nil {
		return quota.State{}, s.GrantFails
	}
	st := s.states[id]
	if st.Period != period {
		st = quota.State{Period: period}
	}
	st.Granted = max(st.Granted+n, 0)
	s.states[id] = st
	s.grants = append(s.grants, Grant{id, period, n, ends})
	return st, nil
}

// WriteAudit implements stores.AuditWriter.
func (s *Store) WriteAudit(entries []audit.Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.AuditFails != nil {
		return s.AuditFails
	}
	s.written = append(s.written, entries...)
	return nil
}

// ReadUsageCounts implements usagecount.Reader: the rows of id from the
// hour that holds since, summed by hour and result, sorted by hour then by
// result, without zeros.
func (s *Store) ReadUsageCounts(id string, since time.Time) ([]usagecount.Row, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.UsageFails != nil {
		return nil, s.UsageFails
	}
	type cell struct {
		hour   int64
		result string
	}
	sums := make(map[cell]int64)
	from := usagecount.Hour(since)
	for _, r := range s.rows {
		if r.ID == id && !r.Hour.Before(from) {
			sums[cell{r.Hour.Unix(), r.Result}] += r.N
		}
	}
	var out []usagecount.Row
	for c, n := range sums {
		if n != 0 {
			out = append(out, usagecount.Row{ID: id, Hour: time.Unix(c.hour, 0).UTC(), Result: c.result, N: n})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Hour.Equal(out[j].Hour) {
			return out[i].Hour.Before(out[j].Hour)
		}
		return usagecount.ResultIndex(out[i].Result) < usagecount.ResultIndex(out[j].Result)
	})
	return out, nil
}

// ErrDown is a failure for the Fail fields.
var ErrDown = errors.New("quota state unavailable: the state file is corrupt")

// Interface guards
var (
	_ stores.QuotaStore  = (*Store)(nil)
	_ stores.AuditWriter = (*Store)(nil)
	_ usagecount.Reader  = (*Store)(nil)
)
