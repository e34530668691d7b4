package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/eval"
)

func init() { verbs = append(verbs, newBenchCmd) }

// benchSubs lets other benchmarks attach themselves under `pgmesh bench`.
var benchSubs []func() *cobra.Command

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "bench",
		Short:   "Benchmarks that compare pgmesh with native PostgreSQL in the same run",
		Example: `  pgmesh bench apply --txns 20000 --rounds 3`,
	}
	cmd.AddCommand(newBenchApplyCmd())
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
			fmt.Fprintf(cmd.OutOrStdout(), "PostgreSQL %d, %d pgbench transactions per round, %d rounds\n", res.ServerVersion, res.Txns, len(res.Rounds)/2)
			fmt.Fprintf(cmd.OutOrStdout(), "native subscription: median %.2fs (%.0f txn/s)\n", res.NativeMedian, float64(res.Txns)/res.NativeMedian)
			fmt.Fprintf(cmd.OutOrStdout(), "pgmesh link:         median %.2fs (%.0f txn/s)\n", res.PgmeshMedian, float64(res.Txns)/res.PgmeshMedian)
			fmt.Fprintf(cmd.OutOrStdout(), "ratio native/pgmesh time: %.2f (pgmesh runs at %.0f%% of native speed)\n", res.Ratio, 100*res.Ratio)
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Txns, "txns", 20000, "pgbench transactions per round")
	cmd.Flags().IntVar(&o.Rounds, "rounds", 3, "rounds per applier (interleaved)")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "sandbox directory (default: a temporary one)")
	cmd.Flags().StringVar(&o.BinDir, "pg-bin", "", "PostgreSQL bin directory (default: $PGMESH_PG_BIN, pg_config, /usr/lib/postgresql/*)")
	addJSONFlag(cmd, &asJSON)
	return cmd
}
