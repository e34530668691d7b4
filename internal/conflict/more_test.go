package conflict

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
)

// freezeAll freezes every database of the test server, so that PostgreSQL
// drops the commit timestamps of every transaction before now: the rows
// written so far get an unknown commit time, as old rows do in production.
func freezeAll(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	admin, err := f.env.Cluster.AdminConn(ctx, f.env.Cluster.Nodes[0].Name, "postgres")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	rows, err := admin.Query(ctx, "SELECT datname FROM pg_database")
	if err != nil {
		t.Fatal(err)
	}
	dbs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE template0 ALLOW_CONNECTIONS true"); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(ctx, "ALTER DATABASE template0 ALLOW_CONNECTIONS false") //nolint:errcheck // best effort
	for _, db := range dbs {
		conn, err := f.env.Cluster.AdminConn(ctx, f.env.Cluster.Nodes[0].Name, db)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "VACUUM FREEZE")
		conn.Close(ctx)
		if err != nil {
			t.Fatalf("vacuum freeze %s: %v", db, err)
		}
	}
}

// A frozen row whose commit timestamp PostgreSQL no longer keeps counts as
// the oldest: even a row stamped an hour in the future loses to any remote
// change once its commit data is gone, and changes on it are not
// concurrent (no log), except insert_exists which always is.
func TestFrozenRowIsOldest(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	now := time.Now()
	f.writeAs("n2", now.Add(time.Hour), "INSERT INTO item VALUES (1, 'a', 'A'), (2, 'b', 'B')")
	freezeAll(t, f)
	var unknown bool
	if err := f.conn.QueryRow(context.Background(),
		"SELECT bool_and((pg_xact_commit_timestamp_origin(xmin)).timestamp IS NULL) FROM item").Scan(&unknown); err != nil {
		t.Fatal(err)
	}
	if !unknown {
		t.Fatal("VACUUM FREEZE of every database left the commit timestamps of the rows: cannot test unknown commit times")
	}
	if v := f.mustApply("n1", now.Add(-time.Hour), UpdateSQL(tbl, tbl.Columns), vals(1, 1, "a", "R", 0)...); v != (verdict{}) {
		t.Errorf("update of a frozen row: verdict %+v, want no conflict", v)
	}
	if v := f.mustApply("n1", now.Add(-time.Hour), InsertSQL(tbl), vals(2, "b", "R2", 0)...); v != (verdict{InsertExists, ApplyRemote}) {
		t.Errorf("insert onto a frozen row: verdict %+v, want insert_exists/apply_remote", v)
	}
	if r := f.rows(); r != "1:a:R:0 2:b:R2:0" {
		t.Errorf("rows %q", r)
	}
	if l := f.logRows(); !slices.Equal(l, []string{"insert_exists/apply_remote/-/n1/B/R2"}) {
		t.Errorf("log %v", l)
	}
}

// Delta columns merge local + (new − old) whoever wins the rest of the row;
// a change that only moves the counter is no conflict.
func TestDeltaColumns(t *testing.T) {
	f := newFixture(t, "CREATE TABLE stock (id int PRIMARY KEY, name text, qty int NOT NULL)", "ALTER TABLE stock REPLICA IDENTITY FULL")
	tbl := f.table("stock", func(t *Table) { t.DeltaColumns = []string{"qty"} })
	f.exec("INSERT INTO stock VALUES (1, 'x', 10)")
	now := time.Now()
	upd := UpdateSQL(tbl, tbl.Columns) // old id; id, name, qty; old qty
	// n1 and n2 both saw 10 and added 1 and 2, concurrently with each
	// other and with a local +5.
	f.exec("UPDATE stock SET qty = qty + 5")
	if v := f.mustApply("n1", now.Add(-time.Hour), upd, vals(1, 1, "x", 11, 10)...); v != (verdict{}) {
		t.Errorf("n1 +1: verdict %+v, want none", v)
	}
	if v := f.mustApply("n2", now.Add(-time.Hour), upd, vals(1, 1, "x", 12, 10)...); v != (verdict{}) {
		t.Errorf("n2 +2: verdict %+v, want none", v)
	}
	// An older concurrent rename (the row's last writer is now n2) loses,
	// but its +1 still counts.
	if v := f.mustApply("n1", now.Add(-2*time.Hour), upd, vals(1, 1, "y", 11, 10)...); v != (verdict{UpdateOriginDiffers, KeepLocal}) {
		t.Errorf("older rename: verdict %+v, want update_origin_differs/keep_local", v)
	}
	var got string
	if err := f.conn.QueryRow(context.Background(), "SELECT name || ':' || qty FROM stock").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "x:19" {
		t.Errorf("row %q, want x:19 (10 +5 +1 +2 +1)", got)
	}
	noFull := tbl
	noFull.FullIdentity = false
	if err := noFull.Validate(); err == nil || !strings.Contains(err.Error(), "REPLICA IDENTITY FULL") {
		t.Errorf("Validate without FULL identity: %v, want an error that asks for REPLICA IDENTITY FULL", err)
	}
}

// A table identified by its whole row (REPLICA IDENTITY FULL, no key).
func TestKeylessTable(t *testing.T) {
	f := newFixture(t, "CREATE TABLE ev (a int, b json)", "ALTER TABLE ev REPLICA IDENTITY FULL")
	tbl := f.table("ev", nil)
	if len(tbl.Key) != 0 {
		t.Fatalf("key %v, want none", tbl.Key)
	}
	now := time.Now()
	f.mustApply("n1", now, InsertSQL(tbl), vals(1, `{"x":1}`)...)
	f.mustApply("n1", now, InsertSQL(tbl), vals(1, `{"x":1}`)...)
	if v := f.mustApply("n1", now, UpdateSQL(tbl, tbl.Columns), vals(1, `{"x":1}`, 2, nil)...); v != (verdict{}) {
		t.Errorf("update: %+v", v)
	}
	if v := f.mustApply("n1", now, DeleteSQL(tbl), vals(1, `{"x":1}`)...); v != (verdict{}) {
		t.Errorf("delete: %+v", v)
	}
	if v := f.mustApply("n1", now, DeleteSQL(tbl), vals(5, nil)...); v != (verdict{DeleteMissing, Skip}) {
		t.Errorf("delete of a missing row: %+v", v)
	}
	var got string
	if err := f.conn.QueryRow(context.Background(), "SELECT string_agg(a || ':' || coalesce(b::text, 'null'), ' ' ORDER BY a) FROM ev").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "2:null" {
		t.Errorf("rows %q, want 2:null (one duplicate updated, the other deleted)", got)
	}
}

// FOR UPDATE waits for a concurrent local writer and decides on the
// version it committed (EvalPlanQual), not on the one the statement's
// snapshot saw.
func TestConcurrentLocalWriter(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	ctx := context.Background()
	now := time.Now()
	f.writeAs("n2", now.Add(-2*time.Hour), "INSERT INTO item VALUES (1, 'a', 'A')")
	writer, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(ctx)
	tx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "UPDATE item SET name = 'W' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := writer.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	type result struct {
		v   verdict
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f.apply("n1", now.Add(-time.Hour), UpdateSQL(tbl, tbl.Columns), vals(1, 1, "a", "R", 0)...)
		done <- result{v, err}
	}()
	// Wait until the apply statement waits for the writer's row lock.
	for {
		var waiting bool
		if err := f.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND $1 = ANY (pg_blocking_pids(pid)))", pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("apply did not wait for the local writer: %+v %v", r.v, r.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	// The local write committed now, after the remote change (an hour ago):
	// local wins, and the logged local image is the committed one.
	if r.v != (verdict{UpdateOriginDiffers, KeepLocal}) {
		t.Errorf("verdict %+v, want update_origin_differs/keep_local", r.v)
	}
	if got := f.rows(); got != "1:a:W:0" {
		t.Errorf("rows %q, want 1:a:W:0", got)
	}
	if l := f.logRows(); !slices.Equal(l, []string{"update_origin_differs/keep_local/n3/n1/W/R"}) {
		t.Errorf("log %v", l)
	}
}

// Several changes of one remote transaction to the same row: the second
// sees a row of unknown commit time (the running transaction) and applies.
func TestSameTransaction(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	now := time.Now()
	err := f.session("n1", now, func(ctx context.Context, conn *pgx.Conn) error {
		steps := []struct {
			sql  string
			args []*string
		}{
			{InsertSQL(tbl), vals(1, "a", "R1", 0)},
			{UpdateSQL(tbl, tbl.Columns), vals(1, 1, "a", "R2", 0)},
			{DeleteSQL(tbl), vals(1)},
			{InsertSQL(tbl), vals(1, "a", "R3", 0)},
		}
		for _, s := range steps {
			params := [][]byte{[]byte(now.Format(time.RFC3339Nano)), []byte("n1"), []byte("0/1")}
			for _, a := range s.args {
				params = append(params, []byte(*a))
			}
			res := execStatement(ctx, conn.PgConn(), s.sql, params)
			if res.Err != nil {
				return res.Err
			}
			if k := res.Rows[0][0]; k != nil {
				return errors.New("conflict within one transaction: " + string(k))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.rows(); r != "1:a:R3:0" {
		t.Errorf("rows %q", r)
	}
}

func TestOriginNode(t *testing.T) {
	f := newFixture(t)
	f.exec("SELECT pg_replication_origin_create('pgmesh_n2_1')")
	f.exec("SELECT pg_replication_origin_create('pgmesh_zz')")
	f.exec("SELECT pg_replication_origin_create('pgmesh_n2_x')")
	for origin, want := range map[string]string{"pgmesh_n1": "n1", "pgmesh_n2_1": "n2", "pgmesh_zz": "zz", "pgmesh_n2_x": "n2_x"} {
		var got string
		if err := f.conn.QueryRow(context.Background(), "SELECT pgmesh.origin_node(pg_replication_origin_oid($1))", origin).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("origin_node(%s) = %q, want %q", origin, got, want)
		}
	}
	var local string
	if err := f.conn.QueryRow(context.Background(), "SELECT pgmesh.origin_node(0)").Scan(&local); err != nil || local != "n3" {
		t.Errorf("origin_node(0) = %q, %v; want n3", local, err)
	}
}

func TestPrune(t *testing.T) {
	f := newFixture(t, itemDDL)
	ctx := context.Background()
	old := time.Now().Add(-48 * time.Hour)
	f.exec(`INSERT INTO pgmesh.tombstone (table_name, key, deleted_at, node) VALUES
		('public.item', '{"id": 1}', $1, 'n1'),     -- n2 has seen it: pruned
		('public.item', '{"id": 2}', $1::timestamptz + interval '2 hours', 'n1'), -- n2 has not
		('public.item', '{"id": 3}', now(), 'n1')`, old) // too young
	f.exec(SeenSQL(), "n2", "n1", old.Add(time.Hour))
	f.exec(SeenSQL(), "n2", "n1", old) // never goes back
	f.exec("INSERT INTO pgmesh.conflict_log (detected_at, table_name, kind, resolution) VALUES ($1, 't', 'k', 'r'), (now(), 't', 'k', 'r')", old)
	var n int64
	if err := f.conn.QueryRow(ctx, "SELECT pgmesh.prune_tombstones('24 hours')").Scan(&n); err != nil || n != 1 {
		t.Errorf("prune_tombstones = %d, %v; want 1", n, err)
	}
	if tb := f.tombstones(); tb != `{"id": 2}@n1 {"id": 3}@n1` {
		t.Errorf("tombstones left: %q", tb)
	}
	if err := f.conn.QueryRow(ctx, "SELECT pgmesh.prune_conflict_log('24 hours')").Scan(&n); err != nil || n != 1 {
		t.Errorf("prune_conflict_log = %d, %v; want 1", n, err)
	}
	// A local delete: its tombstone gets the commit time of the deleting
	// transaction.
	f.exec("INSERT INTO item VALUES (9, 'z', 'Z')")
	f.exec("DELETE FROM item WHERE id = 9")
	var known bool
	if err := f.conn.QueryRow(ctx, `SELECT pgmesh.tombstone_time(deleted_at, xid) > now() - interval '1 minute' FROM pgmesh.tombstone WHERE key = '{"id": 9}'`).Scan(&known); err != nil || !known {
		t.Errorf("local tombstone time known: %v, %v", known, err)
	}
}

func TestQuery(t *testing.T) {
	a, b := newFixture(t), newFixture(t)
	t0 := time.Now().Add(-time.Hour)
	a.exec("INSERT INTO pgmesh.conflict_log (detected_at, table_name, kind, resolution, key) VALUES ($1, 'public.item', 'insert_exists', 'keep_local', '{\"id\": 1}'), ($1::timestamptz + interval '2 minutes', 'public.other', 'delete_missing', 'skip', NULL)", t0)
	b.exec("INSERT INTO pgmesh.conflict_log (detected_at, table_name, kind, resolution, local_row) VALUES ($1::timestamptz + interval '1 minute', 'public.item', 'update_missing', 'apply_remote', '{\"id\": 2}')", t0)
	b.exec("INSERT INTO pgmesh.conflict_log (detected_at, table_name, kind, resolution) VALUES ($1::timestamptz - interval '2 days', 'public.item', 'update_missing', 'apply_remote')", t0)
	cfg := &config.Config{Nodes: []config.Node{{Name: "n1", DSN: a.env.DSNs[0]}, {Name: "n2", DSN: b.env.DSNs[0]}}}
	summary := func(es []Entry) string {
		var parts []string
		for _, e := range es {
			parts = append(parts, e.Node+":"+e.Kind)
		}
		return strings.Join(parts, " ")
	}
	ctx := context.Background()
	for _, tc := range []struct {
		f    Filter
		want string
	}{
		{Filter{}, "n2:update_missing n1:insert_exists n2:update_missing n1:delete_missing"},
		{Filter{Since: 24 * time.Hour}, "n1:insert_exists n2:update_missing n1:delete_missing"},
		{Filter{Table: "item", Since: 24 * time.Hour}, "n1:insert_exists n2:update_missing"},
		{Filter{Table: "public.other"}, "n1:delete_missing"},
		{Filter{Limit: 2}, "n2:update_missing n1:delete_missing"},
	} {
		es, err := Query(ctx, cfg, tc.f)
		if err != nil {
			t.Fatal(err)
		}
		if got := summary(es); got != tc.want {
			t.Errorf("Query(%+v) = %s, want %s", tc.f, got, tc.want)
		}
	}
	es, err := Query(ctx, cfg, Filter{Limit: 1})
	if err != nil || len(es) != 1 || string(es[0].Key) != "null" && es[0].Key != nil {
		t.Errorf("entry: %+v, %v", es, err)
	}
	bad := &config.Config{Nodes: []config.Node{cfg.Nodes[0], {Name: "down", DSN: "host=127.0.0.1 port=1 dbname=x user=postgres connect_timeout=2"}}}
	es, err = Query(ctx, bad, Filter{})
	if err == nil || !strings.Contains(err.Error(), "node down") || len(es) != 2 {
		t.Errorf("Query with a node down: %d entries, %v; want the 2 of n1 and an error naming node down", len(es), err)
	}
}
