package apply

import (
	"context"
	"testing"

	"github.com/pgmesh/pgmesh/internal/origin"
)

// A transaction that aborts after its origin setup does not count as
// applied. PostgreSQL 16+ advances the session's origin to the LSN given to
// pg_replication_origin_xact_setup even when the transaction then aborts,
// as it does when the agent is killed while the flight that holds the
// COMMIT is being sent: the link's progress comes from
// pgmesh.apply_progress, which commits with the data, so the link resumes
// before that transaction and applies it. On PostgreSQL 15 the origin does
// not move; the test then checks the same reading without the trap.
func TestAbortAfterOriginSetupIsNotApplied(t *testing.T) {
	ctx := context.Background()
	e := newEnvN(t, 2)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	r := rel(1, "t", 'd', "*id", "v")
	rm := newRemote()
	a := e.applier(t, Options{})
	first := rm.apply(t, a, ins(r, "1", "a"))
	if err := a.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// What an apply session does for the next transaction, cut short after
	// the origin setup: the backend ends before COMMIT.
	b, c := rm.next()
	conn := pinned(t, e.dsn)
	for _, q := range []string{
		"SELECT pg_catalog.pg_replication_origin_session_setup('" + e.origins[0] + "')",
		"BEGIN",
		"INSERT INTO public.t VALUES (2, 'b')",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_current_xact_id(), pgmesh.note_applied($3, $1::pg_lsn), pg_catalog.pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz)",
		c.EndLSN.String(), b.CommitTime, e.origins[0]); err != nil {
		t.Fatal(err)
	}
	// Ended by a session of the same role (allowed without privileges).
	killer := pinned(t, e.dsn)
	var killed bool
	if err := killer.QueryRow(ctx, "SELECT pg_catalog.pg_terminate_backend($1, 60000)", int(conn.PgConn().PID())).Scan(&killed); err != nil || !killed {
		t.Fatalf("terminate the apply session: %v (terminated: %v)", err, killed)
	}

	var raw string
	if err := e.db.QueryRow(ctx, "SELECT coalesce(pg_catalog.pg_replication_origin_progress($1, false)::text, '')", e.origins[0]).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	t.Logf("origin %s after the abort: %s (applied: %s, aborted: %s)", e.origins[0], raw, first.EndLSN, c.EndLSN)
	got, err := origin.Progress(ctx, e.db, e.origin, false)
	if err != nil {
		t.Fatal(err)
	}
	if got != first.EndLSN {
		t.Fatalf("link progress after a transaction aborted past its origin setup: %s, want %s (the last committed)", got, first.EndLSN)
	}

	// A new Applier resumes there and applies the transaction.
	a = e.applier(t, Options{})
	if p, err := a.Progress(ctx); err != nil || p != first.EndLSN {
		t.Fatalf("Applier progress %s (%v), want %s", p, err, first.EndLSN)
	}
	if err := a.Begin(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := a.Change(ctx, ins(r, "2", "b")); err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := a.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.rows(t, "SELECT id::text FROM t ORDER BY id"); len(got) != 2 {
		t.Errorf("rows %q, want 1 and 2: the aborted transaction was skipped", got)
	}
}

// A wait for another session's transaction (apply_committed) goes on only
// once that transaction's changes are visible: it reads the transaction's
// row of pgmesh.apply_progress, never the origin's progress, which moves
// when the commit record is written, before the changes are visible (a
// waiter that went on then committed before its predecessor was visible:
// apply's TestParallelDeadlockAcrossLinks under load), and on PostgreSQL
// 16+ also when the transaction aborts after its origin setup, which this
// test does.
func TestCommittedMeansVisible(t *testing.T) {
	ctx := context.Background()
	e := newEnvN(t, 2)
	o := e.origins[1]
	conn := pinned(t, e.dsn)
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_session_setup($1)", o); err != nil {
		t.Fatal(err)
	}
	committed := func() bool {
		t.Helper()
		var ok bool
		if err := e.db.QueryRow(ctx, "SELECT pgmesh.apply_committed($1, '0/5000')", o).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	end := func(finish string) {
		t.Helper()
		for _, q := range []string{"BEGIN",
			"SELECT pg_catalog.pg_current_xact_id(), pgmesh.note_applied('" + o + "', '0/5000'), pg_catalog.pg_replication_origin_xact_setup('0/5000', now())",
			finish} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	end("ROLLBACK")
	var raw string
	if err := e.db.QueryRow(ctx, "SELECT coalesce(pg_catalog.pg_replication_origin_progress($1, false)::text, '')", o).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	t.Logf("origin %s after the abort: %q", o, raw)
	if committed() {
		t.Errorf("a transaction that aborted after its origin setup counts as committed")
	}
	end("COMMIT")
	if !committed() {
		t.Errorf("a committed transaction does not count as committed")
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_session_reset()"); err != nil {
		t.Fatal(err)
	}
}
