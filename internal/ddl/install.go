package ddl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Capture modes of ddl.capture.
const (
	CaptureAuto   = "auto"
	CaptureManual = "manual"
)

// eventTriggers are the capture triggers: name → event and function.
var eventTriggers = []struct{ name, event, function string }{
	{"pgmesh_ddl_capture_end", "ddl_command_end", "pgmesh.ddl_capture_end()"},
	{"pgmesh_ddl_capture_drop", "sql_drop", "pgmesh.ddl_capture_drop()"},
}

// Install converges the DDL machinery of one node (whose pgmesh schema is
// migrated) to cfg, in one transaction, and returns what it changed:
//   - pgmesh.replicated_schema and pgmesh.replicated_exclude hold the
//     config's schemas and excluded tables (the event trigger and the
//     publication reconciliation read them);
//   - with ddl.capture auto the capture event triggers exist and are
//     enabled, with manual they do not exist (creating them needs a
//     superuser);
//   - pg_logical_emit_message is not executable by PUBLIC: a DDL message is
//     executed by every peer under the role it names, so only roles that
//     may run DDL on every node may emit one.
func Install(ctx context.Context, conn *pgx.Conn, cfg *config.Config) ([]string, error) {
	var actions []string
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		a, err := syncSchemas(ctx, tx, cfg.Replicate)
		if err != nil {
			return err
		}
		actions = append(actions, a...)
		a, err = syncEventTriggers(ctx, tx, cfg.DDL.Capture)
		if err != nil {
			return err
		}
		actions = append(actions, a...)
		a, err = restrictEmit(ctx, tx)
		if err != nil {
			return err
		}
		actions = append(actions, a...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("install DDL capture: %w", err)
	}
	return actions, nil
}

func syncSchemas(ctx context.Context, tx pgx.Tx, r config.Replicate) ([]string, error) {
	var actions []string
	schemas := r.Schemas
	if schemas == nil {
		schemas = []string{}
	}
	tag, err := tx.Exec(ctx, `DELETE FROM pgmesh.replicated_schema WHERE name <> ALL($1)`, schemas)
	if err != nil {
		return nil, fmt.Errorf("set replicated schemas: %w", err)
	}
	changed := tag.RowsAffected() > 0
	tag, err = tx.Exec(ctx, `INSERT INTO pgmesh.replicated_schema SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, schemas)
	if err != nil {
		return nil, fmt.Errorf("set replicated schemas: %w", err)
	}
	if changed || tag.RowsAffected() > 0 {
		actions = append(actions, "set replicated schemas for DDL capture: "+strings.Join(schemas, ", "))
	}

	var ss, ts []string
	for _, q := range r.Exclude {
		s, t, ok := strings.Cut(q, ".")
		if !ok {
			return nil, fmt.Errorf("exclude %q: want schema.table", q)
		}
		ss, ts = append(ss, s), append(ts, t)
	}
	if ss == nil {
		ss, ts = []string{}, []string{}
	}
	tag, err = tx.Exec(ctx, `DELETE FROM pgmesh.replicated_exclude x
	  WHERE (x.schema_name, x.table_name) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))`, ss, ts)
	if err != nil {
		return nil, fmt.Errorf("set excluded tables: %w", err)
	}
	changed = tag.RowsAffected() > 0
	tag, err = tx.Exec(ctx, `INSERT INTO pgmesh.replicated_exclude SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING`, ss, ts)
	if err != nil {
		return nil, fmt.Errorf("set excluded tables: %w", err)
	}
	if changed || tag.RowsAffected() > 0 {
		actions = append(actions, "set excluded tables for DDL capture: "+strings.Join(r.Exclude, ", "))
	}
	return actions, nil
}

func syncEventTriggers(ctx context.Context, tx pgx.Tx, capture string) ([]string, error) {
	if capture == "" {
		capture = CaptureAuto
	}
	if capture != CaptureAuto && capture != CaptureManual {
		return nil, fmt.Errorf("ddl.capture %q: want %s or %s", capture, CaptureAuto, CaptureManual)
	}
	var actions []string
	for _, et := range eventTriggers {
		var enabled string
		err := tx.QueryRow(ctx, "SELECT evtenabled::text FROM pg_event_trigger WHERE evtname = $1", et.name).Scan(&enabled)
		exists := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("read event trigger %s: %w", et.name, err)
		}
		var sql, what string
		switch {
		case capture == CaptureManual && exists:
			sql, what = "DROP EVENT TRIGGER "+pg.Ident(et.name), "dropped event trigger "+et.name+" (ddl.capture: manual)"
		case capture == CaptureAuto && !exists:
			sql = fmt.Sprintf("CREATE EVENT TRIGGER %s ON %s EXECUTE FUNCTION %s", pg.Ident(et.name), et.event, et.function)
			what = "created event trigger " + et.name + " (ddl.capture: auto)"
		case capture == CaptureAuto && enabled != "O":
			sql, what = "ALTER EVENT TRIGGER "+pg.Ident(et.name)+" ENABLE", "enabled event trigger "+et.name
		default:
			continue
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			return nil, fmt.Errorf("%s: %w (event triggers need a superuser; or set ddl.capture: manual and use pgmesh ddl)", sql, err)
		}
		actions = append(actions, what)
	}
	return actions, nil
}

func restrictEmit(ctx context.Context, tx pgx.Tx) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT p.oid::regprocedure::text FROM pg_proc p
	  WHERE p.proname = 'pg_logical_emit_message' AND p.pronamespace = 'pg_catalog'::regnamespace
	    AND has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("read privileges of pg_logical_emit_message: %w", err)
	}
	fns, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read privileges of pg_logical_emit_message: %w", err)
	}
	for _, f := range fns {
		if _, err := tx.Exec(ctx, "REVOKE EXECUTE ON FUNCTION "+f+" FROM PUBLIC"); err != nil {
			return nil, fmt.Errorf("revoke EXECUTE on %s from PUBLIC: %w", f, err)
		}
	}
	if len(fns) == 0 {
		return nil, nil
	}
	return []string{"revoked EXECUTE on " + strings.Join(fns, ", ") + " from PUBLIC (peers execute pgmesh.ddl messages)"}, nil
}
