package main

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/diff"
	"github.com/pgmesh/pgmesh/internal/eval"
)

func init() { verbs = append(verbs, newDemoCmd) }

func newDemoCmd() *cobra.Command {
	var o eval.DemoOptions
	var dur time.Duration
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a local 3-node cluster, write on every node at once, show status, conflicts and a converged diff",
		Long: `demo starts real PostgreSQL servers on 127.0.0.1, creates two tables on
each, converts the order ids to snowflake, runs init and an agent for every
link, then writes on all nodes at once: orders, balance updates (a third of
them on five hot accounts that every node updates: real conflicts, resolved
by last-update-wins and logged), and deletes. It waits for the links to
catch up, prints the link status, the conflicts by kind and a diff of every
table across the nodes, then removes everything (--keep leaves it running).`,
		Example: `  pgmesh demo
  pgmesh demo --nodes 4 --duration 20s --keep --dir /tmp/mesh`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			out := cmd.OutOrStdout()
			o.Out = out
			d, err := eval.StartDemo(ctx, o)
			if d != nil && (!keep || err != nil) {
				defer func() {
					fmt.Fprintln(out, "==> stopping the agent and the servers")
					if derr := d.Teardown(context.WithoutCancel(ctx)); derr != nil {
						fmt.Fprintln(cmd.ErrOrStderr(), "teardown:", derr)
					}
				}()
			}
			if err != nil {
				return err
			}
			if _, err := d.Workload(ctx, dur); err != nil {
				return err
			}
			sts, err := d.WaitQuiet(ctx, 2*time.Minute)
			if err != nil {
				return err
			}
			fmt.Fprintln(out, "\n==> pgmesh status")
			printStatus(cmd, sts)

			fmt.Fprintln(out, "\n==> pgmesh conflicts (counted by kind; every losing row image is in pgmesh.conflict_log)")
			es, err := conflict.Query(ctx, d.Config, conflict.Filter{})
			if err != nil {
				return err
			}
			printConflictSummary(cmd, es)

			fmt.Fprintln(out, "\n==> pgmesh diff")
			rep, err := diff.Compare(ctx, d.Config, diff.Options{Limit: 10})
			if err != nil {
				return err
			}
			printDiff(out, rep)
			if !rep.Identical() {
				return exitCode(1, fmt.Errorf("the nodes did not converge"))
			}
			fmt.Fprintf(out, "\nall %d nodes hold identical data.\n", len(d.Config.Nodes))
			if keep {
				if err := d.Stop(); err != nil {
					return err
				}
				fmt.Fprintf(out, "\nThe servers keep running (the agent stopped with this command). Try:\n")
				for _, n := range d.Config.Nodes {
					fmt.Fprintf(out, "  psql %q\n", n.DSN)
				}
				fmt.Fprintf(out, "  pgmesh run -c %s/pgmesh.yaml        # start the agent again\n", d.Cluster.Dir)
				fmt.Fprintf(out, "  pgmesh sandbox down --dir %s   # remove everything\n", d.Cluster.Dir)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "sandbox directory (default: a temporary one)")
	cmd.Flags().IntVar(&o.Nodes, "nodes", 3, "number of nodes")
	cmd.Flags().StringVar(&o.BinDir, "pg-bin", "", "PostgreSQL bin directory (default: $PGMESH_PG_BIN, pg_config, /usr/lib/postgresql/*)")
	cmd.Flags().DurationVar(&dur, "duration", 10*time.Second, "how long the workload writes")
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the servers running and print their DSNs")
	return cmd
}

// printConflictSummary prints conflicts per node, kind and resolution, and
// the three most recent ones in full.
func printConflictSummary(cmd *cobra.Command, es []conflict.Entry) {
	out := cmd.OutOrStdout()
	if len(es) == 0 {
		fmt.Fprintln(out, "no conflicts")
		return
	}
	counts := map[string]int{}
	for _, e := range es {
		counts[fmt.Sprintf("%-6s %-24s %s", e.Node, e.Kind, e.Resolution)]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(out, "%-6s %-24s %-22s %s\n", "NODE", "KIND", "RESOLUTION", "COUNT")
	for _, k := range keys {
		fmt.Fprintf(out, "%-54s %d\n", k, counts[k])
	}
	fmt.Fprintln(out, "\nmost recent:")
	printConflicts(out, es[max(0, len(es)-3):])
}
