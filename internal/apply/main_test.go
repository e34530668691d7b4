package apply

import (
	"context"
	"fmt"
	"hash/crc32"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/stream"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 1) }

// testEnv is a fresh database of node "n2" with the pgmesh schema, and
// fresh replication origins for one test's applier sessions.
type testEnv struct {
	dsn string
	// origin is the upstream node's name. With one session it is also the
	// name of the session's origin: not called pgmesh_*, which sandboxtest
	// drops when unused at the end of any test (an applier closed and
	// started again would lose it). Conflict resolution names the writer
	// of a row after its origin (origin_node: the origin's name when it is
	// not pgmesh_<node>), so the upstream is called like the origin.
	origin string
	// origins are the sessions' origins: with several, pgmesh_<up> and
	// pgmesh_<up>_<k>, the names origin_node maps to the upstream.
	origins []string
	db      *pgx.Conn // for setup and assertions
}

func newEnv(t testing.TB) *testEnv { return newEnvN(t, 1) }

// newEnvN is a test database for an applier with n sessions.
func newEnvN(t testing.TB, n int) *testEnv {
	t.Helper()
	env := sandboxtest.New(t, 1)
	// Origins are per server. Not named pgmesh_*: sandboxtest drops unused
	// ones of that name when any test ends. Conflict resolution names the
	// writer of a row after its origin (origin_node: the origin's name
	// when it is not pgmesh_<node>), so the upstream of the test's
	// appliers is called like the origin, a valid node name.
	// pgmesh's role, which owns schema pgmesh and (here) the test tables,
	// with public on the search_path for the tests' own SQL.
	sum := fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(env.DB)))
	e := &testEnv{dsn: env.DSNs[0], origin: "at_" + sum, db: env.Pgmesh(t, 0)}
	if n == 1 {
		e.origins = []string{e.origin}
	} else {
		e.origin = "pt_" + sum
		for k := range n {
			e.origins = append(e.origins, origin.Name(e.origin, k))
		}
	}
	if _, err := setup.Migrate(context.Background(), e.db); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "SET search_path = public")
	e.exec(t, "INSERT INTO pgmesh.local_node (cluster, name) VALUES ('test', 'n2')")
	if err := setup.SyncNodes(context.Background(), e.db, []string{e.origin, "n2"}); err != nil {
		t.Fatal(err)
	}
	e.createOrigins(t, e.origins)
	return e
}

// createOrigins creates the replication origins names, dropped when the
// test ends.
func (e *testEnv) createOrigins(t testing.TB, names []string) {
	t.Helper()
	for _, name := range names {
		e.exec(t, "SELECT pg_replication_origin_create($1)", name)
	}
	t.Cleanup(func() {
		// After the appliers' cleanups (registered later, run earlier).
		// sandboxtest drops pgmesh_* origins that no session uses when a
		// test ends: tests with several sessions do not run in parallel
		// (t.Parallel), so that no other test ends while theirs wait for
		// their first session.
		for _, name := range names {
			if _, err := e.db.Exec(context.Background(), "SELECT pg_replication_origin_drop($1)", name); err != nil {
				t.Errorf("drop origin: %v", err)
			}
		}
	})
}

// connect opens a session of pgmesh's role with the role's own search_path,
// for the tests' own SQL.
func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// pinned opens a session as the agent opens its apply sessions.
func pinned(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pg.Connect(context.Background(), "n2", dsn, "pgmesh apply test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *testEnv) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// applier starts an Applier with a session on each of the env's origins,
// closed at cleanup.
func (e *testEnv) applier(t testing.TB, o Options) *Applier {
	t.Helper()
	// As the agent opens them: search_path pinned (pg.SearchPath).
	var sessions []Session
	for _, origin := range e.origins {
		sessions = append(sessions, Session{Conn: pinned(t, e.dsn).PgConn(), Origin: origin})
	}
	if len(sessions) > 1 {
		o.Catalog = pinned(t, e.dsn).PgConn()
	}
	o.Upstream = e.origin
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	a, err := New(context.Background(), sessions, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// Spread every transaction over the sessions, backlog or not.
	a.spreadAfter = 0
	t.Cleanup(func() { a.Close(context.Background()) })
	return a
}

// rows returns the result of a query as text, one string per row with
// columns separated by "|", NULL as "∅".
func (e *testEnv) rows(t testing.TB, sql string) []string {
	t.Helper()
	rs, err := e.db.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		vals, err := rs.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			if v == nil {
				parts[i] = "∅"
			} else {
				parts[i] = fmt.Sprint(v)
			}
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// Tuple building: "∅" is NULL, "⊘" is an unchanged TOAST value.
func tup(vals ...string) stream.Tuple {
	t := make(stream.Tuple, len(vals))
	for i, v := range vals {
		switch v {
		case "∅":
			t[i] = stream.Value{Kind: stream.Null}
		case "⊘":
			t[i] = stream.Value{Kind: stream.Unchanged}
		default:
			t[i] = stream.Value{Kind: stream.Text, Data: []byte(v)}
		}
	}
	return t
}

func rel(id uint32, name string, identity byte, cols ...string) *stream.Relation {
	r := &stream.Relation{ID: id, Schema: "public", Name: name, ReplicaIdentity: identity}
	for _, c := range cols {
		key := strings.HasPrefix(c, "*")
		r.Columns = append(r.Columns, stream.Column{Name: strings.TrimPrefix(c, "*"), Key: key || identity == 'f'})
	}
	return r
}

func ins(r *stream.Relation, vals ...string) *stream.Change {
	return &stream.Change{Op: stream.Insert, Rel: r, New: tup(vals...)}
}

func upd(r *stream.Relation, old stream.Tuple, vals ...string) *stream.Change {
	return &stream.Change{Op: stream.Update, Rel: r, Old: old, OldIsKey: old != nil && r.ReplicaIdentity != 'f', New: tup(vals...)}
}

func del(r *stream.Relation, vals ...string) *stream.Change {
	return &stream.Change{Op: stream.Delete, Rel: r, Old: tup(vals...), OldIsKey: r.ReplicaIdentity != 'f'}
}

// remote hands out commit positions and times of a fake upstream.
type remote struct {
	lsn stream.LSN
	ts  time.Time
}

func newRemote() *remote {
	return &remote{lsn: 0x1000000, ts: time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC)}
}

// next returns the Begin and Commit of the next remote transaction.
func (r *remote) next() (stream.Begin, stream.Commit) {
	r.lsn += 0x100
	r.ts = r.ts.Add(time.Second)
	b := stream.Begin{XID: uint32(r.lsn), FinalLSN: r.lsn, CommitTime: r.ts}
	return b, stream.Commit{CommitLSN: r.lsn, EndLSN: r.lsn + 0x30, CommitTime: r.ts}
}

// feed sends one remote transaction to the handler without waiting.
func (r *remote) feed(t testing.TB, a *Applier, changes ...*stream.Change) stream.Commit {
	t.Helper()
	ctx := context.Background()
	b, c := r.next()
	if err := a.Begin(ctx, b); err != nil {
		t.Fatalf("Begin: %v", err)
	}
	for _, ch := range changes {
		if err := a.Change(ctx, ch); err != nil {
			t.Fatalf("Change: %v", err)
		}
	}
	if err := a.Commit(ctx, c); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return c
}

// apply sends one remote transaction and waits until it is applied.
func (r *remote) apply(t testing.TB, a *Applier, changes ...*stream.Change) stream.Commit {
	t.Helper()
	c := r.feed(t, a, changes...)
	if err := a.Wait(context.Background()); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return c
}
