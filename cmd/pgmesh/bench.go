package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/eval"
)

func init() { verbs = append(verbs, newBenchCmd) }

// benchSubs lets other benchmarks attach themselves under `pgmesh bench`.
var benchSubs []func() *cobra.Command

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks that compare pgmesh with native PostgreSQL in the same run",
		Example: `  pgmesh bench apply --txns 20000 --rounds 3
  pgmesh bench mesh --nodes 3 --rate 300 --duration 60s --scale 10`,
	}
	cmd.AddCommand(newBenchApplyCmd(), newBenchMeshCmd())
	for _, sub := range benchSubs {
		cmd.AddCommand(sub())
	}
	return cmd
}

func newBenchApplyCmd() *cobra.Command {
	var o eval.ApplyBenchOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Catch-up speed of a pgmesh link vs a native subscription on the same pgbench backlog",
		Long: `apply starts a 2-node sandbox, builds a backlog of pgbench TPC-B transactions
(3 updates + 1 insert each) on n1 while the applier is stopped, and times how
long a native subscription and a pgmesh link take to apply it on n2. The two
alternate over --rounds rounds on the same servers; the result is the ratio
of the medians (native seconds / pgmesh seconds: 1.0 = as fast as native).`,
		Example: `  pgmesh bench apply
  pgmesh bench apply --txns 40000 --rounds 5 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			if !asJSON {
				o.Out = cmd.ErrOrStderr()
			}
			res, err := eval.BenchApply(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			if res.BigRows > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "PostgreSQL %d, one transaction of %d inserted rows per round, %d rounds, %d pgmesh apply workers\n",
					res.ServerVersion, res.BigRows, len(res.Rounds)/2, res.Workers)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "PostgreSQL %d, %d pgbench transactions per round, %d rounds, %d pgmesh apply workers\n",
					res.ServerVersion, res.Txns, len(res.Rounds)/2, res.Workers)
			}
			n, unit := res.Txns, "txn/s"
			if res.BigRows > 0 {
				n, unit = res.BigRows, "rows/s"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "native subscription: median %.2fs (%.0f %s)\n", res.NativeMedian, float64(n)/res.NativeMedian, unit)
			fmt.Fprintf(cmd.OutOrStdout(), "pgmesh link:         median %.2fs (%.0f %s)\n", res.PgmeshMedian, float64(n)/res.PgmeshMedian, unit)
			fmt.Fprintf(cmd.OutOrStdout(), "ratio native/pgmesh time: %.2f (pgmesh runs at %.0f%% of native speed)\n", res.Ratio, 100*res.Ratio)
			fmt.Fprintf(cmd.OutOrStdout(), "pgmesh peak RSS (the agent runs in this process): %.0f MiB\n", res.PeakRSSMiB)
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Txns, "txns", 20000, "pgbench transactions per round")
	cmd.Flags().IntVar(&o.Scale, "scale", 1, "pgbench scale (branches: every transaction updates one)")
	cmd.Flags().IntVar(&o.BigRows, "big-rows", 0, "instead of pgbench: one transaction inserting this many rows per round")
	cmd.Flags().IntVar(&o.Workers, "workers", 0, "apply sessions of the pgmesh link (default: agent.apply_workers' default)")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds per applier (interleaved)")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "sandbox directory (default: a temporary one)")
	cmd.Flags().StringVar(&o.BinDir, "pg-bin", "", "PostgreSQL bin directory (default: $PGMESH_PG_BIN, pg_config, /usr/lib/postgresql/*)")
	addJSONFlag(cmd, &asJSON)
	return cmd
}

func newBenchMeshCmd() *cobra.Command {
	o := eval.MeshBenchOptions{Nodes: 3, Rate: 100, Duration: time.Minute, Scale: 10}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "Replication lag of a pgmesh mesh vs a native origin = none mesh under the same multi-master load",
		Long: `mesh starts --nodes sandbox servers (PostgreSQL 16 or newer: the native mesh
needs subscriptions WITH (origin = none)) and runs, on every node at once,
pgbench TPC-B at --rate transactions per second (2 clients) for --duration:
first against a native mesh (every node subscribes to every other, origin =
none, copy_data = false), then against a pgmesh mesh, each in its own
database on the same servers. Every node updates its own heartbeat row every
100 ms; lag is the age of a peer's heartbeat as a node reads it every 100 ms
(so it includes up to the 100 ms heartbeat period). For each mesh it prints
lag p50/p99/max, the rate the clients achieved, link restarts or apply
errors, and whether the nodes converged once replication caught up (native
logical replication resolves no conflict: concurrent updates of the same
rows make its nodes diverge).`,
		Example: `  PGMESH_PG_BIN=/usr/lib/postgresql/18/bin pgmesh bench mesh --nodes 3 --rate 300 --duration 60s --scale 10
  pgmesh bench mesh --rate 100 --duration 30s --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			if !asJSON {
				o.Out = cmd.ErrOrStderr()
			}
			res, err := eval.BenchMesh(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "PostgreSQL %d, %d nodes, pgbench TPC-B scale %d at %d txn/s on every node (2 clients) for %.0fs; pgmesh with %d apply workers per link\n",
				res.ServerVersion, res.Nodes, res.Scale, res.Rate, res.DurationSecs, res.Workers)
			fmt.Fprintf(w, "%-8s %9s %9s %9s  %-26s %s\n", "mesh", "lag p50", "lag p99", "lag max", "clients txn/s (per node)", "problems")
			for _, m := range res.Meshes {
				var rates []string
				for _, r := range m.ClientTPS {
					rates = append(rates, fmt.Sprintf("%.0f", r))
				}
				var problems []string
				if m.LinkRestarts > 0 {
					problems = append(problems, fmt.Sprintf("%d link restarts", m.LinkRestarts))
				}
				if m.ApplyErrors > 0 {
					problems = append(problems, fmt.Sprintf("%d apply errors", m.ApplyErrors))
				}
				if m.ClientFailed > 0 {
					problems = append(problems, fmt.Sprintf("%d client transactions failed", m.ClientFailed))
				}
				if m.Converged {
					problems = append(problems, "converged")
				} else {
					problems = append(problems, "DIVERGED: "+strings.Join(m.Differing, ", ")+" differ between nodes")
				}
				fmt.Fprintf(w, "%-8s %7.0fms %7.0fms %7.0fms  %-26s %s\n", m.Mesh, m.LagP50Ms, m.LagP99Ms, m.LagMaxMs, strings.Join(rates, " / "), strings.Join(problems, "; "))
				if m.Retries > 0 {
					fmt.Fprintf(w, "%8s %d transactions retried in place (deadlocks with local writers)\n", "", m.Retries)
				}
				for _, e := range m.Errors {
					fmt.Fprintf(w, "%8s error: %s\n", "", e)
				}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Nodes, "nodes", o.Nodes, "number of nodes")
	cmd.Flags().IntVar(&o.Rate, "rate", o.Rate, "pgbench transactions per second on every node")
	cmd.Flags().DurationVar(&o.Duration, "duration", o.Duration, "load duration per mesh")
	cmd.Flags().IntVar(&o.Scale, "scale", o.Scale, "pgbench scale (branches; 100,000 accounts each)")
	cmd.Flags().IntVar(&o.Workers, "workers", 0, "apply sessions per pgmesh link (default: agent.apply_workers' default)")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "sandbox directory (default: a temporary one)")
	cmd.Flags().StringVar(&o.BinDir, "pg-bin", "", "PostgreSQL 16+ bin directory (default: $PGMESH_PG_BIN, pg_config, /usr/lib/postgresql/*)")
	addJSONFlag(cmd, &asJSON)
	return cmd
}
