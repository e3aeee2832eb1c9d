package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-apikey/caddy-apikey/audit"
	"github.com/caddy-apikey/caddy-apikey/keyops"
	"github.com/caddy-apikey/caddy-apikey/keyset"
	"github.com/caddy-apikey/caddy-apikey/stores"
)

// quotaCommand is `caddy apikey quota`.
func quotaCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quota (--file <keys.json> | --redis <url> [--prefix <p>]) <id|key_prefix> [<requests/period> | --none | --grant <units>]",
		Short: "Sets, drops or shows a key's quota, or grants it units for this period",
		Long: `
Sets the quota of the key named by its id (or the start of it) or
key_prefix, drops it, grants it units for this period, or shows it:

  10000/month      this quota: requests per period, the period day or month
                   (calendar days and months, UTC) or none (a fixed
                   allowance that never starts again)
  --none           no quota: the key is no longer metered
  --grant 500      500 units more for this period only, on top of the
                   allowance (a negative number takes units granted back,
                   but not below none granted)
  (nothing)        show the quota and its use this period

Changing the quota keeps what was used this period: the new allowance
counts it. A running Caddy puts a new quota in force as any other key
change (at its next reload_interval for a key file, within milliseconds
for a Redis key set); a grant is in the quota state, which the servers
look at again while the key's requests are refused. A grant needs a
store that keeps quota state, and is written to its audit log.
`,
		Example: `  caddy apikey quota --file keys.json sk_AbCdEfGh 10000/month
  caddy apikey quota --file keys.json sk_AbCdEfGh --grant 500
  caddy apikey quota --redis redis://127.0.0.1:6379/0 3f2c1a --none`,
		Args: cobra.RangeArgs(1, 2),
		RunE: runWithExitCode(func(cmd *cobra.Command, args []string) error {
			fl := cmd.Flags()
			none, _ := fl.GetBool("none")
			grant, _ := fl.GetInt64("grant")
			granting := fl.Changed("grant")
			var q *keyset.QuotaSpec
			switch {
			case len(args) == 2 && !none && !granting:
				var err error
				if q, err = keyops.ParseQuota(args[1]); err != nil {
					return err
				}
			case len(args) == 1 && !(none && granting): // drop, grant or show
			default:
				return errors.New("give a quota (e.g. 10000/month), --none or --grant <units>: one of them, or none to show the key's quota")
			}
			return withStore(cmd, func(st stores.RecordStore) error {
				out, now := cmd.OutOrStdout(), time.Now()
				switch {
				case granting:
					g, err := keyops.GrantQuota(st, args[0], grant, audit.Command(), now)
					if err != nil {
						return err
					}
					verb := "Granted"
					if grant < 0 {
						verb = "Took back"
					}
					fmt.Fprintf(out, "%s %d units of the quota of %s (%s) for %s.\n", verb, max(grant, -grant), keyops.Printable(g.Record.KeyPrefix), keyops.Printable(g.Record.Label), g.State.Period)
					printQuota(out, keyops.ListOne(st, g.Record, now))
					return nil
				case len(args) == 2 || none:
					rec, changed, err := keyops.SetQuota(stores.By(st, audit.Command()), args[0], q, sayWaiting(cmd.ErrOrStderr(), st))
					if err != nil {
						return err
					}
					what := "unchanged"
					if changed {
						what = "now"
					}
					fmt.Fprintf(out, "Quota of %s (%s) %s: %s\n", keyops.Printable(rec.KeyPrefix), keyops.Printable(rec.Label), what, quotaText(rec.Quota))
					if rec.Quota != nil {
						printQuota(out, keyops.ListOne(st, rec, now))
					}
					return nil
				}
				l, err := keyops.Show(st, args[0], now)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "Quota of %s (%s): %s\n", keyops.Printable(l.KeyPrefix), keyops.Printable(l.Label), quotaText(l.Quota))
				if l.Quota != nil {
					printQuota(out, l)
				}
				return nil
			})
		}),
	}
	storeFlags(cmd)
	cmd.Flags().Bool("none", false, "Drop the key's quota: it is no longer metered")
	cmd.Flags().Int64("grant", 0, "Grant the key this many units more for this period (negative: take units granted back)")
	return cmd
}

// printQuota writes the line that says a key's quota state this period:
//
//	This period (2026-12, until 2027-01-01T00:00:00Z): 1200 used, 300 granted, 9100 left.
func printQuota(w io.Writer, l keyops.Listed) {
	switch s := l.QuotaState; {
	case s != nil:
		until := "a fixed allowance"
		if s.EndsAt != nil {
			until = "until " + *s.EndsAt
		}
		fmt.Fprintf(w, "This period (%s, %s): %d used, %d granted, %d left.\n", s.Period, until, s.Used, s.Granted, s.Remaining)
	case l.QuotaStateError != "":
		fmt.Fprintf(w, "Its use this period cannot be read: %s\n", keyops.Printable(l.QuotaStateError))
	default:
		fmt.Fprintln(w, "Its use is not shown: the key store keeps no quota state.")
	}
}

// usageCommand is `caddy apikey usage`.
func usageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "usage (--file <keys.json> | --redis <url> [--prefix <p>]) <id|key_prefix> [--days <n>] [--json]",
		Short: "Shows how many requests a key made, by day and result",
		Long: `
Shows the requests made with the key named by its id (or the start of it)
or key_prefix over the last --days days (7 by default, 35 at most: the
counts are kept 35 days), today (UTC) the last of them: a table with a row
per day and a column per result that has any count (admitted first, then
the refusals: revoked, expired, insufficient_scope, rate_limited,
quota_exceeded, quota_unavailable), their totals, and a chart of each
result's requests, one sparkline per result (▁ to █, each scaled to its
own peak, a blank for none): one cell per hour with --days 1 or 2 (at most
48), one cell per day beyond.

--json prints the counts for scripts: {"id", "label", "key_prefix",
"since", "rows": [{"id", "hour", "result", "n"}...], "days": [{"day",
"counts": {result: n}}...], "totals": {result: n}}.

The counts are those the store holds: a running Caddy adds its counts
every 10 seconds, so the last 10 seconds' requests may be missing (the
admin API's GET /apikey/keys/{id}/usage writes them first). The store is
only read.
`,
		Example: `  caddy apikey usage --file keys.json sk_AbCdEfGh
  caddy apikey usage --redis redis://127.0.0.1:6379/0 --days 30 --json 3f2c1a`,
		Args: cobra.ExactArgs(1),
		RunE: runWithExitCode(func(cmd *cobra.Command, args []string) error {
			days, _ := cmd.Flags().GetInt("days")
			asJSON, _ := cmd.Flags().GetBool("json")
			if err := keyops.CheckUsageDays(days); err != nil {
				return fmt.Errorf("--%v", err)
			}
			return withStore(cmd, func(st stores.RecordStore) error {
				now := time.Now()
				u, err := keyops.ReadUsage(st, args[0], days, now)
				if err != nil {
					return err
				}
				return printUsage(cmd.OutOrStdout(), u, now, asJSON)
			})
		}),
	}
	storeFlags(cmd)
	cmd.Flags().Int("days", keyops.DefaultUsageDays, fmt.Sprintf("How many days to show, today the last (1 to %d)", keyops.MaxUsageDays))
	cmd.Flags().Bool("json", false, "Print the counts as JSON instead of a table and a chart")
	return cmd
}
