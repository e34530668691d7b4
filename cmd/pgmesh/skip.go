package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/deadletter"
	"github.com/pgmesh/pgmesh/internal/pg"
)

func init() { verbs = append(verbs, newSkipCmd, newSkippedCmd) }

func newSkipCmd() *cobra.Command {
	var (
		cfgPath, link, lsn string
		wait               time.Duration
		asJSON             bool
	)
	cmd := &cobra.Command{
		Use:   "skip",
		Short: "Move the transaction a link is blocked on into the dead letters of its downstream",
		Long: `skip deals with a poison transaction: a remote transaction that the
downstream refuses for a reason that retrying does not fix (a CHECK
constraint, a trigger error, a missing table), which holds everything behind
it on its link. pgmesh status, the status page and the metric
pgmesh_link_blocked_since_timestamp_seconds show it.

skip moves exactly that transaction — every change, with the row images the
upstream sent — into pgmesh.dead_letter on the downstream, in the same local
transaction that moves the link past it, and the link goes on. Nothing is
lost: pgmesh skipped lists it, and pgmesh skipped replay applies it through
the conflict rules once the cause is fixed. Pass --lsn with the commit LSN
that status showed: the skip is refused when the link is blocked on another
transaction. A transaction that goes through meanwhile is not skipped.

Exit codes: 0 skipped (or applied meanwhile), 1 the link is not blocked, is
blocked on another transaction, or did not skip within --wait (the order
stays: the link skips it at its next retry).`,
		Example: `  pgmesh skip -c pgmesh.yaml --link n1->n2 --lsn 0/19AFF70
  pgmesh skip -c pgmesh.yaml --link n1->n2 --wait 2m --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			l, err := deadletter.ParseLink(cfg, link)
			if err != nil {
				return exitCode(2, err)
			}
			var want pglogrepl.LSN
			if lsn != "" {
				if want, err = pglogrepl.ParseLSN(lsn); err != nil {
					return exitCode(2, fmt.Errorf("--lsn %q: want an LSN such as 0/19AFF70", lsn))
				}
			}
			progress := cmd.ErrOrStderr()
			if !asJSON {
				progress = cmd.OutOrStdout()
			}
			res, err := deadletter.Skip(cmd.Context(), cfg, l, want, wait, progress)
			if err != nil {
				if errors.Is(err, deadletter.ErrNotBlocked) || errors.Is(err, deadletter.ErrMismatch) {
					return exitCode(1, err)
				}
				return err
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			} else {
				switch res.Outcome {
				case "skipped":
					fmt.Fprintf(cmd.OutOrStdout(), "moved %d changes into pgmesh.dead_letter on %s as id %d; the link goes on\n  fix the cause, then: pgmesh skipped replay %d --node %s -c %s\n",
						res.Changes, l.Down, res.DeadLetter, res.DeadLetter, l.Down, cfgPath)
				case "applied":
					fmt.Fprintln(cmd.OutOrStdout(), "the transaction was applied meanwhile (its cause was fixed): nothing skipped")
				}
			}
			if res.Outcome == "requested" {
				return exitCode(1, fmt.Errorf("link %s did not skip %s within %s (is its agent running?): it will at its next retry; pgmesh skipped shows it once done", l.Name(), res.CommitLSN, wait))
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().StringVar(&link, "link", "", "the blocked link, UPSTREAM->DOWNSTREAM (required)")
	cmd.Flags().StringVar(&lsn, "lsn", "", "the commit LSN of the blocked transaction as status shows it: refuse if the link is blocked on another one")
	cmd.Flags().DurationVar(&wait, "wait", time.Minute, "how long to wait for the link to skip it")
	_ = cmd.MarkFlagRequired("link")
	return cmd
}

func newSkippedCmd() *cobra.Command {
	var (
		cfgPath, node string
		asJSON        bool
	)
	cmd := &cobra.Command{
		Use:   "skipped",
		Short: "List the transactions moved into the dead letters by pgmesh skip",
		Long: `skipped lists pgmesh.dead_letter of every node (or of --node): each
skipped transaction with its link, commit LSN and time upstream, the error
that blocked it, its changes and whether it was replayed. --json prints every
change with its row images.`,
		Example: `  pgmesh skipped -c pgmesh.yaml
  pgmesh skipped -c pgmesh.yaml --node n2 --json
  pgmesh skipped replay 3 --node n2 -c pgmesh.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			type nodeEntry struct {
				Node string `json:"node"`
				deadletter.Entry
			}
			var all []nodeEntry
			var failed []error
			for _, n := range cfg.Nodes {
				if node != "" && n.Name != node {
					continue
				}
				es, err := deadletterList(cmd, n.Name, n.DSN, 0)
				if err != nil {
					failed = append(failed, err)
					continue
				}
				for _, e := range es {
					all = append(all, nodeEntry{Node: n.Name, Entry: e})
				}
			}
			if asJSON {
				if all == nil {
					all = []nodeEntry{}
				}
				if err := printJSON(cmd.OutOrStdout(), all); err != nil {
					return err
				}
			} else {
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
				fmt.Fprintln(w, "NODE\tID\tLINK\tCOMMIT LSN\tCOMMITTED UPSTREAM\tCHANGES\tSKIPPED\tREPLAYED\tERROR")
				for _, e := range all {
					replayed := "no"
					if e.ReplayedAt != nil {
						replayed = e.ReplayedAt.Local().Format(time.DateTime)
					}
					fmt.Fprintf(w, "%s\t%d\t%s->%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.Node, e.ID, e.Upstream, e.Node, e.CommitLSN,
						e.CommitTime.Local().Format(time.DateTime+".000"), len(e.Changes), e.SkippedAt.Local().Format(time.DateTime), replayed, oneLine(e.Error, 100))
				}
				w.Flush()
			}
			if err := errors.Join(failed...); err != nil {
				return exitCode(1, err)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().StringVar(&node, "node", "", "only this node")
	cmd.AddCommand(newReplayCmd())
	return cmd
}

func newReplayCmd() *cobra.Command {
	var cfgPath, node string
	cmd := &cobra.Command{
		Use:   "replay ID",
		Short: "Apply a skipped transaction again, through the conflict rules",
		Long: `replay applies dead letter ID of --node again, once the cause that
blocked it is fixed: as if it had just arrived from its upstream, with its
commit time, through the conflict rules (what loses is in pgmesh.conflict_log),
and marks it replayed in the same transaction. It is not sent to the other
nodes: they applied it when it was new. A replay that fails changes nothing
and says why.`,
		Example: `  pgmesh skipped replay 3 --node n2 -c pgmesh.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || id <= 0 {
				return exitCode(2, fmt.Errorf("dead letter id %q: want a positive number (pgmesh skipped lists them)", args[0]))
			}
			n, ok := cfg.NodeByName(node)
			if !ok {
				return exitCode(2, fmt.Errorf("--node %q: not a node of the config (pgmesh skipped shows where each dead letter is)", node))
			}
			es, err := deadletterList(cmd, n.Name, n.DSN, id)
			if err != nil {
				return err
			}
			if len(es) == 0 {
				return exitCode(1, fmt.Errorf("node %s has no dead letter %d (pgmesh skipped lists them)", n.Name, id))
			}
			conflicts, err := deadletter.Replay(cmd.Context(), cfg, n, es[0], slog.New(slog.DiscardHandler))
			if err != nil {
				return exitCode(1, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "replayed dead letter %d on %s: %d changes", id, n.Name, len(es[0].Changes))
			printConflictCounts(cmd.OutOrStdout(), conflicts)
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().StringVar(&node, "node", "", "the node that holds the dead letter (required)")
	_ = cmd.MarkFlagRequired("node")
	return cmd
}

func printConflictCounts(out io.Writer, conflicts map[string]uint64) {
	if len(conflicts) == 0 {
		fmt.Fprintln(out, ", no conflict")
		return
	}
	fmt.Fprint(out, ", conflicts:")
	for _, k := range slices.Sorted(maps.Keys(conflicts)) {
		fmt.Fprintf(out, " %s %d", k, conflicts[k])
	}
	fmt.Fprintln(out, " (pgmesh conflicts shows them)")
}

// deadletterList reads the dead letters of one node (id > 0: that one).
func deadletterList(cmd *cobra.Command, node, dsn string, id int64) ([]deadletter.Entry, error) {
	conn, err := pg.Connect(cmd.Context(), node, dsn, "pgmesh skipped")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(cmd.Context()))
	es, err := deadletter.List(cmd.Context(), conn, id)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	return es, nil
}

// oneLine is s on one line, cut at n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
