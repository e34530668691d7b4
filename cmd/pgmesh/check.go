package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/check"
)

func init() { verbs = append(verbs, newCheckCmd) }

func newCheckCmd() *cobra.Command {
	var cfgPath, maxSlotWAL string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that every node can run pgmesh, with the fix for each problem",
		Long: `check connects to every node of the config and reports, per node, whether
it can take part in the cluster, each finding PASS, WARN or FAIL with the SQL
or step that fixes it:

  - server version (15 or newer), wal_level, track_commit_timestamp, enough
    replication slots, WAL senders and origins, max_slot_wal_keep_size;
  - privileges of the configured user: REPLICATION, the replication origin
    functions, SET session_replication_role, CREATE for schema pgmesh,
    ownership of the replicated tables;
  - a usable replica identity on every replicated table, and the same
    replicated tables on every node;
  - schema drift: every difference between the nodes' definitions of a
    table (columns, types, nullability, defaults, constraints, indexes,
    replica identity);
  - sequences and identity columns: proof that no two nodes can generate
    the same id, and how long each node's ids last;
  - the slot of every link: missing, inactive, invalidated (wal_status =
    lost) or retaining more WAL than --max-slot-wal.

It changes nothing (except recording sequence samples in schema pgmesh, to
measure id consumption between two checks).

Exit code 0 when nothing FAILs (warnings allowed), 1 when something FAILs,
2 for an invalid config or flag.`,
		Example: `  pgmesh check -c pgmesh.yaml
  pgmesh check -c pgmesh.yaml --max-slot-wal 10GB
  pgmesh check -c pgmesh.yaml --json | jq '.[] | select(.status == "FAIL")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			maxWAL, err := check.ParseSize(maxSlotWAL)
			if err != nil {
				return exitCode(2, fmt.Errorf("--max-slot-wal: %w", err))
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			fs, err := check.PreflightWith(ctx, cfg, check.Options{MaxSlotWAL: maxWAL})
			if fs == nil {
				fs = []check.Finding{}
			}
			if asJSON {
				if jerr := printJSON(cmd.OutOrStdout(), fs); jerr != nil {
					return jerr
				}
			} else {
				check.Render(cmd.OutOrStdout(), fs)
			}
			if err != nil {
				return exitCode(1, err)
			}
			if check.Failed(fs) {
				return exitCode(1, fmt.Errorf("check failed: %d FAIL findings", check.Count(fs, check.Fail)))
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().StringVar(&maxSlotWAL, "max-slot-wal", "1GB", "WARN when a slot retains more WAL than this (kB, MB, GB, TB)")
	return cmd
}
