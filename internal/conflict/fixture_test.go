package conflict

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
	migrations "github.com/pgmesh/pgmesh/sql"
)

// Tests share one server and its replication origins (per server): they do
// not run in parallel.
func TestMain(m *testing.M) { sandboxtest.Main(m, 1) }

// fixture is a database of node n3 of a cluster n1, n2, n3 (ranks in that
// order) with the pgmesh schema and table item.
type fixture struct {
	t    testing.TB
	env  *sandboxtest.Env
	conn *pgx.Conn
	lsn  atomic.Uint64
}

const itemDDL = `CREATE TABLE item (id int PRIMARY KEY, email text UNIQUE, name text, qty int NOT NULL DEFAULT 0)`

func newFixture(t testing.TB, ddl ...string) *fixture {
	t.Helper()
	ctx := context.Background()
	env := sandboxtest.New(t, 1)
	// pgmesh's role, which owns schema pgmesh and (here) the test tables,
	// with public on the search_path for the tests' own SQL.
	f := &fixture{t: t, env: env, conn: env.Pgmesh(t, 0)}
	f.exec("SET search_path = public")
	// The embedded migrations, run directly rather than through
	// internal/setup, whose other dependencies are irrelevant here.
	ms, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	f.exec("CREATE SCHEMA pgmesh")
	for _, m := range ms {
		if _, err := f.conn.Exec(ctx, m.SQL); err != nil {
			t.Fatalf("migration %s: %v", m.Name, err)
		}
	}
	f.exec("INSERT INTO pgmesh.local_node (cluster, name) VALUES ('test', 'n3')")
	f.exec("INSERT INTO pgmesh.node (name, rank) VALUES ('n1', 1), ('n2', 2), ('n3', 3)")
	for _, n := range []string{"n1", "n2", "n3"} {
		f.exec("SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL", "pgmesh_"+n)
	}
	for _, d := range ddl {
		f.exec(d)
	}
	// Local sessions of the tests (the owner's, the application's) write
	// the test tables too.
	f.exec("GRANT ALL ON ALL TABLES IN SCHEMA public TO app_owner, app")
	tables, err := pg.ReplicatedTables(ctx, f.conn, []string{"public"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		f.exec("SELECT pgmesh.tombstone_triggers($1::regclass, $2::text[])", tb.Ident(), tb.KeyColumns)
	}
	return f
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.conn.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

// table describes public.item (or name) as the applier would, with cfg's
// conflict settings applied on top by mod.
func (f *fixture) table(name string, mod func(*Table)) Table {
	f.t.Helper()
	t, err := LoadTable(context.Background(), f.conn, "public", name, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	if mod != nil {
		mod(&t)
	}
	if err := t.Validate(); err != nil {
		f.t.Fatal(err)
	}
	return t
}

// session opens an apply-like session of node (replica role, so the
// tombstone trigger stays quiet) whose transaction commits with the
// commit time ts and the origin pgmesh_<node>, as the applier's do.
func (f *fixture) session(node string, ts time.Time, fn func(ctx context.Context, conn *pgx.Conn) error) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_replication_origin_session_setup($1)", "pgmesh_"+node); err != nil {
		return err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	// Roll back (a no-op after Commit), then release the origin now: a
	// closed connection's backend may still hold it when the next session
	// of the test sets it up.
	defer func() {
		tx.Rollback(ctx)                                               //nolint:errcheck // see above
		conn.Exec(ctx, "SELECT pg_replication_origin_session_reset()") //nolint:errcheck // see above
	}()
	lsn := f.lsn.Add(16)
	if _, err := tx.Exec(ctx, "SELECT pg_replication_origin_xact_setup($1::pg_lsn, $2)", fmt.Sprintf("0/%X", lsn), ts); err != nil {
		return err
	}
	if err := fn(ctx, conn); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// writeAs runs sql as a transaction of node committed at ts.
func (f *fixture) writeAs(node string, ts time.Time, sql string, args ...any) {
	f.t.Helper()
	err := f.session(node, ts, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
	if err != nil {
		f.t.Fatalf("%s as %s: %v", sql, node, err)
	}
}

// verdict is what an apply statement returned; "" for NULL.
type verdict struct{ kind, resolution string }

// apply runs an apply statement as the applier does: in a transaction of
// node committed at ts, all parameters raw text of unspecified type, after
// the fixed $1..$3 (commit time, node, LSN).
func (f *fixture) apply(node string, ts time.Time, sql string, values ...*string) (verdict, error) {
	var v verdict
	err := f.session(node, ts, func(ctx context.Context, conn *pgx.Conn) error {
		var err error
		v, err = f.exec1(ctx, conn, sql, ts, node, values...)
		return err
	})
	return v, err
}

// exec1 runs an apply statement of node committed at ts on conn, inside
// the transaction f.session opened, and returns its verdict.
func (f *fixture) exec1(ctx context.Context, conn *pgx.Conn, sql string, ts time.Time, node string, values ...*string) (verdict, error) {
	params := [][]byte{[]byte(ts.Format(time.RFC3339Nano)), []byte(node), []byte("0/" + fmt.Sprintf("%X", f.lsn.Load()))}
	for _, val := range values {
		if val == nil {
			params = append(params, nil)
		} else {
			params = append(params, []byte(*val))
		}
	}
	res := execStatement(ctx, conn.PgConn(), sql, params)
	if res.Err != nil {
		return verdict{}, res.Err
	}
	if len(res.Rows) != 1 {
		return verdict{}, fmt.Errorf("statement returned %d rows, want 1", len(res.Rows))
	}
	return verdict{string(res.Rows[0][0]), string(res.Rows[0][1])}, nil
}

// execStatement runs a statement of this package on conn as the applier
// does: the full statements it falls back to prepared in the session
// first (Fallbacks), then sql with text parameters of unspecified type.
func execStatement(ctx context.Context, conn *pgconn.PgConn, sql string, params [][]byte) *pgconn.Result {
	if err := prepareFallbacks(ctx, conn, sql); err != nil {
		return &pgconn.Result{Err: err}
	}
	return conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
}

// prepareFallbacks prepares in conn's session the full statements that sql
// calls by name and that the session has not prepared yet.
func prepareFallbacks(ctx context.Context, conn *pgconn.PgConn, sql string) error {
	for _, fb := range Fallbacks(sql) {
		res := conn.ExecParams(ctx, "SELECT FROM pg_prepared_statements WHERE name = $1", [][]byte{[]byte(fb.Name)}, nil, nil, nil).Read()
		if res.Err != nil {
			return res.Err
		}
		if len(res.Rows) > 0 {
			continue
		}
		if _, err := conn.Prepare(ctx, fb.Name, fb.SQL, fb.ParamOIDs); err != nil {
			return fmt.Errorf("prepare the fallback %s: %w", fb.Name, err)
		}
	}
	return nil
}

func (f *fixture) mustApply(node string, ts time.Time, sql string, values ...*string) verdict {
	f.t.Helper()
	v, err := f.apply(node, ts, sql, values...)
	if err != nil {
		f.t.Fatalf("apply as %s: %v", node, err)
	}
	return v
}

// rows is the content of item as "id:email:name:qty" ordered by id.
func (f *fixture) rows() string {
	f.t.Helper()
	var s string
	err := f.conn.QueryRow(context.Background(),
		`SELECT coalesce(string_agg(format('%s:%s:%s:%s', id, email, name, qty), ' ' ORDER BY id), '') FROM item`).Scan(&s)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// logRows is pgmesh.conflict_log as "kind/resolution/local_origin/remote_origin/local_row?/remote_row?".
func (f *fixture) logRows() []string {
	f.t.Helper()
	rows, err := f.conn.Query(context.Background(), `
		SELECT format('%s/%s/%s/%s/%s/%s', kind, resolution, coalesce(local_origin, '-'), remote_origin,
		              CASE WHEN local_row IS NULL THEN '-' ELSE local_row->>'name' END,
		              CASE WHEN remote_row IS NULL THEN '-' ELSE coalesce(remote_row->>'name', remote_row::text) END)
		  FROM pgmesh.conflict_log ORDER BY id`)
	if err != nil {
		f.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// tombstones is pgmesh.tombstone as "key@node" (time left out).
func (f *fixture) tombstones() string {
	f.t.Helper()
	var s string
	err := f.conn.QueryRow(context.Background(),
		`SELECT coalesce(string_agg(key::text || '@' || coalesce(node, '-'), ' ' ORDER BY key::text), '') FROM pgmesh.tombstone`).Scan(&s)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func str(s string) *string { return &s }

// vals turns "1", "a@x", nil… into parameters.
func vals(vs ...any) []*string {
	out := make([]*string, len(vs))
	for i, v := range vs {
		if v != nil {
			out[i] = str(fmt.Sprint(v))
		}
	}
	return out
}

func joinLog(l []string) string { return strings.Join(l, " | ") }
