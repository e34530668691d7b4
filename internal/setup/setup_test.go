package setup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/check"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// Tests here create slots and origins with fixed names on shared servers:
// none of them may run in parallel.
func TestMain(m *testing.M) { sandboxtest.Main(m, 3) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// schema is the same on every node: replicated tables of every identity
// kind that works, plus tables that must not be replicated.
const schema = `
CREATE TABLE public.accounts (id bigint PRIMARY KEY, balance numeric NOT NULL);
CREATE TABLE public.pairs (a int NOT NULL, b int NOT NULL, note text, UNIQUE (a, b));
ALTER TABLE public.pairs REPLICA IDENTITY USING INDEX pairs_a_b_key;
CREATE TABLE public.events (id bigint PRIMARY KEY, k int NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES FROM (0) TO (1000);
CREATE TABLE public.local_audit (id int PRIMARY KEY);
CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY);
CREATE SCHEMA other;
CREATE TABLE other.elsewhere (id int PRIMARY KEY);
`

func newEnv(t *testing.T, n int, ddl string) *sandboxtest.Env {
	t.Helper()
	e := sandboxtest.New(t, n)
	for i := range n {
		e.Exec(t, i, ddl)
	}
	e.Config.Replicate.Exclude = []string{"public.local_audit"}
	t.Cleanup(func() {
		if err := Teardown(context.Background(), e.Config); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return e
}

func TestInitConverges(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 3, schema)
	t.Logf("PostgreSQL %d", e.Major())
	// Two apply workers: init creates an origin for each.
	e.Config.Agent.ApplyWorkers = 2

	rep, err := Init(ctx, e.Config, quiet)
	if err != nil {
		t.Fatalf("init: %v\n%s", err, render(rep))
	}
	// The tombstone triggers of a table with a key: TRUNCATE, DELETE, key
	// changes.
	const allTriggers = "pgmesh_truncate, pgmesh_tombstone, pgmesh_tombstone_key"
	var want []string
	for _, n := range []string{"n1", "n2", "n3"} {
		want = append(want, n+": applied migration 0001_core", n+": set local node "+n+" of cluster test",
			n+": created publication pgmesh with 3 tables", n+": set node ranks n1, n2, n3",
			n+": recorded the existing rows as seen by 2 peers",
			n+": installed tombstone triggers on public.accounts: "+allTriggers, n+": installed tombstone triggers on public.events: "+allTriggers,
			n+": installed tombstone triggers on public.pairs: "+allTriggers,
			n+": set replicated schemas for DDL capture: public",
			n+": set excluded tables for DDL capture: public.local_audit",
			n+": created event trigger pgmesh_ddl_capture_end (ddl.capture: auto)",
			n+": created event trigger pgmesh_ddl_capture_drop (ddl.capture: auto)")
	}
	want = append(want,
		"n1: created slot pgmesh_n1_n2", "n1: created slot pgmesh_n1_n3",
		"n2: created slot pgmesh_n2_n1", "n2: created slot pgmesh_n2_n3",
		"n3: created slot pgmesh_n3_n1", "n3: created slot pgmesh_n3_n2",
		"n2: created origin pgmesh_n1", "n3: created origin pgmesh_n1",
		"n1: created origin pgmesh_n2", "n3: created origin pgmesh_n2",
		"n1: created origin pgmesh_n3", "n2: created origin pgmesh_n3",
		// One more per link for its second apply worker.
		"n2: created origin pgmesh_n1_1", "n3: created origin pgmesh_n1_1",
		"n1: created origin pgmesh_n2_1", "n3: created origin pgmesh_n2_1",
		"n1: created origin pgmesh_n3_1", "n2: created origin pgmesh_n3_1",
	)
	got := actions(rep)
	// Migrations added by later issues come after 0001: ignore them here.
	got = slices.DeleteFunc(got, func(a string) bool {
		return strings.Contains(a, "applied migration") && !strings.Contains(a, "0001_core")
	})
	if !slices.Equal(sortedCopy(got), sortedCopy(want)) {
		t.Fatalf("actions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(rep.Notes) != 1 || rep.Notes[0] != DataNote {
		t.Errorf("notes = %q, want the data note", rep.Notes)
	}

	for i, node := range []string{"n1", "n2", "n3"} {
		conn := e.Pgmesh(t, i)
		var peers []string
		for _, p := range []string{"n1", "n2", "n3"} {
			if p != node {
				peers = append(peers, p)
			}
		}
		assertRows(t, conn, node+" slots",
			"SELECT slot_name || ' ' || plugin || ' ' || slot_type FROM pg_replication_slots WHERE database = current_database() ORDER BY 1",
			"pgmesh_"+node+"_"+peers[0]+" pgoutput logical", "pgmesh_"+node+"_"+peers[1]+" pgoutput logical")
		assertRows(t, conn, node+" origins",
			"SELECT roname FROM pg_replication_origin WHERE roname LIKE 'pgmesh%' ORDER BY 1",
			"pgmesh_"+peers[0], "pgmesh_"+peers[0]+"_1", "pgmesh_"+peers[1], "pgmesh_"+peers[1]+"_1")
		assertRows(t, conn, node+" publication",
			"SELECT format('%s all=%s ins=%s upd=%s del=%s trunc=%s root=%s', pubname, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot) FROM pg_publication",
			"pgmesh all=f ins=t upd=t del=t trunc=t root=t")
		assertRows(t, conn, node+" published tables",
			"SELECT prrelid::regclass::text FROM pg_publication_rel ORDER BY 1",
			"public.accounts", "public.events", "public.pairs")
		assertRows(t, conn, node+" local node", "SELECT cluster || '/' || name FROM pgmesh.local_node", "test/"+node)
		assertRows(t, conn, node+" link_state", "SELECT count(*)::text FROM pgmesh.link_state", "0")
	}

	before := snapshot(t, e, 3)
	rep, err = Init(ctx, e.Config, quiet)
	if err != nil {
		t.Fatalf("second init: %v\n%s", err, render(rep))
	}
	if len(rep.Actions) != 0 || len(rep.Notes) != 0 {
		t.Fatalf("second init acted: %q %q", actions(rep), rep.Notes)
	}
	if after := snapshot(t, e, 3); after != before {
		t.Fatalf("second init changed the catalogs:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A new table converges its tombstone trigger and the publication
	// only. (Created with DDL capture off: captured, it would join the
	// publication and get its trigger by itself.)
	for i := range 3 {
		e.ExecUncaptured(t, i, "CREATE TABLE public.added (id int PRIMARY KEY)")
	}
	rep, err = Init(ctx, e.Config, quiet)
	if err != nil {
		t.Fatalf("third init: %v\n%s", err, render(rep))
	}
	want = nil
	for _, n := range []string{"n1", "n2", "n3"} {
		want = append(want, n+": installed tombstone triggers on public.added: "+allTriggers,
			n+": set tables of publication pgmesh: 4 tables (added public.added)")
	}
	if got := actions(rep); !slices.Equal(got, want) {
		t.Fatalf("third init actions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A database that is already another node is refused.
	swapped := *e.Config
	swapped.Nodes = slices.Clone(e.Config.Nodes)
	swapped.Nodes[0].DSN, swapped.Nodes[1].DSN = swapped.Nodes[1].DSN, swapped.Nodes[0].DSN
	fs, err := check.Preflight(ctx, &swapped)
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"n1", "n2"} {
		f := findOne(t, fs, check.Fail, node, "local_node", "pgmesh.local_node")
		if !strings.Contains(f.Message, "already node") {
			t.Errorf("local_node finding %+v", f)
		}
	}

	if err := Teardown(ctx, e.Config); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	for i := range 3 {
		assertRows(t, e.Pgmesh(t, i), fmt.Sprintf("n%d after teardown", i+1), `
SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()
UNION ALL SELECT 'origin ' || roname FROM pg_replication_origin WHERE roname LIKE 'pgmesh%'
UNION ALL SELECT 'publication ' || pubname FROM pg_publication
UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'pgmesh'`)
	}
}

func TestReplicatedTables(t *testing.T) {
	e := newEnv(t, 1, schema+`
CREATE TABLE public.full_pk (id int PRIMARY KEY, v text);
ALTER TABLE public.full_pk REPLICA IDENTITY FULL;
CREATE TABLE public.nothing (id int PRIMARY KEY);
ALTER TABLE public.nothing REPLICA IDENTITY NOTHING;
CREATE SCHEMA pgmesh;
CREATE TABLE pgmesh.meta (id int PRIMARY KEY);`)
	tables, err := pg.ReplicatedTables(context.Background(), e.Conn(t, 0), []string{"public", "pgmesh"}, []string{"public.local_audit"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tb := range tables {
		got = append(got, fmt.Sprintf("%s %c pk=%v idx=%s keys=%v usable=%v",
			tb.QualifiedName(), tb.ReplicaIdentity, tb.HasPrimaryKey, tb.IdentityIndex, tb.KeyColumns, tb.HasUsableIdentity()))
	}
	want := []string{
		"public.accounts d pk=true idx=accounts_pkey keys=[id] usable=true",
		"public.events d pk=true idx=events_pkey keys=[id] usable=true",
		"public.full_pk f pk=true idx= keys=[id] usable=true",
		"public.nothing n pk=true idx= keys=[] usable=false",
		"public.pairs i pk=false idx=pairs_a_b_key keys=[a b] usable=true",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("tables:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if id := tables[0].Ident(); id != `"public"."accounts"` {
		t.Errorf("Ident = %s", id)
	}
}

func TestInitRefusesTableWithoutIdentity(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 2, `
CREATE TABLE public.ok (id int PRIMARY KEY);
CREATE TABLE public.has_unique (code text NOT NULL, other int UNIQUE, note text, UNIQUE (code));
CREATE TABLE public.no_key (a int, b text);
CREATE TABLE public.nullable_unique (a int UNIQUE);
CREATE TABLE public.log (at timestamptz, line text);
ALTER TABLE public.log REPLICA IDENTITY FULL;`)

	rep, err := Init(ctx, e.Config, quiet)
	if !errors.Is(err, ErrPreflightFailed) || !strings.Contains(err.Error(), "preflight failed") {
		t.Fatalf("init err = %v, want preflight failed", err)
	}
	for _, node := range []string{"n1", "n2"} {
		f := findOne(t, rep.Findings, check.Fail, node, "identity", "public.has_unique")
		if want := `ALTER TABLE "public"."has_unique" REPLICA IDENTITY USING INDEX "has_unique_code_key";`; f.Fix != want {
			t.Errorf("fix = %q, want %q", f.Fix, want)
		}
		for _, table := range []string{"public.no_key", "public.nullable_unique"} {
			f = findOne(t, rep.Findings, check.Fail, node, "identity", table)
			if !strings.Contains(f.Fix, "ADD PRIMARY KEY") || !strings.Contains(f.Fix, "insert-only") {
				t.Errorf("%s fix = %q, want primary key advice", table, f.Fix)
			}
		}
		findOne(t, rep.Findings, check.Warn, node, "identity", "public.log")
	}
	for _, f := range rep.Findings {
		if f.Object == "public.ok" {
			t.Errorf("finding about a good table: %+v", f)
		}
	}
	if len(rep.Actions) != 0 {
		t.Fatalf("refused init acted: %q", actions(rep))
	}
	for i := range 2 {
		assertRows(t, e.Pgmesh(t, i), "nothing created", `
SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE database = current_database()
UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'pgmesh'
UNION ALL SELECT 'publication ' || pubname FROM pg_publication`)
	}

	// Fixed as advised, init proceeds; FULL stays a warning.
	for i := range 2 {
		e.Exec(t, i, `ALTER TABLE public.has_unique REPLICA IDENTITY USING INDEX has_unique_code_key;
ALTER TABLE public.no_key ADD PRIMARY KEY (a);
DROP TABLE public.nullable_unique;`)
	}
	rep, err = Init(ctx, e.Config, quiet)
	if err != nil {
		t.Fatalf("init after fixes: %v\n%s", err, render(rep))
	}
	findOne(t, rep.Findings, check.Warn, "n1", "identity", "public.log")
	if len(rep.Actions) == 0 {
		t.Fatal("init after fixes did nothing")
	}
}

func TestPreflight(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 2, "CREATE TABLE public.shared (id int PRIMARY KEY)")
	e.Exec(t, 0, "CREATE TABLE public.only_n1 (id int PRIMARY KEY)")

	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := *e.Config
	cfg.Nodes = append(slices.Clone(cfg.Nodes), config.Node{Name: "n3", ID: 3,
		DSN: fmt.Sprintf("host=127.0.0.1 port=%d dbname=app user=pgmesh password=s3cret-pw connect_timeout=5", port)})

	fs, err := check.Preflight(ctx, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := findOne(t, fs, check.Fail, "n3", "connect", fmt.Sprintf("127.0.0.1:%d/app user=pgmesh", port))
	if !strings.Contains(f.Message, "n3") {
		t.Errorf("connect message %q does not name the node", f.Message)
	}
	findOne(t, fs, check.Fail, "n2", "tables", "public.only_n1")
	for _, node := range []string{"n1", "n2"} { // still checked
		findOne(t, fs, check.Pass, node, "wal_level", "wal_level")
		findOne(t, fs, check.Pass, node, "track_commit_timestamp", "track_commit_timestamp")
		findOne(t, fs, check.Pass, node, "replication_slots", "max_replication_slots")
		findOne(t, fs, check.Pass, node, "version", "server_version")
	}
	var out strings.Builder
	check.Render(&out, fs)
	if strings.Contains(out.String(), "s3cret-pw") || strings.Contains(fmt.Sprint(fs), "s3cret-pw") {
		t.Fatalf("password in findings:\n%s", out.String())
	}
	rep, err := Init(ctx, &cfg, quiet)
	if !errors.Is(err, ErrPreflightFailed) || len(rep.Actions) != 0 {
		t.Fatalf("init with an unreachable node: err %v, actions %q", err, actions(rep))
	}
}

func TestInitRejectsForeignSlot(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 2, "CREATE TABLE public.t (id int PRIMARY KEY)")
	if _, err := e.Pgmesh(t, 0).Exec(ctx, "SELECT pg_create_physical_replication_slot('pgmesh_n1_n2')"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Pgmesh(t, 0).Exec(ctx, "SELECT pg_drop_replication_slot('pgmesh_n1_n2')") }) //nolint:errcheck // best effort
	// Preflight catches it before init changes anything.
	rep, err := Init(ctx, e.Config, quiet)
	if !errors.Is(err, ErrPreflightFailed) {
		t.Fatalf("init err = %v, want %v", err, ErrPreflightFailed)
	}
	for _, f := range rep.Findings {
		if f.Status == check.Fail && f.Node == "n1" && strings.Contains(f.Message, "physical slot") &&
			strings.Contains(f.Fix, "pg_drop_replication_slot('pgmesh_n1_n2')") {
			return
		}
	}
	t.Fatalf("no FAIL finding names the physical slot with a fix: %+v", rep.Findings)
}

func TestMigrateConcurrently(t *testing.T) {
	ctx := context.Background()
	e := sandboxtest.New(t, 1)
	conns := []*pgx.Conn{e.Pgmesh(t, 0), e.Pgmesh(t, 0), e.Pgmesh(t, 0)}
	applied := make([][]string, len(conns))
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			applied[i], errs[i] = Migrate(ctx, c)
		}()
	}
	wg.Wait()
	var all []string
	for i := range conns {
		if errs[i] != nil {
			t.Fatalf("migrate %d: %v", i, errs[i])
		}
		all = append(all, applied[i]...)
	}
	slices.Sort(all)
	if len(all) == 0 || all[0] != "0001_core" || len(slices.Compact(slices.Clone(all))) != len(all) {
		t.Fatalf("applied %q: want each migration exactly once", all)
	}
	assertRows(t, conns[0], "migrations recorded once",
		"SELECT count(*) = count(DISTINCT version) AND count(*) = "+fmt.Sprint(len(all))+" FROM pgmesh.migration", "true")
	again, err := Migrate(ctx, conns[0])
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate: %q, %v", again, err)
	}

	// A schema from a newer pgmesh is refused.
	if _, err := conns[0].Exec(ctx, "INSERT INTO pgmesh.migration (version, name) VALUES (9999, '9999_future')"); err != nil {
		t.Fatal(err)
	}
	if _, err := Migrate(ctx, conns[0]); err == nil || !strings.Contains(err.Error(), "newer than this binary") {
		t.Fatalf("migrate with a future migration: %v", err)
	}
}

// snapshot is what Init may change on every node, with row versions (xmin)
// so that a rewrite with equal values shows too.
func snapshot(t *testing.T, e *sandboxtest.Env, n int) string {
	t.Helper()
	var b strings.Builder
	for i := range n {
		conn := e.Pgmesh(t, i)
		for _, q := range []string{
			"SELECT slot_name, plugin, database, restart_lsn::text, confirmed_flush_lsn::text FROM pg_replication_slots ORDER BY 1",
			"SELECT roident, roname FROM pg_replication_origin ORDER BY 1",
			"SELECT oid, xmin::text, pubname, puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, pubviaroot FROM pg_publication",
			"SELECT oid, xmin::text, prrelid::regclass::text FROM pg_publication_rel ORDER BY 3",
			"SELECT version, name, applied_at, xmin::text FROM pgmesh.migration ORDER BY 1",
			"SELECT cluster, name, xmin::text FROM pgmesh.local_node",
		} {
			fmt.Fprintf(&b, "n%d %s\n", i+1, q)
			for _, r := range queryRows(t, conn, q) {
				b.WriteString("  " + r + "\n")
			}
		}
	}
	return b.String()
}

func queryRows(t *testing.T, conn *pgx.Conn, q string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		v, err := r.Values()
		return fmt.Sprint(v...), err
	})
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

func assertRows(t *testing.T, conn *pgx.Conn, what, q string, want ...string) {
	t.Helper()
	got := queryRows(t, conn, q)
	if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Errorf("%s: got %q, want %q", what, got, want)
	}
}

func findOne(t *testing.T, fs []check.Finding, status check.Status, node, chk, object string) check.Finding {
	t.Helper()
	for _, f := range fs {
		if f.Status == status && f.Node == node && f.Check == chk && f.Object == object {
			return f
		}
	}
	t.Fatalf("no %s %s/%s/%s finding in:\n%s", status, node, chk, object, render(&Report{Findings: fs}))
	return check.Finding{}
}

func actions(rep *Report) []string {
	var out []string
	for _, a := range rep.Actions {
		out = append(out, a.String())
	}
	return out
}

func render(rep *Report) string {
	if rep == nil {
		return ""
	}
	var b strings.Builder
	check.Render(&b, rep.Findings)
	return b.String()
}

func sortedCopy(ss []string) []string { return slices.Sorted(slices.Values(ss)) }
