package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/ddl"
)

func init() { verbs = append(verbs, newDDLCmd) }

func newDDLCmd() *cobra.Command {
	var (
		cfgPath, node, file string
		role, searchPath    string
		wait, force, asJSON bool
		timeout             time.Duration
	)
	cmd := &cobra.Command{
		Use:   `ddl --node NODE ("SQL" | -f FILE) [--wait]`,
		Short: "Run a schema change on one node and replicate it to every node, in stream order",
		Long: `ddl runs the SQL on NODE in one transaction together with a logical
replication message that carries it. Every other node executes it at the same
point of NODE's stream, in its apply transaction, so rows written before the
change apply to the old schema and rows written after it to the new one. New
tables in replicated schemas join the publication on every node.

The SQL runs inside a transaction on every node: several statements are fine,
transaction control (BEGIN, COMMIT) and CONCURRENTLY forms are refused (run
CREATE INDEX CONCURRENTLY on each node yourself). Put only schema changes in
it: data changes it makes are executed by every node and replicated too.

With ddl.capture: auto (the default) DDL typed in psql is replicated the same
way without this command; ddl is the way with manual capture, and the way to
get --wait and the ordering check: ddl refuses to start while an earlier DDL
is not applied on every node (see 'pgmesh ddl list'), unless --force.

--wait returns when every node has applied the DDL; after --timeout it fails
naming the lagging nodes. A DDL that fails on a node stops that node's link
from NODE (pgmesh status shows the error and the DDL id): fix the node and
restart the agent, or skip the DDL there with 'pgmesh ddl skip'.`,
		Example: `  pgmesh ddl -c pgmesh.yaml --node n2 --wait "ALTER TABLE public.items ADD COLUMN note text DEFAULT ''"
  pgmesh ddl -c pgmesh.yaml --node n1 --role app_owner "CREATE TABLE items (id bigint PRIMARY KEY, name text)"
  pgmesh ddl -c pgmesh.yaml --node n1 -f migrations/0042_orders.sql --wait --timeout 5m
  pgmesh ddl list -c pgmesh.yaml
  pgmesh ddl skip 6f1c0e52-4c0b-4be0-9d55-0c1f5f1b8a61 --node n3 -c pgmesh.yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sql, err := ddlText(args, file)
			if err != nil {
				return exitCode(2, err)
			}
			if node == "" {
				return exitCode(2, errors.New("--node is required: the node to run the DDL on"))
			}
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			id, err := ddl.Emit(ctx, cfg, node, sql, ddl.EmitOptions{Force: force, Role: role, SearchPath: searchPath})
			if err != nil {
				return exitCode(1, err)
			}
			res := struct {
				ID      string `json:"id"`
				Node    string `json:"node"`
				Applied string `json:"applied"` // "node" or "all"
			}{ID: id, Node: node, Applied: "node"}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "ddl %s applied on %s\n", id, node)
			}
			var waitErr error
			if wait {
				if !asJSON {
					fmt.Fprintf(cmd.OutOrStdout(), "waiting for every node (up to %s)…\n", timeout)
				}
				if waitErr = ddl.Wait(ctx, cfg, id, timeout); waitErr == nil {
					res.Applied = "all"
					if !asJSON {
						fmt.Fprintf(cmd.OutOrStdout(), "ddl %s applied on every node: %s\n", id, strings.Join(cfg.NodeNames(), ", "))
					}
				}
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			}
			if waitErr != nil {
				return exitCode(1, waitErr)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().StringVar(&node, "node", "", "node to run the DDL on (its origin)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "read the SQL from FILE (- for standard input) instead of the argument")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until every node has applied the DDL")
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long --wait waits")
	cmd.Flags().BoolVar(&force, "force", false, "run even if an earlier DDL is not applied on every node")
	cmd.Flags().StringVar(&role, "role", "", "run the DDL as this role on every node (it owns what the DDL creates); default: pgmesh's role")
	cmd.Flags().StringVar(&searchPath, "search-path", ddl.DefaultSearchPath, "search_path for the DDL's unqualified names, on every node")
	cmd.AddCommand(newDDLSkipCmd(), newDDLListCmd())
	return cmd
}

// ddlText returns the SQL from the argument or the file, exactly one of them.
func ddlText(args []string, file string) (string, error) {
	switch {
	case len(args) == 1 && file != "":
		return "", errors.New("give the SQL either as the argument or with -f, not both")
	case len(args) == 1:
		return args[0], nil
	case file == "":
		return "", errors.New(`no SQL: give it as the argument ("ALTER TABLE …") or with -f FILE`)
	}
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("read SQL: %w", err)
	}
	return string(b), nil
}

func newDDLSkipCmd() *cobra.Command {
	var cfgPath, node string
	cmd := &cobra.Command{
		Use:   "skip ID --node NODE",
		Short: "Let NODE's link go on without a DDL that failed there",
		Long: `skip records DDL ID as skipped in NODE's pgmesh.ddl_log. When the link that
stopped on it restarts (the agent retries on its own), it continues after the
DDL without executing it. Use it when NODE cannot or need not apply the DDL,
e.g. the object already exists there; make NODE's schema right by hand, or
'pgmesh check' will report the drift.`,
		Example: `  pgmesh ddl skip 6f1c0e52-4c0b-4be0-9d55-0c1f5f1b8a61 --node n3 -c pgmesh.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if node == "" {
				return exitCode(2, errors.New("--node is required: the node that should skip the DDL"))
			}
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			if err := ddl.Skip(ctx, cfg, args[0], node); err != nil {
				return exitCode(1, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ddl %s skipped on %s\n", args[0], node)
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().StringVar(&node, "node", "", "node that skips the DDL")
	return cmd
}

func newDDLListCmd() *cobra.Command {
	var cfgPath string
	var asJSON, pending bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Show every DDL with its state on each node",
		Long: `list merges the pgmesh.ddl_log of every node: each DDL (id, origin node,
time, first line of the SQL) with its state per node: applied, skipped,
failed (with the error), not_received (not applied yet) or not_replicated
(a CONCURRENTLY form that each node must run by hand). Exit code 1 when a
node cannot be read.`,
		Example: `  pgmesh ddl list -c pgmesh.yaml
  pgmesh ddl list -c pgmesh.yaml --pending --json | jq -r '.entries[].id'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			log := ddl.Collect(ctx, cfg)
			if pending {
				log.Entries = log.Pending()
			}
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), log); err != nil {
					return err
				}
			} else {
				printDDLLog(cmd, log)
			}
			if len(log.Unreachable) > 0 {
				return exitCode(1, nil)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	addJSONFlag(cmd, &asJSON)
	cmd.Flags().BoolVar(&pending, "pending", false, "only DDL that some node has not applied")
	return cmd
}

func printDDLLog(cmd *cobra.Command, l *ddl.Log) {
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "ID\tORIGIN\tEMITTED\t%s\tSQL\n", strings.ToUpper(strings.Join(l.Nodes, "\t")))
	var failures []string
	for _, e := range l.Entries {
		states := make([]string, len(l.Nodes))
		for i, n := range l.Nodes {
			s := e.Nodes[n]
			states[i] = s.Status
			if s.Error != "" {
				failures = append(failures, fmt.Sprintf("%s on %s: %s", e.ID, n, s.Error))
			}
		}
		emitted := "-"
		if !e.EmittedAt.IsZero() {
			emitted = e.EmittedAt.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", e.ID, e.Origin, emitted, strings.Join(states, "\t"), ddl.FirstLine(e.SQL, 60))
	}
	w.Flush()
	out := cmd.OutOrStdout()
	for _, f := range failures {
		fmt.Fprintln(out, "failed:", f)
	}
	for _, n := range l.Nodes {
		if e, ok := l.Unreachable[n]; ok {
			fmt.Fprintf(out, "%s unreachable: %s\n", n, e)
		}
	}
}
