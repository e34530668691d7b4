package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

const itemDDL = `CREATE TABLE item (id int PRIMARY KEY, email text UNIQUE, v text, doc text)`

// write is one statement run on a node (0-based) while no agent runs.
// hidden statements are not replicated (see hiddenExec).
type write struct {
	node   int
	sql    string
	hidden bool
}

// logWant is one expected row of pgmesh.conflict_log. Resolution "" is
// any: on n3, which receives the changes of n1 and n2 in either order,
// which side wins by timestamps is fixed but how it shows (the local row
// loses, or the remote one) is not. loser is column v of the image that
// lost ("-" for none: a delete, a missing row).
type logWant struct {
	kinds      []string
	resolution string
	loser      string
}

func lw(kind, resolution, loser string) logWant {
	return logWant{kinds: strings.Split(kind, "|"), resolution: resolution, loser: loser}
}

// TestConflictTable makes each row of the README's conflict table happen for real:
// rows are seeded through the mesh, then the agent is stopped, the nodes
// write concurrently (the later statement has the later commit time), and
// the agent is started again. Every case has its own keys, so they share
// one mesh. Expected: the final rows on every node and the conflict_log
// rows (kind, resolution, losing image) on each node.
func TestConflictTable(t *testing.T) {
	cases := []struct {
		name   string
		ids    []int
		seed   bool // row ids[0] inserted by n1 (v 'seed') and replicated before the writes
		writes []write
		final  [3]map[int]string // per node: id → v
		logs   [3][]logWant
	}{
		{name: "insert absent", ids: []int{1},
			writes: []write{{0, "INSERT INTO item (id, email, v) VALUES (1, 'e1', 'n1')", false}},
			final:  all(map[int]string{1: "n1"})},
		{name: "insert_exists: the newer insert wins", ids: []int{2},
			writes: []write{{0, "INSERT INTO item (id, email, v) VALUES (2, 'e2', 'n1')", false}, {1, "INSERT INTO item (id, email, v) VALUES (2, 'e2', 'n2')", false}},
			final:  all(map[int]string{2: "n2"}),
			logs: [3][]logWant{{lw("insert_exists", "apply_remote", "n1")}, {lw("insert_exists", "keep_local", "n1")},
				{lw("insert_exists", "", "n1")}}},
		{name: "update of an older row seen before: no conflict", ids: []int{3}, seed: true,
			writes: []write{{1, "UPDATE item SET v = 'n2' WHERE id = 3", false}},
			final:  all(map[int]string{3: "n2"})},
		{name: "update_origin_differs: the newer update wins", ids: []int{4}, seed: true,
			writes: []write{{1, "UPDATE item SET v = 'n2' WHERE id = 4", false}, {0, "UPDATE item SET v = 'n1' WHERE id = 4", false}},
			final:  all(map[int]string{4: "n1"}),
			logs: [3][]logWant{{lw("update_origin_differs", "keep_local", "n2")}, {lw("update_origin_differs", "apply_remote", "n2")},
				{lw("update_origin_differs", "", "n2")}}},
		{name: "update_deleted: an update older than a delete is skipped", ids: []int{5}, seed: true,
			writes: []write{{1, "UPDATE item SET v = 'n2' WHERE id = 5", false}, {0, "DELETE FROM item WHERE id = 5", false}},
			final:  all(map[int]string{}),
			logs: [3][]logWant{{lw("update_deleted", "keep_local", "n2")}, {lw("delete_origin_differs", "apply_remote", "n2")},
				{lw("update_deleted|delete_origin_differs", "", "n2")}}},
		{name: "update_missing: the full row is inserted", ids: []int{6}, seed: true,
			writes: []write{{2, "DELETE FROM item WHERE id = 6", true}, {0, "UPDATE item SET v = 'n1' WHERE id = 6", false}},
			final:  all(map[int]string{6: "n1"}),
			logs:   [3][]logWant{nil, nil, {lw("update_missing", "apply_remote", "-")}}},
		{name: "update_missing with unchanged TOAST: logged and skipped", ids: []int{7}, seed: true,
			writes: []write{{2, "DELETE FROM item WHERE id = 7", true}, {0, "UPDATE item SET v = 'n1' WHERE id = 7", false}},
			final:  [3]map[int]string{{7: "n1"}, {7: "n1"}, {}},
			logs:   [3][]logWant{nil, nil, {lw("update_missing", "skip_incomplete", "n1")}}},
		{name: "delete of an older row seen before: no conflict", ids: []int{8}, seed: true,
			writes: []write{{1, "DELETE FROM item WHERE id = 8", false}},
			final:  all(map[int]string{})},
		{name: "delete_origin_differs: a newer update keeps the row", ids: []int{9}, seed: true,
			writes: []write{{1, "DELETE FROM item WHERE id = 9", false}, {0, "UPDATE item SET v = 'n1' WHERE id = 9", false}},
			final:  all(map[int]string{9: "n1"}),
			logs: [3][]logWant{{lw("delete_origin_differs", "keep_local", "-")}, {lw("update_deleted", "apply_remote", "-")},
				{lw("delete_origin_differs|update_deleted", "", "-")}}},
		{name: "delete_missing: logged, tombstone kept", ids: []int{10}, seed: true,
			writes: []write{{0, "DELETE FROM item WHERE id = 10", false}, {1, "DELETE FROM item WHERE id = 10", false}},
			final:  all(map[int]string{}),
			logs:   [3][]logWant{{lw("delete_missing", "skip", "-")}, {lw("delete_missing", "skip", "-")}, {lw("delete_missing", "skip", "-")}}},
		{name: "unique_conflict: same email under two keys, the newer row wins", ids: []int{11, 12},
			writes: []write{{0, "INSERT INTO item (id, email, v) VALUES (11, 'same@x', 'n1')", false},
				{1, "INSERT INTO item (id, email, v) VALUES (12, 'same@x', 'n2')", false}},
			final: all(map[int]string{12: "n2"}),
			logs: [3][]logWant{{lw("unique_conflict", "apply_remote", "n1")}, {lw("unique_conflict", "keep_local", "n1")},
				{lw("unique_conflict", "", "n1")}}},
	}

	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, itemDDL)
	cs := conns(t, env, 3)
	ctx := context.Background()

	agent := startAgent(t, env.ConfigPath)
	var seeds []int
	for _, tc := range cases {
		if tc.seed {
			seeds = append(seeds, tc.ids[0])
		}
	}
	// One transaction. The TOAST case (7) needs a value stored out of line
	// (incompressible, over 2 kB), which updates then leave unsent.
	env.Exec(t, 0, `INSERT INTO item (id, email, v, doc)
		SELECT id, 'e' || id, 'seed',
		       CASE WHEN id = 7 THEN (SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 400) g) END
		  FROM unnest($1::int[]) id`, seeds)
	eventually(t, 90*time.Second, "seed rows on every node", func() (bool, string) {
		var counts []int
		for _, c := range cs {
			var n int
			if err := c.QueryRow(ctx, `SELECT count(*) FROM item`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			counts = append(counts, n)
		}
		return slices.Equal(counts, []int{len(seeds), len(seeds), len(seeds)}), fmt.Sprint(counts)
	})
	agent.stop()

	for _, tc := range cases {
		for _, w := range tc.writes {
			if w.hidden {
				hiddenExec(t, env, w.node, w.sql)
			} else {
				env.Exec(t, w.node, w.sql)
			}
		}
	}
	startAgent(t, env.ConfigPath)

	// Wait until every node has every case's rows and log, then once more
	// after a pause: nothing may change afterwards.
	check := func() (bool, string) {
		for _, tc := range cases {
			for n := range 3 {
				if got := itemRows(t, cs[n], tc.ids); !equalRows(got, tc.final[n]) {
					return false, fmt.Sprintf("%s: n%d rows %v, want %v", tc.name, n+1, got, tc.final[n])
				}
				if got := logRows(t, cs[n], tc.ids); !matchLog(got, tc.logs[n]) {
					return false, fmt.Sprintf("%s: n%d conflict_log %q, want %v", tc.name, n+1, got, tc.logs[n])
				}
			}
		}
		return true, ""
	}
	eventually(t, 90*time.Second, "every case resolved on every node", check)
	time.Sleep(2 * time.Second)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for n := range 3 {
				if got := itemRows(t, cs[n], tc.ids); !equalRows(got, tc.final[n]) {
					t.Errorf("n%d rows %v, want %v", n+1, got, tc.final[n])
				}
				if got := logRows(t, cs[n], tc.ids); !matchLog(got, tc.logs[n]) {
					t.Errorf("n%d conflict_log %q, want %v", n+1, got, tc.logs[n])
				}
			}
		})
	}
	// No conflict stopped a link: a new row still reaches every node.
	env.Exec(t, 0, `INSERT INTO item (id, email, v) VALUES (100, 'after', 'n1')`)
	waitValue(t, cs, []int{0, 1, 2}, 100, "n1")

	// Deletes left tombstones on every node (6 and 7 were deleted on n3
	// without a trace, 9 depends on the order n3 received the changes).
	for n, c := range cs {
		rows, err := c.Query(ctx, `SELECT (key->>'id')::int FROM pgmesh.tombstone WHERE table_name = 'public.item' ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []int{5, 8, 10} {
			if !slices.Contains(keys, k) {
				t.Errorf("n%d tombstones %v lack %d", n+1, keys, k)
			}
		}
	}
}

func all(rows map[int]string) [3]map[int]string { return [3]map[int]string{rows, rows, rows} }

// hiddenExec runs sql on a node in a session that replicates nothing: under
// a replication origin (never sent to peers) in replica role (no tombstone
// trigger), as if the row had never reached this node.
func hiddenExec(t *testing.T, env *sandboxtest.Env, node int, sql string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, env.DSNs[node])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	const origin = "e2e_hidden"
	for _, q := range []string{
		"SELECT pg_replication_origin_create('" + origin + "') WHERE pg_replication_origin_oid('" + origin + "') IS NULL",
		"SELECT pg_replication_origin_session_setup('" + origin + "')",
		"SET session_replication_role = replica",
		sql,
		"SELECT pg_replication_origin_session_reset()",
		"SELECT pg_replication_origin_drop('" + origin + "')",
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("n%d: %s: %v", node+1, q, err)
		}
	}
}

func itemRows(t testing.TB, c *pgx.Conn, ids []int) map[int]string {
	t.Helper()
	rows, err := c.Query(context.Background(), `SELECT id, coalesce(v, '∅') FROM item WHERE id = ANY($1)`, ids)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for rows.Next() {
		var id int
		var v string
		if err := rows.Scan(&id, &v); err != nil {
			t.Fatal(err)
		}
		out[id] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func equalRows(a, b map[int]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// logRows returns the conflict_log rows about keys ids as
// "kind/resolution/loser", loser being v of the image that lost.
func logRows(t testing.TB, c *pgx.Conn, ids []int) []string {
	t.Helper()
	rows, err := c.Query(context.Background(), `
SELECT kind || '/' || resolution || '/' ||
       coalesce(CASE WHEN resolution = 'apply_remote' THEN local_row ELSE remote_row END ->> 'v', '-')
  FROM pgmesh.conflict_log
 WHERE table_name = 'public.item' AND (key->>'id')::int = ANY($1)
 ORDER BY id`, ids)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func matchLog(got []string, want []logWant) bool {
	if len(got) != len(want) {
		return false
	}
	for i, w := range want {
		parts := strings.Split(got[i], "/")
		if len(parts) != 3 || !slices.Contains(w.kinds, parts[0]) ||
			(w.resolution != "" && parts[1] != w.resolution) || parts[2] != w.loser {
			return false
		}
	}
	return true
}

// totalLog counts the conflict_log rows of a node.
func totalLog(t testing.TB, c *pgx.Conn) int {
	t.Helper()
	var n int
	if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pgmesh.conflict_log`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitValue waits until row id of item has v on the given nodes.
func waitValue(t testing.TB, cs []*pgx.Conn, nodes []int, id int, v string) {
	t.Helper()
	eventually(t, 90*time.Second, fmt.Sprintf("item %d = %q on nodes %v", id, v, nodes), func() (bool, string) {
		for _, n := range nodes {
			got := itemRows(t, cs[n], []int{id})
			if got[id] != v {
				return false, fmt.Sprintf("n%d: %v", n+1, got)
			}
		}
		return true, ""
	})
}

// TestCausalUpdatesAreNoConflict: every change below was made knowing the
// previous one, so no node logs a conflict, whichever order n3 receives
// the changes of n1 and n2 in (links are independent: there is no causal
// delivery across them).
//
// In order: n1 inserts, n2 updates the row after receiving it, n3 (whose
// agent was stopped meanwhile) receives the update, then updates the row
// itself, and n1 deletes it after receiving that.
//
// Out of order: n3's link from n1 is blocked (its agent runs with a config
// in which n1 is unreachable) while n1 inserts rows 11 and 12 and n2,
// after receiving them, updates 11 and deletes 12. n3 gets n2's changes
// first (an update and a delete of rows it does not have yet, whose insert
// n2 had seen), then, unblocked, n1's inserts (older than what n2 made of
// them). Row 13 is the control: n1 and n3 insert it concurrently, which is
// logged.
func TestCausalUpdatesAreNoConflict(t *testing.T) {
	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, itemDDL)
	cs := conns(t, env, 3)
	for _, n := range []string{"n1", "n2"} {
		startAgent(t, env.ConfigPath, "--node", n)
	}
	a3 := startAgent(t, env.ConfigPath, "--node", "n3")

	env.Exec(t, 0, `INSERT INTO item (id, email, v) VALUES (1, 'a', 'n1')`)
	waitValue(t, cs, []int{1, 2}, 1, "n1")
	a3.stop()
	env.Exec(t, 1, `UPDATE item SET v = 'n2' WHERE id = 1`)
	waitValue(t, cs, []int{0}, 1, "n2")
	a3 = startAgent(t, env.ConfigPath, "--node", "n3")
	waitValue(t, cs, []int{2}, 1, "n2")
	env.Exec(t, 2, `UPDATE item SET v = 'n3' WHERE id = 1`)
	waitValue(t, cs, []int{0, 1}, 1, "n3")
	env.Exec(t, 0, `DELETE FROM item WHERE id = 1`)
	if st := waitConverged(t, env, cs, "item", "id"); st.Rows != 0 {
		t.Fatalf("%d rows left after the delete", st.Rows)
	}

	// Out of order.
	a3.stop()
	blocked := *env.Config
	blocked.Nodes = slices.Clone(env.Config.Nodes)
	blocked.Nodes[0].DSN = regexp.MustCompile(`port=[0-9]+`).ReplaceAllString(blocked.Nodes[0].DSN, fmt.Sprintf("port=%d", closedPort(t)))
	a3 = startAgent(t, writeConfig(t, &blocked), "--node", "n3")
	env.Exec(t, 0, `INSERT INTO item (id, email, v) VALUES (11, 'e11', 'n1'), (12, 'e12', 'n1'), (13, 'e13', 'n1')`)
	env.Exec(t, 2, `INSERT INTO item (id, email, v) VALUES (13, 'x13', 'n3')`)
	waitValue(t, cs, []int{1}, 11, "n1")
	env.Exec(t, 1, `UPDATE item SET v = 'n2' WHERE id = 11`)
	env.Exec(t, 1, `DELETE FROM item WHERE id = 12`)
	// n3 has n2's version of 11 and its delete of 12, not n1's inserts.
	eventually(t, 90*time.Second, "n2's changes on n3", func() (bool, string) {
		var v string
		var tomb bool
		if err := cs[2].QueryRow(context.Background(), `SELECT coalesce((SELECT v FROM item WHERE id = 11), '-'),
			EXISTS (SELECT FROM pgmesh.tombstone WHERE table_name = 'public.item' AND key = '{"id": 12}')`).Scan(&v, &tomb); err != nil {
			t.Fatal(err)
		}
		return v == "n2" && tomb, fmt.Sprintf("item 11 %q, tombstone of 12 %t", v, tomb)
	})
	if got := itemRows(t, cs[2], []int{13}); !equalRows(got, map[int]string{13: "n3"}) {
		t.Fatalf("n3 received n1's changes through the blocked link: item 13 %v", got)
	}
	a3.stop()
	startAgent(t, env.ConfigPath, "--node", "n3")
	if st := waitConverged(t, env, cs, "item", "id"); st.Rows != 2 {
		t.Fatalf("%d rows after convergence, want 2 (11 and 13)", st.Rows)
	}
	waitValue(t, cs, []int{0, 1, 2}, 11, "n2")
	// The control: the concurrent inserts of 13 are logged (each node that
	// received one of them on top of the other: n1 and n3 at least). n1
	// inserted 11, 12 and 13 in one transaction: once n3 logged 13, it has
	// judged n1's inserts of 11 and 12 too.
	eventually(t, 90*time.Second, "insert_exists of 13 logged on n1 and n3", func() (bool, string) {
		l1, l3 := logRows(t, cs[0], []int{13}), logRows(t, cs[2], []int{13})
		return len(l1) == 1 && len(l3) == 1 && strings.HasPrefix(l1[0], "insert_exists/") && strings.HasPrefix(l3[0], "insert_exists/"),
			fmt.Sprintf("n1 %q, n3 %q", l1, l3)
	})
	for n, c := range cs {
		if got := logRows(t, c, []int{1, 11, 12}); len(got) != 0 {
			t.Errorf("n%d: conflict_log rows for causal changes: %q", n+1, got)
		}
	}
	for n, c := range cs {
		if got, want := totalLog(t, c), len(logRows(t, c, []int{13})); got != want {
			t.Errorf("n%d: %d conflict_log rows, want only the %d of item 13", n+1, got, want)
		}
	}
}

// writeConfig writes cfg to a file in the test's temp dir.
func writeConfig(t *testing.T, cfg *config.Config) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pgmesh.yaml")
	if err := os.WriteFile(p, cfg.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDeltaColumns: three nodes add 1 to the same counter 300 times each,
// concurrently; with delta_columns every increment counts on every node.
func TestDeltaColumns(t *testing.T) {
	env := sandboxtest.New(t, 3)
	cfg := *env.Config
	cfg.Conflicts.Tables = map[string]config.TableConfig{"public.counters": {DeltaColumns: []string{"n"}}}
	path := writeConfig(t, &cfg)
	for i := range 3 {
		env.Exec(t, i, `CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL)`)
		env.Exec(t, i, `ALTER TABLE counters REPLICA IDENTITY FULL`)
		env.Exec(t, i, `INSERT INTO counters VALUES (1, 1000)`)
	}
	mustCLI(t, "init", "-c", path)
	cs := conns(t, env, 3)
	startAgent(t, path)

	const each = 300
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for n := range 3 {
		wg.Go(func() {
			ctx := context.Background()
			c, err := pgx.Connect(ctx, env.DSNAs(n, sandbox.App))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(ctx)
			for range each {
				if _, err := c.Exec(ctx, `UPDATE counters SET n = n + 1 WHERE id = 1`); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventually(t, 120*time.Second, "counter = 1000 + 900 on every node", func() (bool, string) {
		var vals []int64
		for _, c := range cs {
			var v int64
			if err := c.QueryRow(context.Background(), `SELECT n FROM counters WHERE id = 1`).Scan(&v); err != nil {
				t.Fatal(err)
			}
			vals = append(vals, v)
		}
		return slices.Equal(vals, []int64{1900, 1900, 1900}), fmt.Sprint(vals)
	})
	assertNoWrites(t, cs, "counters")
}

// assertNoWrites checks that, once converged, nothing writes table any
// more on any node (a replication loop would): its row versions (xmin,
// ctid) stay the same. It looks at the table rather than the server's WAL,
// which autovacuum of any database may grow at any time.
func assertNoWrites(t testing.TB, cs []*pgx.Conn, table string) {
	t.Helper()
	versions := func(c *pgx.Conn) string {
		var v string
		if err := c.QueryRow(context.Background(), fmt.Sprintf(`SELECT string_agg(xmin::text || ctid::text, ',' ORDER BY ctid) FROM %s`,
			pgx.Identifier{table}.Sanitize())).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := make([]string, len(cs))
	for i, c := range cs {
		before[i] = versions(c)
	}
	time.Sleep(3 * time.Second)
	for i, c := range cs {
		if after := versions(c); after != before[i] {
			t.Errorf("n%d: %s rewritten after convergence (%s -> %s): replication loop?", i+1, table, before[i], after)
		}
	}
}
