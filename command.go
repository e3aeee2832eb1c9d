package apikey

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

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
					label, _ := fl.GetString("label")
					expires, _ := fl.GetString("expires")
					scopes, _ := fl.GetStringSlice("scope")
					return withRecordStore(cmd, func(st recordStore) error {
						return addKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, addOptions{
							Label: label, Expires: expires, Scopes: scopes,
						}, time.Now())
					})
				}),
			}
			storeFlags(add)
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
					asJSON, _ := cmd.Flags().GetBool("json")
					return withRecordStore(cmd, func(st recordStore) error {
						return listKeys(cmd.OutOrStdout(), st, asJSON, time.Now())
					})
				}),
			}
			storeFlags(list)
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
					return withRecordStore(cmd, func(st recordStore) error {
						return revokeKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, args[0], time.Now())
					})
				}),
			}
			storeFlags(revoke)
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
					grace, _ := fl.GetString("grace")
					expires, _ := fl.GetString("expires")
					return withRecordStore(cmd, func(st recordStore) error {
						return rotateKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, rotateOptions{
							Ref: args[0], Grace: grace, Expires: expires,
						}, time.Now())
					})
				}),
			}
			storeFlags(rotate)
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

// storeFlags adds the flags that name the key store a command works on.
func storeFlags(cmd *cobra.Command) {
	cmd.Flags().StringP("file", "f", "", "Path to the key file")
}

// withRecordStore runs fn on the key store that the command's flags name.
func withRecordStore(cmd *cobra.Command, fn func(st recordStore) error) error {
	fl := cmd.Flags()
	file, _ := fl.GetString("file")
	st, err := openRecordStore(file, "", "")
	if err != nil {
		return err
	}
	return fn(st)
}

// openRecordStore returns the key store that the flags name: a key file.
func openRecordStore(file, redisURL, prefix string) (recordStore, error) {
	if file == "" {
		return nil, errors.New("--file is required")
	}
	return fileRecords{path: file}, nil
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
