package conflict

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
)

// A remote TRUNCATE removes the rows older than itself and keeps the newer
// ones; a removed row its node had not seen is logged; it leaves the
// table's tombstone, which later changes older than the truncate meet (and
// lose to), while newer ones apply as if there had been no truncate.
func TestTruncate(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	now := time.Now().Truncate(time.Microsecond)
	const hour = time.Hour
	f.writeAs("n1", now.Add(-3*hour), "INSERT INTO item VALUES (1, 'a', 'n1 old')")
	f.writeAs("n2", now.Add(-2*hour), "INSERT INTO item VALUES (2, 'b', 'n2 unseen')")
	f.writeAs("n2", now.Add(hour), "INSERT INTO item VALUES (3, 'c', 'n2 newer')")
	// n1 had applied n2's changes up to 2h30 ago: not row 2.
	f.exec(SeenSQL(), "n1", "n2", now.Add(-150*time.Minute))

	if got := f.truncate("n1", now.Add(-hour), TruncateSQL(tbl)); got != [2]int64{2, 1} {
		t.Errorf("truncate removed, logged %v; want [2 1]", got)
	}
	if r := f.rows(); r != "3:c:n2 newer:0" {
		t.Errorf("rows after the truncate %q, want only the newer row 3", r)
	}
	if l := f.logRows(); !slices.Equal(l, []string{"truncate_origin_differs/apply_remote/n2/n1/n2 unseen/-"}) {
		t.Errorf("log %v, want the unseen row 2 as truncate_origin_differs", l)
	}
	if tb := f.tombstones(); tb != "{}@n1" {
		t.Errorf("tombstones %q, want the table's ({}) by n1", tb)
	}

	insert := InsertSQL(tbl)
	update := UpdateSQL(tbl, tbl.Columns)
	steps := []struct {
		name string
		node string
		at   time.Duration
		sql  string
		args []any
		want verdict
		log  string // the log row it adds, "" none
	}{
		{"an older insert meets the truncate", "n2", -90 * time.Minute, insert, []any{4, "d", "late", 0},
			verdict{InsertDeleted, KeepLocal}, "insert_deleted/keep_local/n1/n2/-/late"},
		{"an older update of a removed row meets the truncate", "n2", -90 * time.Minute, update, []any{2, 2, "b", "late", 0},
			verdict{UpdateDeleted, KeepLocal}, "update_deleted/keep_local/n1/n2/-/late"},
		{"a newer insert is no conflict", "n2", 2 * hour, insert, []any{5, "e", "new", 0}, verdict{}, ""},
		{"a newer update of a removed row inserts it", "n2", 2 * hour, update, []any{1, 1, "a", "back", 0},
			verdict{UpdateMissing, ApplyRemote}, "update_missing/apply_remote/-/n2/-/back"},
	}
	var wantLog []string
	wantLog = append(wantLog, f.logRows()...)
	for _, s := range steps {
		if v := f.mustApply(s.node, now.Add(s.at), s.sql, vals(s.args...)...); v != s.want {
			t.Errorf("%s: verdict %+v, want %+v", s.name, v, s.want)
		}
		if s.log != "" {
			wantLog = append(wantLog, s.log)
		}
		if l := f.logRows(); !slices.Equal(l, wantLog) {
			t.Errorf("%s: log\n got %s\nwant %s", s.name, joinLog(l), joinLog(wantLog))
			wantLog = l
		}
	}
	if r := f.rows(); r != "1:a:back:0 3:c:n2 newer:0 5:e:new:0" {
		t.Errorf("rows %q", r)
	}

	// A newer truncate replaces the tombstone; an older one does not.
	f.truncate("n2", now.Add(3*hour), TruncateSQL(tbl))
	f.truncate("n1", now.Add(-5*hour), TruncateSQL(tbl))
	if r, tb := f.rows(), f.tombstones(); r != "" || tb != "{}@n2" {
		t.Errorf("after a newer truncate of n2: rows %q (want none), tombstones %q (want {}@n2)", r, tb)
	}
}

// A TRUNCATE in a local session (as the application role) records the
// table's tombstone; remote changes older than it lose, newer ones apply.
// A table without key has the same rule.
func TestLocalTruncate(t *testing.T) {
	f := newFixture(t, itemDDL, "CREATE TABLE ev (a int, b text)", "ALTER TABLE ev REPLICA IDENTITY FULL")
	app := f.env.App(t, 0)
	ctx := context.Background()
	for _, q := range []string{"INSERT INTO public.item VALUES (1, 'a', 'L')", "INSERT INTO public.ev VALUES (1, 'L')",
		"TRUNCATE public.item", "TRUNCATE public.ev"} {
		if _, err := app.Exec(ctx, q); err != nil {
			t.Fatalf("as the application role: %s: %v", q, err)
		}
	}
	var got string
	if err := f.conn.QueryRow(ctx, `SELECT string_agg(table_name || ' ' || key::text || '@' || node || ' ' || (xid IS NOT NULL)::text, ', ' ORDER BY table_name)
		FROM pgmesh.tombstone`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "public.ev {}@n3 true, public.item {}@n3 true" {
		t.Errorf("tombstones %q, want the two tables' with their transaction", got)
	}
	now := time.Now()
	item, ev := f.table("item", nil), f.table("ev", nil)
	cases := []struct {
		name string
		at   time.Duration
		sql  string
		args []any
		want verdict
	}{
		{"older insert", -time.Hour, InsertSQL(item), []any{2, "b", "R", 0}, verdict{InsertDeleted, KeepLocal}},
		{"newer insert", time.Hour, InsertSQL(item), []any{3, "c", "R", 0}, verdict{}},
		{"older insert, no key", -time.Hour, InsertSQL(ev), []any{2, "R"}, verdict{InsertDeleted, KeepLocal}},
		{"newer insert, no key", time.Hour, InsertSQL(ev), []any{3, "R"}, verdict{}},
	}
	for _, c := range cases {
		if v := f.mustApply("n1", now.Add(c.at), c.sql, vals(c.args...)...); v != c.want {
			t.Errorf("%s: verdict %+v, want %+v", c.name, v, c.want)
		}
	}
	if r := f.rows(); r != "3:c:R:0" {
		t.Errorf("item rows %q, want only the newer insert", r)
	}
	if err := f.conn.QueryRow(ctx, "SELECT string_agg(a::text, ' ' ORDER BY a) FROM ev").Scan(&got); err != nil || got != "3" {
		t.Errorf("ev rows %q (%v), want only the newer insert", got, err)
	}
}

// Under policy error a truncate that would remove a row its node had not
// seen stops the link; one that removes only seen rows applies.
func TestTruncatePolicyError(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", policy(config.PolicyError))
	now := time.Now()
	f.writeAs("n1", now.Add(-2*time.Hour), "INSERT INTO item VALUES (1, 'a', 'seen')")
	f.truncate("n1", now.Add(-time.Hour), TruncateSQL(tbl))
	f.writeAs("n2", now.Add(-90*time.Minute), "INSERT INTO item VALUES (2, 'b', 'unseen')")
	err := f.session("n1", now, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, TruncateSQL(tbl), now.Format(time.RFC3339Nano), "n1", "0/1")
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "conflict truncate_origin_differs on table public.item") {
		t.Errorf("truncate over an unseen row under policy error: %v, want the conflict error", err)
	}
	if r := f.rows(); r != "2:b:unseen:0" {
		t.Errorf("rows %q, want the unseen row kept", r)
	}
}

// truncate applies a truncate statement as node at ts and returns (rows
// removed, rows logged).
func (f *fixture) truncate(node string, ts time.Time, sql string) [2]int64 {
	f.t.Helper()
	var out [2]int64
	err := f.session(node, ts, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql, ts.Format(time.RFC3339Nano), node, "0/1").Scan(&out[0], &out[1])
	})
	if err != nil {
		f.t.Fatalf("truncate as %s: %v", node, err)
	}
	return out
}

// A local UPDATE that moves a row to another key leaves the old key's
// tombstone (as the application role); one that keeps the key, even when
// it sets it, leaves none. A concurrent remote update of the old key older
// than the move then meets the tombstone instead of bringing the key back.
func TestLocalKeyChange(t *testing.T) {
	f := newFixture(t, itemDDL, "CREATE TABLE line (o int, n int, sku text, PRIMARY KEY (o, n))")
	app := f.env.App(t, 0)
	ctx := context.Background()
	now := time.Now()
	f.writeAs("n1", now.Add(-2*time.Hour), "INSERT INTO item VALUES (1, 'a', 'A'), (2, 'b', 'B')")
	for _, q := range []string{
		"UPDATE public.item SET id = 7 WHERE id = 1",
		"UPDATE public.item SET id = 2, name = 'kept' WHERE id = 2",
		"INSERT INTO public.line VALUES (1, 1, 'x'), (1, 2, 'y')",
		"UPDATE public.line SET n = 3 WHERE n = 1",
		"UPDATE public.line SET sku = 'z'",
	} {
		if _, err := app.Exec(ctx, q); err != nil {
			t.Fatalf("as the application role: %s: %v", q, err)
		}
	}
	if tb := f.tombstones(); tb != `{"id": 1}@n3 {"n": 1, "o": 1}@n3` {
		t.Errorf("tombstones %q, want the old keys of the two moves only", tb)
	}
	tbl := f.table("item", nil)
	if v := f.mustApply("n2", now.Add(-time.Hour), UpdateSQL(tbl, tbl.Columns), vals(1, 1, "a", "R", 0)...); v != (verdict{UpdateDeleted, KeepLocal}) {
		t.Errorf("older remote update of the moved key: verdict %+v, want update_deleted/keep_local", v)
	}
	if r := f.rows(); r != "2:b:kept:0 7:a:A:0" {
		t.Errorf("rows %q: the old key must stay gone", r)
	}
}

// The fast inserts of a remote transaction decide once per table whether
// the table's truncation orders after them (pgmesh.insert_clear). A remote
// truncate applied meanwhile by another link waits for the inserting
// transaction (the table lock it takes first), so none can commit between
// that decision and a later insert of the transaction: the truncate, newer,
// then removes every row the transaction inserted. The decision does not
// outlive its transaction: the next one, even of the same commit time and
// node, meets the truncate.
func TestTruncateWhileInserting(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	ctx := context.Background()
	now := time.Now().Truncate(time.Microsecond)
	insAt, truncAt := now.Add(-2*time.Hour), now.Add(-time.Hour)
	conn, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	defer conn.Exec(ctx, "SELECT pg_replication_origin_session_reset()") //nolint:errcheck // released on close anyway
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec("SET session_replication_role = replica")
	exec("SELECT pg_replication_origin_session_setup('pgmesh_n1')")
	insert := func(id int) verdict {
		t.Helper()
		params := [][]byte{[]byte(insAt.Format(time.RFC3339Nano)), []byte("n1"), []byte("0/10"),
			[]byte(fmt.Sprint(id)), []byte(fmt.Sprint("e", id)), []byte("R"), []byte("0")}
		res := execStatement(ctx, conn.PgConn(), InsertSQL(tbl), params)
		if res.Err != nil {
			t.Fatalf("insert %d: %v", id, res.Err)
		}
		return verdict{string(res.Rows[0][0]), string(res.Rows[0][1])}
	}

	exec("BEGIN")
	exec("SELECT pg_replication_origin_xact_setup('0/10', $1)", insAt)
	if v := insert(1); v != (verdict{}) {
		t.Fatalf("insert 1: %+v, want no conflict", v)
	}
	truncated := make(chan error, 1)
	go func() {
		truncated <- f.session("n2", truncAt, func(ctx context.Context, c *pgx.Conn) error {
			if _, err := c.Exec(ctx, TruncateLockSQL(tbl)); err != nil {
				return err
			}
			_, err := c.Exec(ctx, TruncateSQL(tbl), truncAt.Format(time.RFC3339Nano), "n2", "0/1")
			return err
		})
	}()
	// Go on once the truncate waits for this transaction (or has finished
	// without waiting: then the checks below fail).
	for waiting := false; !waiting; {
		if err := f.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'relation' AND NOT granted)`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-truncated:
			truncated <- err
			waiting = true
		case <-time.After(10 * time.Millisecond):
		}
	}
	if v := insert(2); v != (verdict{}) {
		t.Fatalf("insert 2: %+v, want no conflict", v)
	}
	exec("COMMIT")
	if err := <-truncated; err != nil {
		t.Fatalf("truncate as n2: %v", err)
	}
	if r, tb := f.rows(), f.tombstones(); r != "" || tb != "{}@n2" {
		t.Errorf("after the newer truncate: rows %q (want none), tombstones %q (want {}@n2)", r, tb)
	}

	exec("BEGIN")
	exec("SELECT pg_replication_origin_xact_setup('0/20', $1)", insAt)
	if v, want := insert(3), (verdict{InsertDeleted, KeepLocal}); v != want {
		t.Errorf("insert 3, older than the truncate, in the next transaction: %+v, want %+v", v, want)
	}
	exec("COMMIT")
	if r := f.rows(); r != "" {
		t.Errorf("rows %q, want none", r)
	}
}
