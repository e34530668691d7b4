package setup

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// SyncNodes makes pgmesh.node hold exactly names, ranked in that order
// (rank 1 = first in the config = wins ties of commit time).
func SyncNodes(ctx context.Context, conn *pgx.Conn, names []string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("sync pgmesh.node: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	// Delete and re-insert rather than upsert: a re-ordered config would
	// collide with the unique ranks midway.
	if _, err := tx.Exec(ctx, "DELETE FROM pgmesh.node"); err != nil {
		return fmt.Errorf("sync pgmesh.node: %w", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO pgmesh.node (name, rank) SELECT n, r FROM unnest($1::text[]) WITH ORDINALITY u(n, r)", names); err != nil {
		return fmt.Errorf("sync pgmesh.node: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("sync pgmesh.node: %w", err)
	}
	return nil
}

// TriggerName is the tombstone trigger of deletes on every replicated table
// with a key; pgmesh_tombstone_key (key changes) and pgmesh_truncate
// (TRUNCATE, also on tables without key) are its siblings, all made by
// pgmesh.tombstone_triggers.
const TriggerName = "pgmesh_tombstone"

// InstallTriggers gives each table the triggers that record what local
// sessions remove as tombstones (deleted rows, keys moved away, truncates),
// creating or replacing those that are missing or have other arguments, and
// returns, per table ("schema.table"), the triggers it changed. The SQL
// function pgmesh.tombstone_triggers does the work, as it does for DDL
// (ddl_reconcile), so the two never differ.
func InstallTriggers(ctx context.Context, conn *pgx.Conn, tables []pg.Table) (map[string][]string, error) {
	changed := map[string][]string{}
	for _, t := range tables {
		var names []string
		err := conn.QueryRow(ctx, "SELECT pgmesh.tombstone_triggers($1::regclass, $2::text[])", t.Ident(), t.KeyColumns).Scan(&names)
		if err != nil {
			return changed, fmt.Errorf("table %s: install tombstone triggers: %w", t.QualifiedName(), err)
		}
		if len(names) > 0 {
			changed[t.QualifiedName()] = names
		}
	}
	return changed, nil
}
