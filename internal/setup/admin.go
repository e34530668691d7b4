package setup

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/grants"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// GrantsFor describes, for internal/grants, the node n as seen through conn
// (any role that can read the catalog): pgmesh's role is the user of n's
// DSN; the roles it must be a member of are those that own replicated
// tables, or own a replicated schema, or were granted CREATE on one (they
// run the DDL that peers replay as them), superusers and predefined roles
// left out. CREATE granted to PUBLIC counts for no role: check warns about
// it instead.
func GrantsFor(ctx context.Context, conn *pgx.Conn, cfg *config.Config, n config.Node) (grants.Node, error) {
	pc, err := pgconn.ParseConfig(n.DSN)
	if err != nil {
		return grants.Node{}, fmt.Errorf("node %s: parse DSN: invalid DSN", n.Name)
	}
	g := grants.Node{Role: pc.User}
	var version int
	err = conn.QueryRow(ctx, `
SELECT current_database(), current_setting('server_version_num')::int,
       coalesce(array_agg(DISTINCT r.rolname ORDER BY r.rolname), '{}')
  FROM pg_roles r
 WHERE NOT r.rolsuper AND r.rolname NOT LIKE 'pg\_%' AND r.rolname <> $3
   AND (EXISTS (SELECT FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
                 WHERE c.relowner = r.oid AND c.relkind IN ('r', 'p') AND NOT c.relispartition
                   AND s.nspname = ANY ($1) AND (s.nspname || '.' || c.relname) <> ALL ($2))
        OR EXISTS (SELECT FROM pg_namespace s
                    WHERE s.nspname = ANY ($1)
                      AND (s.nspowner = r.oid
                           OR EXISTS (SELECT FROM aclexplode(s.nspacl) a
                                       WHERE a.grantee = r.oid AND a.privilege_type = 'CREATE'))))`,
		cfg.Replicate.Schemas, nonNil(cfg.Replicate.Exclude), g.Role).Scan(&g.DB, &version, &g.Owners)
	if err != nil {
		return grants.Node{}, fmt.Errorf("node %s: read the roles that own replicated tables: %w", n.Name, err)
	}
	g.Major = version / 10000
	return g, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// adminGrants gives pgmesh's role of node n what only a superuser may give
// (internal/grants), through the node's admin_dsn. Every statement is
// idempotent; they run in one transaction.
func adminGrants(ctx context.Context, cfg *config.Config, n config.Node, act func(node, format string, args ...any)) error {
	conn, err := pg.Connect(ctx, n.Name, n.AdminDSN, "pgmesh init (admin)")
	if err != nil {
		return fmt.Errorf("admin_dsn: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	g, err := GrantsFor(ctx, conn, cfg, n)
	if err != nil {
		return err
	}
	var super bool
	if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = $1), false)`, g.Role).Scan(&super); err != nil {
		return fmt.Errorf("read role %s: %w", g.Role, err)
	}
	if super {
		// Nothing to grant, and nothing to take away: the operator chose it.
		return nil
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, gr := range append(grants.Server(g), grants.Database(g)...) {
			var held bool
			if err := tx.QueryRow(ctx, "SELECT coalesce("+gr.Held+", false)").Scan(&held); err != nil {
				return fmt.Errorf("tell whether %s is needed: %w", gr.SQL, err)
			}
			if held {
				continue
			}
			if _, err := tx.Exec(ctx, gr.SQL); err != nil {
				return fmt.Errorf("%s: %w", gr.SQL, err)
			}
			act(n.Name, "ran %s (admin_dsn)", gr.SQL)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("admin_dsn: give pgmesh's role %s its privileges: %w", g.Role, err)
	}
	return nil
}

// ensureCapture creates the DDL capture event triggers of node n where
// ddl.capture is auto, or drops them where it is manual: through the
// admin_dsn, or through conn when pgmesh's role is a superuser itself.
// Otherwise it returns the SQL a superuser must run ("" when nothing is
// missing).
func ensureCapture(ctx context.Context, cfg *config.Config, n config.Node, conn *pgx.Conn, act func(node, format string, args ...any)) (string, error) {
	capture := cfg.DDL.Capture
	if capture == "" {
		capture = ddl.CaptureAuto
	}
	var super bool
	if err := conn.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&super); err != nil {
		return "", fmt.Errorf("read role: %w", err)
	}
	admin := conn
	if !super {
		if n.AdminDSN == "" {
			missing, err := ddl.CaptureMissing(ctx, conn, capture)
			if err != nil || !missing {
				return "", err
			}
			return grants.Script(grants.Capture()), nil
		}
		c, err := pg.Connect(ctx, n.Name, n.AdminDSN, "pgmesh init (admin)")
		if err != nil {
			return "", fmt.Errorf("admin_dsn: %w", err)
		}
		defer c.Close(context.WithoutCancel(ctx))
		admin = c
	}
	actions, err := ddl.InstallCapture(ctx, admin, capture)
	if err != nil {
		return "", err
	}
	for _, a := range actions {
		act(n.Name, "%s", a)
	}
	return "", nil
}
