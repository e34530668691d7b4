package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/sequence"
	"github.com/pgmesh/pgmesh/internal/setup"
)

func init() { verbs = append(verbs, newSequencesCmd) }

func newSequencesCmd() *cobra.Command {
	var cfgPath string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "sequences",
		Short: "List and convert the sequences that feed replicated tables, so that nodes never generate the same id",
		Long: `Every node of a cluster inserts, so a serial or identity column that counts
1, 2, 3… on each node collides at once. 'sequences list' shows the columns of
the replicated tables fed by a sequence and what each node does now;
'sequences convert' makes them collision-free with one of three strategies:

  snowflake  default pgmesh.snowflake_nextval(seq): 41-bit milliseconds since
             2024-01-01 | 10-bit node id | 12-bit counter. bigint only; ids
             are roughly time-ordered; depends on each node's clock.
  step       INCREMENT BY max_nodes, each node in its own residue class
             (node id mod max_nodes). Works for integer; each node gets
             1/max_nodes of the type's range.
  range      each node its own MINVALUE..MAXVALUE block (1/max_nodes of the
             type's range). Works for integer; ids show which node made them.

'pgmesh check' proves the nodes' ids are disjoint and reports the headroom.`,
		Example: `  pgmesh sequences -c pgmesh.yaml list
  pgmesh sequences -c pgmesh.yaml convert --strategy snowflake
  pgmesh sequences -c pgmesh.yaml convert --strategy step --max-nodes 8 --json`,
	}
	cmd.PersistentFlags().StringVarP(&cfgPath, "config", "c", "pgmesh.yaml", "cluster config file")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	cmd.AddCommand(newSequencesListCmd(&cfgPath, &asJSON), newSequencesConvertCmd(&cfgPath, &asJSON))
	return cmd
}

func newSequencesListCmd(cfgPath *string, asJSON *bool) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Short:   "Show, per node, the sequence-fed columns of replicated tables and their strategy",
		Example: `  pgmesh sequences -c pgmesh.yaml list`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(*cfgPath)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			states, err := sequence.List(ctx, cfg)
			if err != nil {
				return err
			}
			if *asJSON {
				return printJSON(cmd.OutOrStdout(), states)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tCOLUMN\tTYPE\tSEQUENCE\tSTRATEGY\tDETAIL")
			for _, st := range states {
				for _, c := range st.Columns {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s.%s\t%s\t%s\n", st.Node, c.Object(), c.Type, c.SeqSchema, c.SeqName, c.Strategy, sequence.Describe(c, st.NodeID))
				}
			}
			return w.Flush()
		},
	}
}

func newSequencesConvertCmd(cfgPath *string, asJSON *bool) *cobra.Command {
	var strategy string
	var maxNodes int
	cmd := &cobra.Command{
		Use:   "convert",
		Short: "Make every node generate ids no other node generates",
		Long: `convert rewrites column defaults and sequence parameters on every node so
that the nodes' ids are disjoint. It installs the pgmesh schema where 'init'
has not run yet, changes each node in one transaction, prints what it changed
per node, and changes nothing on a second run. Stop writes while it runs.
A node added to the config later gets its own slot by running it again.

snowflake refuses integer and smallint columns (a snowflake id needs 63
bits); use step or range for them, or widen them to bigint first. Identity
columns converted to snowflake lose their identity (an identity column cannot
have a default) and keep a sequence of the same name for the snowflake state.`,
		Example: `  pgmesh sequences -c pgmesh.yaml convert --strategy snowflake
  pgmesh sequences -c pgmesh.yaml convert --strategy range --max-nodes 4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(*cfgPath)
			if err != nil {
				return err
			}
			if strategy == "" {
				strategy = cfg.Sequences.Strategy
			}
			st, err := sequence.ParseStrategy(strategy)
			if err != nil {
				return exitCode(2, fmt.Errorf("--strategy: %w", err))
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			rep, err := sequence.Convert(ctx, cfg, st, maxNodes, setup.Migrate)
			if rep != nil {
				if *asJSON {
					if jerr := printJSON(cmd.OutOrStdout(), rep); jerr != nil {
						return jerr
					}
				} else {
					rep.Render(cmd.OutOrStdout())
				}
			}
			return err
		},
	}
	cmd.Flags().StringVar(&strategy, "strategy", "", "snowflake, step or range (default: sequences.strategy of the config)")
	cmd.Flags().IntVar(&maxNodes, "max-nodes", 0, "slots for step and range (default: sequences.max_nodes of the config)")
	return cmd
}
