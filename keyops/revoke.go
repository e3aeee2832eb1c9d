package keyops

import (
	"fmt"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// MinIDPrefix is the fewest leading characters of an id that revoke and
// rotate accept as a name for a key, so that a slip of the keyboard does not
// revoke or rotate some key that happens to match.
const MinIDPrefix = 4

// Revoke revokes the one key that ref names. It returns the record
// as it was and, if it was revoked already (nothing changes then), when.
func Revoke(st stores.RecordStore, ref string, now time.Time, waiting func()) (revoked keyset.Record, alreadyRevoked string, err error) {
	at := keyset.FormatTimestamp(now)
	audited := func() []audit.Entry {
		return []audit.Entry{entry(audit.Revoke, &revoked, now, map[string]any{"revoked_at": at})}
	}
	err = editNamed(st, ref, "revoke", true, waiting, audited, func(doc *keyfile.Doc, i int) error {
		rec := &doc.Records[i]
		revoked = rec.Record
		if rec.RevokedAt != nil {
			// Keep the first revocation time: it is the one that matters
			// for an audit.
			alreadyRevoked = *rec.RevokedAt
			return keyfile.ErrNoChange
		}
		return rec.Set("revoked_at", at)
	})
	return revoked, alreadyRevoked, err
}

// editNamed is what the operations that change one existing key
// (revoke, rotate) share: it finds the one record that ref names (its full
// id, its key_prefix, or a prefix of its id of at least MinIDPrefix
// characters) in the store as it is under the lock, and calls edit with the
// document and the record's index, in one atomic edit. The store must exist.
// verb names the operation in the messages ("revoke", "rotate"). edit may
// return keyfile.ErrNoChange.
//
// alone says that edit changes the named record and needs no other: a
// store may then read that record alone when ref is its id.
//
// audited, if not nil, returns the audit entries of the change (see
// stores.Edit.Audit).
func editNamed(st stores.RecordStore, ref, verb string, alone bool, waiting func(), audited func() []audit.Entry, edit func(doc *keyfile.Doc, i int) error) error {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return InputError(fmt.Sprintf("name the key to %s by its id or key_prefix", verb))
	}
	e := stores.Edit{Waiting: waiting, Audit: audited}
	if alone {
		e.OnlyID = ref
	}
	e.Change = func(doc *keyfile.Doc) error {
		i, err := findNamed(doc.Records, st, ref)
		if err != nil {
			return err
		}
		return edit(doc, i)
	}
	return st.Edit(e)
}

// findNamed returns the index of the one record that ref names, or
// an error that says why there is none: no match, or several (listed one
// per line, for the user to pick the full id of one).
func findNamed(records []keyfile.Record, st stores.RecordStore, ref string) (int, error) {
	matches := matchRecords(records, ref)
	switch len(matches) {
	case 0:
		if len(ref) < MinIDPrefix {
			return -1, &RefError{Code: "KEY_NOT_FOUND", Msg: fmt.Sprintf("no key in %s has the id or key_prefix %q; the start of an id must be at least %d characters long (see caddy apikey list %s)", st, ref, MinIDPrefix, st.Flags())}
		}
		return -1, &RefError{Code: "KEY_NOT_FOUND", Msg: fmt.Sprintf("no key in %s has the id or key_prefix %q (see caddy apikey list %s)", st, ref, st.Flags())}
	case 1:
		return matches[0], nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%q matches %d keys in %s; give the full id of one of them:", ref, len(matches), st)
	for _, i := range matches {
		rec := &records[i]
		fmt.Fprintf(&b, "\n  %s  %s  %s", Printable(rec.ID), Printable(rec.KeyPrefix), Printable(rec.Label))
	}
	return -1, &RefError{Code: "AMBIGUOUS_REF", Msg: b.String()}
}

// matchRecords returns the indexes of the records that ref names. A full
// id names its record alone, even if it is also a prefix of another id.
func matchRecords(records []keyfile.Record, ref string) []int {
	var exact, partial []int
	for i := range records {
		rec := &records[i]
		switch id := rec.ID; {
		case strings.EqualFold(id, ref):
			exact = append(exact, i)
		case rec.KeyPrefix == ref,
			len(ref) >= MinIDPrefix && len(id) > len(ref) && strings.EqualFold(id[:len(ref)], ref):
			partial = append(partial, i)
		}
	}
	if len(exact) > 0 {
		return exact
	}
	return partial
}
