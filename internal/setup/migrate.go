package setup

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/pg"
	migrations "github.com/pgmesh/pgmesh/sql"
)

// migrateLockKey serialises migrations of one database across concurrent
// `pgmesh init` runs ("pgmesh" in ASCII).
const migrateLockKey int64 = 0x70676d657368

// bootstrap creates what the runner itself needs; it runs under the lock in
// every migration transaction, so it is cheap and idempotent.
const bootstrap = `
CREATE SCHEMA IF NOT EXISTS pgmesh;
CREATE TABLE IF NOT EXISTS pgmesh.migration (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)`

// Migrate brings the pgmesh schema of conn's database up to date: every
// embedded migration not yet recorded in pgmesh.migration runs in its own
// transaction, under a transaction-scoped advisory lock so that two
// concurrent runs apply each migration once. It returns the names of the
// migrations it applied (none when the schema is current).
func Migrate(ctx context.Context, conn *pgx.Conn) (applied []string, err error) {
	ms, err := migrations.All()
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		done, err := migrateOne(ctx, conn, m)
		if err != nil {
			return applied, fmt.Errorf("migration %s: %w", m.Name, err)
		}
		if done {
			applied = append(applied, m.Name)
		}
	}
	if err := lockDown(ctx, conn); err != nil {
		return applied, err
	}
	// A database migrated by a newer pgmesh has tables this binary does not
	// know how to keep consistent.
	var newest int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM pgmesh.migration").Scan(&newest); err != nil {
		return applied, fmt.Errorf("read pgmesh.migration: %w", err)
	}
	if len(ms) > 0 && newest > ms[len(ms)-1].Version {
		return applied, fmt.Errorf("the pgmesh schema is at migration %d, newer than this binary knows (%d): use a newer pgmesh",
			newest, ms[len(ms)-1].Version)
	}
	return applied, nil
}

// migrateOne applies m unless it is recorded; it reports whether it did.
func migrateOne(ctx context.Context, conn *pgx.Conn, m migrations.Migration) (bool, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockKey); err != nil {
		return false, fmt.Errorf("lock: %w", err)
	}
	if _, err := tx.Exec(ctx, bootstrap); err != nil {
		return false, fmt.Errorf("create schema %s: %w", pg.MetaSchema, err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pgmesh.migration WHERE version = $1)", m.Version).Scan(&exists); err != nil {
		return false, fmt.Errorf("read pgmesh.migration: %w", err)
	}
	if exists {
		return false, nil
	}
	// Without arguments pgx sends the file with the simple protocol, so one
	// migration may hold several statements.
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO pgmesh.migration (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
		return false, fmt.Errorf("record: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("commit: %w", err)
	}
	return true, nil
}

// PublicFunctions are the only functions of schema pgmesh that every role
// may execute: SECURITY DEFINER functions with one narrow job that
// application sessions call (see sql/0006_security.sql). Functions that
// only triggers call (the tombstone and DDL capture triggers) need no
// EXECUTE privilege to fire.
var PublicFunctions = []string{"pgmesh.snowflake_nextval(regclass)"}

// lockDown revokes from PUBLIC every privilege on schema pgmesh and EXECUTE
// on each of its functions but PublicFunctions. PostgreSQL grants EXECUTE to
// PUBLIC on every new function, and a per-schema default cannot take a
// global default back, so it runs after every migration.
func lockDown(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	// Two concurrent GRANTs on one object fail ("tuple concurrently
	// updated"): the migration lock serialises concurrent inits.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrateLockKey); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	stmts := []string{
		"REVOKE ALL ON SCHEMA pgmesh FROM PUBLIC",
		"REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA pgmesh FROM PUBLIC",
	}
	for _, f := range PublicFunctions {
		stmts = append(stmts, "GRANT EXECUTE ON FUNCTION "+f+" TO PUBLIC")
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("restrict schema pgmesh: %s: %w", s, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("restrict schema pgmesh: commit: %w", err)
	}
	return nil
}
