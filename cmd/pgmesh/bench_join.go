package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/eval"
)

func init() { benchSubs = append(benchSubs, newBenchJoinCmd) }

func newBenchJoinCmd() *cobra.Command {
	var o eval.JoinBenchOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "join",
		Short: "node add of an existing database vs pg_dump -t | psql of the same table",
		Long: `join starts a 3-node sandbox, fills a table on n1 (--rows in one transaction,
--single more rows one per transaction, each with its own commit time), copies
it with pg_dump -t | psql into n2, then makes n1 a one-node mesh and adds n3
with node add, and reports both times, their ratio and the peak memory.`,
		Example: `  pgmesh bench join --rows 1000000
  pgmesh bench join --rows 100000 --single 20000 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			if !asJSON {
				o.Out = cmd.ErrOrStderr()
			}
			res, err := eval.BenchJoin(ctx, o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "PostgreSQL %d, %d rows (%s with indexes)\n", res.ServerVersion, res.Rows, bytesIEC(res.TableBytes))
			fmt.Fprintf(w, "pg_dump -t | psql: %.2fs, peak RSS %d MiB\n", res.DumpSeconds, res.DumpPeakKiB/1024)
			fmt.Fprintf(w, "pgmesh node add:   %.2fs (copy %.2fs in %d transactions), peak RSS %d MiB\n",
				res.JoinSeconds, res.CopySeconds, res.CopyTxns, res.JoinPeakKiB/1024)
			fmt.Fprintf(w, "ratio pg_dump/node add time: %.2f\n", res.Ratio)
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Rows, "rows", 1000000, "rows inserted in one transaction")
	cmd.Flags().IntVar(&o.SingleTxns, "single", 0, "rows inserted one per transaction")
	cmd.Flags().IntVar(&o.Jobs, "jobs", 2, "tables copied at once by node add")
	cmd.Flags().StringVar(&o.Dir, "dir", "", "sandbox directory (default: a temporary one)")
	cmd.Flags().StringVar(&o.BinDir, "pg-bin", "", "PostgreSQL bin directory (default: $PGMESH_PG_BIN, pg_config, /usr/lib/postgresql/*)")
	addJSONFlag(cmd, &asJSON)
	return cmd
}
