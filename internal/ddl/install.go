package ddl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/grants"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Capture modes of ddl.capture.
const (
	CaptureAuto   = "auto"
	CaptureManual = "manual"
)

// Install records, on one node (whose pgmesh schema is migrated), the
// config's replicated schemas and excluded tables in
// pgmesh.replicated_schema and pgmesh.replicated_exclude, which the capture
// event trigger and the publication reconciliation read, in one
// transaction, and returns what it changed.
func Install(ctx context.Context, conn *pgx.Conn, cfg *config.Config) ([]string, error) {
	var actions []string
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var err error
		actions, err = syncSchemas(ctx, tx, cfg.Replicate)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("install DDL capture: %w", err)
	}
	return actions, nil
}

// InstallCapture converges the capture event triggers of one node to the
// capture mode: with auto they exist and are enabled, with manual they do
// not exist. conn must be a superuser's (only a superuser may create or
// drop event triggers); the functions they call are pgmesh's (init creates
// them), SECURITY DEFINER, so they run as pgmesh's role whoever runs the
// DDL.
func InstallCapture(ctx context.Context, conn *pgx.Conn, capture string) ([]string, error) {
	var actions []string
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var err error
		actions, err = syncEventTriggers(ctx, tx, capture)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("install DDL capture event triggers: %w", err)
	}
	return actions, nil
}

// CaptureMissing reports whether capture mode auto lacks an enabled event
// trigger on conn's node.
func CaptureMissing(ctx context.Context, conn *pgx.Conn, capture string) (bool, error) {
	if capture == CaptureManual {
		return false, nil
	}
	var n int
	err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY($1) AND evtenabled = 'O'`, captureNames()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("read event triggers: %w", err)
	}
	return n < len(grants.CaptureTriggers), nil
}

func captureNames() []string {
	names := make([]string, len(grants.CaptureTriggers))
	for i, t := range grants.CaptureTriggers {
		names[i] = t.Name
	}
	return names
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
	for _, et := range grants.CaptureTriggers {
		var enabled string
		err := tx.QueryRow(ctx, "SELECT evtenabled::text FROM pg_event_trigger WHERE evtname = $1", et.Name).Scan(&enabled)
		exists := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("read event trigger %s: %w", et.Name, err)
		}
		var sql, what string
		switch {
		case capture == CaptureManual && exists:
			sql, what = "DROP EVENT TRIGGER "+pg.Ident(et.Name), "dropped event trigger "+et.Name+" (ddl.capture: manual)"
		case capture == CaptureAuto && !exists:
			sql = fmt.Sprintf("CREATE EVENT TRIGGER %s ON %s EXECUTE FUNCTION %s", pg.Ident(et.Name), et.Event, et.Function)
			what = "created event trigger " + et.Name + " (ddl.capture: auto)"
		case capture == CaptureAuto && enabled != "O":
			sql, what = "ALTER EVENT TRIGGER "+pg.Ident(et.Name)+" ENABLE", "enabled event trigger "+et.Name
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
