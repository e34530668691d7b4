package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/diff"
)

func init() { verbs = append(verbs, newRepairCmd) }

func newRepairCmd() *cobra.Command {
	var (
		path   string
		asJSON bool
		opts   diff.RepairOptions
	)
	cmd := &cobra.Command{
		Use:   "repair",
		Short: "Make the differing rows of a table equal on all nodes",
		Long: `repair runs a diff of one table, then makes every other node equal to --from
NODE, or with --lww gives each differing key the version with the latest
commit timestamp across nodes (ties: the node first in the config; a missing
row never wins, as absence carries no time).

On each target the rows are written under the source's apply origin
(pgmesh_<source>), so they are not shipped again, with the source row's
commit timestamp. If that origin is busy because the agent is applying the
link, or does not exist, pgmesh_<source>_repair is used instead. Each row is
recorded in pgmesh.conflict_log with kind 'repair' when that table exists.
A target row changed since the diff is left alone and reported as skipped.`,
		Example: `  pgmesh repair -c pgmesh.yaml --table public.orders --from paris --dry-run
  pgmesh repair -c pgmesh.yaml --table public.orders --from paris
  pgmesh repair -c pgmesh.yaml --table orders --lww --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			if opts.Table == "" {
				return exitCode(2, fmt.Errorf("repair: --table is required"))
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			opts.Diff.Progress = cmd.ErrOrStderr()
			res, err := diff.Repair(ctx, cfg, opts)
			if err != nil {
				return exitCode(2, err)
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return exitCode(2, err)
				}
				return nil
			}
			printRepair(cmd.OutOrStdout(), res, opts.DryRun)
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().StringVar(&opts.Table, "table", "", "table to repair (schema.table or table)")
	cmd.Flags().StringVar(&opts.From, "from", "", "node whose rows the others take")
	cmd.Flags().BoolVar(&opts.LWW, "lww", false, "per key, the version with the latest commit timestamp wins")
	cmd.Flags().BoolVar(&opts.DryRun, "dry-run", false, "print the SQL that would run, change nothing")
	cmd.Flags().DurationVar(&opts.Diff.WaitTimeout, "wait", 0, "how long to wait for links to apply up to the start position (default 1m; negative: do not wait)")
	cmd.MarkFlagsMutuallyExclusive("from", "lww")
	cmd.MarkFlagsOneRequired("from", "lww")
	return cmd
}

func printRepair(w io.Writer, res *diff.RepairResult, dryRun bool) {
	if dryRun {
		for _, s := range res.Statements {
			fmt.Fprintln(w, s)
		}
	}
	skipped := 0
	for _, c := range res.Changes {
		if !dryRun {
			key := fmt.Sprint(c.Key)
			if c.Key == nil {
				key = fmt.Sprintf("row %s ×%d", c.Row, c.Copies)
			}
			note := ""
			if c.Skipped != "" {
				note = "  skipped: " + c.Skipped
				skipped++
			}
			fmt.Fprintf(w, "%s: %s %s from %s%s\n", c.Node, c.Op, key, c.Source, note)
		}
	}
	verb := "repaired"
	if dryRun {
		verb = "would repair"
	}
	fmt.Fprintf(w, "%s: %d differing, %s %d row changes (%d skipped)\n", res.Table, res.Differences, verb, len(res.Changes)-skipped, skipped)
	for _, n := range res.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}
