package conflict

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
)

// The statements the applier runs (fast path, falling back to the full
// statement) must do exactly what the full statement does alone. Every
// change below runs twice on the same committed state, each time in a
// transaction that is rolled back after the outcome was read: once as
// InsertSQL/UpdateSQL/DeleteSQL, once as the full statement. The outcomes
// (verdict or error, rows, conflict log, tombstones) must be equal. The
// states cover every branch of the fast path: rows written by the remote
// node, by another node the remote had or had not seen, locally, at equal
// commit times, tombstones of each kind, unique values held by other rows,
// delta columns and a table without key.
func TestFastPathMatchesFullStatement(t *testing.T) {
	f := newFixture(t, itemDDL,
		"CREATE TABLE stock (id int PRIMARY KEY, name text, qty int NOT NULL)", "ALTER TABLE stock REPLICA IDENTITY FULL",
		"CREATE TABLE ev (a int, b text UNIQUE)", "ALTER TABLE ev REPLICA IDENTITY FULL")
	base := time.Now().Truncate(time.Microsecond)
	at := func(d time.Duration) time.Time { return base.Add(d) }
	const h = time.Hour

	// Key k of item/stock holds state k; key 1000 holds the unique email
	// "taken". peer_seen: n1 had seen n2 until -30m and everything local;
	// n2 had seen n1 until -1h (so a change of n2 at -1h ties causally with
	// a row of n1 at -1h, and loses).
	write := func(node string, ts time.Time, k int, name string) {
		err := f.session(node, ts, func(ctx context.Context, conn *pgx.Conn) error {
			if _, err := conn.Exec(ctx, "INSERT INTO item VALUES ($1::int, 'e' || $1::int, $2, 1)", k, name); err != nil {
				return err
			}
			_, err := conn.Exec(ctx, "INSERT INTO stock VALUES ($1, $2, 10)", k, name)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	tombstone := func(node string, ts time.Time) func(k int) {
		return func(k int) {
			f.exec(`INSERT INTO pgmesh.tombstone VALUES ('public.item', $1, $2, NULL, $3), ('public.stock', $1, $2, NULL, $3)`,
				fmt.Sprintf(`{"id": %d}`, k), ts, node)
		}
	}
	local := func(k int) {
		f.exec("INSERT INTO item VALUES ($1::int, 'e' || $1::int, 'L', 1)", k)
		f.exec("INSERT INTO stock VALUES ($1, 'L', 10)", k)
	}
	states := []func(k int){
		func(k int) {}, // absent
		tombstone("n1", at(-h)),
		tombstone("n2", at(h)),
		func(k int) { // deleted locally
			local(k)
			f.exec("DELETE FROM item WHERE id = $1", k)
			f.exec("DELETE FROM stock WHERE id = $1", k)
		},
		func(k int) { write("n1", at(-h), k, "A") },
		func(k int) { write("n2", at(-h), k, "B") },
		func(k int) { write("n2", at(0), k, "B") },
		func(k int) { write("n2", at(h), k, "B") },
		local,
	}
	for k, s := range states {
		s(k + 1)
	}
	f.writeAs("n2", at(-h), "INSERT INTO item VALUES (1000, 'taken', 'T', 1)")
	f.writeAs("n2", at(-h), "INSERT INTO ev VALUES (1, 'taken')")
	f.exec(SeenSQL(), "n1", "n2", at(-30*time.Minute))
	f.exec(SeenSQL(), "n1", "n3", at(3*h))
	f.exec(SeenSQL(), "n2", "n1", at(-h))

	item, stock, ev := f.table("item", nil), f.table("stock", nil), f.table("ev", nil)
	stock.DeltaColumns = []string{"qty"}
	type change struct {
		name       string
		fast, full func(Table) string
		table      Table
		args       func(k int) []any
	}
	upd := func(set ...string) (func(Table) string, func(Table) string) {
		return func(t Table) string { return UpdateSQL(t, set) }, func(t Table) string { return updateFull(t, set, direct) }
	}
	all := []string{"id", "email", "name", "qty"}
	changes := []change{
		{name: "insert", table: item, args: func(k int) []any { return []any{k, fmt.Sprint("e", k), "R", 5} }},
		{name: "insert taken email", table: item, args: func(k int) []any { return []any{k, "taken", "R", 5} }},
		{name: "update", table: item, args: func(k int) []any { return []any{k, k, fmt.Sprint("e", k), "R", 5} }},
		{name: "update new email", table: item, args: func(k int) []any { return []any{k, k, fmt.Sprint("new", k), "R", 5} }},
		{name: "update NULL email", table: item, args: func(k int) []any { return []any{k, k, nil, "R", 5} }},
		{name: "update taken email", table: item, args: func(k int) []any { return []any{k, k, "taken", "R", 5} }},
		{name: "update moves the key", table: item, args: func(k int) []any { return []any{k, k + 500, fmt.Sprint("e", k), "R", 5} }},
		{name: "update onto a taken key", table: item, args: func(k int) []any { return []any{k, 1000, fmt.Sprint("e", k), "R", 5} }},
		{name: "update without qty", table: item, args: func(k int) []any { return []any{k, k, fmt.Sprint("e", k), "R"} }},
		{name: "delete", table: item, args: func(k int) []any { return []any{k} }},
		{name: "delta: qty only", table: stock, args: func(k int) []any { return []any{k, k, "B", 13, 10} }},
		{name: "delta: rename", table: stock, args: func(k int) []any { return []any{k, k, "R", 13, 10} }},
		{name: "keyless insert", table: ev, args: func(k int) []any { return []any{k, fmt.Sprint("b", k)} }},
		{name: "keyless insert taken", table: ev, args: func(k int) []any { return []any{k, "taken"} }},
	}
	for i := range changes {
		c := &changes[i]
		switch {
		case strings.HasPrefix(c.name, "insert"), strings.HasPrefix(c.name, "keyless"):
			c.fast, c.full = InsertSQL, func(t Table) string { return insertFull(t, direct) }
		case c.name == "delete":
			c.fast, c.full = DeleteSQL, func(t Table) string { return deleteFull(t, direct) }
		case c.name == "update without qty":
			c.fast, c.full = upd("id", "email", "name")
		case c.table.Name == "stock":
			c.fast, c.full = upd("id", "name", "qty")
		default:
			c.fast, c.full = upd(all...)
		}
	}
	type policy struct {
		name  string
		mod   func(*Table)
		times []time.Duration // remote commit times
	}
	policies := []policy{
		{"last_update_wins", func(*Table) {}, []time.Duration{-2 * h, -h, 0, 2 * h}},
		{"delete_wins", func(t *Table) { t.DeleteWins = true }, []time.Duration{-2 * h, 2 * h}},
		{"first_update_wins", func(t *Table) { t.Policy = config.FirstUpdateWins }, []time.Duration{-2 * h, 2 * h}},
		{"keep_local", func(t *Table) { t.Policy = config.KeepLocal }, []time.Duration{-2 * h, 2 * h}},
		{"apply_remote", func(t *Table) { t.Policy = config.ApplyRemote }, []time.Duration{-2 * h, 2 * h}},
		{"error", func(t *Table) { t.Policy = config.PolicyError }, []time.Duration{-2 * h, 2 * h}},
	}
	runs, fell := 0, 0
	for _, node := range []string{"n1", "n2"} {
		s := newRollbackSession(t, f, node)
		for _, p := range policies {
			if node == "n2" && p.name != "last_update_wins" {
				continue
			}
			for _, c := range changes {
				tbl := c.table
				p.mod(&tbl)
				// The other policies and the other node change only the
				// decisions on conflicts, which the main shapes reach.
				if (p.name != "last_update_wins" || node != "n1") && !slices.Contains([]string{"insert", "update", "delete", "delta: rename"}, c.name) {
					continue
				}
				if p.name != "last_update_wins" && c.table.Name == "stock" {
					continue
				}
				fast, full := c.fast(tbl), c.full(tbl)
				for _, off := range p.times {
					for k := 1; k <= len(states); k++ {
						args := append([]any{at(off).Format(time.RFC3339Nano), node, "0/10"}, c.args(k)...)
						got, fellBack := s.outcome(fast, args)
						want, _ := s.outcome(full, args)
						runs++
						if fellBack {
							fell++
						}
						if got != want {
							t.Errorf("%s, %s, state %d, from %s at %v:\nfast path: %s\nfull:      %s", p.name, c.name, k, node, off, got, want)
						}
					}
				}
			}
		}
	}
	// Both paths were taken: the comparison is not vacuous.
	if fell == 0 || fell == runs {
		t.Errorf("%d of %d changes fell back to the full statement, want some but not all", fell, runs)
	}
	t.Logf("%d changes compared, %d fell back", runs, fell)
}

// rollbackSession applies statements as node in transactions that it rolls
// back after reading their outcome.
type rollbackSession struct {
	t        *testing.T
	conn     *pgx.Conn
	prepared map[string]bool
}

func newRollbackSession(t *testing.T, f *fixture, node string) *rollbackSession {
	t.Helper()
	ctx := context.Background()
	// track_functions counts the calls of resolve_change: a superuser
	// parameter, granted to pgmesh's role for this test.
	if _, err := f.env.Admin(t, 0).Exec(ctx, "GRANT SET ON PARAMETER track_functions TO pgmesh"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, sql := range []string{"SET session_replication_role = replica", "SET plan_cache_mode = force_generic_plan", "SET track_functions = 'pl'",
		"SELECT pg_replication_origin_session_setup('pgmesh_" + node + "')"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { conn.Exec(context.Background(), "SELECT pg_replication_origin_session_reset()") }) //nolint:errcheck // released on close anyway
	return &rollbackSession{t: t, conn: conn, prepared: map[string]bool{}}
}

const outcomeSQL = `SELECT concat_ws(E'\n',
	(SELECT string_agg(format('%s:%s:%s:%s', id, email, name, qty), ' ' ORDER BY id) FROM item),
	(SELECT string_agg(format('%s:%s:%s', id, name, qty), ' ' ORDER BY id) FROM stock),
	(SELECT string_agg(format('%s:%s', a, b), ' ' ORDER BY a, b) FROM ev),
	(SELECT string_agg(format('%s/%s/%s/%s/%s/%s/%s/%s/%s/%s/%s', table_name, kind, resolution, key, local_row, remote_row,
	                          local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn), E'\n' ORDER BY id)
	   FROM pgmesh.conflict_log),
	(SELECT string_agg(format('%s/%s/%s/%s/%s', table_name, key, deleted_at, xid IS NULL, node), ' ' ORDER BY table_name, key::text)
	   FROM pgmesh.tombstone))`

// outcome runs sql with args (as text) in a transaction and returns its
// verdict or error and the tables it may have changed, and whether it
// called pgmesh.resolve_change; then rolls back.
func (s *rollbackSession) outcome(sql string, args []any) (string, bool) {
	s.t.Helper()
	ctx := context.Background()
	pc := s.conn.PgConn()
	name := fmt.Sprintf("t%x", sha256.Sum256([]byte(sql)))[:30]
	if !s.prepared[name] {
		if err := prepareFallbacks(ctx, pc, sql); err != nil {
			s.t.Fatalf("prepare: %v\n%s", err, sql)
		}
		if _, err := pc.Prepare(ctx, name, sql, nil); err != nil {
			s.t.Fatalf("prepare: %v\n%s", err, sql)
		}
		s.prepared[name] = true
	}
	params := make([][]byte, len(args))
	for i, a := range args {
		if a != nil {
			params[i] = []byte(fmt.Sprint(a))
		}
	}
	// Pending function statistics survive the transactions until they are
	// flushed (between transactions): count the calls of this one.
	const calls = "SELECT coalesce(sum(calls), 0)::text FROM pg_stat_xact_user_functions WHERE funcname = 'resolve_change'"
	begin, err := pc.Exec(ctx, "BEGIN; "+calls).ReadAll()
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() {
		if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			s.t.Fatal(err)
		}
	}()
	res := pc.ExecPrepared(ctx, name, params, nil, nil).Read()
	if res.Err != nil {
		return "error: " + res.Err.Error(), true
	}
	if len(res.Rows) != 1 {
		return fmt.Sprintf("%d rows", len(res.Rows)), false
	}
	after, err := pc.Exec(ctx, outcomeSQL+"; "+calls).ReadAll()
	if err != nil {
		s.t.Fatal(err)
	}
	return fmt.Sprintf("verdict %s/%s\n%s", res.Rows[0][0], res.Rows[0][1], after[0].Rows[0][0]),
		string(after[1].Rows[0][0]) != string(begin[1].Rows[0][0])
}

// A row inserted by a local transaction that commits while the remote
// insert of the same key waits for it: the insert does not fail on the
// duplicate key but falls back to the full statement, which sees the
// committed row (a fresh snapshot) and resolves insert_exists. (The full
// statement alone found no row in its snapshot and failed on the key.)
func TestConcurrentLocalInsert(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	v, err := whileLocalWrites(t, f, "INSERT INTO item VALUES (1, 'a', 'W')", func() (verdict, error) {
		return f.apply("n1", time.Now().Add(-time.Hour), InsertSQL(tbl), vals(1, "a", "R", 0)...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if v != (verdict{InsertExists, KeepLocal}) {
		t.Errorf("verdict %+v, want insert_exists/keep_local", v)
	}
	if got := f.rows(); got != "1:a:W:0" {
		t.Errorf("rows %q, want 1:a:W:0", got)
	}
	if l := f.logRows(); !slices.Equal(l, []string{"insert_exists/keep_local/n3/n1/W/R"}) {
		t.Errorf("log %v", l)
	}
}

// The fast path's conditions hold for the row version its snapshot sees
// (the remote node wrote it), but a local transaction updates the row and
// commits while the remote update waits for the row lock: the conditions
// are checked again on the committed version (EvalPlanQual), which the
// remote node had not seen, so the full statement decides: the local write
// is newer and stays, and the conflict is logged.
func TestConcurrentLocalWriterFastPath(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	now := time.Now()
	f.writeAs("n1", now.Add(-2*time.Hour), "INSERT INTO item VALUES (1, 'a', 'A')")
	v, err := whileLocalWrites(t, f, "UPDATE item SET name = 'W' WHERE id = 1", func() (verdict, error) {
		return f.apply("n1", now.Add(-time.Hour), UpdateSQL(tbl, tbl.Columns), vals(1, 1, "a", "R", 0)...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if v != (verdict{UpdateOriginDiffers, KeepLocal}) {
		t.Errorf("verdict %+v, want update_origin_differs/keep_local", v)
	}
	if got := f.rows(); got != "1:a:W:0" {
		t.Errorf("rows %q, want 1:a:W:0", got)
	}
	if l := f.logRows(); !slices.Equal(l, []string{"update_origin_differs/keep_local/n3/n1/W/R"}) {
		t.Errorf("log %v", l)
	}
}

// whileLocalWrites runs sql in a local transaction, starts apply, waits
// until apply waits for that transaction, commits it and returns what apply
// returned.
func whileLocalWrites(t *testing.T, f *fixture, sql string, apply func() (verdict, error)) (verdict, error) {
	t.Helper()
	ctx := context.Background()
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
	if _, err := tx.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	type result struct {
		v   verdict
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := apply()
		done <- result{v, err}
	}()
	for waiting := false; !waiting; {
		if err := f.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND $1 = ANY (pg_blocking_pids(pid)))", pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-done:
			t.Fatalf("apply did not wait for the local transaction: %+v %v", r.v, r.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	return r.v, r.err
}

// The full statement is prepared once per session (Fallbacks) and runs in
// every transaction, also after one that ran it rolled back (which forgets
// resolve_change's marker but not the prepared statement): it is never
// prepared again, under any name.
func TestFallbackPreparedOncePerSession(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	ctx := context.Background()
	f.exec("INSERT INTO item VALUES (1, 'a', 'L'), (2, 'b', 'L')")
	conn, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{"SET session_replication_role = replica", "SELECT pg_replication_origin_session_setup('pgmesh_n1')"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	defer conn.Exec(ctx, "SELECT pg_replication_origin_session_reset()") //nolint:errcheck // released on close anyway
	upd := UpdateSQL(tbl, tbl.Columns)
	ts := time.Now().Add(time.Hour)
	for i, step := range []struct {
		id     int
		commit bool
	}{{1, false}, {1, true}, {2, true}} {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_replication_origin_xact_setup('0/10', $1)", ts); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprint(step.id)
		params := [][]byte{[]byte(ts.Format(time.RFC3339Nano)), []byte("n1"), []byte("0/10"), []byte(id), []byte(id), []byte("x" + id), []byte("R"), []byte("0")}
		res := execStatement(ctx, conn.PgConn(), upd, params)
		if res.Err != nil {
			t.Fatalf("step %d: %v", i, res.Err)
		}
		if v := (verdict{string(res.Rows[0][0]), string(res.Rows[0][1])}); v != (verdict{UpdateOriginDiffers, ApplyRemote}) {
			t.Errorf("step %d: verdict %+v, want update_origin_differs/apply_remote", i, v)
		}
		end := "ROLLBACK"
		if step.commit {
			end = "COMMIT"
		}
		if _, err := conn.Exec(ctx, end); err != nil {
			t.Fatal(err)
		}
	}
	var prepared int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'pgmesh\\_%'").Scan(&prepared); err != nil {
		t.Fatal(err)
	}
	if prepared != 1 {
		t.Errorf("%d full statements prepared, want 1", prepared)
	}
	if got := f.rows(); got != "1:x1:R:0 2:x2:R:0" {
		t.Errorf("rows %q", got)
	}
	if l := f.logRows(); len(l) != 2 {
		t.Errorf("log %v, want the two committed conflicts", l)
	}
}

// A fast statement names the full statement it falls back to: a session
// that has not prepared it gets an error saying so, never a decision made
// without it.
func TestFallbackNotPrepared(t *testing.T) {
	f := newFixture(t, itemDDL)
	tbl := f.table("item", nil)
	f.exec("INSERT INTO item VALUES (1, 'a', 'L')")
	err := f.session("n1", time.Now(), func(ctx context.Context, conn *pgx.Conn) error {
		params := [][]byte{[]byte(time.Now().Format(time.RFC3339Nano)), []byte("n1"), []byte("0/10"), []byte("1"), []byte("a"), []byte("R"), []byte("0")}
		return conn.PgConn().ExecParams(ctx, InsertSQL(tbl), params, nil, nil, nil).Read().Err
	})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "26000" || !strings.Contains(pe.Message, "is not prepared in this session") {
		t.Fatalf("insert over an existing row without its fallback prepared: got %v, want SQLSTATE 26000 naming the statement", err)
	}
	if got := f.rows(); got != "1:a:L:0" {
		t.Errorf("rows %q", got)
	}
}
