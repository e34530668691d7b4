package ddl_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/stream"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 2) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// mesh is a test cluster whose nodes have the pgmesh schema, their
// identity, an empty publication and the DDL machinery (what init does,
// without slots and origins between nodes).
type mesh struct {
	env   *sandboxtest.Env
	conns []*pgx.Conn
}

func newMesh(t *testing.T, n int) *mesh {
	t.Helper()
	ctx := testCtx(t)
	env := sandboxtest.New(t, n)
	m := &mesh{env: env}
	for i := 0; i < n; i++ {
		c := env.Pgmesh(t, i)
		if _, err := setup.Migrate(ctx, c); err != nil {
			t.Fatalf("n%d: migrate: %v", i+1, err)
		}
		for _, q := range []string{
			fmt.Sprintf("INSERT INTO pgmesh.local_node (cluster, name) VALUES ('test', 'n%d')", i+1),
			"CREATE PUBLICATION pgmesh WITH (publish_via_partition_root = true)",
		} {
			if _, err := c.Exec(ctx, q); err != nil {
				t.Fatalf("n%d: %s: %v", i+1, q, err)
			}
		}
		if _, err := ddl.Install(ctx, c, env.Config); err != nil {
			t.Fatalf("n%d: %v", i+1, err)
		}
		if _, err := ddl.InstallCapture(ctx, env.Admin(t, i), env.Config.DDL.Capture); err != nil {
			t.Fatalf("n%d: %v", i+1, err)
		}
		m.conns = append(m.conns, c)
	}
	return m
}

// exec runs sql on node i as pgmesh's role.
func (m *mesh) exec(t *testing.T, i int, sql string, args ...any) {
	t.Helper()
	if _, err := m.conns[i].Exec(testCtx(t), sql, args...); err != nil {
		t.Fatalf("n%d: %s: %v", i+1, sql, err)
	}
}

// slot creates a pgoutput slot on node i, for reading what it emits.
func (m *mesh) slot(t *testing.T, i int) string {
	t.Helper()
	name := fmt.Sprintf("dt_%08x", crc32.ChecksumIEEE([]byte(m.env.DB)))
	m.exec(t, i, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name)
	return name
}

// messages consumes the slot and returns the logical messages in it.
func (m *mesh) messages(t *testing.T, i int, slot string) []stream.Message {
	t.Helper()
	rows, err := m.conns[i].Query(testCtx(t), `SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', 'pgmesh', 'messages', 'true')`, slot)
	if err != nil {
		t.Fatal(err)
	}
	datas, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	var out []stream.Message
	for _, d := range datas {
		msg, err := pglogrepl.Parse(d)
		if err != nil {
			t.Fatalf("parse pgoutput message: %v", err)
		}
		if lm, ok := msg.(*pglogrepl.LogicalDecodingMessage); ok {
			out = append(out, stream.Message{Transactional: lm.Transactional, LSN: lm.LSN, Prefix: lm.Prefix, Content: lm.Content})
		}
	}
	return out
}

type logRow struct{ ID, Origin, SQL, Status string }

func ddlLog(t *testing.T, c *pgx.Conn) []logRow {
	t.Helper()
	rows, err := c.Query(testCtx(t), "SELECT id, origin_node, sql, status FROM pgmesh.ddl_log ORDER BY emitted_at, id")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[logRow])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func published(t *testing.T, c *pgx.Conn, table string) bool {
	t.Helper()
	var ok bool
	if err := c.QueryRow(testCtx(t), `SELECT EXISTS (SELECT 1 FROM pg_publication_tables
		WHERE pubname = 'pgmesh' AND schemaname || '.' || tablename = $1)`, table).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func tableExists(t *testing.T, c *pgx.Conn, table string) bool {
	t.Helper()
	var ok bool
	if err := c.QueryRow(testCtx(t), "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestEmit(t *testing.T) {
	m := newMesh(t, 2)
	ctx := testCtx(t)
	slot := m.slot(t, 0)
	sql := "CREATE TABLE public.items (id int PRIMARY KEY, name text); CREATE INDEX items_name ON public.items (name)"
	id, err := ddl.Emit(ctx, m.env.Config, "n1", sql, ddl.EmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !tableExists(t, m.conns[0], "public.items") || !published(t, m.conns[0], "public.items") {
		t.Errorf("n1: public.items not created or not in the publication")
	}
	if got := ddlLog(t, m.conns[0]); len(got) != 1 || got[0] != (logRow{id, "n1", sql, ddl.StatusApplied}) {
		t.Errorf("n1 ddl_log = %+v, want one applied row %s (the event trigger must stay quiet inside pgmesh ddl)", got, id)
	}
	msgs := m.messages(t, 0, slot)
	if len(msgs) != 1 {
		t.Fatalf("got %d messages in the WAL, want 1: %+v", len(msgs), msgs)
	}
	if !msgs[0].Transactional || msgs[0].Prefix != ddl.Prefix {
		t.Errorf("message transactional=%v prefix=%q", msgs[0].Transactional, msgs[0].Prefix)
	}
	p, err := ddl.ParsePayload(msgs[0].Content)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != id || p.Origin != "n1" || p.SQL != sql || p.Role != "pgmesh" || !strings.Contains(p.SearchPath, "public") {
		t.Errorf("payload = %+v", p)
	}

	// The SQL runs as it will on the peers: in a transaction, so
	// transaction control and CONCURRENTLY fail before anything is emitted.
	for _, bad := range []string{
		"CREATE TABLE public.a (id int); COMMIT",
		"CREATE INDEX CONCURRENTLY items_name2 ON public.items (name)",
		"CREATE TABLE public.items (id int)",
	} {
		if _, err := ddl.Emit(ctx, m.env.Config, "n1", bad, ddl.EmitOptions{}); err == nil {
			t.Errorf("Emit(%q) succeeded", bad)
		}
	}
	if msgs := m.messages(t, 0, slot); len(msgs) != 0 {
		t.Errorf("failed Emits left %d messages", len(msgs))
	}
	if _, err := ddl.Emit(ctx, m.env.Config, "n9", "SELECT 1", ddl.EmitOptions{}); err == nil || !strings.Contains(err.Error(), "n9") {
		t.Errorf("Emit on an unknown node: %v", err)
	}
}

func TestCapture(t *testing.T) {
	m := newMesh(t, 1)
	ctx := testCtx(t)
	m.env.Exec(t, 0, "CREATE SCHEMA other")
	// A trigger calling a pgmesh function is pgmesh's per-node machinery
	// (the tombstone trigger): never captured.
	m.exec(t, 0, "CREATE FUNCTION pgmesh.test_trigger() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'")
	slot := m.slot(t, 0)
	var notices []string
	// psql: the table owner's session, which runs the DDL.
	cfg := m.env.Conn(t, 0).Config().Copy()
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Severity+": "+n.Message) }
	psql, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { psql.Close(context.Background()) })

	tests := []struct {
		sql    string
		status string // "" = not captured
		pgmesh bool   // run by pgmesh's role rather than the table owner
	}{
		{"CREATE TABLE public.t (id int PRIMARY KEY, a text)", ddl.StatusApplied, false},
		{"ALTER TABLE t ADD COLUMN b int DEFAULT 0", ddl.StatusApplied, false},
		{"ALTER TABLE t DROP COLUMN a", ddl.StatusApplied, false}, // sql_drop and ddl_command_end: once
		{"CREATE TEMP TABLE tmp (i int)", "", false},
		{"CREATE INDEX ON tmp (i)", "", false},
		{"CREATE TABLE other.x (i int)", "", false},
		{"CREATE TRIGGER tomb AFTER DELETE ON public.t FOR EACH ROW EXECUTE FUNCTION pgmesh.test_trigger()", "", true},
		{"CREATE VIEW public.v AS SELECT id FROM t", ddl.StatusApplied, false},
		{"CREATE INDEX CONCURRENTLY t_b ON t (b)", ddl.StatusNotReplicated, false},
		// A string constant that says concurrently is ordinary DDL.
		{"ALTER TABLE t ADD COLUMN c text DEFAULT 'edited concurrently'", ddl.StatusApplied, false},
		{"DROP TABLE other.x", "", false},
		{"DROP VIEW public.v", ddl.StatusApplied, false},
	}
	// DDL in a query string of several statements is refused: the event
	// trigger would see, and replay, the whole string.
	if _, err := psql.Exec(ctx, "CREATE TABLE public.m1 (id int); INSERT INTO public.m1 VALUES (1)"); err == nil ||
		!strings.Contains(err.Error(), "cannot replicate CREATE TABLE sent in a query string of several statements") {
		t.Errorf("multi-statement DDL: %v", err)
	}
	if tableExists(t, m.conns[0], "public.m1") {
		t.Errorf("the refused multi-statement DDL ran")
	}
	for _, tt := range tests {
		before := len(ddlLog(t, m.conns[0]))
		notices = nil
		run := psql
		if tt.pgmesh {
			run = m.conns[0]
		}
		if _, err := run.Exec(ctx, tt.sql); err != nil {
			t.Fatalf("%s: %v", tt.sql, err)
		}
		log := ddlLog(t, m.conns[0])
		msgs := m.messages(t, 0, slot)
		switch {
		case tt.status == "":
			if len(log) != before || len(msgs) != 0 {
				t.Errorf("%s: captured (%d new ddl_log rows, %d messages), want not", tt.sql, len(log)-before, len(msgs))
			}
		case len(log) != before+1:
			t.Errorf("%s: %d new ddl_log rows, want 1", tt.sql, len(log)-before)
		default:
			got := log[len(log)-1]
			if got.SQL != tt.sql || got.Status != tt.status || got.Origin != "n1" {
				t.Errorf("%s: ddl_log row %+v, want status %s", tt.sql, got, tt.status)
			}
			wantMsgs := 1
			if tt.status == ddl.StatusNotReplicated {
				wantMsgs = 0
				if len(notices) != 1 || !strings.Contains(notices[0], "WARNING: pgmesh: CREATE INDEX CONCURRENTLY is not replicated") {
					t.Errorf("%s: notices %q, want the not-replicated warning", tt.sql, notices)
				}
			}
			if len(msgs) != wantMsgs {
				t.Fatalf("%s: %d messages, want %d", tt.sql, len(msgs), wantMsgs)
			}
			if wantMsgs == 1 {
				if p, err := ddl.ParsePayload(msgs[0].Content); err != nil || p.ID != got.ID || p.SQL != tt.sql {
					t.Errorf("%s: message %+v (%v), want id %s", tt.sql, p, err, got.ID)
				}
			}
		}
	}
	if !published(t, m.conns[0], "public.t") {
		t.Errorf("the captured CREATE TABLE public.t did not join the publication")
	}

	// An apply session (replication origin set up) is never captured.
	origin := fmt.Sprintf("pgmesh_dt_%08x", crc32.ChecksumIEEE([]byte(m.env.DB)))
	m.exec(t, 0, "SELECT pg_replication_origin_create($1)", origin)
	before := len(ddlLog(t, m.conns[0]))
	apply := m.env.Pgmesh(t, 0)
	for _, q := range []string{"SELECT pg_replication_origin_session_setup('" + origin + "')", "CREATE TABLE public.from_peer (id int PRIMARY KEY)", "SELECT pg_replication_origin_session_reset()"} {
		if _, err := apply.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	m.exec(t, 0, "SELECT pg_replication_origin_drop($1)", origin)
	if n := len(ddlLog(t, m.conns[0])); n != before || len(m.messages(t, 0, slot)) != 0 {
		t.Errorf("DDL in an apply session was captured")
	}

	// capture: manual removes the event triggers.
	admin := m.env.Admin(t, 0)
	actions, err := ddl.InstallCapture(ctx, admin, ddl.CaptureManual)
	if err != nil || len(actions) != 2 {
		t.Fatalf("Install manual: %q, %v", actions, err)
	}
	before = len(ddlLog(t, m.conns[0]))
	m.env.Exec(t, 0, "CREATE TABLE public.manual (id int PRIMARY KEY)")
	if len(ddlLog(t, m.conns[0])) != before || len(m.messages(t, 0, slot)) != 0 {
		t.Errorf("DDL captured with capture: manual")
	}
	if actions, err := ddl.InstallCapture(ctx, admin, ddl.CaptureManual); err != nil || len(actions) != 0 {
		t.Errorf("second Install: %q, %v; want nothing to do", actions, err)
	}
}

// applySession returns a connection to node i set up like the applier's:
// replica role, a replication origin.
func applySession(t *testing.T, m *mesh, i int) *pgx.Conn {
	t.Helper()
	origin := fmt.Sprintf("pgmesh_dt_%08x", crc32.ChecksumIEEE([]byte(m.env.DB)))
	m.exec(t, i, "SELECT pg_replication_origin_create($1)", origin)
	c := m.env.Pgmesh(t, i)
	ctx := testCtx(t)
	for _, q := range []string{"SET session_replication_role = replica", "SELECT pg_replication_origin_session_setup('" + origin + "')"} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		c.Exec(ctx, "SELECT pg_replication_origin_session_reset()") //nolint:errcheck // best effort before the drop
		m.exec(t, i, "SELECT pg_replication_origin_drop($1)", origin)
	})
	return c
}

// handle runs the executor on m in one transaction of conn, through the
// connection's pgconn as the applier does.
func handle(t *testing.T, conn *pgx.Conn, e *ddl.Executor, msg stream.Message) error {
	t.Helper()
	ctx := testCtx(t)
	return pgx.BeginFunc(ctx, conn, func(pgx.Tx) error {
		return e.Handle(ctx, ddl.ConnExecer{Conn: conn.PgConn()}, msg)
	})
}

func TestExecutor(t *testing.T) {
	m := newMesh(t, 2)
	ctx := testCtx(t)
	cfg := m.env.Config
	slot := m.slot(t, 0)
	apply := applySession(t, m, 1)
	exec := &ddl.Executor{Node: "n2"}

	// A new table reaches n2 through the executor and joins its publication.
	id, err := ddl.Emit(ctx, cfg, "n1", "CREATE TABLE public.items (id int PRIMARY KEY)", ddl.EmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := m.messages(t, 0, slot)
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	if err := handle(t, apply, exec, msgs[0]); err != nil {
		t.Fatal(err)
	}
	if !tableExists(t, m.conns[1], "public.items") || !published(t, m.conns[1], "public.items") {
		t.Errorf("n2: public.items not created or not in the publication")
	}
	if got, _ := triggerArgs(t, m.conns[1], "public.items"); !slices.Equal(got, []string{"public.items", "id"}) {
		t.Errorf("n2: public.items tombstone trigger args %q", got)
	}
	if got := ddlLog(t, m.conns[1]); len(got) != 1 || got[0].ID != id || got[0].Status != ddl.StatusApplied || got[0].Origin != "n1" {
		t.Errorf("n2 ddl_log = %+v, want %s applied from n1 only (the event trigger is quiet in the apply session)", got, id)
	}
	if err := ddl.Wait(ctx, cfg, id, time.Minute); err != nil {
		t.Errorf("Wait after both applied: %v", err)
	}
	// Delivered again (it cannot be, but the executor does not rely on it).
	if err := handle(t, apply, exec, msgs[0]); err != nil {
		t.Errorf("second delivery: %v", err)
	}

	// Other prefixes are not the executor's.
	if err := handle(t, apply, exec, stream.Message{Transactional: true, Prefix: "other", Content: []byte("x")}); err != nil {
		t.Errorf("other prefix: %v", err)
	}

	// A DDL that fails on n2 stops with an error naming the DDL, its origin
	// and the PostgreSQL error; after a skip it is passed over.
	m.env.ExecUncaptured(t, 1, "CREATE TABLE public.dup (id int PRIMARY KEY)")
	id, err = ddl.Emit(ctx, cfg, "n1", "CREATE TABLE public.dup (id int PRIMARY KEY)", ddl.EmitOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	msgs = m.messages(t, 0, slot)
	err = handle(t, apply, exec, msgs[0])
	ae, ok := ddl.AsApplyError(err)
	if !ok || ae.Payload.ID != id || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "from node n1") ||
		!strings.Contains(err.Error(), `relation "dup" already exists`) || !strings.Contains(err.Error(), "pgmesh ddl skip "+id+" --node n2") {
		t.Fatalf("failing DDL: %v", err)
	}
	if err := ddl.RecordFailure(ctx, m.conns[1], ae); err != nil {
		t.Fatal(err)
	}
	log := ddl.Collect(ctx, cfg)
	pending := log.Pending()
	if len(pending) != 1 || pending[0].ID != id || pending[0].Nodes["n2"].Status != ddl.StatusFailed ||
		!strings.Contains(pending[0].Nodes["n2"].Error, "already exists") {
		t.Fatalf("pending after the failure: %+v", pending)
	}
	if _, err := ddl.Emit(ctx, cfg, "n1", "CREATE TABLE public.later (id int PRIMARY KEY)", ddl.EmitOptions{}); !errors.Is(err, ddl.ErrPending) || !strings.Contains(err.Error(), id) {
		t.Errorf("Emit while %s failed on n2: %v, want ErrPending naming it", id, err)
	}
	if err := ddl.Skip(ctx, cfg, id, "n2"); err != nil {
		t.Fatal(err)
	}
	if err := handle(t, apply, exec, msgs[0]); err != nil {
		t.Errorf("skipped DDL: %v", err)
	}
	if err := ddl.Wait(ctx, cfg, id, time.Minute); err != nil {
		t.Errorf("Wait after skip: %v", err)
	}
	if err := ddl.Skip(ctx, cfg, id, "n1"); err == nil {
		t.Errorf("Skip on the origin, where it is applied, succeeded")
	}
	if err := ddl.Skip(ctx, cfg, "no-such-id", "n2"); err == nil {
		t.Errorf("Skip of an unknown id succeeded")
	}

	// A role that does not exist here is an error, not a silent fallback.
	payload := fmt.Sprintf(`{"v":1,"id":"r1","origin":"n1","sql":"CREATE TABLE public.r (id int)","search_path":"public","role":"no_such_role_%s","emitted_at":"2026-01-02T03:04:05Z"}`, m.env.DB)
	err = handle(t, apply, exec, stream.Message{Transactional: true, Prefix: ddl.Prefix, Content: []byte(payload)})
	if _, ok := ddl.AsApplyError(err); !ok || !strings.Contains(err.Error(), "does not exist on this node") {
		t.Errorf("missing role: %v", err)
	}
}

func TestWaitTimeoutNamesLaggingNode(t *testing.T) {
	m := newMesh(t, 2)
	ctx := testCtx(t)
	id, err := ddl.Emit(ctx, m.env.Config, "n1", "CREATE TABLE public.items (id int PRIMARY KEY)", ddl.EmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing applies it on n2.
	err = ddl.Wait(ctx, m.env.Config, id, time.Second)
	if err == nil || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), "n2 (not received)") || strings.Contains(err.Error(), "n1 (") {
		t.Errorf("Wait: %v, want an error naming only n2", err)
	}
}

func TestInFlight(t *testing.T) {
	m := newMesh(t, 2)
	ctx := testCtx(t)
	m.env.ExecUncaptured(t, 1, "CREATE TABLE public.items (id int PRIMARY KEY)")
	id, err := ddl.Emit(ctx, m.env.Config, "n1", "CREATE TABLE public.items (id int PRIMARY KEY); ALTER TABLE public.items ADD COLUMN Note text", ddl.EmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	local, upstream := m.conns[1], m.conns[0]
	tests := []struct {
		table, column string
		want          bool
	}{
		{"public.items", "note", true},
		{"public.items", "other", false},
		{"public.items", "no", false}, // a word of the DDL, not part of one
		{"public.item", "note", false},
		{"public.items", "", true},
		{"public.orders", "note", false},
		{"public.orders", "", false},
	}
	for _, tt := range tests {
		got, err := ddl.InFlight(ctx, local, upstream, tt.table, tt.column)
		if err != nil || got != tt.want {
			t.Errorf("InFlight(%s, %s) = %v, %v; want %v", tt.table, tt.column, got, err, tt.want)
		}
	}
	if err := ddl.Skip(ctx, m.env.Config, id, "n2"); err != nil {
		t.Fatal(err)
	}
	if got, err := ddl.InFlight(ctx, local, upstream, "public.items", "note"); err != nil || got {
		t.Errorf("InFlight once skipped here = %v, %v; want false", got, err)
	}
}

func TestParsePayload(t *testing.T) {
	const ok = `{"v":1,"id":"a","origin":"n1","sql":"CREATE TABLE t ()","search_path":"public","role":"r","emitted_at":"2026-01-02T03:04:05.123456+00:00"}`
	if p, err := ddl.ParsePayload([]byte(ok)); err != nil || p.ID != "a" || p.EmittedAt.Nanosecond() != 123456000 {
		t.Fatalf("valid payload: %+v, %v", p, err)
	}
	tests := []struct{ name, content string }{
		{"not JSON", `garbage`},
		{"trailing data", ok + `{}`},
		{"unknown version", strings.Replace(ok, `"v":1`, `"v":3`, 1)},
		{"no id", strings.Replace(ok, `"id":"a"`, `"id":""`, 1)},
		{"long id", strings.Replace(ok, `"id":"a"`, `"id":"`+strings.Repeat("a", 65)+`"`, 1)},
		{"no origin", strings.Replace(ok, `"origin":"n1"`, `"origin":""`, 1)},
		{"no sql", strings.Replace(ok, `"sql":"CREATE TABLE t ()"`, `"sql":"  "`, 1)},
		{"NUL", strings.Replace(ok, `CREATE TABLE`, `CREATE\u0000TABLE`, 1)},
		{"no time", strings.Replace(ok, `"emitted_at":"2026-01-02T03:04:05.123456+00:00"`, `"x":1`, 1)},
		{"wrong type", strings.Replace(ok, `"id":"a"`, `"id":7`, 1)},
	}
	for _, tt := range tests {
		if _, err := ddl.ParsePayload([]byte(tt.content)); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

// The config type is used as init passes it; keep the test honest about
// the exclude list reaching the node.
func TestInstallExclude(t *testing.T) {
	m := newMesh(t, 1)
	ctx := testCtx(t)
	cfg := *m.env.Config
	cfg.Replicate = config.Replicate{Schemas: []string{"public"}, Exclude: []string{"public.local_audit"}}
	if _, err := ddl.Install(ctx, m.conns[0], &cfg); err != nil {
		t.Fatal(err)
	}
	before := len(ddlLog(t, m.conns[0]))
	m.env.Exec(t, 0, "CREATE TABLE public.local_audit (id int PRIMARY KEY)")
	m.env.Exec(t, 0, "CREATE TABLE public.kept (id int PRIMARY KEY)")
	if published(t, m.conns[0], "public.local_audit") || !published(t, m.conns[0], "public.kept") {
		t.Errorf("publication: local_audit %v (want false), kept %v (want true)",
			published(t, m.conns[0], "public.local_audit"), published(t, m.conns[0], "public.kept"))
	}
	if got := ddlLog(t, m.conns[0]); len(got) != before+1 || !strings.Contains(got[len(got)-1].SQL, "kept") {
		t.Errorf("ddl_log %+v: want only the CREATE TABLE of public.kept captured", got[before:])
	}
}

// triggerArgs returns the arguments of table's tombstone trigger and the
// xmin of its pg_trigger row (which changes when the trigger is replaced);
// nil when there is none.
func triggerArgs(t *testing.T, c *pgx.Conn, table string) ([]string, uint32) {
	t.Helper()
	var args []string
	var xmin uint32
	err := c.QueryRow(testCtx(t), `SELECT (SELECT array_agg(a ORDER BY o) FROM unnest(string_to_array(rtrim(encode(tgargs, 'escape'), '\000'), '\000')) WITH ORDINALITY u(a, o)),
		xmin::text::bigint FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2`, table, setup.TriggerName).Scan(&args, &xmin)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return args, xmin
}

func TestTombstoneTrigger(t *testing.T) {
	m := newMesh(t, 1)
	ctx := testCtx(t)
	c := m.conns[0]
	// public.a gets its trigger from init (setup.InstallTriggers).
	m.env.ExecUncaptured(t, 0, "CREATE TABLE public.a (id int, k text, PRIMARY KEY (k, id))")
	tables, err := pg.ReplicatedTables(ctx, c, []string{"public"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.InstallTriggers(ctx, c, tables); err != nil {
		t.Fatal(err)
	}
	initArgs, initXmin := triggerArgs(t, c, "public.a")
	if !slices.Equal(initArgs, []string{"public.a", "k", "id"}) {
		t.Fatalf("setup.InstallTriggers made args %q", initArgs)
	}
	// A captured CREATE TABLE gets the same trigger from the event trigger,
	// and leaves public.a's alone.
	m.env.Exec(t, 0, "CREATE TABLE public.b (id int, k text, PRIMARY KEY (k, id))")
	if got, _ := triggerArgs(t, c, "public.b"); !slices.Equal(got, []string{"public.b", "k", "id"}) {
		t.Errorf("public.b tombstone trigger args %q", got)
	}
	if _, xmin := triggerArgs(t, c, "public.a"); xmin != initXmin {
		t.Errorf("the trigger of public.a was replaced although it was right")
	}
	// A table without key gets none, until it has one.
	m.env.Exec(t, 0, "CREATE TABLE public.c (id int NOT NULL)")
	if got, _ := triggerArgs(t, c, "public.c"); got != nil {
		t.Errorf("public.c without key has a tombstone trigger %q", got)
	}
	m.env.Exec(t, 0, "ALTER TABLE public.c ADD PRIMARY KEY (id)")
	if got, _ := triggerArgs(t, c, "public.c"); !slices.Equal(got, []string{"public.c", "id"}) {
		t.Errorf("public.c with a primary key: tombstone trigger args %q", got)
	}
	// The trigger works: a local delete leaves a tombstone.
	m.env.Exec(t, 0, "INSERT INTO public.c VALUES (7); DELETE FROM public.c")
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pgmesh.tombstone WHERE table_name = 'public.c'").Scan(&n); err != nil || n != 1 {
		t.Errorf("tombstones of public.c: %d, %v; want 1", n, err)
	}
}

func TestStatementCount(t *testing.T) {
	m := newMesh(t, 1)
	tests := []struct {
		q    string
		want int
	}{
		{"", 0},
		{"CREATE TABLE a (id int)", 1},
		{" ;; CREATE TABLE a (id int) ; ;", 1},
		{"CREATE TABLE a (x text DEFAULT ';'); -- ; comment", 1},
		{"ALTER TABLE a ADD b int; INSERT INTO a VALUES (1)", 2},
		{"BEGIN; ALTER TABLE a ADD b int; COMMIT", 3},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $f$ SELECT 1; SELECT 2 $f$", 1},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$; SELECT 1", 2},
		{"CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN x > 0 THEN 1 END; SELECT 2; END", 1},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; CREATE TABLE b ()", 2},
		{`COMMENT ON TABLE a IS E'it\'s; ok'`, 1},
		{"COMMENT ON TABLE a IS 'it''s; ok'", 1},
		{`CREATE TABLE "we;ird" (id int)`, 1},
		{"/* a; /* nested; */ b; */ CREATE TABLE a ()", 1},
	}
	for _, tt := range tests {
		var got int
		if err := m.conns[0].QueryRow(testCtx(t), "SELECT pgmesh.ddl_statement_count($1)", tt.q).Scan(&got); err != nil || got != tt.want {
			t.Errorf("ddl_statement_count(%q) = %d, %v; want %d", tt.q, got, err, tt.want)
		}
	}
}
