package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// memberDDL has a unique index or exclusion constraint of every kind that
// is more than plain columns.
var memberDDL = []string{
	`CREATE TABLE member (id int PRIMARY KEY, email text, team int, active bool, nick text, slot int4range, seat int)`,
	`CREATE UNIQUE INDEX member_email ON member (lower(email))`,
	`CREATE UNIQUE INDEX member_captain ON member (team) WHERE active`,
	`CREATE UNIQUE INDEX member_nick ON member (team, nick) NULLS NOT DISTINCT`,
	`ALTER TABLE member ADD CONSTRAINT member_slot EXCLUDE USING gist (slot WITH &&)`,
	`ALTER TABLE member ADD CONSTRAINT member_seat UNIQUE (seat) DEFERRABLE INITIALLY DEFERRED`,
}

// TestUniqueKinds: n1 and n2 insert rows that collide under each kind of
// unique index and exclusion constraint while no agent runs (n2 later, so
// its rows are newer). Every collision ends as a unique_conflict on every
// node, resolved the same way (the newer row stays, the other is logged),
// no link is left stuck, and the nodes converge. A transaction that swaps
// two rows' values of the deferrable constraint replicates as it is, and
// check lists each constraint with what pgmesh does with it.
func TestUniqueKinds(t *testing.T) {
	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, memberDDL...)
	cs := conns(t, env, 3)
	fs, _ := checkJSON(t, env.ConfigPath)
	for _, name := range []string{"member_email (lower(email))", "member_captain (team) WHERE active", "member_nick (team, nick) NULLS NOT DISTINCT",
		"member_slot (slot WITH &&)", "member_seat (seat) DEFERRABLE"} {
		for _, n := range []string{"n1", "n2", "n3"} {
			if _, ok := findingWith(fs, "PASS", n, "constraints", "public.member", name, "unique_conflict"); !ok {
				t.Errorf("check on %s does not list %s with what pgmesh does", n, name)
			}
		}
	}

	agent := startAgent(t, env.ConfigPath)
	env.Exec(t, 0, `INSERT INTO member (id, nick, seat) VALUES (60, 'a', 60), (61, 'b', 61)`)
	eventuallyAll(t, cs, "the seats of 60 and 61", `SELECT string_agg(seat::text, ',' ORDER BY id) FROM member`, "60,61")
	agent.stop()

	// id, email, team, active, nick, slot, seat; n1's row first, then n2's.
	pairs := []struct {
		kind       string
		n1, n2     string
		keep       []int // the rows left of the two
		conflicted bool
	}{
		{"expression", "10, 'Ann@x', NULL, NULL, 'p10', NULL, NULL", "11, 'ann@X', NULL, NULL, 'p11', NULL, NULL", []int{11}, true},
		{"partial", "20, NULL, 2, true, 'p20', NULL, NULL", "21, NULL, 2, true, 'p21', NULL, NULL", []int{21}, true},
		{"partial, one row outside", "22, NULL, 3, true, 'p22', NULL, NULL", "23, NULL, 3, false, 'p23', NULL, NULL", []int{22, 23}, false},
		{"nulls not distinct", "30, NULL, 4, NULL, NULL, NULL, NULL", "31, NULL, 4, NULL, NULL, NULL, NULL", []int{31}, true},
		{"exclusion", "40, NULL, NULL, NULL, 'p40', '[1,5)', NULL", "41, NULL, NULL, NULL, 'p41', '[3,8)', NULL", []int{41}, true},
		{"deferrable", "50, NULL, NULL, NULL, 'p50', NULL, 5", "51, NULL, NULL, NULL, 'p51', NULL, 5", []int{51}, true},
	}
	for _, p := range pairs {
		env.Exec(t, 0, `INSERT INTO member VALUES (`+p.n1+`)`)
	}
	for _, p := range pairs {
		env.Exec(t, 1, `INSERT INTO member VALUES (`+p.n2+`)`)
	}
	startAgent(t, env.ConfigPath)
	want := []int{60, 61}
	for _, p := range pairs {
		want = append(want, p.keep...)
	}
	slices.Sort(want)
	eventually(t, 90*time.Second, "every collision resolved alike on every node", func() (bool, string) {
		for n, c := range cs {
			if got := memberIDs(t, c); !slices.Equal(got, want) {
				return false, fmt.Sprintf("n%d rows %v, want %v", n+1, got, want)
			}
		}
		return true, ""
	})
	for _, p := range pairs {
		var a, b int
		fmt.Sscanf(p.n1, "%d", &a)
		fmt.Sscanf(p.n2, "%d", &b)
		for n, c := range cs {
			var logged int
			if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pgmesh.conflict_log
				WHERE table_name = 'public.member' AND kind = 'unique_conflict' AND (key->>'id')::int IN ($1, $2)`, a, b).Scan(&logged); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[p.conflicted]; logged != want {
				t.Errorf("%s: n%d logged %d unique_conflict rows, want %d", p.kind, n+1, logged, want)
			}
		}
	}
	// The swap: no conflict, the same seats everywhere.
	before := make([]int, 3)
	for n, c := range cs {
		before[n] = totalLog(t, c)
	}
	env.Exec(t, 0, `BEGIN; UPDATE member SET seat = 61 WHERE id = 60; UPDATE member SET seat = 60 WHERE id = 61; COMMIT`)
	eventuallyAll(t, cs, "the seats swapped", `SELECT string_agg(seat::text, ',' ORDER BY id) FROM member WHERE id IN (60, 61)`, "61,60")
	for n, c := range cs {
		if got := totalLog(t, c); got != before[n] {
			t.Errorf("n%d: the swap of a deferrable constraint logged %d conflicts", n+1, got-before[n])
		}
	}
	// No link is stuck: a new row of each node reaches every node.
	for n := range 3 {
		env.Exec(t, n, `INSERT INTO member (id, nick) VALUES ($1::int, 'after ' || $1::int)`, 100+n)
	}
	eventuallyAll(t, cs, "the rows written afterwards", `SELECT count(*)::text FROM member WHERE id >= 100`, "3")
}

func memberIDs(t testing.TB, c *pgx.Conn) []int {
	t.Helper()
	rows, err := c.Query(context.Background(), `SELECT id FROM member ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestKeyChangesAndTruncate: concurrent writers on a 3-node mesh (no
// agent runs while they write).
//
// A key change is a delete of the old key and an insert of the new one:
// n1 moves row 1 to 101 and n2 updates row 1 afterwards — the update is
// newer than the delete, so key 1 stays with n2's value, next to 101 —
// and n2 updates row 2 before n1 moves it to 102 — the delete is newer, so
// key 2 is gone everywhere (before, n1 had no tombstone for key 2 and the
// update brought it back there only).
//
// A TRUNCATE removes what was written before it, on every node, and only
// that: n2 inserts row 200, then n1 runs TRUNCATE … CASCADE, then n3
// inserts row 300. Everywhere row 300 remains alone, and n2's own table
// that references acct (excluded from replication) keeps its rows: there is
// no cascade on a peer.
func TestKeyChangesAndTruncate(t *testing.T) {
	env := sandboxtest.New(t, 3)
	cfg := *env.Config
	cfg.Replicate.Exclude = []string{"public.note"}
	path := writeConfig(t, &cfg)
	for n := range 3 {
		env.Exec(t, n, `CREATE TABLE acct (id int PRIMARY KEY, v text NOT NULL)`)
		env.Exec(t, n, `CREATE TABLE note (id int PRIMARY KEY, acct_id int REFERENCES acct)`)
	}
	mustCLI(t, "init", "-c", path)
	cs := conns(t, env, 3)
	app := []*pgx.Conn{env.App(t, 0), env.App(t, 1), env.App(t, 2)}
	run := func(n int, sql string) {
		t.Helper()
		if _, err := app[n].Exec(context.Background(), sql); err != nil {
			t.Fatalf("n%d: %s: %v", n+1, sql, err)
		}
	}

	agent := startAgent(t, path)
	run(0, `INSERT INTO acct SELECT g, 'seed' FROM generate_series(1, 4) g`)
	eventuallyAll(t, cs, "the seed rows", `SELECT count(*)::text FROM acct`, "4")
	agent.stop()
	run(0, `UPDATE acct SET id = 101 WHERE id = 1`)
	run(1, `UPDATE acct SET v = 'n2 after the move' WHERE id = 1`)
	run(1, `UPDATE acct SET v = 'n2 before the move' WHERE id = 2`)
	run(0, `UPDATE acct SET id = 102 WHERE id = 2`)
	agent = startAgent(t, path)
	want := "1=n2 after the move,3=seed,4=seed,101=seed,102=seed"
	eventuallyAll(t, cs, "the key changes resolved alike", `SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM acct`, want)
	// Key 2 is deleted everywhere, and its tombstone is there to stay.
	eventuallyAll(t, cs, "the tombstone of key 2", `SELECT count(*)::text FROM pgmesh.tombstone WHERE table_name = 'public.acct' AND key = '{"id": 2}'`, "1")

	// n2's own notes reference its rows 3 and 4.
	env.Exec(t, 1, `INSERT INTO note VALUES (1, 3), (2, 4)`)
	agent.stop()
	run(1, `INSERT INTO acct VALUES (200, 'n2 before the truncate')`)
	env.Exec(t, 0, `TRUNCATE acct CASCADE`)
	run(2, `INSERT INTO acct VALUES (300, 'n3 after the truncate')`)
	startAgent(t, path)
	eventuallyAll(t, cs, "the truncate resolved alike", `SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM acct`, "300=n3 after the truncate")
	var notes int
	if err := cs[1].QueryRow(context.Background(), `SELECT count(*) FROM note`).Scan(&notes); err != nil || notes != 2 {
		t.Errorf("n2's own table that references acct: %d rows (%v), want its 2: a peer's TRUNCATE must not cascade", notes, err)
	}
	// Row 200 lost to the truncate, which n1 made without having seen it:
	// logged on n1 (it arrived after the truncate) and on n2 (the
	// truncate removed it).
	for _, n := range []int{0, 1} {
		var logged string
		if err := cs[n].QueryRow(context.Background(), `SELECT coalesce(string_agg(kind || '/' || resolution, ','), '') FROM pgmesh.conflict_log
			WHERE table_name = 'public.acct' AND (key->>'id')::int = 200`).Scan(&logged); err != nil {
			t.Fatal(err)
		}
		if wantLog := map[int]string{0: "insert_deleted/keep_local", 1: "truncate_origin_differs/apply_remote"}[n]; logged != wantLog {
			t.Errorf("n%d: row 200 logged as %q, want %q", n+1, logged, wantLog)
		}
	}
}

// TestDDLHeldUntilItArrives: n1 renames a column, then adds one. n2
// applies each at once and writes rows that use it, which reach n3 before
// the DDL does (n3 holds a lock on the table, so the DDL waits there). n3
// holds those rows, with the reason in status, until the DDL has run there,
// then applies them with every value: a rename is not taken for an added
// column whose values can be left out, and nothing is left out.
func TestDDLHeldUntilItArrives(t *testing.T) {
	env, cs := ddlMesh(t, `CREATE TABLE items (id int PRIMARY KEY, note text)`)
	steps := []struct {
		ddl, column, insert, check, want string
	}{
		{`ALTER TABLE items RENAME COLUMN note TO memo`, "memo",
			`INSERT INTO items (id, memo) VALUES (1, 'written as memo on n2')`,
			`SELECT memo FROM items WHERE id = 1`, "written as memo on n2"},
		{`ALTER TABLE items ADD COLUMN tag text`, "tag",
			`INSERT INTO items (id, memo, tag) VALUES (2, 'second', 'tagged on n2')`,
			`SELECT tag FROM items WHERE id = 2`, "tagged on n2"},
	}
	ctx := context.Background()
	for _, s := range steps {
		lock, err := env.Conn(t, 2).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := lock.Exec(ctx, `LOCK TABLE items IN ACCESS SHARE MODE`); err != nil {
			t.Fatal(err)
		}
		env.Exec(t, 0, s.ddl)
		hasColumn := fmt.Sprintf(`SELECT count(*)::text FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = '%s'`, s.column)
		eventuallyAll(t, cs[:2], "the column on n1 and n2", hasColumn, "1")
		env.Exec(t, 1, s.insert)
		eventually(t, 90*time.Second, "n2->n3 holding the row, with the reason", func() (bool, string) {
			st := statusOf(t, env.ConfigPath, "n2->n3")
			return strings.Contains(st.LastError, fmt.Sprintf("column %q sent by the upstream does not exist here yet", s.column)), fmt.Sprintf("%+v", st)
		})
		if err := lock.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		eventuallyAll(t, cs, "the value on every node", s.check, s.want)
	}
	for n, c := range cs {
		if got := totalLog(t, c); got != 0 {
			t.Errorf("n%d: %d conflict_log rows, want none", n+1, got)
		}
	}
}
