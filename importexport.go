package apikey

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
)

// importResult is what an import did.
type importResult struct {
	added, present int
	conflicts      []string // one line per record not imported
}

// importKeys copies the records of a key file into a record store (a Redis
// key set), in one atomic edit. It is idempotent: a record already there
// with the same content (last_used_at aside) is left as it is, so running
// it twice adds nothing. A record whose id or key_hash is already there
// with other content is reported, never overwritten.
func importKeys(from fileRecords, to recordStore, waiting func()) (importResult, error) {
	records, _, err := from.read()
	if err != nil {
		return importResult{}, err
	}
	var res importResult
	err = to.edit(recordEdit{create: true, waiting: waiting, edit: func(doc *keyDoc) error {
		res = importResult{}
		byID := make(map[string]*docRecord, len(doc.records))
		byHash := make(map[string]*docRecord, len(doc.records))
		for i := range doc.records {
			r := &doc.records[i]
			byID[r.ID] = r
			byHash[strings.ToLower(r.KeyHash)] = r
		}
		var add []docRecord
		for i := range records {
			r := &records[i]
			there := byID[r.ID]
			if there == nil {
				there = byHash[strings.ToLower(r.KeyHash)]
			}
			switch {
			case there == nil:
				n := *r
				n.split() // a new record: written, not taken as read
				add = append(add, n)
				res.added++
			case sameRecord(&there.Record, &r.Record):
				res.present++
			case there.ID == r.ID:
				res.conflicts = append(res.conflicts, fmt.Sprintf("id %s (%s, %q): a record with this id and other content is already there", printable(r.ID), printable(r.KeyPrefix), printable(r.Label)))
			default:
				res.conflicts = append(res.conflicts, fmt.Sprintf("id %s (%s, %q): its key_hash is already that of id %s", printable(r.ID), printable(r.KeyPrefix), printable(r.Label), printable(there.ID)))
			}
		}
		if len(add) == 0 {
			return errNoChange
		}
		doc.records = append(doc.records, add...)
		return nil
	}})
	return res, err
}

// sameRecord reports whether two records hold the same key, the same way:
// every known member equal but last_used_at, which usage changes.
func sameRecord(a, b *Record) bool {
	x, y := *a, *b
	x.LastUsedAt, y.LastUsedAt = nil, nil
	x.KeyHash, y.KeyHash = strings.ToLower(x.KeyHash), strings.ToLower(y.KeyHash)
	return reflect.DeepEqual(x, y)
}

// exportKeys writes the records of a store as a key file in today's format
// (hashes only, as always), each with its latest last_used_at: to the file
// at path, which must not exist yet, or to w if path is "".
func exportKeys(from recordStore, path string, w io.Writer) (int, error) {
	records, _, err := from.read()
	if err != nil {
		return 0, err
	}
	for i := range records {
		records[i].split() // written indented, one member a line
	}
	doc := &keyDoc{top: []member{{name: "api_keys"}}, records: records}
	if path == "" {
		_, err = doc.WriteTo(w)
		return len(records), err
	}
	if _, err := os.Lstat(path); err == nil {
		return 0, fmt.Errorf("%s already exists; export writes a new file (remove it, or give another --file)", path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	_, err = writeFileAtomic(path, doc, nil, func() error {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s was made while the export was written; it was left as it is", path)
		}
		return nil
	})
	return len(records), err
}
