package apikey

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/caddy-apikey/caddy-apikey/keyfile"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/caddyserver/caddy/v2"
	"github.com/google/uuid"
)

// addOptions are the flags of `caddy apikey add`.
type addOptions struct {
	Label   string
	Expires string   // a duration from now or a time; "" for never
	Scopes  []string // may hold comma-separated lists
}

// addKey creates a key, adds its record to the store (which may make a
// missing key file or key set only if it was opened with --create: see
// cliFileRecords and redisRecords.mayCreate) and writes the raw key, alone
// on its line, to stdout.
// Everything else goes to stderr, so that `KEY=$(caddy apikey add ...)`
// captures the key and nothing more.
func addKey(stdout, stderr io.Writer, st stores.RecordStore, opts addOptions, now time.Time) error {
	raw, added, err := createKey(st, opts, now, sayWaiting(stderr, st))
	if err != nil {
		return err
	}
	return printNewKey(stdout, stderr, raw, added, fmt.Sprintf("Created key %q in %s", printable(added.Label), st))
}

// createKey makes a new key as opts say and adds its record to the store;
// it returns the raw key and the record. waiting, if not nil, is called if
// the store's lock is held by another writer.
func createKey(st stores.RecordStore, opts addOptions, now time.Time, waiting func()) (string, keyset.Record, error) {
	label := strings.TrimSpace(opts.Label)
	if label == "" {
		return "", keyset.Record{}, inputError("a label is required (--label): name who or what will use the key")
	}
	expiresAt, err := expiryFlag(opts.Expires, now)
	if err != nil {
		return "", keyset.Record{}, err
	}
	scopes, err := normalizeScopes(opts.Scopes)
	if err != nil {
		return "", keyset.Record{}, err
	}
	raw, err := generateKey()
	if err != nil {
		return "", keyset.Record{}, err
	}
	var added keyset.Record
	err = st.Edit(stores.Edit{Create: true, OnlyAdds: true, Waiting: waiting, Change: func(doc *keyfile.Doc) error {
		r, err := newKeyRecord(doc, raw, keyset.Record{Label: label, Scopes: scopes, ExpiresAt: keyset.Timestamp(expiresAt)}, now)
		if err != nil {
			return err
		}
		added = r.Record
		doc.Records = append(doc.Records, r)
		return nil
	}})
	if err != nil {
		return "", keyset.Record{}, err
	}
	return raw, added, nil
}

// newKeyRecord makes the record of the new key raw from rec (its label,
// scopes, expiry, rotated_from): an id that no record of doc has yet (doc is
// the file as it is now, under the lock: a collision is next to impossible,
// but a duplicate id would make the whole file unloadable), the key's hash
// and prefix, and created_at now. The members come in the reference
// application's order, then the optional ones only when they are given.
func newKeyRecord(doc *keyfile.Doc, raw string, rec keyset.Record, now time.Time) (keyfile.Record, error) {
	rec.ID = uuid.NewString()
	for slices.ContainsFunc(doc.Records, func(r keyfile.Record) bool { return r.ID == rec.ID }) {
		rec.ID = uuid.NewString()
	}
	rec.KeyHash, rec.KeyPrefix, rec.CreatedAt = keyset.HashKey(raw), raw[:11], keyset.Timestamp(&now)
	return keyfile.NewRecord(rec)
}

// printNewKey writes a new key alone on stdout, where `KEY=$(...)` takes it,
// and what to know about it on stderr: heading, its record's details, then
// more lines if any.
func printNewKey(stdout, stderr io.Writer, raw string, rec keyset.Record, heading string, more ...string) error {
	if _, err := fmt.Fprintln(stdout, raw); err != nil {
		return err
	}
	expiry := "never"
	if rec.ExpiresAt != nil {
		expiry = *rec.ExpiresAt
	}
	fmt.Fprintln(stderr, heading)
	fmt.Fprintf(stderr, "  id:      %s\n", rec.ID)
	fmt.Fprintf(stderr, "  prefix:  %s\n", rec.KeyPrefix)
	fmt.Fprintf(stderr, "  expires: %s\n", expiry)
	fmt.Fprintf(stderr, "  scopes:  %s\n", printable(scopeText(rec.Scopes)))
	for _, line := range more {
		fmt.Fprintln(stderr, line)
	}
	fmt.Fprintln(stderr, "The key is the line written to stdout. Store it now: it cannot be shown again.")
	return nil
}

// sayWaiting tells the user, on w, that the key file's lock is held by
// another writer and the command waits for it.
func sayWaiting(w io.Writer, st stores.RecordStore) func() {
	return func() {
		fmt.Fprintf(w, "Waiting for the lock on %s: another writer holds it (a running Caddy writing last-used times, or another caddy apikey command)...\n", st)
	}
}

// generateKey returns a new raw key: "sk_" and 32 random bytes in URL-safe
// base64 without padding (43 characters), as the reference application's
// secrets.token_urlsafe(32) makes them.
func generateKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating key: %w", err)
	}
	return "sk_" + base64.RawURLEncoding.EncodeToString(b), nil
}

// expiryFlag reads an optional --expires: nil when it is not given.
func expiryFlag(s string, now time.Time) (*time.Time, error) {
	if s == "" {
		return nil, nil
	}
	t, err := parseExpiry(s, now)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// parseExpiry reads --expires: a duration from now (90d, 12h, 30m or any Go
// duration) or a time (RFC 3339, or ISO 8601 as the key file holds them, or
// a date). The result must lie in the future.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := keyset.ParseTimestamp(s); err == nil {
		if !t.After(now) {
			return time.Time{}, inputError(fmt.Sprintf("--expires %s is in the past; give a future time or a duration such as 90d", s))
		}
		return t, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil {
		return time.Time{}, inputError(fmt.Sprintf("--expires %q: want a duration from now such as 90d, 12h or 30m, or a time such as 2027-01-31T00:00:00Z", s))
	}
	if d <= 0 {
		return time.Time{}, inputError(fmt.Sprintf("--expires %s: the duration must be positive", s))
	}
	return now.Add(d), nil
}

// normalizeScopes splits comma-separated scopes, drops duplicates and checks
// each scope as the key file loader does.
func normalizeScopes(in []string) ([]string, error) {
	var out []string
	for _, arg := range in {
		for s := range strings.SplitSeq(arg, ",") {
			s = strings.TrimSpace(s)
			if err := keyset.CheckScope(s); err != nil {
				return nil, inputError(fmt.Sprintf("--scope %q: %v", arg, err))
			}
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// keyStatus is the state of a key at a given time, by the handler's own
// rules, so that list and the handler never disagree.
func keyStatus(k *keyset.Key, now time.Time) string {
	switch {
	case k.Revoked():
		return "revoked"
	case k.Expired(now.UnixNano()):
		return "expired"
	}
	return "active"
}

// listedKey is one key as `caddy apikey list --json` prints it: the record
// without its hash, plus its status. rotated_from is null but for a key
// that rotate made.
type listedKey struct {
	ID          string   `json:"id"`
	Label       string   `json:"label"`
	KeyPrefix   string   `json:"key_prefix"`
	CreatedAt   *string  `json:"created_at"`
	LastUsedAt  *string  `json:"last_used_at"`
	ExpiresAt   *string  `json:"expires_at"`
	RevokedAt   *string  `json:"revoked_at"`
	Scopes      []string `json:"scopes"`
	RotatedFrom *string  `json:"rotated_from"`
	Status      string   `json:"status"`
}

// listedKeys returns the store's records as list --json and the admin API
// show them: without hashes, with their status.
func listedKeys(st stores.RecordStore, now time.Time) ([]listedKey, error) {
	records, ks, err := st.Read()
	if err != nil {
		return nil, err
	}
	out := make([]listedKey, len(records))
	for i := range records {
		out[i] = newListedKey(&records[i].Record, ks.At(i), now)
	}
	return out, nil
}

// newListedKey is rec, whose key is k, as list --json shows it.
func newListedKey(rec *keyset.Record, k *keyset.Key, now time.Time) listedKey {
	l := listedKey{
		ID: rec.ID, Label: rec.Label, KeyPrefix: rec.KeyPrefix,
		CreatedAt: rec.CreatedAt, LastUsedAt: rec.LastUsedAt,
		ExpiresAt: rec.ExpiresAt, RevokedAt: rec.RevokedAt,
		Scopes: rec.Scopes, RotatedFrom: rec.RotatedFrom, Status: k.State(now).String(),
	}
	if l.Scopes == nil {
		l.Scopes = []string{}
	}
	return l
}

// listKeys writes the keys of a store to w, as a table or as JSON.
func listKeys(w io.Writer, st stores.RecordStore, asJSON bool, now time.Time) error {
	keys, err := listedKeys(st, now)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(keys)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLABEL\tPREFIX\tCREATED\tLAST USED\tEXPIRES\tSCOPES\tSTATUS")
	for i := range keys {
		k := &keys[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			printable(k.ID), printable(k.Label), printable(k.KeyPrefix),
			displayTime(k.CreatedAt, "-"), displayTime(k.LastUsedAt, "never"),
			displayTime(k.ExpiresAt, "never"), printable(scopeText(k.Scopes)), k.Status)
	}
	return tw.Flush()
}

// scopeText is how add and list show a key's scopes: comma-joined, as
// {http.auth.user.scopes} holds them, or "none".
func scopeText(scopes []string) string {
	if len(scopes) == 0 {
		return "none"
	}
	return strings.Join(scopes, ",")
}

// displayTime shortens a stored time for the table: UTC, to the second.
func displayTime(s *string, none string) string {
	if s == nil || *s == "" {
		return none
	}
	t, err := keyset.ParseTimestamp(*s)
	if err != nil {
		return printable(*s)
	}
	return t.UTC().Format("2006-01-02T15:04:05Z")
}

// printable keeps a table cell on its line and in its column: a label with a
// tab or a newline (or a terminal escape) must not forge other rows. It
// also shows as '?' the invisible format characters (Unicode's Cf: the
// bidirectional overrides, embeddings and isolates U+202A-U+202E and
// U+2066-U+2069, the marks U+200E, U+200F and U+061C, the zero-width
// characters, U+FEFF) and the line and paragraph separators, which can
// make a label read as another one or reorder the cells after it.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return '?'
		}
		return r
	}, s)
}

// minIDPrefix is the fewest leading characters of an id that revoke and
// rotate accept as a name for a key, so that a slip of the keyboard does not
// revoke or rotate some key that happens to match.
const minIDPrefix = 4

// revokeKey sets revoked_at on the one key that ref names: its full id, its
// key_prefix, or a prefix of its id of at least minIDPrefix characters.
func revokeKey(w, stderr io.Writer, st stores.RecordStore, ref string, now time.Time) error {
	revoked, alreadyRevoked, err := revokeNamedKey(st, ref, now, sayWaiting(stderr, st))
	if err != nil {
		return err
	}
	id, label, prefix := printable(revoked.ID), printable(revoked.Label), printable(revoked.KeyPrefix)
	if alreadyRevoked != "" {
		_, err = fmt.Fprintf(w, "Key %s %q (%s) was already revoked at %s; nothing changed.\n", id, label, prefix, alreadyRevoked)
		return err
	}
	_, err = fmt.Fprintf(w, "Revoked key %s %q (%s) at %s.\n", id, label, prefix, keyset.FormatTimestamp(now))
	return err
}

// revokeNamedKey revokes the one key that ref names. It returns the record
// as it was and, if it was revoked already (nothing changes then), when.
func revokeNamedKey(st stores.RecordStore, ref string, now time.Time, waiting func()) (revoked keyset.Record, alreadyRevoked string, err error) {
	err = editNamedKey(st, ref, "revoke", true, waiting, func(doc *keyfile.Doc, i int) error {
		rec := &doc.Records[i]
		revoked = rec.Record
		if rec.RevokedAt != nil {
			// Keep the first revocation time: it is the one that matters
			// for an audit.
			alreadyRevoked = *rec.RevokedAt
			return keyfile.ErrNoChange
		}
		return rec.Set("revoked_at", keyset.FormatTimestamp(now))
	})
	return revoked, alreadyRevoked, err
}

// editNamedKey is what the operations that change one existing key
// (revoke, rotate) share: it finds the one record that ref names (its full
// id, its key_prefix, or a prefix of its id of at least minIDPrefix
// characters) in the store as it is under the lock, and calls edit with the
// document and the record's index, in one atomic edit. The store must exist.
// verb names the operation in the messages ("revoke", "rotate"). edit may
// return errNoChange.
//
// alone says that edit changes the named record and needs no other: a
// store may then read that record alone when ref is its id.
func editNamedKey(st stores.RecordStore, ref, verb string, alone bool, waiting func(), edit func(doc *keyfile.Doc, i int) error) error {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return inputError(fmt.Sprintf("name the key to %s by its id or key_prefix", verb))
	}
	e := stores.Edit{Waiting: waiting}
	if alone {
		e.OnlyID = ref
	}
	e.Change = func(doc *keyfile.Doc) error {
		i, err := findNamedRecord(doc.Records, st, ref)
		if err != nil {
			return err
		}
		return edit(doc, i)
	}
	return st.Edit(e)
}

// findNamedRecord returns the index of the one record that ref names, or
// an error that says why there is none: no match, or several (listed one
// per line, for the user to pick the full id of one).
func findNamedRecord(records []keyfile.Record, st stores.RecordStore, ref string) (int, error) {
	matches := matchRecords(records, ref)
	switch len(matches) {
	case 0:
		if len(ref) < minIDPrefix {
			return -1, &refError{code: "KEY_NOT_FOUND", msg: fmt.Sprintf("no key in %s has the id or key_prefix %q; the start of an id must be at least %d characters long (see caddy apikey list %s)", st, ref, minIDPrefix, st.Flags())}
		}
		return -1, &refError{code: "KEY_NOT_FOUND", msg: fmt.Sprintf("no key in %s has the id or key_prefix %q (see caddy apikey list %s)", st, ref, st.Flags())}
	case 1:
		return matches[0], nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%q matches %d keys in %s; give the full id of one of them:", ref, len(matches), st)
	for _, i := range matches {
		rec := &records[i]
		fmt.Fprintf(&b, "\n  %s  %s  %s", printable(rec.ID), printable(rec.KeyPrefix), printable(rec.Label))
	}
	return -1, &refError{code: "AMBIGUOUS_REF", msg: b.String()}
}

// refError is a key operation refused because of the key it names: none
// matches (KEY_NOT_FOUND), several do (AMBIGUOUS_REF), or it is not in a
// state the operation applies to (KEY_NOT_ACTIVE, ALREADY_ROTATED).
type refError struct{ code, msg string }

func (e *refError) Error() string { return e.msg }

// inputError is a key operation refused because of what it was asked: a
// missing label, a bad expiry, scope or grace.
type inputError string

func (e inputError) Error() string { return string(e) }

// defaultGrace is how long rotate leaves the old key valid when --grace is
// not given: a day, time enough for its users to pick up the new key
// without leaving a key that is meant to go in force for long.
const defaultGrace = "24h"

// rotateOptions are the flags and argument of `caddy apikey rotate`.
type rotateOptions struct {
	Ref     string // the key to replace: id, key_prefix or id prefix
	Grace   string // how long the old key stays valid, e.g. 24h or 7d; "" for defaultGrace
	Expires string // the new key's expiry, as for add; "" for never
}

// rotateKey replaces the key that opts.Ref names with a new one, in one
// locked, atomic edit of the key file: it appends a record for the new key
// (the old one's label, scopes and unknown members; "rotated_from": the old
// id) and sets the old key's expires_at to now + grace, unless it expires
// earlier, or with a grace of 0 its revoked_at to now. It writes the new
// raw key, alone on its line, to stdout, and everything else to stderr, as
// add does.
func rotateKey(stdout, stderr io.Writer, st stores.RecordStore, opts rotateOptions, now time.Time) error {
	r, err := rotateNamedKey(st, opts, now, sayWaiting(stderr, st))
	if err != nil {
		return err
	}
	return printNewKey(stdout, stderr, r.raw, r.added, fmt.Sprintf("Rotated key %q in %s", printable(r.old.Label), st),
		fmt.Sprintf("  replaces %s (%s), which %s", printable(r.old.ID), printable(r.old.KeyPrefix), r.oldNote))
}

// rotation is what a rotation did: the new raw key, the new record, the old
// one as it was, and what became of it.
type rotation struct {
	raw          string
	added, old   keyset.Record
	oldNote      string
	oldExpiresAt *string // the old key's expires_at after the rotation
	oldRevokedAt *string // its revoked_at after the rotation
}

// rotateNamedKey replaces the key that opts.Ref names with a new one (see
// rotateKey).
func rotateNamedKey(st stores.RecordStore, opts rotateOptions, now time.Time, waiting func()) (rotation, error) {
	var r rotation
	if strings.TrimSpace(opts.Grace) == "" {
		opts.Grace = defaultGrace
	}
	grace, err := parseGrace(opts.Grace)
	if err != nil {
		return r, err
	}
	expiresAt, err := expiryFlag(opts.Expires, now)
	if err != nil {
		return r, err
	}
	if r.raw, err = generateKey(); err != nil {
		return r, err
	}
	// Not alone: a rotation checks that no other record replaces the key.
	err = editNamedKey(st, opts.Ref, "rotate", false, waiting, func(doc *keyfile.Doc, i int) error {
		rec := &doc.Records[i]
		r.old = rec.Record
		k, _, err := keyset.FromRecord(&rec.Record)
		if err != nil {
			return err // cannot happen: the file was checked whole
		}
		who := fmt.Sprintf("key %s %q (%s)", printable(rec.ID), printable(rec.Label), printable(rec.KeyPrefix))
		switch k.State(now) {
		case keyset.Revoked:
			return &refError{code: "KEY_NOT_ACTIVE", msg: fmt.Sprintf("%s was revoked at %s; only an active key can be rotated (make a new one with caddy apikey add)", who, printable(*rec.RevokedAt))}
		case keyset.Expired:
			return &refError{code: "KEY_NOT_ACTIVE", msg: fmt.Sprintf("%s expired at %s; only an active key can be rotated (make a new one with caddy apikey add)", who, printable(*rec.ExpiresAt))}
		}
		// A second rotation of one key would leave two replacements in
		// force: the one to rotate now is the replacement.
		if j := slices.IndexFunc(doc.Records, func(r keyfile.Record) bool { return r.RotatedFrom != nil && *r.RotatedFrom == rec.ID }); j >= 0 {
			next := &doc.Records[j]
			return &refError{code: "ALREADY_ROTATED", msg: fmt.Sprintf("%s was already rotated: key %s (%s) replaces it; rotate that one instead, or revoke the old one to end its grace", who, printable(next.ID), printable(next.KeyPrefix))}
		}
		oldID := strings.Clone(rec.ID)
		next, err := newKeyRecord(doc, r.raw, keyset.Record{Label: rec.Label, Scopes: slices.Clone(rec.Scopes), ExpiresAt: keyset.Timestamp(expiresAt), RotatedFrom: &oldID}, now)
		if err != nil {
			return err
		}
		r.added = next.Record
		// The members this plugin does not know, as they are, in their
		// order, after the known ones.
		next.AddMembers(rec.UnknownMembers()...)

		// The old key: revoked now, or valid until the grace ends but
		// never longer than it was.
		switch end := now.Add(grace); {
		case grace == 0:
			if err := rec.Set("revoked_at", *r.added.CreatedAt); err != nil {
				return err
			}
			r.oldNote = "revoked at " + *r.added.CreatedAt
		case expiresBefore(k, keyset.UnixNanoClamped(end)):
			r.oldNote = fmt.Sprintf("still expires at %s, before the %s grace ends", printable(*rec.ExpiresAt), strings.TrimSpace(opts.Grace))
		default:
			until := keyset.FormatTimestamp(end)
			if err := rec.Set("expires_at", until); err != nil {
				return err
			}
			r.oldNote = fmt.Sprintf("expires at %s (%s grace)", until, strings.TrimSpace(opts.Grace))
		}
		r.oldExpiresAt, r.oldRevokedAt = rec.ExpiresAt, rec.RevokedAt
		// Last: appending may move the records, and rec with them.
		doc.Records = append(doc.Records, next)
		return nil
	})
	return r, err
}

// parseGrace reads --grace: a duration (24h, 30m, 7d), 0 for none.
func parseGrace(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	d, err := caddy.ParseDuration(s)
	switch {
	case err != nil:
		return 0, inputError(fmt.Sprintf("--grace %q: want a duration such as 24h, 30m or 7d, or 0 to revoke the old key at once", s))
	case d < 0:
		return 0, inputError(fmt.Sprintf("--grace %s: the duration must not be negative; 0 revokes the old key at once", s))
	}
	return d, nil
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
			len(ref) >= minIDPrefix && len(id) > len(ref) && strings.EqualFold(id[:len(ref)], ref):
			partial = append(partial, i)
		}
	}
	if len(exact) > 0 {
		return exact
	}
	return partial
}

// expiresBefore reports whether key k expires at or before t (unix
// nanoseconds).
func expiresBefore(k *keyset.Key, t int64) bool {
	at, ok := k.ExpiresAt()
	return ok && at <= t
}
