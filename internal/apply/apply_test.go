package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

func TestApplyRows(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Local column order differs from the remote one, and the local table
	// has an extra column with a default.
	e.exec(t, `CREATE TABLE t (v text, note text DEFAULT 'local', id int PRIMARY KEY, n int)`)
	e.exec(t, `CREATE TABLE u (id int PRIMARY KEY)`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v", "n")
	ur := rel(2, "u", 'd', "*id")

	steps := []struct {
		name    string
		changes []*stream.Change
		want    []string
	}{
		{"insert", []*stream.Change{ins(tr, "1", "a", "10"), ins(tr, "2", "b", "∅")},
			[]string{"1|a|10|local", "2|b|∅|local"}},
		{"update", []*stream.Change{upd(tr, nil, "1", "a2", "11")},
			[]string{"1|a2|11|local", "2|b|∅|local"}},
		{"null to value and back", []*stream.Change{upd(tr, nil, "2", "∅", "5"), upd(tr, nil, "1", "a2", "∅")},
			[]string{"1|a2|∅|local", "2|∅|5|local"}},
		{"key change", []*stream.Change{upd(tr, tup("1", "∅", "∅"), "3", "a3", "∅")},
			[]string{"2|∅|5|local", "3|a3|∅|local"}},
		{"delete", []*stream.Change{del(tr, "2", "∅", "∅")},
			[]string{"3|a3|∅|local"}},
		{"insert update delete in one transaction", []*stream.Change{ins(tr, "4", "x", "1"), upd(tr, nil, "4", "y", "2"), del(tr, "3", "∅", "∅")},
			[]string{"4|y|2|local"}},
		// u is first seen in the middle of a transaction.
		{"two tables in one transaction", []*stream.Change{upd(tr, nil, "4", "z", "2"), ins(ur, "1")},
			[]string{"4|z|2|local"}},
	}
	for _, s := range steps {
		r.apply(t, a, s.changes...)
		if got := e.rows(t, "SELECT id, v, n, note FROM t ORDER BY id"); !slices.Equal(got, s.want) {
			t.Fatalf("%s: rows %q, want %q", s.name, got, s.want)
		}
	}
	st := a.Stats()
	if got := e.rows(t, "SELECT id FROM u"); !slices.Equal(got, []string{"1"}) {
		t.Errorf("rows of u: %q", got)
	}
	if st.Txns != uint64(len(steps)) || st.Changes != 12 {
		t.Errorf("stats: %d txns, %d changes; want %d, 12", st.Txns, st.Changes, len(steps))
	}
	if len(st.Conflicts) != 0 {
		t.Errorf("unexpected conflicts: %v", st.Conflicts)
	}
}

func TestApplyFullIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE f (a int, b text, j json)`)
	e.exec(t, `ALTER TABLE f REPLICA IDENTITY FULL`)
	a := e.applier(t, Options{})
	r := newRemote()
	fr := rel(2, "f", 'f', "a", "b", "j")

	r.apply(t, a, ins(fr, "1", "x", `{"k": 1}`), ins(fr, "1", "x", `{"k": 1}`), ins(fr, "2", "∅", "∅"))
	// Two identical rows: an update changes exactly one of them.
	r.apply(t, a, upd(fr, tup("1", "x", `{"k": 1}`), "1", "y", `{"k": 1}`))
	// NULLs in the old row are matched.
	r.apply(t, a, upd(fr, tup("2", "∅", "∅"), "2", "z", "∅"))
	want := []string{`1|x|{"k": 1}`, `1|y|{"k": 1}`, "2|z|∅"}
	if got := e.rows(t, "SELECT a, b, j::text FROM f ORDER BY a, b"); !slices.Equal(got, want) {
		t.Fatalf("after updates: %q, want %q", got, want)
	}
	r.apply(t, a, del(fr, "1", "x", `{"k": 1}`), del(fr, "2", "z", "∅"))
	want = []string{`1|y|{"k": 1}`}
	if got := e.rows(t, "SELECT a, b, j::text FROM f ORDER BY a, b"); !slices.Equal(got, want) {
		t.Fatalf("after deletes: %q, want %q", got, want)
	}
	r.apply(t, a, del(fr, "9", "nope", "∅"))
	if c := a.Stats().Conflicts; len(c) != 1 || c[conflict.DeleteMissing] != 1 {
		t.Errorf("conflicts %v, want delete_missing 1", c)
	}
}

func TestApplyUnchangedToast(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE big (id int PRIMARY KEY, doc text, n int)`)
	a := e.applier(t, Options{})
	r := newRemote()
	br := rel(3, "big", 'd', "*id", "doc", "n")
	doc := strings.Repeat("0123456789abcdef", 1<<16) // 1 MB
	r.apply(t, a, ins(br, "1", doc, "1"))
	r.apply(t, a, upd(br, nil, "1", "⊘", "2"))
	got := e.rows(t, "SELECT n, length(doc), md5(doc) = md5(repeat('0123456789abcdef', 65536)) FROM big")
	if want := []string{"2|1048576|true"}; !slices.Equal(got, want) {
		t.Fatalf("rows %q, want %q", got, want)
	}
}

// A remote TRUNCATE removes the rows older than itself from the tables it
// names, and nothing else: not the rows written here after it, not the
// rows of a table that references them (no cascade on a peer: that table
// may be this node's own), and it restarts no sequence.
func TestApplyTruncate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE p (id serial PRIMARY KEY)`)
	e.exec(t, `CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p)`)
	e.exec(t, `CREATE TABLE other (id int PRIMARY KEY)`)
	a := e.applier(t, Options{})
	r := newRemote()
	pr, or := rel(4, "p", 'd', "*id"), rel(5, "other", 'd', "*id")
	r.apply(t, a, ins(pr, "1"), ins(pr, "2"), ins(or, "1"))
	// Written here after the remote truncate's commit time (the remote
	// clock of newRemote is in the past).
	e.exec(t, `SELECT nextval('p_id_seq') FROM generate_series(1, 3)`)
	e.exec(t, `INSERT INTO c VALUES (1, 1)`)
	e.exec(t, `INSERT INTO other VALUES (2)`)
	r.apply(t, a, &stream.Change{Op: stream.Truncate, TruncateRels: []*stream.Relation{pr, or}, Cascade: true, RestartIdentity: true})
	got := e.rows(t, "SELECT (SELECT count(*) FROM p), (SELECT string_agg(id::text, ',') FROM c), (SELECT string_agg(id::text, ',') FROM other), nextval('p_id_seq')")
	if want := []string{"0|1|2|4"}; !slices.Equal(got, want) {
		t.Fatalf("rows of p, ids of c and other, next id: %q, want %q", got, want)
	}
	if got := e.rows(t, "SELECT table_name || ' ' || key::text FROM pgmesh.tombstone ORDER BY 1"); !slices.Equal(got, []string{"public.other {}", "public.p {}"}) {
		t.Errorf("tombstones %q, want the two tables'", got)
	}
	if st := a.Stats(); st.Changes != 4 {
		t.Errorf("changes = %d, want 4", st.Changes)
	}
}

func TestApplyRecordsOriginAndCommitTime(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	c1 := r.apply(t, a, ins(tr, "1", "a"))
	c2 := r.apply(t, a, ins(tr, "2", "b"))

	for id, c := range map[int]stream.Commit{1: c1, 2: c2} {
		var ts time.Time
		var roident, want int
		err := e.db.QueryRow(context.Background(), `SELECT x.timestamp, x.roident::int, o.roident::int
			FROM t, pg_xact_commit_timestamp_origin(t.xmin) x, pg_replication_origin o
			WHERE t.id = $1 AND o.roname = $2`, id, e.origin).Scan(&ts, &roident, &want)
		if err != nil {
			t.Fatal(err)
		}
		if !ts.Equal(c.CommitTime) || roident != want {
			t.Errorf("row %d: commit time %v origin %d, want %v origin %d", id, ts, roident, c.CommitTime, want)
		}
	}
	p, err := a.Progress(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p != c2.EndLSN {
		t.Errorf("Progress = %s, want EndLSN of the last transaction %s", p, c2.EndLSN)
	}
	var dbProgress string
	if err := e.db.QueryRow(context.Background(), "SELECT pg_replication_origin_progress($1, false)::text", e.origin).Scan(&dbProgress); err != nil {
		t.Fatal(err)
	}
	if dbProgress != c2.EndLSN.String() {
		t.Errorf("pg_replication_origin_progress = %s, want %s", dbProgress, c2.EndLSN)
	}
	st := a.Stats()
	if st.LastEndLSN != c2.EndLSN || !st.LastCommitTime.Equal(c2.CommitTime) {
		t.Errorf("stats last %s %v, want %s %v", st.LastEndLSN, st.LastCommitTime, c2.EndLSN, c2.CommitTime)
	}
}

// Many small transactions go out pipelined, several to a flight, and each
// commits as a transaction of its own.
func TestApplyManyTransactionsPipelined(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v int)`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	var last stream.Commit
	for i := range 50 {
		last = r.feed(t, a, ins(tr, fmt.Sprint(i), "0"), upd(tr, nil, fmt.Sprint(i), "1"))
	}
	if err := a.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := a.Stats()
	if st.Flights > 50 || st.Txns != 50 || st.LastEndLSN != last.EndLSN {
		t.Errorf("stats: %d flights, %d txns, last %s; want at most 50, 50, %s", st.Flights, st.Txns, st.LastEndLSN, last.EndLSN)
	}
	// Each transaction committed separately: 50 distinct xmins.
	if got := e.rows(t, "SELECT count(*), count(DISTINCT xmin::text), sum(v) FROM t"); !slices.Equal(got, []string{"50|50|50"}) {
		t.Errorf("count, distinct xmin, sum: %q", got)
	}
}

// A failed transaction must stop every later one, whether they share its
// flight or follow in a flight sent before the failure was known, and
// whether it fails on a statement or at COMMIT (deferred constraint).
func TestApplyFailureStopsLaterTransactions(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		maxFlight int
		bad       func(tr *stream.Relation) *stream.Change
		wantErr   []string
		// What the TxnError names: the failed request, its table and key.
		wantWhat, wantTable, wantKey string
	}{
		{"statement fails, same flight", 0,
			func(tr *stream.Relation) *stream.Change { return ins(tr, "3", "∅") },
			[]string{"insert into public.t", "null value"}, "insert into public.t", "public.t", "id=3"},
		{"statement fails, later flights in the air", 3,
			func(tr *stream.Relation) *stream.Change { return ins(tr, "3", "∅") },
			[]string{"insert into public.t", "null value"}, "insert into public.t", "public.t", "id=3"},
		{"commit fails", 0,
			func(tr *stream.Relation) *stream.Change { return ins(tr, "3", "-1") },
			[]string{"deferred constraints", "v must not be negative"}, "deferred constraints", "", ""},
		{"commit fails, later flights in the air", 4,
			func(tr *stream.Relation) *stream.Change { return ins(tr, "3", "-1") },
			[]string{"deferred constraints", "v must not be negative"}, "deferred constraints", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)`)
			// A deferred check that fires at COMMIT, even in replica role.
			e.exec(t, `CREATE FUNCTION v_check() RETURNS trigger LANGUAGE plpgsql AS
				$$BEGIN IF NEW.v < 0 THEN RAISE 'v must not be negative'; END IF; RETURN NULL; END$$`)
			e.exec(t, `CREATE CONSTRAINT TRIGGER v_check AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED
				FOR EACH ROW EXECUTE FUNCTION v_check()`)
			e.exec(t, `ALTER TABLE t ENABLE ALWAYS TRIGGER v_check`)
			var applied []Applied
			a := e.applier(t, Options{MaxFlight: tc.maxFlight, OnApplied: func(ap Applied) { applied = append(applied, ap) }})
			r := newRemote()
			tr := rel(1, "t", 'd', "*id", "v")
			var begins []stream.Begin
			var commits []stream.Commit
			var err error
			ctx := context.Background()
			for i := 1; i <= 5; i++ {
				ch := ins(tr, fmt.Sprint(i), fmt.Sprint(i))
				if i == 3 {
					ch = tc.bad(tr)
				}
				b, c := r.next()
				begins, commits = append(begins, b), append(commits, c)
				if err = a.Begin(ctx, b); err != nil {
					break
				}
				if err = a.Change(ctx, ch); err != nil {
					break
				}
				if err = a.Commit(ctx, c); err != nil {
					break
				}
			}
			if err == nil {
				err = a.Wait(ctx)
			}
			if err == nil {
				t.Fatal("no error for the failing transaction")
			}
			for _, w := range append(tc.wantErr, commits[2].CommitLSN.String()) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			var te *TxnError
			if !errors.As(err, &te) {
				t.Fatalf("error %q is not a *TxnError", err)
			}
			got := [...]any{te.CommitLSN, te.CommitTime, te.XID, te.What, te.Table, te.Key}
			want := [...]any{begins[2].FinalLSN, begins[2].CommitTime, begins[2].XID, tc.wantWhat, tc.wantTable, tc.wantKey}
			if got != want {
				t.Errorf("TxnError names %v, want %v", got, want)
			}
			if len(applied) != 2 || applied[0].CommitLSN != begins[0].FinalLSN || applied[1].CommitLSN != begins[1].FinalLSN ||
				applied[0].Changes != 1 || applied[0].Duration <= 0 {
				t.Errorf("OnApplied saw %+v, want transactions 1 and 2, one change each, with their durations", applied)
			}
			if _, err2 := a.Progress(ctx); !errors.Is(err2, err) {
				t.Errorf("applier still usable after an error: Progress returned %v", err2)
			}
			if got := e.rows(t, "SELECT id FROM t ORDER BY id"); !slices.Equal(got, []string{"1", "2"}) {
				t.Errorf("rows %q, want transactions 1 and 2 only", got)
			}
			if err := a.Close(ctx); err != nil {
				t.Errorf("Close after failure: %v", err)
			}
			a2 := e.applier(t, Options{})
			p, err := a2.Progress(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if p != commits[1].EndLSN {
				t.Errorf("progress %s, want EndLSN of transaction 2 %s", p, commits[1].EndLSN)
			}
		})
	}
}

// Conflicts are resolved inside the transaction, which goes on; each one
// is counted, logged, and recorded in pgmesh.conflict_log.
func TestApplyConflictsGoOn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	e.exec(t, `INSERT INTO t VALUES (1, 'local')`) // committed now: newer than the remote changes
	var log bytes.Buffer
	a := e.applier(t, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	r.apply(t, a,
		ins(tr, "1", "remote"),            // insert_exists: the older remote row loses
		upd(tr, nil, "7", "x"),            // update_missing: inserted
		del(tr, "8", "∅"),                 // delete_missing
		ins(tr, "2", "new"),               // and the transaction goes on
		upd(tr, tup("9", "∅"), "10", "y"), // key change of a missing row: a delete_missing, and the insert
	)
	want := []string{"1|local", "2|new", "7|x", "10|y"}
	if got := e.rows(t, "SELECT id, v FROM t ORDER BY id"); !slices.Equal(got, want) {
		t.Errorf("rows %q, want %q", got, want)
	}
	st := a.Stats()
	wantC := map[string]uint64{conflict.InsertExists: 1, conflict.UpdateMissing: 1, conflict.DeleteMissing: 2}
	if !maps.Equal(st.Conflicts, wantC) {
		t.Errorf("conflicts %v, want %v", st.Conflicts, wantC)
	}
	wantBy := map[ConflictKey]uint64{
		{"public.t", conflict.InsertExists, conflict.KeepLocal}:    1,
		{"public.t", conflict.UpdateMissing, conflict.ApplyRemote}: 1,
		{"public.t", conflict.DeleteMissing, conflict.Skip}:        2,
	}
	if !maps.Equal(st.ConflictsBy, wantBy) {
		t.Errorf("conflicts by table, kind and resolution %v, want %v", st.ConflictsBy, wantBy)
	}
	if st.Txns != 1 {
		t.Errorf("txns = %d, want 1", st.Txns)
	}
	wantLog := []string{
		`insert_exists|keep_local|{"id": 1}|` + e.origin,
		`update_missing|apply_remote|{"id": 7}|` + e.origin,
		`delete_missing|skip|{"id": 8}|` + e.origin,
		`delete_missing|skip|{"id": 9}|` + e.origin,
	}
	if got := e.rows(t, "SELECT kind, resolution, key::text, remote_origin FROM pgmesh.conflict_log ORDER BY id"); !slices.Equal(got, wantLog) {
		t.Errorf("conflict_log %q, want %q", got, wantLog)
	}
	for _, w := range []string{
		`kind=insert_exists resolution=keep_local table=public.t key="id=1"`,
		`kind=update_missing resolution=apply_remote table=public.t key="id=7"`,
		`kind=delete_missing resolution=skip table=public.t key="id=8"`,
		`kind=delete_missing resolution=skip table=public.t key="id=9"`,
	} {
		if !strings.Contains(log.String(), w) {
			t.Errorf("log lacks %s:\n%s", w, log.String())
		}
	}
}

// The conflicts of a transaction that fails are rolled back with its
// conflict_log rows: they are not counted, so that applying it again later
// counts them once.
func TestApplyConflictsCountedAtCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)`)
	e.exec(t, `INSERT INTO t VALUES (1, 'local')`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	ctx := context.Background()
	r.feed(t, a, ins(tr, "1", "remote"), ins(tr, "2", "∅"))
	if err := a.Wait(ctx); err == nil {
		t.Fatal("no error for a NULL in a NOT NULL column")
	}
	if st := a.Stats(); len(st.Conflicts) != 0 || len(st.ConflictsBy) != 0 {
		t.Errorf("conflicts of a rolled back transaction counted: %v %v", st.Conflicts, st.ConflictsBy)
	}
	if got := e.rows(t, "SELECT count(*) FROM pgmesh.conflict_log"); !slices.Equal(got, []string{"0"}) {
		t.Errorf("conflict_log rows %q, want none", got)
	}
}

func TestApplySchemaErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	cases := []struct {
		name string
		rel  *stream.Relation
		want []string
	}{
		{"missing table", rel(1, "nope", 'd', "*id"), []string{"public.nope", "does not exist"}},
		{"missing column", rel(2, "t", 'd', "*id", "extra"), []string{"public.t", `"extra"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := e.applier(t, Options{})
			vals := make([]string, len(tc.rel.Columns))
			for i := range vals {
				vals[i] = "1"
			}
			newRemote().feed(t, a, ins(tc.rel, vals...))
			err := a.Wait(context.Background())
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

func TestApplySession(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	a := e.applier(t, Options{})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id")
	c1 := r.apply(t, a, ins(tr, "1"))

	// The origin is in use by a: a second session is refused.
	conn := connect(t, e.dsn)
	if _, err := New(context.Background(), []Session{{conn.PgConn(), e.origin}}, Options{Upstream: "n1"}); err == nil || !strings.Contains(err.Error(), "another apply session") {
		t.Errorf("second session on the origin: %v", err)
	}
	conn2 := connect(t, e.dsn)
	if _, err := New(context.Background(), []Session{{conn2.PgConn(), "pgmesh_missing"}}, Options{Upstream: "n1"}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing origin: %v", err)
	}

	// After a reconnect, a resent transaction is skipped, a new one applied.
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	a2 := e.applier(t, Options{})
	if p, err := a2.Progress(context.Background()); err != nil || p != c1.EndLSN {
		t.Fatalf("progress after reconnect: %s %v, want %s", p, err, c1.EndLSN)
	}
	r.lsn -= 0x100 // replay the first transaction
	r.apply(t, a2, ins(tr, "1"))
	r.apply(t, a2, ins(tr, "2"))
	if got := e.rows(t, "SELECT id FROM t ORDER BY id"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("rows %q", got)
	}
	if st := a2.Stats(); st.Txns != 1 || len(st.Conflicts) != 0 {
		t.Errorf("stats after replay: %+v", st)
	}
}

// OnMessage runs after everything before the message was executed, inside
// the remote transaction for a transactional message, so a hook may run SQL
// that commits with the transaction under the origin.
func TestApplyOnMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	var seen []string
	a := e.applier(t, Options{OnMessage: func(ctx context.Context, conn *pgconn.PgConn, m stream.Message) error {
		seen = append(seen, m.Prefix)
		// The session's search_path is pinned to pg_catalog.
		_, err := conn.Exec(ctx, "INSERT INTO public.t SELECT count(*) + 100 FROM public.t").ReadAll()
		return err
	}})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id")
	ctx := context.Background()
	b, c := r.next()
	steps := []error{
		a.Begin(ctx, b),
		a.Change(ctx, ins(tr, "1")),
		a.Message(ctx, stream.Message{Transactional: true, LSN: b.FinalLSN - 8, Prefix: "pgmesh.ddl"}),
		a.Change(ctx, ins(tr, "2")),
		a.Commit(ctx, c),
		a.Message(ctx, stream.Message{Prefix: "other"}),
		a.Wait(ctx),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if want := []string{"pgmesh.ddl", "other"}; !slices.Equal(seen, want) {
		t.Errorf("messages %q, want %q", seen, want)
	}
	// 101 was written in the remote transaction (it saw row 1, and has its
	// commit time), 103 after it.
	got := e.rows(t, `SELECT id, x.timestamp = '`+formatTime(c.CommitTime)+`' FROM t, pg_xact_commit_timestamp_origin(t.xmin) x ORDER BY id`)
	if want := []string{"1|true", "2|true", "101|true", "103|false"}; !slices.Equal(got, want) {
		t.Errorf("rows, with the remote commit time: %q, want %q", got, want)
	}
}

// Under policy error a conflict stops the applier with the conflict named
// and the operator's hint; the failed transaction does not advance the
// origin (the conflict raises before the origin setup).
func TestApplyPolicyError(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	cfg := &config.Config{Conflicts: config.Conflicts{Default: config.LastUpdateWins,
		Tables: map[string]config.TableConfig{"public.t": {Policy: config.PolicyError}}}}
	a := e.applier(t, Options{Config: cfg})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	c1 := r.apply(t, a, ins(tr, "1", "remote"))
	e.exec(t, `INSERT INTO t VALUES (2, 'local')`)
	r.feed(t, a, ins(tr, "2", "remote"))
	err := a.Wait(context.Background())
	for _, w := range []string{"conflict insert_exists on table public.t", "SQLSTATE P0001", "hint: fix the row"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v, want one containing %q", err, w)
		}
	}
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.rows(t, "SELECT id, v FROM t ORDER BY id"); !slices.Equal(got, []string{"1|remote", "2|local"}) {
		t.Errorf("rows %q", got)
	}
	if p, err := e.applier(t, Options{}).Progress(context.Background()); err != nil || p != c1.EndLSN {
		t.Errorf("progress %s %v, want %s: the failed transaction advanced the origin", p, err, c1.EndLSN)
	}
}

// decoded is one row of pgoutput output read from a test slot.
type decoded struct {
	lsn  string
	kind byte
	data []byte
}

// peekSlot decodes the slot's pending changes (pgoutput, messages on)
// without consuming them. The applier commits asynchronously and decoding
// reads flushed WAL only, so a synchronous commit goes first.
func (e *testEnv) peekSlot(t *testing.T, slot, publication string) []decoded {
	t.Helper()
	e.exec(t, `CREATE TABLE IF NOT EXISTS wal_flush ()`)
	e.exec(t, `DROP TABLE wal_flush`)
	rows, err := e.db.Query(context.Background(), `SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', $2, 'messages', 'true')`, slot, publication)
	if err != nil {
		t.Fatal(err)
	}
	var out []decoded
	for rows.Next() {
		var d decoded
		if err := rows.Scan(&d.lsn, &d.data); err != nil {
			t.Fatal(err)
		}
		d.kind = d.data[0]
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// lsnOf parses an LSN as PostgreSQL prints it.
func lsnOf(t *testing.T, s string) uint64 {
	t.Helper()
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return uint64(l)
}

// messageContent is the content of a pgoutput message ('M') row: flags
// (1), LSN (8), prefix NUL-terminated, length (4), content.
func messageContent(data []byte) string {
	nul := 10 + bytes.IndexByte(data[10:], 0)
	return string(data[nul+1+4:])
}

// Each remote transaction claims, with a seen message written between its
// changes and its commit record, that the downstream has applied the
// upstream up to its commit time; a transaction with nothing newer to
// claim claims nothing. The downstream records the claim for itself too.
func TestApplyClaimsSeenBeforeCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	e.exec(t, `CREATE PUBLICATION seen_test FOR TABLE t`)
	slot := e.origin + "_slot"
	e.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	a := e.applier(t, Options{Node: "n2", Claim: true})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id")
	c1 := r.feed(t, a, ins(tr, "1"))
	c2 := r.apply(t, a, ins(tr, "2"))
	r.ts = r.ts.Add(-time.Hour) // an older commit time: nothing new to claim
	r.apply(t, a, ins(tr, "3"))

	out := e.peekSlot(t, slot, "seen_test")
	var kinds []string
	for _, d := range out {
		kinds = append(kinds, string(d.kind))
	}
	// pgoutput: M message, B begin, O origin, R relation, I insert, C
	// commit. A non-transactional message is decoded at its WAL position,
	// a transaction at its commit: the claim comes first.
	if want := []string{"M", "B", "O", "R", "I", "C", "M", "B", "O", "I", "C", "B", "O", "I", "C"}; !slices.Equal(kinds, want) {
		t.Fatalf("decoded %q, want %q", kinds, want)
	}
	// Where each claim (M) and its transaction's insert (I) and commit (C)
	// are in out.
	for i, c := range []struct {
		txn            stream.Commit
		m, ins, commit int
	}{{c1, 0, 4, 5}, {c2, 6, 9, 10}} {
		m, insert, commit := out[c.m], out[c.ins], out[c.commit]
		want, _ := conflict.SeenMessage{Node: "n2", Seen: map[string]time.Time{e.origin: c.txn.CommitTime}}.Marshal()
		if got := messageContent(m.data); got != string(want) {
			t.Errorf("claim %d: %q, want %q", i+1, got, want)
		}
		if !(lsnOf(t, insert.lsn) < lsnOf(t, m.lsn) && lsnOf(t, m.lsn) < lsnOf(t, commit.lsn)) {
			t.Errorf("claim %d at %s, want between its transaction's insert (%s) and commit (%s)", i+1, m.lsn, insert.lsn, commit.lsn)
		}
	}
	got := e.rows(t, "SELECT peer, origin, seen_until = '"+c2.CommitTime.UTC().Format(time.RFC3339Nano)+"' FROM pgmesh.peer_seen")
	if wantSeen := []string{"n2|" + e.origin + "|true"}; !slices.Equal(got, wantSeen) {
		t.Errorf("peer_seen %q, want %q", got, wantSeen)
	}
}

// A local transaction that holds a row a remote transaction changes
// commits before that transaction's claim: a claim never covers a local
// write that had not seen the remote change. (Claims made before a whole
// flight was sent did: the peers then took such a local write for a causal
// successor of the remote change and logged nothing.)
func TestApplyClaimFollowsRowLocks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	e.exec(t, `INSERT INTO t VALUES (1, 'old')`)
	e.exec(t, `CREATE PUBLICATION seen_lock FOR TABLE t`)
	slot := e.origin + "_lock"
	e.exec(t, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	a := e.applier(t, Options{Node: "n2", Claim: true})

	local := connect(t, e.dsn)
	tx, err := local.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT FROM t WHERE id = 1 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	r := newRemote()
	tr := rel(1, "t", 'd', "*id", "v")
	r.feed(t, a, upd(tr, nil, "1", "remote"))
	done := make(chan error, 1)
	go func() { done <- a.Wait(ctx) }()
	// The apply statement waits for the local lock.
	for waiting := 0; waiting == 0; {
		select {
		case err := <-done:
			t.Fatalf("the remote update did not wait for the local row lock (Wait: %v)", err)
		default:
		}
		if err := e.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE t SET v = 'local' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var localCommit, claim string
	for _, d := range e.peekSlot(t, slot, "seen_lock") {
		switch {
		case d.kind == 'M' && claim == "":
			claim = d.lsn
		case d.kind == 'C' && localCommit == "":
			localCommit = d.lsn
		}
	}
	if claim == "" || localCommit == "" {
		t.Fatalf("decoded no claim (%q) or no local commit (%q)", claim, localCommit)
	}
	// A commit's LSN as decoded is the end of its record.
	if lsnOf(t, localCommit) > lsnOf(t, claim) {
		t.Errorf("local commit at %s, claim at %s: the claim covers a local write that had not seen the remote change", localCommit, claim)
	}
}

// A seen message of the upstream is recorded in pgmesh.peer_seen at the
// start of its next transaction (only the newest time per origin, none
// about the sender itself); a malformed one is logged and ignored.
func TestApplyRecordsSeen(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	var log bytes.Buffer
	a := e.applier(t, Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
	r := newRemote()
	tr := rel(1, "t", 'd', "*id")
	ctx := context.Background()
	t1 := time.Date(2025, 3, 1, 10, 0, 0, 123456000, time.UTC)
	msg := func(content string) stream.Message {
		return stream.Message{Prefix: conflict.SeenPrefix, Content: []byte(content)}
	}
	up := e.origin
	for _, m := range []stream.Message{
		msg(`{"node":"` + up + `","seen":{"n2":"2025-03-01T09:00:00Z","` + up + `":"2025-03-01T09:00:00Z"}}`),
		msg(`{"node":"` + up + `","seen":{"n2":"` + t1.Format(time.RFC3339Nano) + `","n3":"2025-03-01T08:00:00Z"}}`),
		msg(`{"node":"` + up + `","seen":{"n2":"2025-03-01T09:30:00Z"}}`),
		msg(`not json`),
		msg(`{"node":"n9","seen":{"n2":"2025-03-01T11:00:00Z"}}`),
	} {
		if err := a.Message(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.rows(t, "SELECT count(*) FROM pgmesh.peer_seen"); !slices.Equal(got, []string{"0"}) {
		t.Fatalf("peer_seen written before the next transaction: %q", got)
	}
	r.apply(t, a, ins(tr, "1"))
	got := e.rows(t, "SELECT peer, origin, seen_until AT TIME ZONE 'UTC' FROM pgmesh.peer_seen ORDER BY origin")
	want := []string{up + "|n2|2025-03-01 10:00:00.123456 +0000 UTC", up + "|n3|2025-03-01 08:00:00 +0000 UTC"}
	if !slices.Equal(got, want) {
		t.Errorf("peer_seen %q, want %q", got, want)
	}
	if n := strings.Count(log.String(), "ignoring malformed seen message"); n != 2 {
		t.Errorf("%d warnings about malformed seen messages, want 2:\n%s", n, log.String())
	}
}

// A deferrable unique constraint is checked when the remote transaction
// ends, as on its upstream. When that check fails (a row the upstream had
// seen still holds the value: the change that moved it has not arrived),
// the failure says so, and the transaction applied again with
// RecheckDeferred decides the constraint row by row: a unique_conflict,
// resolved and logged, and the link goes on.
func TestApplyDeferredRecheck(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE m (id int PRIMARY KEY, seat int UNIQUE DEFERRABLE INITIALLY IMMEDIATE)`)
	a := e.applier(t, Options{})
	r := newRemote()
	mr := rel(1, "m", 'd', "*id", "seat")
	r.apply(t, a, ins(mr, "1", "1"))
	ctx := context.Background()
	b, c := r.next()
	run := func(a *Applier) error {
		if err := a.Begin(ctx, b); err != nil {
			return err
		}
		if err := a.Change(ctx, ins(mr, "2", "1")); err != nil {
			return err
		}
		if err := a.Commit(ctx, c); err != nil {
			return err
		}
		return a.Wait(ctx)
	}
	err := run(a)
	lsn, ok := DeferredCheckFailed(err)
	if !ok || lsn != b.FinalLSN {
		t.Fatalf("error %v: DeferredCheckFailed = %s, %v; want %s, true", err, lsn, ok, b.FinalLSN)
	}
	if err := a.Close(ctx); err != nil {
		t.Logf("close after failure: %v", err)
	}
	a2 := e.applier(t, Options{RecheckDeferred: lsn})
	if err := run(a2); err != nil {
		t.Fatalf("applied again with RecheckDeferred: %v", err)
	}
	if got := e.rows(t, "SELECT id, seat FROM m ORDER BY id"); !slices.Equal(got, []string{"2|1"}) {
		t.Errorf("rows %q, want the newer row 2 only", got)
	}
	if got := e.rows(t, "SELECT kind, resolution FROM pgmesh.conflict_log"); !slices.Equal(got, []string{"unique_conflict|apply_remote"}) {
		t.Errorf("conflict_log %q, want one unique_conflict", got)
	}
}

// A remote column missing here is never left out silently: a DDL on its
// way here (ColumnComing) holds the change — the transaction is rolled back
// and nothing of it applied — a DDL applied here first (ColumnGone) lets
// the rest of the row apply and logs the whole row, and any other missing
// column is an apply error naming it.
func TestApplyMissingColumn(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	fates := map[string]ColumnFate{"coming": ColumnComing, "gone": ColumnGone}
	opts := Options{MissingColumn: func(_ context.Context, table, column string) (ColumnFate, error) {
		if table != "public.t" {
			return ColumnUnknown, fmt.Errorf("asked about table %s", table)
		}
		return fates[column], nil
	}}
	ctx := context.Background()
	r := newRemote()
	apply := func(a *Applier, changes ...*stream.Change) error {
		b, c := r.next()
		if err := a.Begin(ctx, b); err != nil {
			return err
		}
		for _, ch := range changes {
			if err := a.Change(ctx, ch); err != nil {
				return err
			}
		}
		if err := a.Commit(ctx, c); err != nil {
			return err
		}
		return a.Wait(ctx)
	}

	a := e.applier(t, opts)
	plain := rel(1, "t", 'd', "*id", "v")
	gone := rel(1, "t", 'd', "*id", "v", "gone")
	if err := apply(a, ins(plain, "1", "a"), ins(gone, "2", "b", "kept in the log"), upd(gone, nil, "1", "a2", "x")); err != nil {
		t.Fatalf("a column dropped here: %v", err)
	}
	if got := e.rows(t, "SELECT id, v FROM t ORDER BY id"); !slices.Equal(got, []string{"1|a2", "2|b"}) {
		t.Errorf("rows %q", got)
	}
	want := []string{
		`missing_column|skip_column|{"id": "2"}|{"v": "b", "id": "2", "gone": "kept in the log"}|` + e.origin,
		`missing_column|skip_column|{"id": "1"}|{"v": "a2", "id": "1", "gone": "x"}|` + e.origin,
	}
	if got := e.rows(t, "SELECT kind, resolution, key::text, remote_row::text, remote_origin FROM pgmesh.conflict_log ORDER BY id"); !slices.Equal(got, want) {
		t.Errorf("conflict_log %q, want %q", got, want)
	}
	if c := a.Stats().Conflicts; c[conflict.MissingColumn] != 2 {
		t.Errorf("conflicts %v, want missing_column 2", c)
	}

	coming := rel(2, "t", 'd', "*id", "v", "coming")
	err := apply(a, ins(plain, "3", "c"), ins(coming, "4", "d", "wait for me"))
	var held *HeldError
	if !errors.As(err, &held) || held.Column != "coming" || !strings.Contains(err.Error(), "waits for it") {
		t.Fatalf("a column on its way: %v, want a *HeldError for it", err)
	}
	a.Close(ctx)
	if got := e.rows(t, "SELECT id FROM t ORDER BY id"); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("rows %q: nothing of the held transaction may be applied", got)
	}

	a = e.applier(t, opts)
	other := rel(3, "t", 'd', "*id", "v", "other")
	if err := apply(a, ins(other, "5", "e", "?")); err == nil || !strings.Contains(err.Error(), `column "other"`) {
		t.Errorf("an unexplained column: %v, want an error naming it", err)
	}
}
