package conflict

import (
	"context"
	"fmt"
	"strings"

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

// TriggerName is the tombstone trigger on every replicated table.
const TriggerName = "pgmesh_tombstone"

// InstallTriggers creates (or replaces) the trigger that records local
// deletes as tombstones on each table with a key. Tables identified only by
// their whole row get none: their rows have no identity to remember.
func InstallTriggers(ctx context.Context, conn *pgx.Conn, tables []pg.Table) error {
	for _, t := range tables {
		if len(t.KeyColumns) == 0 {
			continue
		}
		// Trigger arguments are literals: utility statements take no
		// parameters.
		args := []string{pg.QuoteLiteral(t.QualifiedName())}
		for _, k := range t.KeyColumns {
			args = append(args, pg.QuoteLiteral(k))
		}
		sql := fmt.Sprintf("CREATE OR REPLACE TRIGGER %s AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION pgmesh.record_delete(%s)",
			pg.Ident(TriggerName), t.Ident(), strings.Join(args, ", "))
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("table %s: install tombstone trigger: %w", t.QualifiedName(), err)
		}
	}
	return nil
}
