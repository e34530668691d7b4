package conflict

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Two links apply changes to the same absent key at once: a delete that
// finds no row (n1, newer) and an older update of the key (n2). There is no
// row to lock, so only the fallback's advisory lock on (table, key) makes
// the update wait for the delete's transaction and then see its tombstone:
// without it, the update would insert the row after the newer delete.
func TestFallbackLocksAbsentKey(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	now := time.Now().Truncate(time.Microsecond)

	type result struct {
		v   verdict
		err error
	}
	upd := make(chan result, 1)
	var del verdict
	err := f.session("n1", now, func(ctx context.Context, conn *pgx.Conn) error {
		params := [][]byte{[]byte(now.Format(time.RFC3339Nano)), []byte("n1"), []byte(fmt.Sprintf("0/%X", f.lsn.Load())), []byte("1")}
		res := execStatement(ctx, conn.PgConn(), DeleteSQL(tbl), params)
		if res.Err != nil {
			return res.Err
		}
		del = verdict{string(res.Rows[0][0]), string(res.Rows[0][1])}
		// The delete's transaction is open and holds the key: start the
		// update and let the delete commit once the update waits for it
		// (or, without the lock, has finished: then the check below fails).
		go func() {
			v, err := f.apply("n2", now.Add(-time.Hour), UpdateSQL(tbl, tbl.Columns), vals(1, 1, "a", "R", 0)...)
			upd <- result{v, err}
		}()
		for {
			var waiting bool
			if err := f.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting); err != nil {
				return err
			}
			if waiting {
				return nil
			}
			select {
			case r := <-upd:
				upd <- r
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	if err != nil {
		t.Fatalf("delete as n1: %v", err)
	}
	r := <-upd
	if r.err != nil {
		t.Fatalf("update as n2: %v", r.err)
	}
	if want := (verdict{DeleteMissing, Skip}); del != want {
		t.Errorf("delete: got %v, want %v", del, want)
	}
	if want := (verdict{UpdateDeleted, KeepLocal}); r.v != want {
		t.Errorf("update: got %v, want %v", r.v, want)
	}
	if got := f.rows(); got != "" {
		t.Errorf("rows: got %q, want none (the newer delete wins)", got)
	}
	if got, want := f.tombstones(), `{"id": 1}@n1`; got != want {
		t.Errorf("tombstones: got %q, want %q", got, want)
	}
}

// A local session deletes the row while a remote change of it, older than
// the delete and concurrent with the row's last write, is being applied:
// the apply statement waits for the row lock, then finds the row gone. Its
// snapshot predates the delete and cannot see the tombstone, so it must not
// decide on it (it would resurrect the row as if it had never existed); it
// runs again on a new snapshot and the newer delete wins.
func TestConcurrentLocalDelete(t *testing.T) {
	tests := []struct {
		name string
		sql  func(Table) string
		vals []*string
		want verdict
	}{
		{"update", func(t Table) string { return UpdateSQL(t, t.Columns) }, vals(1, 1, "a", "R", 0), verdict{UpdateDeleted, KeepLocal}},
		{"insert", InsertSQL, vals(1, "a", "R", 0), verdict{InsertDeleted, KeepLocal}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, itemDDL)
			tbl := f.table("item", nil)
			f.exec("INSERT INTO item VALUES (1, 'a', 'L', 0)")
			ctx := context.Background()
			local := f.env.Conn(t, 0)
			tx, err := local.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
			if _, err := tx.Exec(ctx, "DELETE FROM item WHERE id = 1"); err != nil {
				t.Fatal(err)
			}
			type result struct {
				v   verdict
				err error
			}
			done := make(chan result, 1)
			go func() {
				v, err := f.apply("n2", time.Now().Add(-time.Hour), tc.sql(tbl), tc.vals...)
				done <- result{v, err}
			}()
			// Commit the delete once the apply statement waits for it (or
			// has finished without waiting: then the checks below fail).
			for waiting := false; !waiting; {
				if err := f.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted)`).Scan(&waiting); err != nil {
					t.Fatal(err)
				}
				select {
				case r := <-done:
					done <- r
					waiting = true
				case <-time.After(10 * time.Millisecond):
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("apply as n2: %v", r.err)
			}
			if r.v != tc.want {
				t.Errorf("verdict: got %v, want %v", r.v, tc.want)
			}
			if got := f.rows(); got != "" {
				t.Errorf("rows: got %q, want none (the newer local delete wins)", got)
			}
			if got, want := f.tombstones(), `{"id": 1}@n3`; got != want {
				t.Errorf("tombstones: got %q, want %q", got, want)
			}
		})
	}
}

// Two links apply, at once, the insert of a key (n2) and its delete by a
// node that had seen the insert (n1), while the key is absent here: the
// delete finds no row (the insert has not committed) and leaves only a
// tombstone, which the insert, not committed either, cannot see. Had both
// committed, this node would keep a row that every other node deleted,
// and a later local write over it would reach the peers as if it had seen
// the delete: the delete lost without a trace anywhere. Whichever comes
// first, the second must wait for it and then decide on what it wrote: the
// delete removes the inserted row; the insert, meeting the delete's
// tombstone, is superseded. Neither is a conflict.
func TestAbsentKeyInsertAndDelete(t *testing.T) {
	now := time.Now().Truncate(time.Microsecond)
	insAt, delAt := now.Add(-2*time.Second), now.Add(-time.Second)
	for _, first := range []string{"insert", "delete"} {
		t.Run(first+" first", func(t *testing.T) {
			f := newFixture(t, itemDDL)
			tbl := f.table("item", nil)
			// n1 had applied n2's insert when it deleted; this node has
			// applied nothing of n2 yet: the row is in flight.
			f.exec(SeenSQL(), "n1", "n2", insAt)
			ins := func(ctx context.Context, conn *pgx.Conn) (verdict, error) {
				return f.exec1(ctx, conn, InsertSQL(tbl), insAt, "n2", vals(1, "a", "R", 0)...)
			}
			del := func(ctx context.Context, conn *pgx.Conn) (verdict, error) {
				return f.exec1(ctx, conn, DeleteSQL(tbl), delAt, "n1", vals(1)...)
			}
			type op struct {
				what, node string
				at         time.Time
				run        func(context.Context, *pgx.Conn) (verdict, error)
			}
			a, b := op{"insert", "n2", insAt, ins}, op{"delete", "n1", delAt, del}
			if first == "delete" {
				a, b = b, a
			}
			va, vb, waited := f.interleave(a.node, a.at, a.run, b.node, b.at, b.run)
			if !waited {
				t.Errorf("the %s did not wait for the first transaction", b.what)
			}
			if va != (verdict{}) || vb != (verdict{}) {
				t.Errorf("verdicts: %s first %v, then %v; want no conflict", first, va, vb)
			}
			if got := f.rows(); got != "" {
				t.Errorf("rows: got %q, want none (n1 deleted the row after it had seen the insert)", got)
			}
			if got, want := f.tombstones(), `{"id": 1}@n1`; got != want {
				t.Errorf("tombstones: got %q, want %q", got, want)
			}
			if got := f.logRows(); len(got) > 0 {
				t.Errorf("conflict log: got %v, want none", got)
			}
		})
	}
}

// interleave runs a's statement in a transaction of node aNode and, while
// that transaction is open, b's in another of bNode; it commits a's once
// b's waits for a lock (or has finished without waiting), then b's
// finishes. It returns both verdicts and whether b's waited.
func (f *fixture) interleave(aNode string, aAt time.Time, a func(context.Context, *pgx.Conn) (verdict, error),
	bNode string, bAt time.Time, b func(context.Context, *pgx.Conn) (verdict, error)) (verdict, verdict, bool) {
	f.t.Helper()
	type result struct {
		v   verdict
		err error
	}
	done := make(chan result, 1)
	var va verdict
	var waited bool
	err := f.session(aNode, aAt, func(ctx context.Context, conn *pgx.Conn) error {
		var err error
		if va, err = a(ctx, conn); err != nil {
			return err
		}
		go func() {
			var v verdict
			err := f.session(bNode, bAt, func(ctx context.Context, conn *pgx.Conn) error {
				var err error
				v, err = b(ctx, conn)
				return err
			})
			done <- result{v, err}
		}()
		for {
			if err := f.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted)`).Scan(&waited); err != nil {
				return err
			}
			if waited {
				return nil
			}
			select {
			case r := <-done:
				done <- r
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	if err != nil {
		f.t.Fatalf("first transaction, as %s: %v", aNode, err)
	}
	r := <-done
	if r.err != nil {
		f.t.Fatalf("second transaction, as %s: %v", bNode, r.err)
	}
	return va, r.v, waited
}

// A delete of an absent key may commit after a fast insert's statement
// took its snapshot and before the insert takes the key's gate: the gate
// is free by then, and the statement's snapshot cannot see the delete's
// tombstone. pgmesh.insert_clear must look for it on a snapshot of its
// own, taken after the gate. The pause between the two is made here with
// an advisory lock that the statement waits for before the call.
func TestInsertClearSeesLaterTombstone(t *testing.T) {
	f := newFixture(t, itemDDL)
	ctx := context.Background()
	f.exec("SELECT pg_advisory_lock(7)")
	type result struct {
		clear, statementSeesNone bool
		err                      error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		conn, err := pgx.Connect(ctx, f.env.DSNs[0])
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close(ctx)
		r.err = conn.QueryRow(ctx, `
SELECT pgmesh.insert_clear('public.item', '{"id": 1}', 'n2'),
       NOT EXISTS (SELECT FROM pgmesh.tombstone z WHERE z.table_name = 'public.item' AND z.key = '{"id": 1}')
  FROM (SELECT pg_advisory_xact_lock(7) OFFSET 0) paused`).Scan(&r.clear, &r.statementSeesNone)
		done <- r
	}()
	for waiting := false; !waiting; {
		if err := f.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// n1's delete of the absent key commits while the insert is paused.
	f.writeAs("n1", time.Now(), `INSERT INTO pgmesh.tombstone (table_name, key, deleted_at, node) VALUES ('public.item', '{"id": 1}', now(), 'n1')`)
	f.exec("SELECT pg_advisory_unlock(7)")
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.statementSeesNone {
		t.Fatal("the statement's own snapshot saw the tombstone: the pause did not come between its snapshot and the call")
	}
	if r.clear {
		t.Error("insert_clear: true, want false (n1's tombstone committed before the gate was taken)")
	}
}

// A local transaction writes the unique value of a remote insert while the
// insert is applied: the insert must wait for it and then decide on the
// committed outcome as the full statement would — a holder that commits
// is a unique conflict (the older remote row loses), a holder deleted
// meanwhile leaves the value free — and never fail the remote transaction
// on a unique violation.
func TestFastInsertWaitsForUniqueHolder(t *testing.T) {
	tests := []struct {
		name  string
		setup string // committed before, by the local node
		local string // left open while the remote insert runs
		want  verdict
		rows  string
	}{
		{"holder inserted", "", "INSERT INTO item VALUES (2, 'a', 'L', 0)", verdict{UniqueConflict, KeepLocal}, "2:a:L:0"},
		{"holder deleted", "INSERT INTO item VALUES (2, 'a', 'L', 0)", "DELETE FROM item WHERE id = 2", verdict{}, "1:a:R:0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, itemDDL)
			tbl := f.table("item", nil)
			if tc.setup != "" {
				f.exec(tc.setup)
			}
			ctx := context.Background()
			local := f.env.Conn(t, 0)
			tx, err := local.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
			if _, err := tx.Exec(ctx, tc.local); err != nil {
				t.Fatal(err)
			}
			type result struct {
				v   verdict
				err error
			}
			done := make(chan result, 1)
			go func() {
				v, err := f.apply("n2", time.Now().Add(-time.Hour), InsertSQL(tbl), vals(1, "a", "R", 0)...)
				done <- result{v, err}
			}()
			// Commit once the insert waits for the local transaction (or
			// has finished without waiting: then the checks below fail).
			for waiting := false; !waiting; {
				if err := f.conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted)`).Scan(&waiting); err != nil {
					t.Fatal(err)
				}
				select {
				case r := <-done:
					done <- r
					waiting = true
				case <-time.After(10 * time.Millisecond):
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("apply as n2: %v", r.err)
			}
			if r.v != tc.want {
				t.Errorf("verdict: got %v, want %v", r.v, tc.want)
			}
			if got := f.rows(); got != tc.rows {
				t.Errorf("rows: got %q, want %q", got, tc.rows)
			}
		})
	}
}
