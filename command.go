package apikey

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// The `caddy apikey` commands manage a key file so that operators never edit
// its JSON by hand. Writes go through updateKeyFile, under the same lock and
// with the same re-read and atomic replace as the usage writer of a running
// Caddy, so neither loses the other's changes, and the running Caddy picks
// them up at its next reload_interval.

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "apikey",
		Usage: "add|list|revoke|rotate|hash [flags]",
		Short: "Manages the keys of an apikey key file",
		Long: `
Creates, lists, revokes and rotates the API keys of a key file used by the
apikey handler, and hashes keys for files kept by hand.

A running Caddy picks up the changes within its reload_interval (1s by
default), without a config reload. The commands and a running Caddy lock the
file while they write it, so neither loses the other's updates.

  caddy apikey add    --file keys.json --label "CI deploy" [--expires 90d] [--scope read]...
  caddy apikey list   --file keys.json [--json]
  caddy apikey revoke --file keys.json <id|key_prefix>
  caddy apikey rotate --file keys.json [--grace 24h] <id|key_prefix>
  caddy apikey hash   < raw-key.txt
`,
		CobraFunc: func(cmd *cobra.Command) {
			add := &cobra.Command{
				Use:   "add --file <keys.json> --label <name> [--expires <90d|RFC3339>] [--scope <scope>]...",
				Short: "Creates a key and prints it, once",
				Long: `
Creates a key (sk_ followed by 32 random bytes in URL-safe base64), stores
only its SHA-256 hash and metadata in the key file, and prints the key on
stdout, alone on its line, so that scripts can capture it. It cannot be shown
again. Details go to stderr. The file is created (mode 0600) if it does not
exist.

--expires takes a duration from now (90d, 12h, 30m, 1h30m) or a time
(2027-01-31T00:00:00Z, 2027-01-31). Without it the key never expires.

--scope may be repeated, or given a comma-separated list; the key then holds
those scopes, for routes whose apikey directive requires them.
`,
				Example: `  KEY=$(caddy apikey add --file keys.json --label "CI deploy" --expires 90d --scope deploy)`,
				Args:    cobra.NoArgs,
				RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
					fl := cmd.Flags()
					file, _ := fl.GetString("file")
					label, _ := fl.GetString("label")
					expires, _ := fl.GetString("expires")
					scopes, _ := fl.GetStringSlice("scope")
					return addKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), addOptions{
						File: file, Label: label, Expires: expires, Scopes: scopes,
					}, time.Now())
				}),
			}
			add.Flags().StringP("file", "f", "", "Path to the key file (required)")
			add.Flags().StringP("label", "l", "", "A name for the key, e.g. who or what uses it (required)")
			add.Flags().StringP("expires", "e", "", "Expiry: a duration from now (90d, 12h) or an RFC 3339 time")
			add.Flags().StringSliceP("scope", "s", nil, "A scope the key holds (repeatable)")
			cmd.AddCommand(add)

			list := &cobra.Command{
				Use:   "list --file <keys.json> [--json]",
				Short: "Lists the keys of a key file",
				Long: `
Lists the keys of a key file: id, label, prefix, created, last used, expires,
scopes and status (active, expired or revoked). Hashes are never shown.
--json prints a JSON array for scripts. The file is only read.
`,
				Args: cobra.NoArgs,
				RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
					file, _ := cmd.Flags().GetString("file")
					asJSON, _ := cmd.Flags().GetBool("json")
					return listKeys(cmd.OutOrStdout(), file, asJSON, time.Now())
				}),
			}
			list.Flags().StringP("file", "f", "", "Path to the key file (required)")
			list.Flags().Bool("json", false, "Print a JSON array instead of a table")
			cmd.AddCommand(list)

			revoke := &cobra.Command{
				Use:   "revoke --file <keys.json> <id|key_prefix>",
				Short: "Revokes a key",
				Long: `
Sets revoked_at on one key; the record stays in the file for audit. The key is
named by its id, its key_prefix (e.g. sk_AbCdEfGh) or the first characters of
its id (at least 4). A name that matches more than one key is an error that
lists them. Revoking a key that is already revoked changes nothing and keeps
its first revoked_at.
`,
				Args: cobra.ExactArgs(1),
				RunE: runWithExitCode(func(cmd *cobra.Command, args []string) error {
					file, _ := cmd.Flags().GetString("file")
					return revokeKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), file, args[0], time.Now())
				}),
			}
			revoke.Flags().StringP("file", "f", "", "Path to the key file (required)")
			cmd.AddCommand(revoke)

			rotate := &cobra.Command{
				Use:   "rotate --file <keys.json> [--grace <24h>] [--expires <90d|RFC3339>] <id|key_prefix>",
				Short: "Replaces a key with a new one, the old one kept for a grace period",
				Long: `
Makes a new key to replace the one named (by its id, its key_prefix or the
first 4 or more characters of its id, as for revoke), and prints the new key
on stdout, alone on its line, as add does. It cannot be shown again. Details
go to stderr.

The new record has the old one's label and scopes, and its members that this
plugin does not know, copied as they are; a new id and key, created_at now,
last_used_at null, and "rotated_from": the old key's id.

The old key stays valid for the grace period, so that its users can switch
to the new one: its expires_at becomes now + --grace (24h by default), or
stays as it is if it is earlier. --grace 0 revokes the old key at once.
A revoked or expired key cannot be rotated (make a new one with add), nor
one already rotated (rotate its replacement).

--expires sets the new key's expiry as for add; without it the new key never
expires.

Both changes are one atomic write of the key file: the new key and the old
key's expiry take effect together, within the running Caddy's
reload_interval.
`,
				Example: `  KEY=$(caddy apikey rotate --file keys.json --grace 24h sk_AbCdEfGh)`,
				Args:    cobra.ExactArgs(1),
				RunE: runWithExitCode(func(cmd *cobra.Command, args []string) error {
					fl := cmd.Flags()
					file, _ := fl.GetString("file")
					grace, _ := fl.GetString("grace")
					expires, _ := fl.GetString("expires")
					return rotateKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), rotateOptions{
						File: file, Ref: args[0], Grace: grace, Expires: expires,
					}, time.Now())
				}),
			}
			rotate.Flags().StringP("file", "f", "", "Path to the key file (required)")
			rotate.Flags().StringP("grace", "g", defaultGrace, "How long the old key stays valid (e.g. 24h, 7d, 30m); 0 revokes it at once")
			rotate.Flags().StringP("expires", "e", "", "The new key's expiry: a duration from now (90d, 12h) or an RFC 3339 time")
			cmd.AddCommand(rotate)

			hash := &cobra.Command{
				Use:   "hash",
				Short: "Prints the key_hash of a key read on stdin",
				Long: `
Reads a raw key on stdin and prints its key_hash (SHA-256, lowercase hex), for
key files kept by hand. Surrounding white space and the final newline are
ignored. Reading from stdin keeps the key out of the shell history and the
process list.
`,
				Example: `  printf '%s' "$KEY" | caddy apikey hash`,
				Args:    cobra.NoArgs,
				RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
					return hashFromReader(cmd.InOrStdin(), cmd.OutOrStdout())
				}),
			}
			cmd.AddCommand(hash)
		},
	})
}

// runWithExitCode adapts a command to cobra. Unlike
// caddycmd.WrapCommandFuncForCobra, which hands an error to Caddy's logger
// (one JSON log line, its newlines escaped), it prints the error as plain
// lines on stderr, after the command's name:
//
//	caddy apikey revoke: "abcd" matches 2 keys in keys.json; give the full id of one of them:
//	  abcd1111-...  sk_AbCdEfGh  alpha
//	  abcd2222-...  sk_IjKlMnOp  beta
//
// The error is still returned, so that the process exits non-zero (1,
// caddy.ExitCodeFailedStartup, as Caddy's own commands do); cobra is told
// not to print it a second time.
func runWithExitCode(run func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := run(cmd, args)
		if err != nil {
			cmd.SilenceErrors = true
			cmd.SilenceUsage = true
			fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", cmd.CommandPath(), strings.TrimRight(err.Error(), "\n"))
		}
		return err
	}
}

// addOptions are the flags of `caddy apikey add`.
type addOptions struct {
	File    string
	Label   string
	Expires string   // a duration from now or a time; "" for never
	Scopes  []string // may hold comma-separated lists
}

// addKey creates a key, appends its record to the key file (creating the
// file if need be) and writes the raw key, alone on its line, to stdout.
// Everything else goes to stderr, so that `KEY=$(caddy apikey add ...)`
// captures the key and nothing more.
func addKey(stdout, stderr io.Writer, opts addOptions, now time.Time) error {
	if opts.File == "" {
		return errors.New("--file is required")
	}
	label := strings.TrimSpace(opts.Label)
	if label == "" {
		return errors.New("--label is required: name who or what will use the key")
	}
	expiresAt, err := expiryFlag(opts.Expires, now)
	if err != nil {
		return err
	}
	scopes, err := normalizeScopes(opts.Scopes)
	if err != nil {
		return err
	}

	raw, err := generateKey()
	if err != nil {
		return err
	}
	var added Record
	_, err = editKeyFile(opts.File, keyFileEdit{create: true, waiting: sayWaiting(stderr, opts.File), edit: func(doc *keyDoc) error {
		r, err := newKeyRecord(doc, raw, Record{Label: label, Scopes: scopes, ExpiresAt: timestamp(expiresAt)}, now)
		if err != nil {
			return err
		}
		added = r.Record
		doc.records = append(doc.records, r)
		return nil
	}})
	if err != nil {
		return err
	}
	return printNewKey(stdout, stderr, raw, added, fmt.Sprintf("Created key %q in %s", label, opts.File))
}

// newKeyRecord makes the record of the new key raw from rec (its label,
// scopes, expiry, rotated_from): an id that no record of doc has yet (doc is
// the file as it is now, under the lock: a collision is next to impossible,
// but a duplicate id would make the whole file unloadable), the key's hash
// and prefix, and created_at now. The members come in the reference
// application's order, then the optional ones only when they are given.
func newKeyRecord(doc *keyDoc, raw string, rec Record, now time.Time) (docRecord, error) {
	rec.ID = uuid.NewString()
	for slices.ContainsFunc(doc.records, func(r docRecord) bool { return r.ID == rec.ID }) {
		rec.ID = uuid.NewString()
	}
	rec.KeyHash, rec.KeyPrefix, rec.CreatedAt = hashKey(raw), raw[:11], timestamp(&now)
	return newDocRecord(rec)
}

// timestamp formats an optional time as the key file holds it.
func timestamp(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := formatTimestamp(*t)
	return &s
}

// printNewKey writes a new key alone on stdout, where `KEY=$(...)` takes it,
// and what to know about it on stderr: heading, its record's details, then
// more lines if any.
func printNewKey(stdout, stderr io.Writer, raw string, rec Record, heading string, more ...string) error {
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
func sayWaiting(w io.Writer, path string) func() {
	return func() {
		fmt.Fprintf(w, "Waiting for the lock on %s: another writer holds it (a running Caddy writing last-used times, or another caddy apikey command)...\n", path)
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
	if t, err := parseTimestamp(s); err == nil {
		if !t.After(now) {
			return time.Time{}, fmt.Errorf("--expires %s is in the past; give a future time or a duration such as 90d", s)
		}
		return t, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--expires %q: want a duration from now such as 90d, 12h or 30m, or a time such as 2027-01-31T00:00:00Z", s)
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("--expires %s: the duration must be positive", s)
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
			if err := checkScope(s); err != nil {
				return nil, fmt.Errorf("--scope %q: %v", arg, err)
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
func keyStatus(k *Key, now time.Time) string {
	switch {
	case k.revoked:
		return "revoked"
	case k.expired(now.UnixNano()):
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

// readRecords reads and validates a key file without taking its lock: the
// file is always replaced whole, so a reader sees one version or another.
// It validates the file as the handler does, so that a file list shows is
// one the handler loads, and returns the records with their keys (in the
// same order).
func readRecords(path string) ([]docRecord, *KeySet, error) {
	if path == "" {
		return nil, nil, errors.New("--file is required")
	}
	data, _, err := readKeyFile(path)
	if err != nil {
		return nil, nil, &keyFileError{path: path, err: err}
	}
	doc, ks, err := parseKeyFile(data)
	if err != nil {
		return nil, nil, &keyFileError{path: path, err: err}
	}
	return doc.records, ks, nil
}

// listKeys writes the keys of a key file to w, as a table or as JSON.
func listKeys(w io.Writer, path string, asJSON bool, now time.Time) error {
	records, ks, err := readRecords(path)
	if err != nil {
		return err
	}
	if asJSON {
		out := make([]listedKey, len(records))
		for i := range records {
			rec := &records[i]
			out[i] = listedKey{
				ID: rec.ID, Label: rec.Label, KeyPrefix: rec.KeyPrefix,
				CreatedAt: rec.CreatedAt, LastUsedAt: rec.LastUsedAt,
				ExpiresAt: rec.ExpiresAt, RevokedAt: rec.RevokedAt,
				Scopes: rec.Scopes, RotatedFrom: rec.RotatedFrom, Status: keyStatus(&ks.keys[i], now),
			}
			if out[i].Scopes == nil {
				out[i].Scopes = []string{}
			}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tLABEL\tPREFIX\tCREATED\tLAST USED\tEXPIRES\tSCOPES\tSTATUS")
	for i := range records {
		rec := &records[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			printable(rec.ID), printable(rec.Label), printable(rec.KeyPrefix),
			displayTime(rec.CreatedAt, "-"), displayTime(rec.LastUsedAt, "never"),
			displayTime(rec.ExpiresAt, "never"), printable(scopeText(rec.Scopes)), keyStatus(&ks.keys[i], now))
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
	t, err := parseTimestamp(*s)
	if err != nil {
		return printable(*s)
	}
	return t.UTC().Format("2006-01-02T15:04:05Z")
}

// printable keeps a table cell on its line and in its column: a label with a
// tab or a newline (or a terminal escape) must not forge other rows.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
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
func revokeKey(w, stderr io.Writer, path, ref string, now time.Time) error {
	var (
		revoked        Record
		alreadyRevoked string
	)
	err := editNamedKey(stderr, path, ref, "revoke", func(doc *keyDoc, i int) error {
		rec := &doc.records[i]
		revoked = rec.Record
		if rec.RevokedAt != nil {
			// Keep the first revocation time: it is the one that matters
			// for an audit.
			alreadyRevoked = *rec.RevokedAt
			return errNoChange
		}
		return rec.set("revoked_at", formatTimestamp(now))
	})
	if err != nil {
		return err
	}
	id, label, prefix := printable(revoked.ID), printable(revoked.Label), printable(revoked.KeyPrefix)
	if alreadyRevoked != "" {
		_, err = fmt.Fprintf(w, "Key %s %q (%s) was already revoked at %s; nothing changed.\n", id, label, prefix, alreadyRevoked)
		return err
	}
	_, err = fmt.Fprintf(w, "Revoked key %s %q (%s) at %s.\n", id, label, prefix, formatTimestamp(now))
	return err
}

// editNamedKey is what the commands that change one existing key (revoke,
// rotate) share: it finds the one record that ref names (its full id, its
// key_prefix, or a prefix of its id of at least minIDPrefix characters) in
// the key file at path, as the file is under the lock, and calls edit with
// the document and the record's index, in one locked, atomic edit (see
// editKeyFile). The file must exist. verb names the command in the
// messages ("revoke", "rotate"). edit may return errNoChange.
func editNamedKey(stderr io.Writer, path, ref, verb string, edit func(doc *keyDoc, i int) error) error {
	if path == "" {
		return errors.New("--file is required")
	}
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return fmt.Errorf("name the key to %s by its id or key_prefix", verb)
	}
	// These commands never create the file: say it is missing before
	// taking its lock (which would leave a lock file behind).
	if _, err := os.Stat(path); err != nil {
		return &keyFileError{path: path, err: err}
	}
	_, err := editKeyFile(path, keyFileEdit{waiting: sayWaiting(stderr, path), edit: func(doc *keyDoc) error {
		i, err := findNamedRecord(doc.records, path, ref)
		if err != nil {
			return err
		}
		return edit(doc, i)
	}})
	return err
}

// findNamedRecord returns the index of the one record that ref names, or
// an error that says why there is none: no match, or several (listed one
// per line, for the user to pick the full id of one).
func findNamedRecord(records []docRecord, path, ref string) (int, error) {
	matches := matchRecords(records, ref)
	switch len(matches) {
	case 0:
		if len(ref) < minIDPrefix {
			return -1, fmt.Errorf("no key in %s has the id or key_prefix %q; the start of an id must be at least %d characters long (see caddy apikey list --file %s)", path, ref, minIDPrefix, path)
		}
		return -1, fmt.Errorf("no key in %s has the id or key_prefix %q (see caddy apikey list --file %s)", path, ref, path)
	case 1:
		return matches[0], nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%q matches %d keys in %s; give the full id of one of them:", ref, len(matches), path)
	for _, i := range matches {
		rec := &records[i]
		fmt.Fprintf(&b, "\n  %s  %s  %s", printable(rec.ID), printable(rec.KeyPrefix), printable(rec.Label))
	}
	return -1, errors.New(b.String())
}

// defaultGrace is how long rotate leaves the old key valid when --grace is
// not given: a day, time enough for its users to pick up the new key
// without leaving a key that is meant to go in force for long.
const defaultGrace = "24h"

// rotateOptions are the flags and argument of `caddy apikey rotate`.
type rotateOptions struct {
	File    string
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
func rotateKey(stdout, stderr io.Writer, opts rotateOptions, now time.Time) error {
	if opts.File == "" {
		return errors.New("--file is required")
	}
	if strings.TrimSpace(opts.Grace) == "" {
		opts.Grace = defaultGrace
	}
	grace, err := parseGrace(opts.Grace)
	if err != nil {
		return err
	}
	expiresAt, err := expiryFlag(opts.Expires, now)
	if err != nil {
		return err
	}
	raw, err := generateKey()
	if err != nil {
		return err
	}

	var (
		old     Record // the replaced key, as it was
		added   Record // its replacement
		oldNote string // what became of the old key
	)
	err = editNamedKey(stderr, opts.File, opts.Ref, "rotate", func(doc *keyDoc, i int) error {
		rec := &doc.records[i]
		old = rec.Record
		var k Key
		if _, err := k.fill(&rec.Record); err != nil {
			return err // cannot happen: the file was checked whole
		}
		who := fmt.Sprintf("key %s %q (%s)", printable(rec.ID), printable(rec.Label), printable(rec.KeyPrefix))
		switch keyStatus(&k, now) {
		case "revoked":
			return fmt.Errorf("%s was revoked at %s; only an active key can be rotated (make a new one with caddy apikey add)", who, printable(*rec.RevokedAt))
		case "expired":
			return fmt.Errorf("%s expired at %s; only an active key can be rotated (make a new one with caddy apikey add)", who, printable(*rec.ExpiresAt))
		}
		// A second rotation of one key would leave two replacements in
		// force: the one to rotate now is the replacement.
		if j := slices.IndexFunc(doc.records, func(r docRecord) bool { return r.RotatedFrom != nil && *r.RotatedFrom == rec.ID }); j >= 0 {
			next := &doc.records[j]
			return fmt.Errorf("%s was already rotated: key %s (%s) replaces it; rotate that one instead, or revoke the old one to end its grace", who, printable(next.ID), printable(next.KeyPrefix))
		}
		oldID := strings.Clone(rec.ID)
		next, err := newKeyRecord(doc, raw, Record{Label: rec.Label, Scopes: slices.Clone(rec.Scopes), ExpiresAt: timestamp(expiresAt), RotatedFrom: &oldID}, now)
		if err != nil {
			return err
		}
		added = next.Record
		// The members this plugin does not know, as they are, in their
		// order, after the known ones. (Read from a copy: the old record
		// stays as its bytes if nothing changes it.)
		from := *rec
		from.split()
		for _, m := range from.members {
			if !slices.Contains(recordFields[:], m.name) {
				next.members = append(next.members, member{name: m.name, value: slices.Clone(m.value)})
			}
		}

		// The old key: revoked now, or valid until the grace ends but
		// never longer than it was.
		switch end := now.Add(grace); {
		case grace == 0:
			if err := rec.set("revoked_at", *added.CreatedAt); err != nil {
				return err
			}
			oldNote = "revoked at " + *added.CreatedAt
		case k.expires && k.expiresAt <= unixNanoClamped(end):
			oldNote = fmt.Sprintf("still expires at %s, before the %s grace ends", printable(*rec.ExpiresAt), strings.TrimSpace(opts.Grace))
		default:
			until := formatTimestamp(end)
			if err := rec.set("expires_at", until); err != nil {
				return err
			}
			oldNote = fmt.Sprintf("expires at %s (%s grace)", until, strings.TrimSpace(opts.Grace))
		}
		// Last: appending may move the records, and rec with them.
		doc.records = append(doc.records, next)
		return nil
	})
	if err != nil {
		return err
	}

	return printNewKey(stdout, stderr, raw, added, fmt.Sprintf("Rotated key %q in %s", printable(old.Label), opts.File),
		fmt.Sprintf("  replaces %s (%s), which %s", printable(old.ID), printable(old.KeyPrefix), oldNote))
}

// parseGrace reads --grace: a duration (24h, 30m, 7d), 0 for none.
func parseGrace(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	d, err := caddy.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("--grace %q: want a duration such as 24h, 30m or 7d, or 0 to revoke the old key at once", s)
	case d < 0:
		return 0, fmt.Errorf("--grace %s: the duration must not be negative; 0 revokes the old key at once", s)
	}
	return d, nil
}

// matchRecords returns the indexes of the records that ref names. A full
// id names its record alone, even if it is also a prefix of another id.
func matchRecords(records []docRecord, ref string) []int {
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

// maxKeyInput bounds what hash reads from stdin: a key is some tens of
// bytes, and a mistaken pipe should not fill the memory.
const maxKeyInput = 64 << 10

// hashFromReader reads one raw key from r and writes its key_hash to w.
func hashFromReader(r io.Reader, w io.Writer) error {
	data, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), maxKeyInput+1))
	if err != nil {
		return fmt.Errorf("reading the key from stdin: %w", err)
	}
	if len(data) > maxKeyInput {
		return errors.New("stdin holds more than 64 KiB; want one key")
	}
	key := strings.TrimSpace(string(data))
	switch {
	case key == "":
		return errors.New("no key on stdin; pipe the raw key in, e.g. printf '%s' \"$KEY\" | caddy apikey hash")
	case strings.ContainsAny(key, "\r\n"):
		return errors.New("stdin holds more than one line; want one key")
	}
	_, err = fmt.Fprintln(w, hashKey(key))
	return err
}
