package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyformat"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
	"github.com/spf13/cobra"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	filestore "github.com/caddy-apikey/caddy-apikey/stores/file"
	redisstore "github.com/caddy-apikey/caddy-apikey/stores/redis"
)

// The `caddy apikey` commands manage a key file so that operators never edit
// its JSON by hand. Writes go through updateKeyFile, under the same lock and
// with the same re-read and atomic replace as the usage writer of a running
// Caddy, so neither loses the other's changes, and the running Caddy picks
// them up at its next reload_interval.

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "apikey",
		Usage: "add|list|revoke|rotate|limits|quota|usage|import|export|audit|hash|check [flags]",
		Short: "Manages the keys of an apikey key file or Redis key set",
		Long: `
Creates, lists, revokes and rotates the API keys of a key file used by the
apikey handler, and hashes keys for files kept by hand.

A running Caddy picks up the changes within its reload_interval (1s by
default), without a config reload. The commands and a running Caddy lock the
file while they write it, so neither loses the other's updates.

  caddy apikey add    --file keys.json [--create] --label "CI deploy" [--expires 90d] [--scope read]...
  caddy apikey list   --file keys.json [--json]
  caddy apikey revoke --file keys.json <id|key_prefix>
  caddy apikey rotate --file keys.json [--grace 24h] <id|key_prefix>
  caddy apikey quota  --file keys.json <id|key_prefix> (10000/month | --none | --grant <units>)
  caddy apikey usage  --file keys.json <id|key_prefix> [--days 7] [--json]
  caddy apikey audit  --file keys.json [--key <id|key_prefix>] [--since 24h] [--json]
  caddy apikey hash   < raw-key.txt

Every command but hash takes --redis <url> [--prefix apikey:] in place of
--file, for a key set in Redis shared by a fleet of Caddy servers, which
pick up its changes within milliseconds. import and export copy keys
between a key file and Redis:

  caddy apikey import --file keys.json --redis redis://127.0.0.1:6379/0
  caddy apikey export --redis redis://127.0.0.1:6379/0 [--file backup.json]

A password written in --redis is visible to every local user (ps,
/proc/<pid>/cmdline). Give it instead in the environment variable
` + redisPasswordEnv + `, in a file (--redis-password-file <file>: its
first line), or through an {env.*} placeholder in the URL, as in the
Caddyfile: --redis 'redis://:{env.REDIS_PASSWORD}@127.0.0.1:6379/0'.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(addCommand(), listCommand(), revokeCommand(), rotateCommand(), importCommand(), exportCommand(), hashCommand(), checkCommand(), limitsCommand(), quotaCommand(), usageCommand(), auditCommand())
		},
	})
}

// storeFlags adds the flags that name the key store a command works on: a
// key file, or a key set in Redis.
func storeFlags(cmd *cobra.Command) {
	cmd.Flags().StringP("file", "f", "", "Path to the key file (or give --redis)")
	redisFlags(cmd)
}

func redisFlags(cmd *cobra.Command) {
	cmd.Flags().String("redis", "", "URL of the Redis server that holds the key set, e.g. redis://127.0.0.1:6379/0; {env.*} placeholders are replaced")
	cmd.Flags().String("prefix", redisstore.DefaultPrefix, "With --redis: the prefix of the key set's Redis keys")
	cmd.Flags().String("redis-password-file", "", "With --redis: read the Redis password from this file (its first line); else "+redisPasswordEnv+" holds it, if set and the URL has none")
}

// redisPasswordEnv is the environment variable from which the commands
// take the Redis password when neither the URL nor --redis-password-file
// gives one: a password on the command line is visible to every local user
// (in /proc/<pid>/cmdline, in ps), the environment and a file are not.
const redisPasswordEnv = "CADDY_APIKEY_REDIS_PASSWORD"

// maxPasswordFile bounds what is read of --redis-password-file.
const maxPasswordFile = 64 << 10

// redisTarget is a Redis key set as the commands' flags name it.
type redisTarget struct {
	url, prefix  string // --redis, --prefix; {env.*} placeholders not replaced yet
	passwordFile string // --redis-password-file
}

// redisTargetOf reads the Redis flags of cmd.
func redisTargetOf(cmd *cobra.Command) redisTarget {
	fl := cmd.Flags()
	var t redisTarget
	t.url, _ = fl.GetString("redis")
	t.prefix, _ = fl.GetString("prefix")
	t.passwordFile, _ = fl.GetString("redis-password-file")
	return t
}

// withRecordStore runs fn on the key store that the command's flags name.
func withRecordStore(cmd *cobra.Command, fn func(st stores.RecordStore) error) error {
	file, _ := cmd.Flags().GetString("file")
	create, _ := cmd.Flags().GetBool("create") // add only
	st, closeStore, err := openStore(file, redisTargetOf(cmd), create)
	if err != nil {
		return err
	}
	defer closeStore()
	return fn(stores.By(st, audit.Command()))
}

// withStore runs fn on the key store that the command's flags name, as it
// is: fn sees whether it keeps quota state or usage counts (a
// stores.QuotaStore, a usagecount.Reader), and makes its edits through
// stores.By(st, audit.Command()) (see withRecordStore).
func withStore(cmd *cobra.Command, fn func(st stores.RecordStore) error) error {
	file, _ := cmd.Flags().GetString("file")
	st, closeStore, err := openStore(file, redisTargetOf(cmd), false)
	if err != nil {
		return err
	}
	defer closeStore()
	if storeHook != nil {
		st = storeHook(st)
	}
	return fn(st)
}

// storeHook, if set (by tests alone), replaces the store withStore hands
// its command: a store with quota state and usage counts in memory over
// the one the flags name.
var storeHook func(stores.RecordStore) stores.RecordStore

// withRedisStore runs fn on the Redis key set that the command's --redis
// and --prefix name (import and export, whose --file is the other side).
// create lets fn make the key set (see redisstore.Target's Create).
func withRedisStore(cmd *cobra.Command, create bool, fn func(st stores.RecordStore) error) error {
	target := redisTargetOf(cmd)
	if target.url == "" {
		return errors.New("--redis is required")
	}
	st, closeStore, err := openStore("", target, create)
	if err != nil {
		return err
	}
	defer closeStore()
	return fn(stores.By(st, audit.Command()))
}

// openStore returns the key store that the flags name: the key file at
// file, or the Redis key set redis names. The caller calls closeStore when
// done. create lets a key file or a Redis key set be made where there is
// none (see filestore.Records' MayCreate and redisstore.Target's Create).
func openStore(file string, redis redisTarget, create bool) (st stores.RecordStore, closeStore func(), err error) {
	switch {
	case file != "" && redis.url != "":
		return nil, nil, errors.New("give --file or --redis, not both")
	case file != "":
		if redis.passwordFile != "" {
			return nil, nil, errors.New("--redis-password-file goes with --redis, not with --file")
		}
		abs, err := filepath.Abs(file)
		if err != nil {
			return nil, nil, fmt.Errorf("--file %s: %v", file, err)
		}
		return filestore.Records{Path: abs, MayCreate: create}, func() {}, nil
	case redis.url == "":
		return nil, nil, errors.New("--file is required (or --redis, for a key set in Redis)")
	}
	rs, err := redis.open(create)
	if err != nil {
		return nil, nil, err
	}
	return rs, rs.Close, nil
}

// open connects to the Redis server that t names, for its key set. The
// password is, in this order: read from --redis-password-file (then the
// URL must hold none), the URL's, or the environment's redisPasswordEnv.
// No message ever shows it.
func (t redisTarget) open(create bool) (redisstore.Records, error) {
	target := redisstore.Target{URL: t.url, Prefix: t.prefix, FallbackPassword: os.Getenv(redisPasswordEnv), Create: create}
	if t.passwordFile != "" {
		password, err := readPasswordFile(t.passwordFile)
		if err != nil {
			return redisstore.Records{}, err
		}
		target.Password, target.PasswordFrom = password, "--redis-password-file"
	}
	return redisstore.Open(target)
}

// readPasswordFile reads a password from the first line of the file at
// path (a pipe such as <(pass show redis) will do). The line's end is not
// part of it.
func readPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("--redis-password-file: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPasswordFile+1))
	switch {
	case err != nil:
		return "", fmt.Errorf("--redis-password-file %s: %v", path, err)
	case len(data) > maxPasswordFile:
		return "", fmt.Errorf("--redis-password-file %s: more than 64 KiB; want the password alone on one line", path)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	password := strings.TrimSuffix(line, "\r")
	if password == "" {
		return "", fmt.Errorf("--redis-password-file %s: the first line is empty; want the password on it", path)
	}
	return password, nil
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
	key, err := readKey(r, "hash")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, keyset.HashKey(key))
	return err
}

// readKey reads one raw key from r (stdin), for the command named: its
// surrounding white space and final newline are not part of it.
func readKey(r io.Reader, command string) (string, error) {
	data, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), maxKeyInput+1))
	if err != nil {
		return "", fmt.Errorf("reading the key from stdin: %w", err)
	}
	if len(data) > maxKeyInput {
		return "", errors.New("stdin holds more than 64 KiB; want one key")
	}
	key := strings.TrimSpace(string(data))
	switch {
	case key == "":
		return "", fmt.Errorf("no key on stdin; pipe the raw key in, e.g. printf '%%s' \"$KEY\" | caddy apikey %s", command)
	case strings.ContainsAny(key, "\r\n"):
		return "", errors.New("stdin holds more than one line; want one key")
	}
	return key, nil
}

// addCommand is `caddy apikey add`.
func addCommand() *cobra.Command {
	add := &cobra.Command{
		Use:   "add (--file <keys.json> | --redis <url> [--prefix <p>]) --label <name> [--create] [--expires <90d|RFC3339>] [--scope <scope>]... [--rate <requests/window>]... [--quota <requests/period>]",
		Short: "Creates a key and prints it, once",
		Long: `
Creates a key (sk_ followed by 32 random bytes in URL-safe base64), stores
only its SHA-256 hash and metadata in the key file, and prints the key on
stdout, alone on its line, so that scripts can capture it. It cannot be shown
again. Details go to stderr, with the absolute path of the file written.

The key file must exist: a missing one is an error, so that a typo or the
wrong working folder does not make a key file that no Caddy reads. Give
--create to make it (mode 0600), as for a new key set in Redis.

--expires takes a duration from now (90d, 12h, 30m, 1h30m) or a time
(2027-01-31T00:00:00Z, 2027-01-31). Without it the key never expires.

--scope may be repeated, or given a comma-separated list; the key then holds
those scopes, for routes whose apikey directive requires them.

--rate gives the key rate limits of its own (requests/window, e.g. 100/1m;
repeatable), in place of the apikey directive's rate_limit. --key-format
makes the key in the checksummed format with that prefix (the key_format of
the apikey directive).

--quota gives the key a quota: requests per period, the period day or
month (calendar days and months, UTC: it starts again at midnight UTC on
each day or on the first of each month) or none (a fixed allowance that
never starts again), e.g. 10000/month, 500/day, 1000/none. Without it the
key is not metered.
`,
		Example: `  KEY=$(caddy apikey add --file keys.json --label "CI deploy" --expires 90d --scope deploy)
  KEY=$(caddy apikey add --file keys.json --label "free plan" --quota 10000/month)
  KEY=$(caddy apikey add --file /etc/caddy/keys.json --create --label "first key")`,
		Args: cobra.NoArgs,
		RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
			fl := cmd.Flags()
			label, _ := fl.GetString("label")
			expires, _ := fl.GetString("expires")
			scopes, _ := fl.GetStringSlice("scope")
			format, err := keyFormatFlag(cmd)
			if err != nil {
				return err
			}
			rates, _ := fl.GetStringArray("rate")
			limits, err := keyops.ParseRates(rates)
			if err != nil {
				return err
			}
			var q *keyset.QuotaSpec
			if fl.Changed("quota") {
				s, _ := fl.GetString("quota")
				if q, err = keyops.ParseQuota(s); err != nil {
					return fmt.Errorf("--%v", err)
				}
			}
			return withRecordStore(cmd, func(st stores.RecordStore) error {
				return addKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, keyops.AddOptions{
					Label: label, Expires: expires, Scopes: scopes, Format: format, RateLimits: limits, Quota: q,
				}, time.Now())
			})
		}),
	}
	storeFlags(add)
	add.Flags().StringP("label", "l", "", "A name for the key, e.g. who or what uses it (required)")
	add.Flags().StringP("expires", "e", "", "Expiry: a duration from now (90d, 12h) or an RFC 3339 time")
	add.Flags().StringSliceP("scope", "s", nil, "A scope the key holds (repeatable)")
	add.Flags().Bool("create", false, "Make the key file if it does not exist (or, with --redis, the key set if the prefix holds none)")
	keyFormatFlags(add)
	add.Flags().StringArray("rate", nil, "A rate limit of the key's own, requests/window, e.g. 100/1m (repeatable; without it the apikey directive's rate_limit applies)")
	add.Flags().String("quota", "", "The key's quota, requests/period: e.g. 10000/month, 500/day, or 1000/none for a fixed allowance (without it the key is not metered)")
	return add
}

// listCommand is `caddy apikey list`.
func listCommand() *cobra.Command {
	list := &cobra.Command{
		Use:   "list (--file <keys.json> | --redis <url> [--prefix <p>]) [--json]",
		Short: "Lists the keys of a key file or Redis key set",
		Long: `
Lists the keys of a key file or Redis key set: id, label, prefix, created,
last used, expires, scopes, rate limits (a key's own; "default" when the
apikey directive's apply, "none" for no limit), quota (e.g. 10000/month;
"-" for none), its use this period as USED/LEFT (units used, and left
with any granted; "-" when the store keeps no quota state, "?" when it
cannot be read) and status (active, expired or revoked). Hashes are
never shown. --json prints a JSON array for scripts, each key's
rate_limits and quota as its record holds them, and its quota_state
(period, used, granted, remaining, ends_at). The store is only read.
`,
		Args: cobra.NoArgs,
		RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
			asJSON, _ := cmd.Flags().GetBool("json")
			return withStore(cmd, func(st stores.RecordStore) error {
				return listKeys(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, asJSON, time.Now())
			})
		}),
	}
	storeFlags(list)
	list.Flags().Bool("json", false, "Print a JSON array instead of a table")
	return list
}

// revokeCommand is `caddy apikey revoke`.
func revokeCommand() *cobra.Command {
	revoke := &cobra.Command{
		Use:   "revoke (--file <keys.json> | --redis <url> [--prefix <p>]) <id|key_prefix>",
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
			return withRecordStore(cmd, func(st stores.RecordStore) error {
				return revokeKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, args[0], time.Now())
			})
		}),
	}
	storeFlags(revoke)
	return revoke
}

// rotateCommand is `caddy apikey rotate`.
func rotateCommand() *cobra.Command {
	rotate := &cobra.Command{
		Use:   "rotate (--file <keys.json> | --redis <url> [--prefix <p>]) [--grace <24h>] [--expires <90d|RFC3339>] <id|key_prefix>",
		Short: "Replaces a key with a new one, the old one kept for a grace period",
		Long: `
Makes a new key to replace the one named (by its id, its key_prefix or the
first 4 or more characters of its id, as for revoke), and prints the new key
on stdout, alone on its line, as add does. It cannot be shown again. Details
go to stderr.

The new record has the old one's label, scopes, rate limits and quota (its
use starts anew: the new key is another key), and its members that this
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
			format, err := keyFormatFlag(cmd)
			if err != nil {
				return err
			}
			return withRecordStore(cmd, func(st stores.RecordStore) error {
				return rotateKey(cmd.OutOrStdout(), cmd.ErrOrStderr(), st, keyops.RotateOptions{
					Ref: args[0], Grace: grace, Expires: expires, Format: format,
				}, time.Now())
			})
		}),
	}
	storeFlags(rotate)
	rotate.Flags().StringP("grace", "g", keyops.DefaultGrace, "How long the old key stays valid (e.g. 24h, 7d, 30m); 0 revokes it at once")
	rotate.Flags().StringP("expires", "e", "", "The new key's expiry: a duration from now (90d, 12h) or an RFC 3339 time")
	keyFormatFlags(rotate)
	return rotate
}

// importCommand is `caddy apikey import`.
func importCommand() *cobra.Command {
	imp := &cobra.Command{
		Use:   "import --file <keys.json> --redis <url> [--prefix apikey:] [--reactivate]",
		Short: "Copies the keys of a key file into a Redis key set",
		Long: `
Copies every record of a key file into the key set at --prefix in Redis
(making it if need be), in one atomic change that every Caddy server
following the key set picks up at once. Records keep every member, those
this plugin does not know included.

Running it twice adds nothing: a record already there with the same content
(last_used_at aside) is left as it is. A record whose id or key_hash is
already there with other content is listed on stderr and not imported, and
the command then exits 1; the others are imported.

A key revoked in the key set whose copy in the file is active (an older
export, made before the revoke) stays revoked: import lists such keys on
stderr, and makes them active again only with --reactivate. Import cannot
tell this for a key set that holds no keys (it did not exist, or Redis lost
it): then every key is taken as the file has it, and import says so; revoke
again any key revoked after the file was written. Import from an export
(caddy apikey export), not from a server's cache_file, which lacks
last_used_at, rotated_from and unknown members: import warns if given one.

On a terminal, import shows its progress on stderr (reading the file,
reading the key set, writing it): a file of a million keys takes some
seconds.
`,
		Example: `  caddy apikey import --file /etc/caddy/keys.json --redis redis://127.0.0.1:6379/0`,
		Args:    cobra.NoArgs,
		RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("file")
			if file == "" {
				return errors.New("--file and --redis are both required")
			}
			reactivate, _ := cmd.Flags().GetBool("reactivate")
			return withRedisStore(cmd, true, func(to stores.RecordStore) error {
				res, err := keyops.Import(file, to, keyops.ImportOptions{
					Reactivate: reactivate,
					Waiting:    sayWaiting(cmd.ErrOrStderr(), to),
					Progress:   newProgress(cmd.ErrOrStderr()),
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Imported %d keys from %s into %s; %d were there already.\n", res.Added, file, to, res.Present)
				return reportImport(cmd.OutOrStdout(), cmd.ErrOrStderr(), res, file, to)
			})
		}),
	}
	imp.Flags().StringP("file", "f", "", "Path to the key file to read (required)")
	imp.Flags().Bool("reactivate", false, "Make the keys revoked in the key set but active in the file active again (an older export's copies)")
	redisFlags(imp)
	return imp
}

// exportCommand is `caddy apikey export`.
func exportCommand() *cobra.Command {
	export := &cobra.Command{
		Use:   "export --redis <url> [--prefix apikey:] [--file <keys.json>]",
		Short: "Writes a Redis key set as a key file",
		Long: `
Writes the key set at --prefix in Redis as a key file in the format the file
store reads (hashes only; raw keys are never stored anywhere), each record
with its latest last_used_at: to --file, which must not exist yet (it is
made with mode 0600), or to stdout.
`,
		Example: `  caddy apikey export --redis redis://127.0.0.1:6379/0 --file backup.json`,
		Args:    cobra.NoArgs,
		RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
			file, _ := cmd.Flags().GetString("file")
			return withRedisStore(cmd, false, func(from stores.RecordStore) error {
				n, err := keyops.Export(from, file, cmd.OutOrStdout())
				if err == nil && file != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "Exported %d keys from %s to %s.\n", n, from, file)
				}
				return err
			})
		}),
	}
	export.Flags().StringP("file", "f", "", "Path of the key file to write (default: stdout)")
	redisFlags(export)
	return export
}

// hashCommand is `caddy apikey hash`.
func hashCommand() *cobra.Command {
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
	return hash
}

// keyFormatFlags adds --key-format to a command that makes keys.
func keyFormatFlags(cmd *cobra.Command) {
	cmd.Flags().String("key-format", "", "Make the key in the checksummed format with this prefix (e.g. acme_live_, the key_format of the apikey directive); default: the sk_ format")
}

// keyFormatFlag is the format --key-format names, or nil for the default.
func keyFormatFlag(cmd *cobra.Command) (*keyformat.Format, error) {
	prefix, _ := cmd.Flags().GetString("key-format")
	if prefix == "" {
		return nil, nil
	}
	return keyformat.New(prefix)
}

// errMalformed makes `caddy apikey check` exit with status 1, its verdict
// printed already.
var errMalformed = errors.New("malformed")

// checkCommand is `caddy apikey check`.
func checkCommand() *cobra.Command {
	check := &cobra.Command{
		Use:   "check [--key-format <prefix>] [<key> | -]",
		Short: "Says whether a key is well formed in the checksummed key format, offline",
		Long: `
Checks a key's prefix, length, characters and CRC32 checksum without looking
it up anywhere: "well formed" says the key could be one made in the format,
not that it exists or is valid. The key is the argument, or read on stdin
when there is none (or it is -), which keeps it out of the shell history
and the process list: prefer stdin for a real key. It is never printed.
Without
--key-format, the prefix is read from the key (everything up to its last _).

Exit status: 0 well formed, 1 malformed (a typo, a key cut short) or an
error, 2 not in this format.
`,
		Example: `  printf '%s' "$KEY" | caddy apikey check
  caddy apikey check --key-format acme_live_ < key.txt
  caddy apikey check acme_live_0123456789abcdefghijABCDEFGHIJ0py0eO`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			result, err := checkKey(cmd, args)
			switch {
			case err != nil:
				return runWithExitCode(func(*cobra.Command, []string) error { return err })(cmd, args)
			case result.Malformed():
				cmd.SilenceErrors = true
				return errMalformed
			case result == keyformat.NotThisFormat:
				// Caddy's own way to exit with a status of 2.
				cmd.SilenceErrors = true
				return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) { return 2, nil })(cmd, args)
			}
			return nil
		},
	}
	check.Flags().String("key-format", "", "The prefix of the format (e.g. acme_live_); default: read from the key")
	return check
}

// checkKey reads a key on the command's stdin, checks it and prints the
// verdict on its stdout.
func checkKey(cmd *cobra.Command, args []string) (keyformat.Result, error) {
	format, err := keyFormatFlag(cmd)
	if err != nil {
		return 0, err
	}
	var key string
	if len(args) == 1 && args[0] != "-" {
		key = args[0] // on the command line: in the shell's history
	} else if key, err = readKey(cmd.InOrStdin(), "check"); err != nil {
		return 0, err
	}
	var result keyformat.Result
	if format != nil {
		result = format.Check(key)
	} else {
		var f keyformat.Format
		f, result = keyformat.Inspect(key)
		format = &f
	}
	out := cmd.OutOrStdout()
	switch {
	case result == keyformat.WellFormed:
		fmt.Fprintf(out, "well formed (prefix %s, key_prefix %s)\n", format.Prefix, format.KeyPrefix(key))
	case result.Malformed():
		fmt.Fprintf(out, "%s (prefix %s)\n", result, format.Prefix)
	default:
		fmt.Fprintln(out, "not in this format (no such prefix)")
	}
	return result, nil
}

// limitsCommand is `caddy apikey limits`.
func limitsCommand() *cobra.Command {
	limits := &cobra.Command{
		Use:   "limits (--file <keys.json> | --redis <url> [--prefix <p>]) (--rate <requests/window>... | --none | --defaults) <id|key_prefix>",
		Short: "Sets or clears a key's own rate limits",
		Long: `
Gives the key named by its id (or the start of it) or key_prefix rate limits
of its own, which replace the apikey directive's rate_limit for it:

  --rate 100/1m --rate 10/1s   these limits (windows as Caddy durations:
                               1s, 1m, 1h, 1d; whole seconds)
  --none                       no limit at all for this key
  --defaults                   no limits of its own: the directive's apply

A running Caddy puts the change in force as any other key change: at its
next reload_interval for a key file, within milliseconds on every server for
a Redis key set. The key's counts so far are kept.
`,
		Example: `  caddy apikey limits --file keys.json --rate 1000/1h --rate 20/1s sk_AbCdEfGh
  caddy apikey limits --redis redis://127.0.0.1:6379/0 --defaults 3f2c1a`,
		Args: cobra.ExactArgs(1),
		RunE: runWithExitCode(func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			rates, _ := fl.GetStringArray("rate")
			none, _ := fl.GetBool("none")
			defaults, _ := fl.GetBool("defaults")
			var limits []keyset.RateLimit
			switch {
			case len(rates) > 0 && !none && !defaults:
				var err error
				if limits, err = keyops.ParseRates(rates); err != nil {
					return err
				}
			case none && len(rates) == 0 && !defaults:
				limits = []keyset.RateLimit{}
			case defaults && len(rates) == 0 && !none:
			default:
				return errors.New("give --rate (one or more), --none or --defaults: one of them")
			}
			return withRecordStore(cmd, func(st stores.RecordStore) error {
				rec, changed, err := keyops.SetRateLimits(st, args[0], limits, sayWaiting(cmd.ErrOrStderr(), st))
				if err != nil {
					return err
				}
				what := "unchanged"
				if changed {
					what = "now"
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "Rate limits of %s (%s) %s: %s\n", keyops.Printable(rec.KeyPrefix), keyops.Printable(rec.Label), what, limitsText(rec.RateLimits))
				return err
			})
		}),
	}
	storeFlags(limits)
	limits.Flags().StringArray("rate", nil, "A rate limit, requests/window, e.g. 100/1m (repeatable)")
	limits.Flags().Bool("none", false, "No rate limit at all for this key")
	limits.Flags().Bool("defaults", false, "No rate limits of its own: the apikey directive's rate_limit applies")
	return limits
}

// auditCommand is `caddy apikey audit`.
func auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit (--file <keys.json> | --redis <url> [--prefix <p>]) [--key <id|key_prefix>] [--since <time|24h>] [--json]",
		Short: "Shows the audit log of the changes made to a key file or Redis key set",
		Long: `
Shows the audit log of a key store, oldest first: every change made through
caddy apikey (add, revoke, rotate, limits, quota, import) or the admin API, with
its time (UTC), action, key (id, label, prefix), who made it (the admin
API's remote address and client certificate subject; a command's OS user
and host) and what changed. It never holds a key or a hash.

A key file's log is <keyfile>.audit.jsonl beside it; a Redis key set's is
the stream <prefix>audit. --key keeps one key's entries (by id or
key_prefix; a rotate is shown for the old key and the new one), --since
those made since a time (RFC 3339) or a duration ago (24h, 7d). --json
prints a JSON array. The store is only read.

A Redis audit stream keeps about the last 1,000,000 entries (trimmed with
XADD MAXLEN ~); --set-max-entries <n> sets that for every writer of the key
set (it is held in Redis, in <prefix>audit:max_entries), 0 restores the
default. A key file's log is never trimmed: rotate it with the key file's
lock held, or keep it.
`,
		Args: cobra.NoArgs,
		RunE: runWithExitCode(func(cmd *cobra.Command, _ []string) error {
			key, _ := cmd.Flags().GetString("key")
			sinceFlag, _ := cmd.Flags().GetString("since")
			asJSON, _ := cmd.Flags().GetBool("json")
			since, err := audit.ParseSince(sinceFlag, time.Now())
			if err != nil {
				return fmt.Errorf("--%v", err)
			}
			file, _ := cmd.Flags().GetString("file")
			st, closeStore, err := openStore(file, redisTargetOf(cmd), false)
			if err != nil {
				return err
			}
			defer closeStore()
			if cmd.Flags().Changed("set-max-entries") {
				n, _ := cmd.Flags().GetInt64("set-max-entries")
				rs, ok := st.(redisstore.Records)
				switch {
				case !ok:
					return errors.New("--set-max-entries goes with --redis: a key file's audit log is never trimmed")
				case n < 0:
					return errors.New("--set-max-entries must be a positive number of entries, or 0 for the default")
				}
				if err := rs.SetAuditMaxEntries(n); err != nil {
					return err
				}
				n, err := rs.AuditMaxEntries()
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "The audit stream of %s now keeps about %d entries.\n", st, n)
				return nil
			}
			reader, ok := st.(stores.AuditReader)
			if !ok {
				return fmt.Errorf("%s: %w", st, stores.ErrNoAudit)
			}
			entries, err := reader.ReadAudit(audit.Filter{Key: strings.TrimSpace(key), Since: since})
			if err != nil {
				return err
			}
			return printAudit(cmd.OutOrStdout(), entries, asJSON)
		}),
	}
	storeFlags(cmd)
	cmd.Flags().String("key", "", "Show only the entries of this key (its id or key_prefix)")
	cmd.Flags().String("since", "", "Show only the entries since this time (RFC 3339) or this long ago (24h, 7d)")
	cmd.Flags().Bool("json", false, "Print a JSON array instead of a table")
	cmd.Flags().Int64("set-max-entries", 0, "With --redis: set about how many entries the audit stream keeps (0: the default, 1,000,000), and show nothing")
	return cmd
}
