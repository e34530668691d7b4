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
		res := conn.PgConn().ExecParams(ctx, DeleteSQL(tbl), params, nil, nil, nil).Read()
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
