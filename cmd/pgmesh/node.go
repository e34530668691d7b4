package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/join"
	"github.com/pgmesh/pgmesh/internal/leave"
)

func init() { verbs = append(verbs, newNodeCmd) }

func newNodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Add a node to the running mesh, or remove one",
	}
	cmd.AddCommand(newNodeAddCmd(), newNodeRemoveCmd())
	return cmd
}

// holdEnv makes node add stop at points of the join (join.Hold*, comma
// separated): until a file named after the point appears in the directory
// named by releaseEnv, or until it is killed. The tests of interrupted joins
// kill it there; the tests of writes around the snapshot write while it
// holds.
const (
	holdEnv    = "PGMESH_JOIN_HOLD"
	releaseEnv = "PGMESH_JOIN_RELEASE"
)

func newNodeAddCmd() *cobra.Command {
	var (
		cfgPath, from, dsn, pgBin string
		id, jobs                  int
		noWait, asJSON            bool
	)
	cmd := &cobra.Command{
		Use:   "add NAME",
		Short: "Copy a node's data into an empty database and join it to the mesh while every node keeps writing",
		Long: `add makes NAME a node of the running mesh. NAME is a node of the config
file, or is added to it with --dsn (comments in the file are kept).

It copies the replicated schema (when NAME has none: pg_dump/pg_restore of
the source) and data of a source node (--from, default the first ready node)
into NAME while every node keeps writing, with no change missing or applied
twice on NAME: slots for NAME are created on every node first, apply into the
source is paused for the moment its snapshot is taken and its progress read,
and NAME's links resume exactly after what the copy holds (docs/JOIN.md has
the proof). Copied rows keep their commit time and origin, so conflicts
resolve on NAME as on the others.

It shows each table's progress, then waits until NAME has caught up (its
agent must run: pgmesh run --node NAME) unless --no-wait. Interrupted, it is
run again: a copy under way starts over, a finished one goes on waiting.
pgmesh status shows NAME's state (copying, catching_up, ready). The
application may write to NAME once it is ready.`,
		Example: `  pgmesh node add lille --dsn "host=db4 dbname=app user=pgmesh" -c pgmesh.yaml
  pgmesh node add lille --from paris -c pgmesh.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			progress := out
			if asJSON {
				progress = cmd.ErrOrStderr()
			}
			_, known := cfg.NodeByName(name)
			if cfg, err = ensureNodeInConfig(cfg, cfgPath, name, dsn, id, progress); err != nil {
				return err
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			opts := join.Options{Node: name, Source: from, Jobs: jobs, PgBin: pgBin, Wait: !noWait,
				Out: progress, Log: slog.Default()}
			if points := os.Getenv(holdEnv); points != "" {
				release := os.Getenv(releaseEnv)
				opts.Hold = func(p string) {
					if !slices.Contains(strings.Split(points, ","), p) {
						return
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "node add: holding at %s\n", p)
					for ctx.Err() == nil {
						if _, err := os.Stat(filepath.Join(release, p)); release != "" && err == nil {
							return
						}
						select {
						case <-ctx.Done():
						case <-time.After(50 * time.Millisecond):
						}
					}
				}
			}
			rep, err := join.Add(ctx, cfg, opts)
			if err != nil && !known && (rep == nil || !rep.Started) {
				// Refused before anything changed: the node leaves the
				// file again, so that agents do not look for it.
				if data, rerr := os.ReadFile(cfgPath); rerr == nil {
					if edited, rerr := config.RemoveNode(data, cfgPath, name); rerr == nil && writeFileKeepMode(cfgPath, edited) == nil {
						fmt.Fprintf(progress, "removed node %s from %s again\n", name, cfgPath)
					}
				}
			}
			if err != nil {
				code := 1
				if errors.Is(err, join.ErrRefused) {
					code = 3
				}
				return exitCode(code, err)
			}
			if asJSON {
				return printJSON(out, rep)
			}
			printJoin(out, rep)
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().StringVar(&from, "from", "", "node to copy from (default: the first ready node in the config)")
	cmd.Flags().StringVar(&dsn, "dsn", "", "DSN of NAME, added to the config file when NAME is not in it")
	cmd.Flags().IntVar(&id, "id", 0, "node id (snowflake id, step class, range block) when NAME is added to the config (default: its position, or the lowest free id)")
	cmd.Flags().IntVar(&jobs, "jobs", 2, "tables copied at once")
	cmd.Flags().StringVar(&pgBin, "pg-bin", "", "directory of pg_dump and pg_restore (default: $PGMESH_PG_BIN, PATH, /usr/lib/postgresql)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the copy is in place, without waiting for NAME to catch up")
	addJSONFlag(cmd, &asJSON)
	return cmd
}

// ensureNodeInConfig adds name to the config file when --dsn names a node
// that is not in it, and returns the config that holds it.
func ensureNodeInConfig(cfg *config.Config, path, name, dsn string, id int, out io.Writer) (*config.Config, error) {
	if n, ok := cfg.NodeByName(name); ok {
		if dsn != "" && dsn != n.DSN {
			return nil, exitCode(2, fmt.Errorf("node %s is in %s with another dsn: edit the file, or leave --dsn out", name, path))
		}
		return cfg, nil
	}
	if dsn == "" {
		return nil, exitCode(2, fmt.Errorf("node %s is not in %s: give its --dsn (it is then added to the file)", name, path))
	}
	// The position gives the id unless another node holds it (ids are
	// pinned when a node is removed): then the lowest free one.
	if id == 0 {
		var used []int
		for _, n := range cfg.Nodes {
			used = append(used, n.ID)
		}
		if slices.Contains(used, len(cfg.Nodes)+1) {
			for id = 1; slices.Contains(used, id); id++ {
			}
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	edited, err := config.AddNode(data, path, name, dsn, id)
	if err != nil {
		return nil, exitCode(2, fmt.Errorf("%w; add node %s to %s by hand and run node add again", err, name, path))
	}
	if err := writeFileKeepMode(path, edited); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "added node %s to %s\n", name, path)
	return loadConfig(path)
}

// writeFileKeepMode replaces path atomically, keeping its permissions.
func writeFileKeepMode(path string, data []byte) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pgmesh-*.yaml")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(st.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func printJoin(w io.Writer, rep *join.Report) {
	if rep.Resumed {
		fmt.Fprintf(w, "node %s: the copy from %s was complete already; state %s\n", rep.Node, rep.Source, rep.State)
		return
	}
	fmt.Fprintf(w, "node %s joined from %s (attempt %d, schema %s): %d rows, %s in %.1fs; state %s\n",
		rep.Node, rep.Source, rep.Attempt, rep.Schema, rep.Rows, bytesIEC(rep.Bytes), rep.Seconds, rep.State)
	for _, t := range rep.Tables {
		fmt.Fprintf(w, "  %s: %d rows, %s, %d transactions, %.1fs\n", t.Table, t.Rows, bytesIEC(t.Bytes), t.Txns, t.Seconds)
	}
}

func newNodeRemoveCmd() *cobra.Command {
	var cfgPath string
	var force, asJSON bool
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a node from the mesh once its last changes reached every other node",
		Long: `remove takes NAME out of the mesh. First every change of NAME reaches every
other node (the survivors): NAME's links are stopped and each survivor is
caught up through its own slot on NAME, up to NAME's WAL position at that
moment (stop the application's writes to NAME before: later ones stay on
NAME). Then the slots from and to NAME are dropped, the survivors stop
ranking it, NAME is marked removed and taken out of the config file (the
other nodes keep their ids).

--force is for a node that is gone for good: the survivor that had applied
the most of NAME's changes gives the others the rows and deletes of NAME they
lack, applied as NAME's changes; what no survivor had received is lost, and
the report says what could not be verified.

Survivors keep their origin pgmesh_NAME (see docs/JOIN.md why).`,
		Example: `  pgmesh node remove nice -c pgmesh.yaml
  pgmesh node remove nice --force -c pgmesh.yaml   # nice's server is gone`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			progress := out
			if asJSON {
				progress = cmd.ErrOrStderr()
			}
			ctx, stop := signalContext(cmd.Context())
			defer stop()
			rep, err := leave.Remove(ctx, cfg, leave.Options{Node: name, Force: force, Out: progress, Log: slog.Default()})
			if err != nil {
				code := 1
				if errors.Is(err, leave.ErrRefused) {
					code = 3
				}
				return exitCode(code, err)
			}
			data, err := os.ReadFile(cfgPath)
			if err != nil {
				return err
			}
			edited, err := config.RemoveNode(data, cfgPath, name)
			if err != nil {
				return exitCode(1, fmt.Errorf("%s is out of the mesh, but %w: remove it from %s by hand, giving the nodes after it their ids explicitly (id: N)", name, err, cfgPath))
			}
			if err := writeFileKeepMode(cfgPath, edited); err != nil {
				return err
			}
			fmt.Fprintf(progress, "removed node %s from %s\n", name, cfgPath)
			if asJSON {
				return printJSON(out, rep)
			}
			for _, u := range rep.Unverified {
				fmt.Fprintln(out, "not verified: "+u)
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().BoolVar(&force, "force", false, "NAME is gone for good: catch the survivors up from the most advanced one")
	addJSONFlag(cmd, &asJSON)
	return cmd
}
