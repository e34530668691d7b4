package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/sandbox"
)

func init() { verbs = append(verbs, newSandboxCmd) }

func newSandboxCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run a local cluster of real PostgreSQL servers for trying pgmesh out",
		Long: `sandbox starts PostgreSQL servers (initdb, pg_ctl) in a directory on free
local ports, with logical replication enabled, and writes a pgmesh.yaml naming
them. Every connection needs a password (SCRAM); the passwords are generated
and kept in DIR/passfile (mode 0600), which the DSNs name. Each server has the
roles of a least-privilege setup (README, Security): postgres (superuser, the
admin_dsn), pgmesh (pgmesh's own role, in pgmesh.yaml), app_owner (owns the
tables, runs DDL) and app (reads and writes the tables).
As root, the servers run as the postgres OS user.`,
		Example: `  pgmesh sandbox up --dir /tmp/mesh --nodes 3
  psql "$(pgmesh sandbox dsn --dir /tmp/mesh n1)"              # as app_owner
  psql "$(pgmesh sandbox dsn --dir /tmp/mesh --role app n2)"   # as the application
  pgmesh sandbox down --dir /tmp/mesh`,
	}
	cmd.AddCommand(newSandboxUpCmd(), newSandboxDownCmd(), newSandboxDSNCmd())
	return cmd
}

// sandboxNodeJSON is one node in `sandbox up --json`.
type sandboxNodeJSON struct {
	Name    string `json:"name"`
	Port    int    `json:"port"`
	DSN     string `json:"dsn"`
	DataDir string `json:"data_dir"`
	Log     string `json:"log"`
}

type sandboxJSON struct {
	Dir    string            `json:"dir"`
	Config string            `json:"config"`
	Major  int               `json:"major"`
	BinDir string            `json:"bin_dir"`
	DB     string            `json:"db"`
	Nodes  []sandboxNodeJSON `json:"nodes"`
}

func newSandboxUpCmd() *cobra.Command {
	var o sandbox.Options
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Create and start a sandbox, or start the stopped servers of an existing one",
		Long: `up creates --nodes servers n1..nN in --dir (which must be missing or empty),
creates database --db on each and writes DIR/pgmesh.yaml. Run again on the same
directory, it starts the servers that are down and changes nothing else.
Binaries: --pg-bin, else $PGMESH_PG_BIN, else pg_config --bindir, else the
newest /usr/lib/postgresql/*/bin.`,
		Example: `  pgmesh sandbox up --dir /tmp/mesh --nodes 3
  pgmesh sandbox up --dir /tmp/mesh18 --nodes 2 --pg-bin "$(cat .cache/pg18.bindir)" --db shop
  pgmesh sandbox up --dir /tmp/mesh --nodes 3 --json | jq -r '.nodes[].dsn'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			stderr := cmd.ErrOrStderr()
			o.Logf = func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
			c, err := sandbox.Up(ctx, o)
			if err != nil {
				return err
			}
			out := sandboxJSON{Dir: c.Dir, Config: filepath.Join(c.Dir, "pgmesh.yaml"), Major: c.Major, BinDir: c.BinDir, DB: c.DB}
			for _, n := range c.Nodes {
				out.Nodes = append(out.Nodes, sandboxNodeJSON{Name: n.Name, Port: n.Port, DSN: c.DSNAs(n.Name, "", sandbox.Owner), DataDir: n.DataDir, Log: n.LogFile()})
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "NODE\tPORT\tDSN")
			for _, n := range out.Nodes {
				fmt.Fprintf(w, "%s\t%d\t%s\n", n.Name, n.Port, n.DSN)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\nPostgreSQL %d, config %s; DSNs as role %s (other roles: pgmesh sandbox dsn --role)\n", out.Major, out.Config, sandbox.Owner)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "sandbox directory (created if missing)")
	cmd.Flags().IntVar(&o.Nodes, "nodes", 3, "number of servers")
	cmd.Flags().StringVar(&o.BinDir, "pg-bin", "", "PostgreSQL bin directory (initdb, pg_ctl, postgres)")
	cmd.Flags().StringVar(&o.DB, "db", sandbox.DefaultDB, "database created on every server")
	cmd.MarkFlagRequired("dir")
	addJSONFlag(cmd, &asJSON)
	return cmd
}

func newSandboxDownCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the servers of a sandbox and delete its directory",
		Long: `down stops every server of the sandbox in --dir (fast shutdown, immediate if
that fails) and deletes the directory with all data. A missing directory is
not an error.`,
		Example: `  pgmesh sandbox down --dir /tmp/mesh`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s does not exist: nothing to do\n", dir)
				return nil
			}
			c, err := sandbox.Open(dir)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			return c.Down(ctx)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "sandbox directory")
	cmd.MarkFlagRequired("dir")
	return cmd
}

func newSandboxDSNCmd() *cobra.Command {
	var dir, db, role string
	cmd := &cobra.Command{
		Use:   "dsn NODE",
		Short: "Print the DSN of a sandbox node",
		Long: `dsn prints only the libpq DSN of NODE (n1, n2…) for --role, for psql or
scripts. The password is in the sandbox's passfile (mode 0600), which the DSN
names: only the OS user that created the sandbox (and root) can use it.
Roles: app_owner (default: owns the tables, runs DDL), app (reads and writes
the tables), pgmesh (pgmesh's own role), postgres (superuser).`,
		Example: `  psql "$(pgmesh sandbox dsn --dir /tmp/mesh n1)"
  pgbench -n -T 10 "$(pgmesh sandbox dsn --dir /tmp/mesh --role app n2)"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := sandbox.Open(dir)
			if err != nil {
				return err
			}
			if _, err := c.Node(args[0]); err != nil {
				return err
			}
			r, err := sandbox.ParseRole(role)
			if err != nil {
				return exitCode(2, err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), c.DSNAs(args[0], db, r))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "sandbox directory")
	cmd.Flags().StringVar(&db, "db", "", "database (default: the sandbox's, see `sandbox up --db`)")
	cmd.Flags().StringVar(&role, "role", string(sandbox.Owner), "role: app_owner, app, pgmesh or postgres")
	cmd.MarkFlagRequired("dir")
	return cmd
}
