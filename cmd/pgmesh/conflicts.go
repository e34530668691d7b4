package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

func init() { verbs = append(verbs, newConflictsCmd) }

func newConflictsCmd() *cobra.Command {
	var (
		cfgPath string
		asJSON  bool
		f       conflict.Filter
	)
	cmd := &cobra.Command{
		Use:   "conflicts",
		Short: "Show the conflict log of every node, merged in time order",
		Long: `conflicts reads pgmesh.conflict_log on every node (in parallel) and prints
the entries oldest first: where the conflict was detected, the table and key,
its kind (insert_exists, update_origin_differs, update_missing,
update_deleted, insert_deleted, delete_origin_differs, delete_missing,
unique_conflict), how it was resolved (apply_remote: the local row image
lost; keep_local: the remote one lost; keep_local_clock_skew: a causal
change lost because its commit time is older, i.e. the clocks disagree;
skip_incomplete; skip) and which write won. --json prints every field,
including both row images. Exit code 1 when a node cannot be read (the
others are still shown).`,
		Example: `  pgmesh conflicts -c pgmesh.yaml --since 1h
  pgmesh conflicts -c pgmesh.yaml --table public.stock --limit 20
  pgmesh conflicts -c pgmesh.yaml --json | jq '.[] | select(.kind == "unique_conflict") | .remote_row'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			if f.Since < 0 || f.Limit < 0 {
				return exitCode(2, fmt.Errorf("--since and --limit must not be negative"))
			}
			entries, qerr := conflict.Query(cmd.Context(), cfg, f)
			if asJSON {
				if entries == nil {
					entries = []conflict.Entry{}
				}
				if err := printJSON(cmd.OutOrStdout(), entries); err != nil {
					return err
				}
			} else {
				printConflicts(cmd.OutOrStdout(), entries)
			}
			if qerr != nil {
				return exitCode(1, qerr)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().DurationVar(&f.Since, "since", 0, "only conflicts detected in the last DURATION (e.g. 30m, 24h); 0 = all")
	cmd.Flags().StringVar(&f.Table, "table", "", "only this table (schema.table, or table in any schema)")
	cmd.Flags().IntVar(&f.Limit, "limit", 0, "only the N most recent conflicts; 0 = all")
	return cmd
}

func printConflicts(out io.Writer, es []conflict.Entry) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tNODE\tTABLE\tKIND\tRESOLUTION\tKEY\tWINNER / LOSER")
	for _, e := range es {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.DetectedAt.Local().Format(time.DateTime+".000"),
			e.Node, e.Table, e.Kind, e.Resolution, compactJSON(e.Key), outcome(e))
	}
	w.Flush()
	if len(es) == 0 {
		fmt.Fprintln(out, "no conflicts")
	}
}

// outcome summarises who won: "n1@12:00:01.250 over n3@12:00:00.900".
func outcome(e conflict.Entry) string {
	local := side(e.LocalOrigin, e.LocalCommitTime, e.LocalRow == nil || string(e.LocalRow) == "null")
	remote := side(e.RemoteOrigin, e.RemoteCommitTime, false)
	switch e.Resolution {
	case conflict.ApplyRemote:
		return "remote " + remote + " over local " + local
	case conflict.KeepLocal, conflict.KeepLocalClockSkew:
		return "local " + local + " over remote " + remote
	case conflict.Skip:
		return "row already gone: tombstone " + remote + " kept"
	default:
		return "remote " + remote + " not applied (incomplete row)"
	}
}

func side(origin *string, ts *time.Time, absent bool) string {
	var b strings.Builder
	switch {
	case origin != nil:
		b.WriteString(*origin)
	case absent:
		b.WriteString("(no row)")
	default:
		b.WriteString("?")
	}
	if ts != nil {
		b.WriteString("@" + ts.Local().Format("15:04:05.000"))
	}
	return b.String()
}

func compactJSON(b []byte) string {
	if len(b) == 0 || string(b) == "null" {
		return "-"
	}
	s := string(b)
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}
