package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/agent"
)

func init() { verbs = append(verbs, newStatusCmd) }

func newStatusCmd() *cobra.Command {
	var cfgPath string
	var asJSON, asNodes bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every link: state, lag, last applied commit, WAL retained by its slot",
		Long: `status shows each node's state (ready; copying, catching_up while pgmesh
node add joins it, with each table's copy progress; leaving), then reads each
link's slot on its upstream and the agent's record on its downstream. It
works from any machine that reaches the nodes, whether or not agents run.
Exit code 1 when a node cannot be read.`,
		Example: `  pgmesh status -c pgmesh.yaml
  pgmesh status -c pgmesh.yaml --json | jq '.[] | select(.lag_bytes > 1e6)'
  pgmesh status -c pgmesh.yaml --json --nodes | jq '.[] | select(.state != "ready")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			sts, err := agent.Status(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			nodes := agent.NodeStatuses(cmd.Context(), cfg)
			switch {
			case asJSON && asNodes:
				if err := printJSON(cmd.OutOrStdout(), nodes); err != nil {
					return err
				}
			case asJSON:
				if err := printJSON(cmd.OutOrStdout(), sts); err != nil {
					return err
				}
			default:
				printNodes(cmd, nodes)
				printStatus(cmd, sts)
			}
			for _, s := range sts {
				if s.Problem != "" {
					return exitCode(1, nil)
				}
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().BoolVar(&asNodes, "nodes", false, "with --json: print the nodes' join states (copy progress per table) instead of the links")
	return cmd
}

// printNodes prints each node's state: ready, or joining with the copy's
// progress, or leaving.
func printNodes(cmd *cobra.Command, nodes []agent.NodeStatus) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tSTATE\tDETAIL")
	for _, n := range nodes {
		state, detail := n.State, n.Detail()
		if n.Problem != "" {
			state, detail = "?", n.Problem
		}
		if n.Error != "" {
			detail = strings.TrimSpace(detail + " " + n.Error)
		}
		if detail == "" {
			detail = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", n.Node, state, detail)
	}
	w.Flush()
	fmt.Fprintln(cmd.OutOrStdout())
}

func printStatus(cmd *cobra.Command, sts []agent.LinkStatus) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "LINK\tSTATE\tLAG\tLAG_S\tLAST_APPLIED_COMMIT\tSLOT_WAL\tPROBLEM")
	for _, s := range sts {
		last := "-"
		if s.LastCommitTime != nil {
			last = s.LastCommitTime.Local().Format(time.DateTime + ".000")
		}
		problem := s.Problem
		if problem == "" {
			problem = s.LastError
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%.1f\t%s\t%s\t%s\n", s.Link, s.State, bytesIEC(s.LagBytes), s.LagSeconds, last, bytesIEC(s.RetainedWALBytes), problem)
	}
	w.Flush()
	for _, s := range sts {
		if b := s.Blocked; b != nil && s.Problem == "" {
			fmt.Fprintf(cmd.OutOrStdout(), "\n%s is blocked on transaction %s (xid %d, committed %s upstream) since %s, %d attempts: %s",
				s.Link, b.CommitLSN, b.XID, b.CommitTime.Local().Format(time.DateTime+".000"), b.Since.Local().Format(time.DateTime), b.Attempts, b.What)
			if b.Table != "" {
				fmt.Fprintf(cmd.OutOrStdout(), " %s", b.Table)
			}
			if b.Key != "" {
				fmt.Fprintf(cmd.OutOrStdout(), " (%s)", b.Key)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\n  error: %s\n  fix the cause on %s and it applies, or move it aside: pgmesh skip --link %s --lsn %s\n",
				b.Error, s.Downstream, s.Link, b.CommitLSN)
		}
	}
}

// bytesIEC prints n as 512B, 3.2KiB, 1.5MiB…
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
