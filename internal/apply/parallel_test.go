package apply

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// originProgress returns the progress of each of the env's origins.
func (e *testEnv) originProgress(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, o := range e.origins {
		var s *string
		if err := e.db.QueryRow(context.Background(), "SELECT pg_replication_origin_progress($1, false)::text", o).Scan(&s); err != nil {
			t.Fatal(err)
		}
		if s == nil {
			out = append(out, "")
		} else {
			out = append(out, *s)
		}
	}
	return out
}

// Transactions run on several sessions commit in the upstream's order: the
// downstream's own WAL holds their commit records in that order (as its
// logical decoding shows, each with the remote end LSN its origin
// recorded). Big transactions alternate with small ones, which would
// otherwise commit first.
func TestParallelCommitOrder(t *testing.T) {
	e := newEnvN(t, 3)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	e.exec(t, `CREATE PUBLICATION order_test FOR TABLE t`)
	slot := e.origin + "_order"
	e.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	var ends []uint64
	id := 0
	for i := range 24 {
		n := 1
		if i%3 == 0 {
			n = 400
		}
		var cs []*stream.Change
		for range n {
			id++
			cs = append(cs, ins(tr, fmt.Sprint(id), "1"))
		}
		ends = append(ends, uint64(r.feed(t, a, cs...).EndLSN))
	}
	if err := a.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, d := range e.peekSlot(t, slot, "order_test") {
		if d.kind == 'O' {
			// ORIGIN: 'O', the origin's LSN (the remote end), its name.
			got = append(got, binary.BigEndian.Uint64(d.data[1:9]))
		}
	}
	if !slices.Equal(got, ends) {
		t.Errorf("remote ends in the downstream's commit order:\n%x\nwant the upstream's:\n%x", got, ends)
	}
	for i, p := range e.originProgress(t) {
		if p == "" {
			t.Errorf("origin %s never committed: the transactions did not spread over the sessions", e.origins[i])
		}
	}
	if rows := e.rows(t, "SELECT count(*) FROM t"); !slices.Equal(rows, []string{fmt.Sprint(id)}) {
		t.Errorf("rows %q, want %d", rows, id)
	}
}

// A transaction that depends on an earlier one running on another session
// waits for it: the later one's change sees the earlier one's result, as
// in a serial apply. The earlier transaction first inserts into a table
// whose trigger sleeps, so that a later transaction that did not wait would
// run first and meet a conflict (logged), an error (a trigger that checks
// what a serial apply guarantees) or a deadlock (retried).
func TestParallelDependencies(t *testing.T) {
	type tc struct {
		name    string
		ddl     []string
		tables  map[string]*stream.Relation
		first   func(map[string]*stream.Relation) []*stream.Change // after the slow insert
		second  func(map[string]*stream.Relation) []*stream.Change
		query   string
		want    []string
		retries bool // a deadlock with a local transaction may be retried
	}
	// Apply sessions pin search_path to pg_catalog: the functions name
	// their tables' schema, as functions that fire there must.
	parentCheck := `CREATE FUNCTION parent_exists() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM parent WHERE id = NEW.pid) THEN RAISE 'child % before its parent %', NEW.id, NEW.pid; END IF;
    RETURN NEW;
END $$`
	childCheck := `CREATE FUNCTION no_children() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
BEGIN
    IF EXISTS (SELECT FROM child WHERE pid = OLD.id) THEN RAISE 'parent % deleted before its children', OLD.id; END IF;
    RETURN OLD;
END $$`
	cases := []tc{
		{
			name:   "same key",
			ddl:    []string{`CREATE TABLE k (id int PRIMARY KEY, v text)`},
			tables: map[string]*stream.Relation{"k": rel(2, "k", 'd', "*id", "v")},
			first:  func(r map[string]*stream.Relation) []*stream.Change { return []*stream.Change{ins(r["k"], "1", "a")} },
			second: func(r map[string]*stream.Relation) []*stream.Change {
				return []*stream.Change{upd(r["k"], nil, "1", "b")}
			},
			query: "SELECT id, v FROM k", want: []string{"1|b"},
		},
		{
			name: "unique value moving to another row",
			ddl: []string{`CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE)`,
				`INSERT INTO u VALUES (1, 'x')`},
			tables: map[string]*stream.Relation{"u": rel(2, "u", 'd', "*id", "email")},
			first: func(r map[string]*stream.Relation) []*stream.Change {
				return []*stream.Change{upd(r["u"], nil, "1", "y")}
			},
			second: func(r map[string]*stream.Relation) []*stream.Change { return []*stream.Change{ins(r["u"], "2", "x")} },
			query:  "SELECT id, email FROM u ORDER BY id", want: []string{"1|y", "2|x"},
		},
		{
			name: "child after its parent",
			ddl: []string{`CREATE TABLE parent (id int PRIMARY KEY)`,
				`CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent)`,
				parentCheck,
				`CREATE TRIGGER parent_exists BEFORE INSERT ON child FOR EACH ROW EXECUTE FUNCTION parent_exists()`,
				`ALTER TABLE child ENABLE ALWAYS TRIGGER parent_exists`},
			tables: map[string]*stream.Relation{"parent": rel(2, "parent", 'd', "*id"), "child": rel(3, "child", 'd', "*id", "pid")},
			first: func(r map[string]*stream.Relation) []*stream.Change {
				return []*stream.Change{ins(r["parent"], "1")}
			},
			second: func(r map[string]*stream.Relation) []*stream.Change {
				return []*stream.Change{ins(r["child"], "10", "1")}
			},
			query: "SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)", want: []string{"1|1"},
		},
		{
			name: "parent after its children",
			ddl: []string{`CREATE TABLE parent (id int PRIMARY KEY)`,
				`CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent)`,
				`ALTER TABLE child REPLICA IDENTITY FULL`,
				`INSERT INTO parent VALUES (1)`, `INSERT INTO child VALUES (10, 1)`,
				childCheck,
				`CREATE TRIGGER no_children BEFORE DELETE ON parent FOR EACH ROW EXECUTE FUNCTION no_children()`,
				`ALTER TABLE parent ENABLE ALWAYS TRIGGER no_children`},
			tables: map[string]*stream.Relation{"parent": rel(2, "parent", 'd', "*id"), "child": rel(3, "child", 'f', "id", "pid")},
			first: func(r map[string]*stream.Relation) []*stream.Change {
				return []*stream.Change{del(r["child"], "10", "1")}
			},
			second: func(r map[string]*stream.Relation) []*stream.Change { return []*stream.Change{del(r["parent"], "1")} },
			query:  "SELECT (SELECT count(*) FROM parent), (SELECT count(*) FROM child)", want: []string{"0|0"},
		},
		{
			name:   "table without a key",
			ddl:    []string{`CREATE TABLE kl (a int NOT NULL, b text NOT NULL)`, `ALTER TABLE kl REPLICA IDENTITY FULL`},
			tables: map[string]*stream.Relation{"kl": rel(2, "kl", 'f', "a", "b")},
			first:  func(r map[string]*stream.Relation) []*stream.Change { return []*stream.Change{ins(r["kl"], "1", "x")} },
			second: func(r map[string]*stream.Relation) []*stream.Change { return []*stream.Change{del(r["kl"], "1", "x")} },
			query:  "SELECT count(*) FROM kl", want: []string{"0"},
		},
		{
			name:   "truncate",
			ddl:    []string{`CREATE TABLE tr (id int PRIMARY KEY)`, `INSERT INTO tr VALUES (1), (2)`},
			tables: map[string]*stream.Relation{"tr": rel(2, "tr", 'd', "*id")},
			first: func(r map[string]*stream.Relation) []*stream.Change {
				return []*stream.Change{{Op: stream.Truncate, TruncateRels: []*stream.Relation{r["tr"]}}}
			},
			second: func(r map[string]*stream.Relation) []*stream.Change { return []*stream.Change{ins(r["tr"], "5")} },
			query:  "SELECT id FROM tr", want: []string{"5"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnvN(t, 2)
			e.exec(t, `CREATE TABLE slow (id int PRIMARY KEY)`)
			e.exec(t, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END$$`)
			e.exec(t, `CREATE TRIGGER slow BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slow()`)
			e.exec(t, `ALTER TABLE slow ENABLE ALWAYS TRIGGER slow`)
			for _, d := range c.ddl {
				e.exec(t, d)
			}
			// The upstream had seen the local rows, and its changes are
			// newer: no conflict in a serial apply.
			e.exec(t, `INSERT INTO pgmesh.peer_seen VALUES ($1, 'n2', now())`, e.origin)
			a := e.applier(t, Options{})
			// The second transaction runs on the other session and waits.
			a.noAffinity = true
			r := newRemote()
			r.ts = r.ts.AddDate(100, 0, 0)
			first := append([]*stream.Change{ins(rel(1, "slow", 'd', "*id"), "1")}, c.first(c.tables)...)
			r.feed(t, a, first...)
			r.feed(t, a, c.second(c.tables)...)
			if err := a.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := e.rows(t, c.query); !slices.Equal(got, c.want) {
				t.Errorf("rows %q, want %q", got, c.want)
			}
			if got := e.rows(t, "SELECT kind FROM pgmesh.conflict_log"); len(got) > 0 {
				t.Errorf("conflicts logged %q: the second transaction ran before the first", got)
			}
			if n := a.Stats().Retries; n > 0 {
				t.Errorf("%d retries: the second transaction ran before the first and deadlocked with it", n)
			}
			for i, p := range e.originProgress(t) {
				if p == "" {
					t.Errorf("origin %s never committed: both transactions ran on one session", e.origins[i])
				}
			}
		})
	}
}

// A deadlock between a remote transaction and a local one is retried on
// the spot: the Applier goes on, the remote transaction is applied once,
// the local one commits too.
func TestApplyRetriesDeadlock(t *testing.T) {
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			e := newEnvN(t, workers)
			ctx := context.Background()
			e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)`)
			e.exec(t, `INSERT INTO t VALUES (1, 0), (2, 0)`)
			// The upstream had seen the local rows: its updates apply
			// without a conflict.
			e.exec(t, `INSERT INTO pgmesh.peer_seen VALUES ($1, 'n2', now())`, e.origin)
			a := e.applier(t, Options{})
			r := newRemote()
			r.ts = r.ts.AddDate(100, 0, 0)
			tr := rel(1, "t", 'd', "*id", "n")

			local := connect(t, e.dsn)
			tx, err := local.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			if _, err := tx.Exec(ctx, `UPDATE t SET n = n + 10 WHERE id = 2`); err != nil {
				t.Fatal(err)
			}
			// The remote transaction locks row 1, then waits for row 2.
			r.feed(t, a, upd(tr, nil, "1", "1"), upd(tr, nil, "2", "1"))
			if err := a.Idle(ctx); err != nil {
				t.Fatal(err)
			}
			waitForLockWait(t, e)
			// The local one now waits for row 1: a deadlock, which the
			// remote transaction, waiting longer, is normally the first to
			// notice (on a slow machine the local one may be the victim:
			// then it runs again, as a client would).
			_, err = tx.Exec(ctx, `UPDATE t SET n = n + 10 WHERE id = 1`)
			localVictim := false
			if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "40P01" {
				localVictim = true
				tx.Rollback(ctx) //nolint:errcheck // aborted anyway
				if err := a.Wait(ctx); err != nil {
					t.Fatalf("the applier stopped: %v", err)
				}
				if tx, err = local.Begin(ctx); err == nil {
					_, err = tx.Exec(ctx, `UPDATE t SET n = n + 10 WHERE id IN (1, 2)`)
				}
			}
			if err != nil {
				t.Fatalf("local transaction: %v", err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.Wait(ctx); err != nil {
				t.Fatalf("the applier stopped: %v", err)
			}
			want := []string{"1|1", "2|1"} // the remote values, newer, over the local ones
			if localVictim {
				want = []string{"1|11", "2|11"} // the local transaction ran again after it
			}
			if got := e.rows(t, "SELECT id, n FROM t ORDER BY id"); !slices.Equal(got, want) {
				t.Errorf("rows %q, want %q", got, want)
			}
			// The retried transaction may lock row 1 again before the local
			// one, woken by the rollback, takes it: a second deadlock, and
			// a second retry (seen on a loaded machine).
			if st := a.Stats(); st.Txns != 1 || (st.Retries == 0 && !localVictim) {
				t.Errorf("%d retries, %d transactions; want at least 1, and 1", st.Retries, st.Txns)
			}
			// It goes on applying.
			r.apply(t, a, upd(tr, nil, "1", "2"))
			if got := e.rows(t, "SELECT n FROM t WHERE id = 1"); !slices.Equal(got, []string{"2"}) {
				t.Errorf("after the retry: n = %q, want 2", got)
			}
		})
	}
}

// waitForLockWait waits until a session of the test database waits for a
// lock.
func waitForLockWait(t *testing.T, e *testEnv) {
	t.Helper()
	for {
		var waiting int
		if err := e.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return
		}
	}
}

// An error that is not a deadlock, serialization failure or lock timeout
// stops the Applier, with every worker: nothing after the failed
// transaction commits, on any session, and what did commit is a prefix of
// the stream that the link's progress ends.
func TestParallelFailureStops(t *testing.T) {
	e := newEnvN(t, 2)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	var commits []stream.Commit
	for i := 1; i <= 6; i++ {
		v := fmt.Sprint(i)
		if i == 3 {
			v = "∅"
		}
		commits = append(commits, r.feed(t, a, ins(tr, fmt.Sprint(i), v)))
	}
	err := a.Wait(context.Background())
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23502" || !strings.Contains(err.Error(), commits[2].CommitLSN.String()) {
		t.Fatalf("error %v, want the not-null violation of transaction 3", err)
	}
	if err := a.Close(context.Background()); err != nil {
		t.Errorf("Close after failure: %v", err)
	}
	// Transaction 1 ran before 3 on its session; 2 ran on the other one
	// and was stopped or had committed: the committed transactions are a
	// prefix.
	got := e.rows(t, "SELECT id FROM t ORDER BY id")
	if !slices.Equal(got, []string{"1"}) && !slices.Equal(got, []string{"1", "2"}) {
		t.Fatalf("rows %q, want transaction 1, or 1 and 2", got)
	}
	// The link resumes after the last of them: the greatest progress of
	// its origins, whichever holds it.
	if got, want := slices.Max(e.originProgress(t)), commits[len(got)-1].EndLSN.String(); got != want {
		t.Errorf("progress %s, want %s", got, want)
	}
}

// A big transaction of inserts into one table goes in multi-row statements
// with the same outcome as row by row: rows that meet a conflict are
// resolved and logged one by one, a key inserted twice in the transaction
// (deleted in between) and a unique value moving between rows are applied
// in order.
func TestApplyManyInserts(t *testing.T) {
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			e := newEnvN(t, workers)
			e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, email text UNIQUE, v text)`)
			// Newer than the remote rows, and not seen by the upstream.
			e.exec(t, `INSERT INTO t VALUES (100, 'local', 'L')`)
			a := e.applier(t, Options{})
			r := newRemote()
			tr := rel(1, "t", 'd', "*id", "email", "v")
			var cs []*stream.Change
			for i := 1; i <= 3000; i++ {
				cs = append(cs, ins(tr, fmt.Sprint(i), fmt.Sprint("e", i), "R"))
				if i == 1500 {
					// Row 5 leaves, and comes back with row 7's email
					// after row 7 gave it up.
					cs = append(cs, del(tr, "5", "∅", "∅"), upd(tr, nil, "7", "x7", "R"), ins(tr, "5", "e7", "again"))
				}
			}
			r.apply(t, a, cs...)
			got := e.rows(t, "SELECT count(*), count(*) FILTER (WHERE v = 'R'), min(id), max(id) FROM t")
			if want := []string{"3000|2998|1|3000"}; !slices.Equal(got, want) {
				t.Errorf("rows: count, remote, min, max %q, want %q", got, want)
			}
			if got := e.rows(t, "SELECT id, email, v FROM t WHERE id IN (5, 7, 100) ORDER BY id"); !slices.Equal(got, []string{"5|e7|again", "7|x7|R", "100|local|L"}) {
				t.Errorf("rows 5, 7, 100: %q", got)
			}
			if got := e.rows(t, "SELECT kind, key::text FROM pgmesh.conflict_log"); !slices.Equal(got, []string{`insert_exists|{"id": 100}`}) {
				t.Errorf("conflicts %q, want insert_exists on 100 alone", got)
			}
			if st := a.Stats(); st.Changes != 3003 || st.Conflicts[conflict.InsertExists] != 1 {
				t.Errorf("stats: %d changes, conflicts %v", st.Changes, st.Conflicts)
			}
		})
	}
}

// A chain of transactions that each depend on the one before runs on one
// session: a wait across sessions for every transaction would cost more
// than the chain can gain from running in parallel.
func TestParallelChainOnOneSession(t *testing.T) {
	e := newEnvN(t, 2)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "n")
	r.feed(t, a, ins(tr, "1", "0"))
	for i := 1; i <= 20; i++ {
		r.feed(t, a, upd(tr, nil, "1", fmt.Sprint(i)))
	}
	if err := a.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.rows(t, "SELECT n FROM t"); !slices.Equal(got, []string{"20"}) {
		t.Errorf("n = %q, want 20", got)
	}
	if p := e.originProgress(t); p[0] != "" && p[1] != "" {
		t.Errorf("both sessions committed (progress %q): the chain was spread", p)
	}
}

// A remote delete of an absent key closes the key's gate (one of 64 per
// table, sql/0010_key_gates.sql) until it commits; a fast insert holds its
// key's gate until it commits. An insert of another key with the same gate,
// in a later transaction on another session, would hold the gate while the
// delete waits for it, and wait for the delete's commit itself: a cycle
// that only the deadlock detector or a lock timeout would break. The
// insert waits for the delete's transaction instead (deps.go): no retry.
func TestParallelKeyGate(t *testing.T) {
	e := newEnvN(t, 2)
	e.exec(t, `CREATE TABLE slow (id int PRIMARY KEY)`)
	e.exec(t, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END$$`)
	e.exec(t, `CREATE TRIGGER slow BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slow()`)
	e.exec(t, `ALTER TABLE slow ENABLE ALWAYS TRIGGER slow`)
	e.exec(t, `CREATE TABLE g (id int PRIMARY KEY)`)
	// A key other than 1 behind the same gate.
	other := e.rows(t, `SELECT k FROM generate_series(2, 10000) k
	  WHERE pgmesh.key_gate('public.g', jsonb_build_object('id', k)) = pgmesh.key_gate('public.g', jsonb_build_object('id', 1))
	  ORDER BY k LIMIT 1`)
	if len(other) != 1 {
		t.Fatalf("no key shares key 1's gate: %q", other)
	}
	a := e.applier(t, Options{})
	// The second transaction runs on the other session.
	a.noAffinity = true
	r := newRemote()
	g := rel(2, "g", 'd', "*id")
	// The first transaction is slow before its delete: without the wait,
	// the second one's insert holds the gate by then.
	r.feed(t, a, ins(rel(1, "slow", 'd', "*id"), "1"), del(g, "1"))
	r.feed(t, a, ins(g, other[0]))
	if err := a.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.rows(t, "SELECT id::text FROM g"); !slices.Equal(got, other) {
		t.Errorf("rows %q, want %q", got, other)
	}
	if n := a.Stats().Retries; n > 0 {
		t.Errorf("%d retries: the insert held the gate the earlier delete waited for", n)
	}
	for i, p := range e.originProgress(t) {
		if p == "" {
			t.Errorf("origin %s never committed: both transactions ran on one session", e.origins[i])
		}
	}
}

// link adds a second link to the env's database: another upstream, with
// n sessions of its own, applying onto the same tables.
func (e *testEnv) link(t *testing.T, n int) *testEnv {
	t.Helper()
	o := &testEnv{dsn: e.dsn, origin: "pu" + strings.TrimPrefix(e.origin, "pt"), db: e.db}
	for k := range n {
		o.origins = append(o.origins, origin.Name(o.origin, k))
	}
	if err := setup.SyncNodes(context.Background(), e.db, []string{e.origin, o.origin, "n2"}); err != nil {
		t.Fatal(err)
	}
	e.createOrigins(t, o.origins)
	return o
}

// syncBuffer is a log destination that the workers write to while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A deadlock across two links, every wait in it an apply session's, ends
// at once with a deadlock error in one of the waits for an earlier
// transaction. The server's detector never sees it: it runs once per
// wait, after deadlock_timeout, and here both row waits began before the
// cycle closed; the waits for an earlier transaction are steps shorter
// than deadlock_timeout. Link A's second transaction locks x 1 and waits
// (at its commit, after a sleep) for A's first, which waits for row x 2,
// locked by B's second, which waits for B's first, which waits for x 1.
func TestParallelDeadlockAcrossLinks(t *testing.T) {
	e := newEnvN(t, 2)
	f := e.link(t, 2)
	ctx := context.Background()
	e.exec(t, `CREATE TABLE x (id int PRIMARY KEY, n int NOT NULL)`)
	e.exec(t, `INSERT INTO x VALUES (1, 0), (2, 0)`)
	e.exec(t, `CREATE TABLE slow (id int PRIMARY KEY, s float8 NOT NULL)`)
	e.exec(t, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(NEW.s); RETURN NEW; END$$`)
	e.exec(t, `CREATE TRIGGER slow BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slow()`)
	e.exec(t, `ALTER TABLE slow ENABLE ALWAYS TRIGGER slow`)
	// Both upstreams had seen the local rows: no conflicts.
	e.exec(t, `INSERT INTO pgmesh.peer_seen VALUES ($1, 'n2', now()), ($2, 'n2', now())`, e.origin, f.origin)
	var log syncBuffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	a := e.applier(t, Options{Logger: logger})
	b := f.applier(t, Options{Logger: logger})
	a.noAffinity, b.noAffinity = true, true
	x, slowRel := rel(1, "x", 'd', "*id", "n"), rel(2, "slow", 'd', "*id", "s")
	ra, rb := newRemote(), newRemote()
	ra.ts, rb.ts = ra.ts.AddDate(100, 0, 0), rb.ts.AddDate(100, 0, 1)
	// First sessions: A waits for row 2 soon; B, later, for row 1.
	ra.feed(t, a, ins(slowRel, "1", "0.2"), upd(x, nil, "2", "1"))
	rb.feed(t, b, ins(slowRel, "2", "1"), upd(x, nil, "1", "2"))
	// Second sessions: B's waits for B's first at once; A's only after
	// both row waits have begun, and more than deadlock_timeout after A's.
	rb.feed(t, b, upd(x, nil, "2", "2"))
	ra.feed(t, a, upd(x, nil, "1", "1"), ins(slowRel, "3", "2.5"))
	for _, ap := range []*Applier{a, b} {
		if err := ap.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.rows(t, "SELECT count(*) FROM slow"); !slices.Equal(got, []string{"3"}) {
		t.Errorf("%q rows in slow, want 3", got)
	}
	if a.Stats().Retries+b.Stats().Retries == 0 {
		t.Errorf("no retries: no deadlock")
	}
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "running it again") && !strings.Contains(line, "40P01") {
			t.Errorf("a retry for another cause than a deadlock: %s", line)
		}
	}
	if t.Failed() {
		t.Logf("appliers' log:\n%s", log.String())
	}
}
