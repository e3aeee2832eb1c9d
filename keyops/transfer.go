package keyops

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// ImportResult is what an import did.
type ImportResult struct {
	Added, Present int
	Conflicts      []string // one line per record not imported

	// The records revoked in the key set whose copy in the file is
	// active, and otherwise the same (last_used_at aside): one line each.
	// Without ImportOptions.Reactivate they stay revoked (KeptRevoked);
	// with it they take the file's copy, active again (Reactivated).
	KeptRevoked, Reactivated []string

	// The key set held no records (it did not exist, or it was emptied):
	// every record was taken from the file as it is, and import cannot
	// tell which of its active keys were revoked after the file was
	// written. ActiveAdded counts those the file holds active.
	TargetEmpty bool
	ActiveAdded int

	// The file is a server's cache_file (a snapshot, or a key file with
	// a top-level "snapshot" member), not an export.
	Snapshot bool
}

// ImportOptions are the flags of `caddy apikey import`.
type ImportOptions struct {
	Reactivate bool     // re-activate the records revoked in the key set but active in the file
	Waiting    func()   // called once if the edit must wait for another writer
	Progress   Progress // nil: no progress shown
}

// Progress is told what a long import is doing, step by step, to show it.
type Progress interface {
	// Step begins a step, ending the one under way.
	Step(format string, args ...any)
	// End ends the step under way, if any, with result ("" for none).
	End(result string)
	// Interrupt runs f, which writes lines of its own, between two
	// showings of the step under way.
	Interrupt(f func())
}

// noProgress shows nothing.
type noProgress struct{}

func (noProgress) Step(string, ...any) {}
func (noProgress) End(string)          {}
func (noProgress) Interrupt(f func())  { f() }

// Import copies the records of the key file at path into a record store (a
// Redis key set), in one atomic edit. It is idempotent: a record already
// there with the same content (last_used_at aside) is left as it is, so
// running it twice adds nothing. A record whose id or key_hash is already
// there with other content is reported, never overwritten; but for one
// that is revoked in the key set and active in the file, all else the same
// (an older export imported after a revoke): it stays revoked and is
// reported, unless opts.Reactivate, which puts the file's copy in its place.
func Import(path string, to stores.RecordStore, opts ImportOptions) (ImportResult, error) {
	p := opts.Progress
	if p == nil {
		p = noProgress{}
	}
	if fi, err := os.Stat(path); err == nil {
		p.Step("Reading %s (%d MiB)", path, fi.Size()>>20)
	}
	data, _, err := keyfile.ReadFile(path)
	if err != nil {
		p.End("")
		return ImportResult{}, &keyfile.Error{Path: path, Err: err}
	}
	var file *keyfile.Doc
	snapshot := keyset.IsSnapshot(data) // a server's cache_file
	if snapshot {
		file, err = keyfile.SnapshotDoc(data)
	} else {
		file, _, err = keyfile.Parse(data)
	}
	data = nil
	if err != nil {
		p.End("")
		return ImportResult{}, &keyfile.Error{Path: path, Err: err}
	}
	records := file.Records
	p.End(fmt.Sprintf("%d keys", len(records)))
	// A cache_file as versions before its binary form wrote it.
	snapshot = snapshot || file.HasMember("snapshot")

	var res ImportResult
	waiting := opts.Waiting
	if waiting != nil {
		waiting = func() { p.Interrupt(opts.Waiting) }
	}
	p.Step("Reading the key set %s", to)
	// One audit entry per key imported or reactivated, so that the trail
	// of a key (caddy apikey audit --key) shows where it came from.
	var added, reactivated []*keyset.Record
	audited := func() []audit.Entry {
		now := time.Now()
		out := make([]audit.Entry, 0, len(added)+len(reactivated))
		for _, r := range added {
			c := createdChanges(r)
			c["from"] = path
			out = append(out, entry(audit.Import, r, now, c))
		}
		for _, r := range reactivated {
			out = append(out, entry(audit.Import, r, now, map[string]any{"from": path, "revoked_at": nil, "reactivated": true}))
		}
		return out
	}
	err = to.Edit(stores.Edit{Create: true, Waiting: waiting, Audit: audited, Change: func(doc *keyfile.Doc) error {
		added, reactivated = added[:0], reactivated[:0]
		p.End(fmt.Sprintf("%d keys", len(doc.Records)))
		res = ImportResult{Snapshot: snapshot, TargetEmpty: len(doc.Records) == 0}
		byID := make(map[string]*keyfile.Record, len(doc.Records))
		byHash := make(map[string]*keyfile.Record, len(doc.Records))
		for i := range doc.Records {
			r := &doc.Records[i]
			byID[r.ID] = r
			byHash[strings.ToLower(r.KeyHash)] = r
		}
		var add []keyfile.Record
		for i := range records {
			r := &records[i]
			there := byID[r.ID]
			if there == nil {
				there = byHash[strings.ToLower(r.KeyHash)]
			}
			switch {
			case there == nil:
				n := *r
				n.Split() // a new record: written, not taken as read
				add = append(add, n)
				added = append(added, &r.Record)
				res.Added++
				if r.RevokedAt == nil {
					res.ActiveAdded++
				}
			case sameRecord(&there.Record, &r.Record):
				res.Present++
			case there.ID == r.ID && revokedOnlyThere(&there.Record, &r.Record):
				line := fmt.Sprintf("id %s (%s, %q), revoked at %s", Printable(r.ID), Printable(r.KeyPrefix), Printable(r.Label), Printable(*there.RevokedAt))
				if !opts.Reactivate {
					res.KeptRevoked = append(res.KeptRevoked, line)
					continue
				}
				n := *r
				n.Split() // the file's copy, active: written in its place
				*there = n
				reactivated = append(reactivated, &r.Record)
				res.Reactivated = append(res.Reactivated, line)
			case there.ID == r.ID:
				res.Conflicts = append(res.Conflicts, fmt.Sprintf("id %s (%s, %q): a record with this id and other content is already there", Printable(r.ID), Printable(r.KeyPrefix), Printable(r.Label)))
			default:
				res.Conflicts = append(res.Conflicts, fmt.Sprintf("id %s (%s, %q): its key_hash is already that of id %s", Printable(r.ID), Printable(r.KeyPrefix), Printable(r.Label), Printable(there.ID)))
			}
		}
		if len(add) == 0 && len(res.Reactivated) == 0 {
			return keyfile.ErrNoChange
		}
		doc.Records = append(doc.Records, add...)
		p.Step("Writing %d keys to %s", len(add)+len(res.Reactivated), to)
		return nil
	}})
	p.End("")
	return res, err
}

// revokedOnlyThere reports whether there, a record in the key set, is
// revoked and file, its copy in the file, is not, and they are otherwise
// the same record (last_used_at aside).
func revokedOnlyThere(there, file *keyset.Record) bool {
	if there.RevokedAt == nil || file.RevokedAt != nil {
		return false
	}
	x := *there
	x.RevokedAt = nil
	return sameRecord(&x, file)
}

// sameRecord reports whether two records hold the same key, the same way:
// every known member equal but last_used_at, which usage changes.
func sameRecord(a, b *keyset.Record) bool {
	x, y := *a, *b
	x.LastUsedAt, y.LastUsedAt = nil, nil
	x.KeyHash, y.KeyHash = strings.ToLower(x.KeyHash), strings.ToLower(y.KeyHash)
	return reflect.DeepEqual(x, y)
}

// Export writes the records of a store as a key file in today's format
// (hashes only, as always), each with its latest last_used_at: to the file
// at path, which must not exist yet, or to w if path is "".
func Export(from stores.RecordStore, path string, w io.Writer) (int, error) {
	records, _, err := from.Read()
	if err != nil {
		return 0, err
	}
	for i := range records {
		records[i].Split() // written indented, one member a line
	}
	doc := keyfile.NewDoc(records...)
	if path == "" {
		_, err = doc.WriteTo(w)
		return len(records), err
	}
	if _, err := os.Lstat(path); err == nil {
		return 0, fmt.Errorf("%s already exists; export writes a new file (remove it, or give another --file)", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	_, err = keyfile.WriteAtomic(path, doc, nil, func() error {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s was made while the export was written; it was left as it is", path)
		}
		return nil
	})
	return len(records), err
}
