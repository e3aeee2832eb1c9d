package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"

	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// addKey creates a key, adds its record to the store (which may make a
// missing key file or key set only if it was opened with --create: see
// cliFileRecords and redisRecords.mayCreate) and writes the raw key, alone
// on its line, to stdout.
// Everything else goes to stderr, so that `KEY=$(caddy apikey add ...)`
// captures the key and nothing more.
func addKey(stdout, stderr io.Writer, st stores.RecordStore, opts keyops.AddOptions, now time.Time) error {
	raw, added, err := keyops.Create(st, opts, now, sayWaiting(stderr, st))
	if err != nil {
		return err
	}
	return printNewKey(stdout, stderr, raw, added, fmt.Sprintf("Created key %q in %s", keyops.Printable(added.Label), st))
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
	fmt.Fprintf(stderr, "  scopes:  %s\n", keyops.Printable(scopeText(rec.Scopes)))
	if rec.RateLimits != nil {
		fmt.Fprintf(stderr, "  rate limits: %s\n", limitsText(rec.RateLimits))
	}
	if rec.Quota != nil {
		fmt.Fprintf(stderr, "  quota:   %s\n", quotaText(rec.Quota))
	}
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

// listKeys writes the keys of a store to w, as a table or as JSON; the
// quota state that cannot be read is said once on stderr.
func listKeys(w, stderr io.Writer, st stores.RecordStore, asJSON bool, now time.Time) error {
	keys, err := keyops.List(st, now)
	if err != nil {
		return err
	}
	for i := range keys {
		if e := keys[i].QuotaStateError; e != "" {
			fmt.Fprintf(stderr, "The quota state of %s cannot be read, so the use of the keys' quotas is not shown: %s\n", st, keyops.Printable(e))
			break
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(keys)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLABEL\tPREFIX\tCREATED\tLAST USED\tEXPIRES\tSCOPES\tRATE LIMITS\tQUOTA\tUSED/LEFT\tSTATUS")
	for i := range keys {
		k := &keys[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			keyops.Printable(k.ID), keyops.Printable(k.Label), keyops.Printable(k.KeyPrefix),
			displayTime(k.CreatedAt, "-"), displayTime(k.LastUsedAt, "never"),
			displayTime(k.ExpiresAt, "never"), keyops.Printable(scopeText(k.Scopes)), limitsText(k.RateLimits),
			quotaText(k.Quota), usedLeftText(k), k.Status)
	}
	return tw.Flush()
}

// quotaText is how add, list and quota show a key's quota: 10000/month,
// or "-" for none.
func quotaText(q *keyset.QuotaSpec) string {
	if q == nil {
		return "-"
	}
	return strconv.FormatInt(q.Requests, 10) + "/" + keyops.Printable(q.Period)
}

// usedLeftText is list's USED/LEFT of a key: the units of its quota used
// this period and those left ("1200/8800"); "-" for a key without a quota
// or a store that keeps no quota state, "?" when the state cannot be
// read.
func usedLeftText(k *keyops.Listed) string {
	switch {
	case k.QuotaState != nil:
		return strconv.FormatInt(k.QuotaState.Used, 10) + "/" + strconv.FormatInt(k.QuotaState.Remaining, 10)
	case k.QuotaStateError != "":
		return "?"
	}
	return "-"
}

// limitsText is how list and limits show a key's own rate limits:
// "100/1m,10/1s", "none" for an empty list, "default" for none of its own.
func limitsText(limits []keyset.RateLimit) string {
	switch {
	case limits == nil:
		return "default"
	case len(limits) == 0:
		return "none"
	}
	parts := make([]string, len(limits))
	for i, l := range limits {
		parts[i] = strconv.FormatInt(l.Requests, 10) + "/" + keyops.Printable(l.Window)
	}
	return strings.Join(parts, ",")
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
		return keyops.Printable(*s)
	}
	return t.UTC().Format("2006-01-02T15:04:05Z")
}

// revokeKey sets revoked_at on the one key that ref names: its full id, its
// key_prefix, or a prefix of its id of at least keyops.MinIDPrefix characters.
func revokeKey(w, stderr io.Writer, st stores.RecordStore, ref string, now time.Time) error {
	revoked, alreadyRevoked, err := keyops.Revoke(st, ref, now, sayWaiting(stderr, st))
	if err != nil {
		return err
	}
	id, label, prefix := keyops.Printable(revoked.ID), keyops.Printable(revoked.Label), keyops.Printable(revoked.KeyPrefix)
	if alreadyRevoked != "" {
		_, err = fmt.Fprintf(w, "Key %s %q (%s) was already revoked at %s; nothing changed.\n", id, label, prefix, alreadyRevoked)
		return err
	}
	_, err = fmt.Fprintf(w, "Revoked key %s %q (%s) at %s.\n", id, label, prefix, keyset.FormatTimestamp(now))
	return err
}

// rotateKey replaces the key that opts.Ref names with a new one, in one
// locked, atomic edit of the key file: it appends a record for the new key
// (the old one's label, scopes and unknown members; "rotated_from": the old
// id) and sets the old key's expires_at to now + grace, unless it expires
// earlier, or with a grace of 0 its revoked_at to now. It writes the new
// raw key, alone on its line, to stdout, and everything else to stderr, as
// add does.
func rotateKey(stdout, stderr io.Writer, st stores.RecordStore, opts keyops.RotateOptions, now time.Time) error {
	r, err := keyops.Rotate(st, opts, now, sayWaiting(stderr, st))
	if err != nil {
		return err
	}
	return printNewKey(stdout, stderr, r.Raw, r.Added, fmt.Sprintf("Rotated key %q in %s", keyops.Printable(r.Old.Label), st),
		fmt.Sprintf("  replaces %s (%s), which %s", keyops.Printable(r.Old.ID), keyops.Printable(r.Old.KeyPrefix), r.OldNote))
}

// printAudit writes audit entries to w, as a table or as JSON.
func printAudit(w io.Writer, entries []audit.Entry, asJSON bool) error {
	if asJSON {
		if entries == nil {
			entries = []audit.Entry{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(entries)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tACTION\tID\tLABEL\tPREFIX\tWHO\tCHANGES")
	for i := range entries {
		e := &entries[i]
		changes, _ := json.Marshal(e.Changes)
		if e.Changes == nil {
			changes = []byte("-")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			displayTime(&e.Time, "-"), keyops.Printable(e.Action), keyops.Printable(e.KeyID), keyops.Printable(e.Label),
			keyops.Printable(e.KeyPrefix), keyops.Printable(e.Who.String()), keyops.Printable(string(changes)))
	}
	return tw.Flush()
}
