package conflict

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Several inserts in one InsertManySQL statement do what the same inserts
// do one InsertSQL statement each: same rows, same verdicts for the same
// rows, same conflict log (in any order: the rows are independent), same
// tombstones. The rows meet every state the fast-path test knows: absent,
// tombstones of either side, rows of the remote node, of another node
// seen or not, local rows, a unique value held by another row.
func TestInsertManyMatchesInsert(t *testing.T) {
	f := newFixture(t, itemDDL, "CREATE TABLE ev (a int, b text)", "ALTER TABLE ev REPLICA IDENTITY FULL")
	base := time.Now().Truncate(time.Microsecond)
	at := func(d time.Duration) time.Time { return base.Add(d) }
	const h = time.Hour
	write := func(node string, ts time.Time, k int, name string) {
		f.writeAs(node, ts, "INSERT INTO item VALUES ($1::int, 'e' || $1::int, $2, 1)", k, name)
	}
	tombstone := func(node string, ts time.Time, k int) {
		f.exec(`INSERT INTO pgmesh.tombstone VALUES ('public.item', $1, $2, NULL, $3)`, fmt.Sprintf(`{"id": %d}`, k), ts, node)
	}
	tombstone("n1", at(-h), 2)
	tombstone("n2", at(h), 3)
	write("n1", at(-h), 4, "A")
	write("n2", at(-h), 5, "B")
	write("n2", at(h), 6, "B")
	f.exec("INSERT INTO item VALUES (7, 'e7', 'L', 1)")
	write("n2", at(-h), 1000, "T")
	f.exec("UPDATE item SET email = 'taken' WHERE id = 1000")
	f.exec(SeenSQL(), "n1", "n2", at(-30*time.Minute))
	f.exec(SeenSQL(), "n2", "n1", at(-h))

	// Keys 1..8 (1 and 8 absent), 20 with a unique value held by 1000, 21
	// free.
	var rows [][]string
	for _, k := range []int{1, 2, 3, 4, 5, 6, 7, 8} {
		rows = append(rows, []string{fmt.Sprint(k), fmt.Sprint("e", k), "R", "5"})
	}
	rows = append(rows, []string{"20", "taken", "R", "5"}, []string{"21", "e21", "R", "5"})
	item := f.table("item", nil)
	one, many := InsertSQL(item), InsertManySQL(item)

	ctx := context.Background()
	conflicts := 0
	sessions := map[string]*pgx.Conn{}
	for _, node := range []string{"n1", "n2"} {
		conn := replicaSession(t, f, node)
		sessions[node] = conn
		for _, sql := range []string{one, many} {
			if err := prepareFallbacks(ctx, conn.PgConn(), sql); err != nil {
				t.Fatal(err)
			}
		}
		for _, off := range []time.Duration{-2 * h, 2 * h} {
			head := []string{at(off).Format(time.RFC3339Nano), node, "0/10"}
			var seq []string
			want := inTxn(t, conn, func() {
				for i, r := range rows {
					res := conn.PgConn().ExecParams(ctx, one, textParams(append(head, r...)), nil, nil, nil).Read()
					if res.Err != nil {
						t.Fatalf("row %d: %v", i+1, res.Err)
					}
					if v := res.Rows[0]; v[0] != nil {
						seq = append(seq, fmt.Sprintf("%d:%s/%s", i+1, v[0], v[1]))
					}
				}
			})
			var batch []string
			got := inTxn(t, conn, func() {
				params := textParams(head)
				for c := range rows[0] {
					var col []string
					for _, r := range rows {
						col = append(col, r[c])
					}
					params = append(params, []byte(textArray(col)))
				}
				res := conn.PgConn().ExecParams(ctx, many, params, nil, nil, nil).Read()
				if res.Err != nil {
					t.Fatalf("batch: %v", res.Err)
				}
				for _, v := range res.Rows {
					batch = append(batch, fmt.Sprintf("%s:%s/%s", v[0], v[1], v[2]))
				}
			})
			slices.Sort(seq)
			slices.Sort(batch)
			if !slices.Equal(batch, seq) || got != want {
				t.Errorf("from %s at %v:\nbatch verdicts %q\none by one     %q\nbatch state:\n%s\none by one:\n%s", node, off, batch, seq, got, want)
			}
			conflicts += len(seq)
		}
	}
	// Some rows met conflicts, others not: the comparison covers both.
	if conflicts == 0 || conflicts == 4*len(rows) {
		t.Errorf("%d of %d inserts met a conflict, want some but not all", conflicts, 4*len(rows))
	}

	// A table without a key or unique index: every row is inserted.
	ev := f.table("ev", nil)
	conn := sessions["n1"]
	if err := prepareFallbacks(ctx, conn.PgConn(), InsertManySQL(ev)); err != nil {
		t.Fatal(err)
	}
	got := inTxn(t, conn, func() {
		params := textParams([]string{at(0).Format(time.RFC3339Nano), "n1", "0/10", textArray([]string{"1", "1", "2"}), textArray([]string{"x", "x", "y"})})
		if res := conn.PgConn().ExecParams(ctx, InsertManySQL(ev), params, nil, nil, nil).Read(); res.Err != nil || len(res.Rows) != 0 {
			t.Fatalf("key-less batch: %v, %d rows", res.Err, len(res.Rows))
		}
	})
	if !strings.Contains(got, "ev 1:x 1:x 2:y") {
		t.Errorf("key-less batch left %q, want the three rows", got)
	}
}

// replicaSession is an apply-like session of node: replica role, the
// node's origin, generic plans.
func replicaSession(t *testing.T, f *fixture, node string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, sql := range []string{"SET session_replication_role = replica", "SET plan_cache_mode = force_generic_plan",
		"SELECT pg_replication_origin_session_setup('pgmesh_" + node + "')"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { conn.Exec(context.Background(), "SELECT pg_replication_origin_session_reset()") }) //nolint:errcheck // released on close anyway
	return conn
}

// inTxn runs fn in a transaction on conn and returns the state it left
// (item, ev, the conflict log sorted, tombstones), then rolls back.
func inTxn(t *testing.T, conn *pgx.Conn, fn func()) string {
	t.Helper()
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
			t.Fatal(err)
		}
	}()
	fn()
	var s string
	err := conn.QueryRow(ctx, `SELECT concat_ws(E'\n',
		'item ' || (SELECT string_agg(format('%s:%s:%s:%s', id, email, name, qty), ' ' ORDER BY id) FROM item),
		'ev ' || (SELECT string_agg(format('%s:%s', a, b), ' ' ORDER BY a, b) FROM ev),
		(SELECT string_agg(format('%s/%s/%s/%s/%s/%s/%s/%s/%s/%s', table_name, kind, resolution, key, local_row, remote_row,
		                          local_commit_time, remote_commit_time, local_origin, remote_origin), E'\n' ORDER BY key::text, kind)
		   FROM pgmesh.conflict_log),
		(SELECT string_agg(format('%s/%s/%s/%s', table_name, key, xid IS NULL, node), ' ' ORDER BY table_name, key::text)
		   FROM pgmesh.tombstone))`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func textParams(vs []string) [][]byte {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i] = []byte(v)
	}
	return out
}

// textArray is vs as a text[] literal.
func textArray(vs []string) string {
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
	}
	return "{" + strings.Join(q, ",") + "}"
}
