package ddl

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// Execer runs one SQL string (no parameters) on the apply session, inside
// the open local transaction of the remote transaction being applied. The
// applier satisfies it.
type Execer interface {
	Exec(ctx context.Context, sql string) error
}

// ConnExecer is the Execer of a pgconn connection (the applier's): each
// SQL string goes with the simple query protocol.
type ConnExecer struct{ Conn *pgconn.PgConn }

// Exec runs sql and waits for its result.
func (e ConnExecer) Exec(ctx context.Context, sql string) error {
	_, err := e.Conn.Exec(ctx, sql).ReadAll()
	return err
}

// Executor executes the DDL messages of one link on its downstream.
type Executor struct {
	// Node is the downstream node's name, for the skip command in errors.
	Node   string
	Logger *slog.Logger // nil = slog.Default()
}

// Handle executes m if it is a DDL message (prefix Prefix); other messages
// are not its business and return nil. The DDL runs through ex, in the
// apply transaction, via pgmesh.ddl_apply: under the origin's role and
// search_path, then the publication is reconciled (a new table joins it and
// gets its tombstone trigger, which the event trigger, quiet in apply
// sessions, does not do here) and the DDL is recorded in ddl_log as
// applied. A DDL this node already applied, or that the operator skipped
// (`pgmesh ddl skip`), is not executed again. A DDL that fails returns an
// *ApplyError: the link must stop there, never go on without it.
func (e *Executor) Handle(ctx context.Context, ex Execer, m stream.Message) error {
	if m.Prefix != Prefix {
		return nil
	}
	if !m.Transactional {
		return fmt.Errorf("%s message at %s is not transactional: pgmesh emits DDL in the DDL's own transaction only", Prefix, m.LSN)
	}
	p, err := ParsePayload(m.Content)
	if err != nil {
		return fmt.Errorf("message at %s: %w", m.LSN, err)
	}
	settings, err := json.Marshal(p.Settings)
	if err != nil {
		return fmt.Errorf("message at %s: settings: %w", m.LSN, err)
	}
	sql := fmt.Sprintf("SELECT pgmesh.ddl_apply(%s, %s, %s, %s, %s, %s::timestamptz, %s::jsonb)",
		quoteE(p.ID), quoteE(p.Origin), quoteE(p.SQL), quoteE(p.SearchPath), quoteE(p.Role),
		quoteE(p.EmittedAt.Format(time.RFC3339Nano)), quoteE(string(settings)))
	if err := ex.Exec(ctx, sql); err != nil {
		return &ApplyError{Node: e.Node, Payload: p, Err: err}
	}
	log := e.Logger
	if log == nil {
		log = slog.Default()
	}
	log.Info("ddl applied", "id", p.ID, "origin", p.Origin, "lsn", m.LSN, "sql", FirstLine(p.SQL, 120))
	return nil
}

// DB is the part of pgx.Conn / pgx.Tx / pgxpool.Pool that writing needs.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// RecordFailure records in conn's ddl_log (conn: an ordinary connection to
// the node where ae happened, outside the rolled-back apply transaction)
// that the DDL failed there, so that `pgmesh ddl list` and `check` show it.
// It never overwrites an applied or skipped row.
func RecordFailure(ctx context.Context, conn DB, ae *ApplyError) error {
	p := ae.Payload
	_, err := conn.Exec(ctx, `
INSERT INTO pgmesh.ddl_log AS l (id, origin_node, sql, search_path, role, emitted_at, status, error)
VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7)
ON CONFLICT (id) DO UPDATE SET error = excluded.error WHERE l.status = 'failed'`,
		p.ID, p.Origin, p.SQL, p.SearchPath, p.Role, p.EmittedAt, ae.Err.Error())
	if err != nil {
		return fmt.Errorf("record failure of ddl %s: %w", p.ID, err)
	}
	return nil
}
