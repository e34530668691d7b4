package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/grants"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/setup"
)

func init() { verbs = append(verbs, newSetupSQLCmd) }

func newSetupSQLCmd() *cobra.Command {
	var (
		cfgPath string
		owners  []string
		major   int
	)
	cmd := &cobra.Command{
		Use:   "setup-sql",
		Short: "Print the SQL a superuser runs on each node so that pgmesh needs no superuser",
		Long: `setup-sql prints, per node, what a DBA runs as a superuser for pgmesh's own
role (the user of the node's dsn), which is not a superuser:

  before pgmesh init: REPLICATION, SET on session_replication_role, membership
  in the roles that own the replicated tables and run their DDL, CREATE on the
  database, EXECUTE on the replication origin functions and on
  pg_logical_emit_message (revoked from PUBLIC);
  after pgmesh init, with ddl.capture: auto: the DDL capture event triggers.

Each node is asked, through its dsn, which roles own replicated tables. When
it cannot be reached (the role does not exist yet), the SQL names the roles
given with --owner and the major version of --pg-major. A node with an
admin_dsn needs none of this: pgmesh init runs the same SQL through it.`,
		Example: `  pgmesh setup-sql -c pgmesh.yaml > setup.sql      # review, then: psql -f setup.sql (per node)
  pgmesh setup-sql -c pgmesh.yaml --owner app_owner --pg-major 16`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cfgPath)
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd.Context())
			defer cancel()
			for i, n := range cfg.Nodes {
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				if err := printSetupSQL(ctx, cmd.OutOrStdout(), cfg, n, owners, major); err != nil {
					return exitCode(1, err)
				}
			}
			return nil
		},
	}
	addConfigFlag(cmd, &cfgPath)
	cmd.Flags().StringSliceVar(&owners, "owner", nil, "role that owns replicated tables or runs their DDL, for nodes that cannot be asked (repeatable)")
	cmd.Flags().IntVar(&major, "pg-major", 15, "PostgreSQL major version of nodes that cannot be asked")
	return cmd
}

func printSetupSQL(ctx context.Context, w io.Writer, cfg *config.Config, n config.Node, owners []string, major int) error {
	g, asked := grants.Node{}, false
	if conn, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh setup-sql"); err == nil {
		g, err = setup.GrantsFor(ctx, conn, cfg, n)
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return err
		}
		asked = true
	} else {
		pc, perr := pgconn.ParseConfig(n.DSN)
		if perr != nil {
			return fmt.Errorf("node %s: parse DSN: invalid DSN", n.Name)
		}
		g = grants.Node{Role: pc.User, DB: pc.Database, Owners: owners, Major: major}
	}
	fmt.Fprintf(w, "-- node %s (%s): run as a superuser in database %s\n", n.Name, pg.Address(n.DSN), pg.Ident(g.DB))
	if !asked {
		fmt.Fprintf(w, "-- (not reachable as %s: roles from --owner, PostgreSQL %d)\n", g.Role, g.Major)
		fmt.Fprintf(w, "-- CREATE ROLE %s LOGIN;  -- then set its password: \\password %s\n", pg.Ident(g.Role), g.Role)
	}
	fmt.Fprintln(w, "-- before pgmesh init:")
	fmt.Fprint(w, grants.Script(grants.Statements(append(grants.Server(g), grants.Database(g)...))))
	if cfg.DDL.Capture == "" || cfg.DDL.Capture == "auto" {
		fmt.Fprintln(w, "-- after pgmesh init (ddl.capture: auto):")
		fmt.Fprint(w, grants.Script(grants.Capture()))
	}
	if len(g.Owners) == 0 {
		fmt.Fprintln(w, "-- no role owns a replicated table yet: GRANT each one that will to "+strings.TrimSpace(pg.Ident(g.Role))+" as well")
	}
	return nil
}
