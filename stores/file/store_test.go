package file

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-apikey/caddy-apikey/internal/storecore"
	"github.com/caddy-apikey/caddy-apikey/internal/testkeys"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// setUsageInterval sets a store's usage interval as a handler's
// usage_interval would (negative: off), with reloading off.
func setUsageInterval(s *keyFile, d time.Duration) {
	setLease(s.leases, storecore.Settings{
		Usage:  storecore.IntervalSetting(caddy.Duration(d), storecore.DefaultUsageInterval),
		Reload: storecore.Interval{Off: true},
	})
}

// testLeases holds the lease setLease took on each lease set.
var testLeases sync.Map // *storecore.Leases -> uint64

// setLease puts settings in force on a store's leases, as one handler
// using it alone would: a lease the test took before is withdrawn.
func setLease(l *storecore.Leases, settings storecore.Settings) {
	id := l.Add(settings)
	if old, ok := testLeases.Swap(l, id); ok {
		l.Remove(old.(uint64))
	}
}

// addRecord adds a new key's record to the key file at path through the
// record store, as caddy apikey add does (made if missing).
func addRecord(path string) error {
	k := testkeys.New("x", nil)
	return Records{Path: path, MayCreate: true}.Edit(stores.Edit{Create: true, OnlyAdds: true, Change: func(doc *keyfile.Doc) error {
		r, err := keyfile.NewRecord(k.Rec())
		if err != nil {
			return err
		}
		doc.Records = append(doc.Records, r)
		return nil
	}})
}

// revokeRecord sets revoked_at on the record with id in the key file at
// path through the record store, as caddy apikey revoke does.
func revokeRecord(path, id string) error {
	return Records{Path: path}.Edit(stores.Edit{OnlyID: id, Change: func(doc *keyfile.Doc) error {
		for i := range doc.Records {
			if doc.Records[i].ID == id {
				return doc.Records[i].Set("revoked_at", "2026-11-30T00:00:00Z")
			}
		}
		return errors.New("no such record")
	}})
}

// readRecords reads the key file at path through the record store, as
// caddy apikey list does.
func readRecords(path string) error {
	_, _, err := Records{Path: path}.Read()
	return err
}
