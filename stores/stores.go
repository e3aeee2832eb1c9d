// Package stores is what a key store module offers beyond serving
// requests, for the rest of caddy-apikey to use: its records, to read and
// change (RecordStore: the `caddy apikey` commands and the admin API), its
// place among the stores in use in this process (Register: the admin API),
// and its metrics (AcquireMetrics: Caddy's /metrics).
//
// A store module (in the http.handlers.apikey.stores namespace) serves
// requests by implementing the handler's Store interface; each of these is
// an opt-in. The file store (stores/file) and the Redis store
// (stores/redis) use all three; a store written elsewhere uses them the
// same way, with no special case for it anywhere.
package stores

import (
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/quota"
)

// RecordStore is the write side of a key store: what `caddy apikey` and the
// admin API read and change. Its edits must be safe against every other
// writer (a running Caddy's usage writes, other commands, other servers):
// a key file's are made under its lock, a Redis key set's by a version
// check.
type RecordStore interface {
	// String names the store in messages: a key file's path, or a Redis
	// key set's URL (without its password) and prefix.
	String() string
	// Flags are the command-line flags that name the store, for hints
	// such as "see caddy apikey list --file keys.json".
	Flags() string
	// Read returns the records and their key set (its keys in the
	// records' order, see keyset.KeySet.At), checked as the handler
	// checks them.
	Read() ([]keyfile.Record, *keyset.KeySet, error)
	// Edit applies e.Change to the records and saves what it changed, in
	// one atomic step. Without e.Create, the store must exist.
	Edit(e Edit) error
}

// ErrConflict is what a record store's Edit returns, wrapped, when other
// writers changed the records it meant to change at each of its tries:
// nothing was changed, and the change can be tried again. The admin API
// answers it with 409 CONFLICT.
var ErrConflict = errors.New("another writer changed the key set at each try")

// Edit is one change to a record store.
type Edit struct {
	// Change makes the change on the records, held as a key file's
	// document; it returns keyfile.ErrNoChange if there is none to make.
	// The store saves the records that Change added or edited (see
	// keyfile.Record.Edited).
	Change func(*keyfile.Doc) error
	// Create lets a store that does not exist yet start empty.
	Create bool
	// Waiting, if set, is called once if the edit must wait for another
	// writer, to say so.
	Waiting func()

	// Hints that let a store that can read records one by one (Redis)
	// hand Change less than the whole key set; a key file is read whole
	// all the same.
	OnlyAdds bool   // Change only appends records with new ids: it may get none of the others
	OnlyID   string // Change changes at most the record with this id, if there is one: it may get that one alone

	// Audit, if set, returns the audit entries of the change that
	// Change made; the store calls it after Change succeeded, stamps the
	// entries (audit.Stamp, with Who) and writes them durably to its
	// audit log before it commits the change: if they cannot be written,
	// the change is not made and Edit fails.
	Audit func() []audit.Entry
	// Who made the change, for its audit entries.
	Who audit.Who
}

// AuditEntries returns the stamped entries of e's change (none if e has
// no Audit), for a store to write.
func (e Edit) AuditEntries(now time.Time) []audit.Entry {
	if e.Audit == nil {
		return nil
	}
	entries := e.Audit()
	audit.Stamp(entries, now, e.Who)
	return entries
}

// AuditReader is a record store that keeps an audit log of its changes
// (`caddy apikey audit`, GET /apikey/audit).
type AuditReader interface {
	// ReadAudit returns the entries that f keeps, oldest first.
	ReadAudit(f audit.Filter) ([]audit.Entry, error)
}

// AuditWriter is a record store that keeps an audit log and can write to
// it the entries of a change that is not an edit of its records (units of
// a quota granted: the state is not in a record). The entries come
// stamped; the store writes them durably, in the order of the calls, and
// an error means they are not written (the change is then not made).
type AuditWriter interface {
	WriteAudit(entries []audit.Entry) error
}

// By returns st with its edits made by who (for their audit entries),
// unless an edit names its own.
func By(st RecordStore, who audit.Who) RecordStore { return byWho{st, who} }

type byWho struct {
	RecordStore
	who audit.Who
}

func (s byWho) Edit(e Edit) error {
	if e.Who == (audit.Who{}) {
		e.Who = s.who
	}
	return s.RecordStore.Edit(e)
}

// ReadAudit reads the audit log of the store st wraps, if it keeps one.
func (s byWho) ReadAudit(f audit.Filter) ([]audit.Entry, error) {
	if r, ok := s.RecordStore.(AuditReader); ok {
		return r.ReadAudit(f)
	}
	return nil, ErrNoAudit
}

// ErrNoAudit: the store keeps no audit log.
var ErrNoAudit = errors.New("this key store keeps no audit log")

// Live is a store in use in this process, as the admin API sees it.
type Live interface {
	// Name says where the keys are, with the kind of store first:
	// "file:/etc/caddy/keys.json", "redis:redis://10.0.0.5:6379/0#apikey:".
	Name() string
	// KeySet is the key set in force.
	KeySet() *keyset.KeySet
	// Records is the write side, shared with `caddy apikey`.
	Records() RecordStore
	// Refresh puts the store's records as they are now in force in this
	// process, so that a change made through Records holds before the
	// admin API answers, not at the next reload.
	Refresh() error
}

// live holds the stores in use in this process, by name.
var live = struct {
	sync.Mutex
	byName map[string]Live
}{byName: make(map[string]Live)}

// Register adds a store to those in use, for the admin API. A store calls
// it once it has loaded its keys, and Unregister when it stops.
func Register(s Live) {
	live.Lock()
	live.byName[s.Name()] = s
	live.Unlock()
}

// Unregister removes a store from those in use, if it is still the one
// registered under its name.
func Unregister(s Live) {
	live.Lock()
	if live.byName[s.Name()] == s {
		delete(live.byName, s.Name())
	}
	live.Unlock()
}

// InUse returns the stores in use, sorted by name.
func InUse() []Live {
	live.Lock()
	defer live.Unlock()
	out := make([]Live, 0, len(live.byName))
	for _, s := range live.byName {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// QuotaStore is a record store that keeps its keys' quota state (the key
// file's state file, Redis): `caddy apikey list` and `quota`, and the
// admin API, read and grant through it. A live store whose keys have
// quotas is also the handler's quota.Bank, on the same state.
type QuotaStore interface {
	// QuotaStates returns the state of each key id in periods (id ->
	// the period's name, quota.Period.At), for the ids it has a state
	// of; a key without one has used nothing in its period.
	QuotaStates(periods map[string]string) (map[string]quota.State, error)
	// GrantQuota adds n units to key id's allowance for period (whose
	// state may be dropped some time after ends), durably, and returns
	// the key's state then. n may be negative, to take back a grant, but
	// not below 0 granted.
	GrantQuota(id, period string, n int64, ends time.Time) (quota.State, error)
}
