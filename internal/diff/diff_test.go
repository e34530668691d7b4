package diff

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 3) }

// onAll runs sql on every node: the same table and data everywhere.
func onAll(t testing.TB, e *sandboxtest.Env, sql string) {
	t.Helper()
	for i := range e.DSNs {
		e.Exec(t, i, sql)
	}
}

// diverge runs sql on one node under a foreign replication origin, the way
// a stray apply would write: in a mesh it would not be shipped to peers.
// Only pgmesh's role may set up an origin.
func diverge(t testing.TB, e *sandboxtest.Env, node int, sql string) {
	t.Helper()
	conn := e.Pgmesh(t, node)
	for _, q := range []string{
		`SET search_path = public`,
		`SELECT pg_replication_origin_create('foreign') WHERE pg_replication_origin_oid('foreign') IS NULL`,
		`SELECT pg_replication_origin_session_setup('foreign')`,
		sql,
		`SELECT pg_replication_origin_session_reset()`,
	} {
		if _, err := conn.Exec(context.Background(), q); err != nil {
			t.Fatalf("n%d: %s: %v", node+1, q, err)
		}
	}
}

func fastOptions() Options {
	return Options{RecheckPause: 10 * time.Millisecond, WaitTimeout: 5 * time.Second}
}

type divergenceCase struct {
	name     string
	setup    string     // on every node
	diverge  string     // on n2 only
	identity string     // expected TableReport.Identity
	keys     [][]string // expected differing keys (multiset: nil)
	rows     []string   // expected differing rows (multisets)
}

var divergenceCases = []divergenceCase{
	{
		name: "integer primary key",
		setup: `CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);
INSERT INTO t SELECT i, 'v' || i, i * 1.5 FROM generate_series(1, 2000) i`,
		diverge:  `UPDATE t SET v = 'changed' WHERE id = 5; DELETE FROM t WHERE id = 7; INSERT INTO t VALUES (5000, 'extra', 1)`,
		identity: "primary key",
		keys:     [][]string{{"5"}, {"5000"}, {"7"}},
	},
	{
		name: "composite text uuid timestamptz key, NULLs",
		setup: `CREATE TABLE t (a text, b uuid, c timestamptz, v int, note text, PRIMARY KEY (a, b, c));
INSERT INTO t SELECT 'k' || (i % 7), md5(i::text)::uuid, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute',
  i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'n' END FROM generate_series(1, 500) i`,
		// i=3: note NULL -> ''; i=4: note 'n' -> NULL.
		diverge: `UPDATE t SET note = '' WHERE v = 3; UPDATE t SET note = NULL WHERE v = 4`,
		keys: [][]string{
			{"k3", "eccbc87e-4b5c-e2fe-2830-8fd9f2a7baf3", "2024-01-01 00:03:00+00"},
			{"k4", "a87ff679-a2f3-e71d-9181-a67b7542122c", "2024-01-01 00:04:00+00"},
		},
		identity: "primary key",
	},
	{
		name: "replica identity using index",
		setup: `CREATE TABLE t (id bigint NOT NULL, code text NOT NULL, v text);
CREATE UNIQUE INDEX t_code ON t (code); ALTER TABLE t REPLICA IDENTITY USING INDEX t_code;
INSERT INTO t SELECT i, 'c' || i, 'v' FROM generate_series(1, 300) i`,
		diverge:  `UPDATE t SET id = -1 WHERE code = 'c10'; DELETE FROM t WHERE code = 'c20'`,
		identity: "index t_code",
		keys:     [][]string{{"c10"}, {"c20"}},
	},
	{
		name: "1 MB TOAST value",
		setup: `CREATE TABLE t (id int PRIMARY KEY, big text);
INSERT INTO t SELECT i, repeat(md5(i::text), 32768) FROM generate_series(1, 3) i`,
		diverge:  `UPDATE t SET big = overlay(big PLACING 'X' FROM 500000) WHERE id = 2`,
		identity: "primary key",
		keys:     [][]string{{"2"}},
	},
	{
		name: "replica identity full: multiset",
		setup: `CREATE TABLE t (a int, b text); ALTER TABLE t REPLICA IDENTITY FULL;
INSERT INTO t SELECT i % 50, 'b' FROM generate_series(1, 200) i; INSERT INTO t VALUES (NULL, NULL)`,
		diverge: `DELETE FROM t WHERE ctid = (SELECT min(ctid) FROM t WHERE a = 3);
INSERT INTO t VALUES (999, 'extra'), (NULL, NULL)`,
		identity: "full (multiset)",
		rows:     []string{"(,)", "(3,b)", "(999,extra)"},
	},
}

func tableKeys(tr TableReport) (keys [][]string, rows []string) {
	for _, k := range tr.Keys {
		if k.Key != nil {
			keys = append(keys, k.Key)
		} else {
			rows = append(rows, k.Row)
		}
	}
	return keys, rows
}

func TestCompareFindsInjectedDivergence(t *testing.T) {
	for _, tc := range divergenceCases {
		t.Run(tc.name, func(t *testing.T) {
			e := sandboxtest.New(t, 3)
			onAll(t, e, tc.setup)
			ctx := context.Background()

			rep, err := Compare(ctx, e.Config, fastOptions())
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Identical() {
				t.Fatalf("before divergence: %+v", rep.Tables)
			}

			diverge(t, e, 1, tc.diverge)
			rep, err = Compare(ctx, e.Config, fastOptions())
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Tables) != 1 {
				t.Fatalf("tables: %+v", rep.Tables)
			}
			tr := rep.Tables[0]
			keys, rows := tableKeys(tr)
			if tr.Identity != tc.identity || !reflect.DeepEqual(keys, tc.keys) || !reflect.DeepEqual(rows, tc.rows) {
				t.Fatalf("identity %q keys %q rows %q; want %q %q %q", tr.Identity, keys, rows, tc.identity, tc.keys, tc.rows)
			}
			if tr.Differences != len(tc.keys)+len(tc.rows) {
				t.Fatalf("differences = %d", tr.Differences)
			}
			// n1 and n3 always agree; n2 holds the other version.
			for _, k := range tr.Keys {
				for _, v := range k.Versions {
					if strings.Join(v.Nodes, ",") != "n1,n3" && strings.Join(v.Nodes, ",") != "n2" {
						t.Fatalf("key %q: versions %+v", k.Key, k.Versions)
					}
				}
			}
			if len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "no replication links") {
				t.Fatalf("notes %q", rep.Notes)
			}

			for _, mode := range []string{"from", "lww"} {
				if mode == "lww" && tc.keys == nil {
					continue
				}
				if mode == "lww" {
					// Re-diverge, then make n2's versions the newest on
					// one key, so LWW must pick per key.
					onAll(t, e, "DROP TABLE t; "+tc.setup)
					diverge(t, e, 1, tc.diverge)
				}
				opts := RepairOptions{Table: "t", Diff: fastOptions()}
				if mode == "from" {
					opts.From = "n1"
				} else {
					opts.LWW = true
				}
				dry := opts
				dry.DryRun = true
				res, err := Repair(ctx, e.Config, dry)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Statements) == 0 || res.Differences != tr.Differences {
					t.Fatalf("dry run: %+v", res)
				}
				if rep, err := Compare(ctx, e.Config, fastOptions()); err != nil || rep.Identical() {
					t.Fatalf("dry run changed data: %v %+v", err, rep)
				}
				if _, err := Repair(ctx, e.Config, opts); err != nil {
					t.Fatal(err)
				}
				rep, err := Compare(ctx, e.Config, fastOptions())
				if err != nil {
					t.Fatal(err)
				}
				if !rep.Identical() {
					t.Fatalf("after repair --%s: %+v", mode, rep.Tables)
				}
			}
		})
	}
}

// TestRepairLWW checks that each key takes its latest version, that the
// repaired row keeps the winner's commit timestamp, and that repairs are
// written under an origin (so a mesh would not ship them again).
func TestRepairLWW(t *testing.T) {
	e := sandboxtest.New(t, 3)
	ctx := context.Background()
	onAll(t, e, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT i, 'v' FROM generate_series(1, 100) i`)
	e.Exec(t, 0, `UPDATE t SET v = 'old on n1' WHERE id = 1`)
	e.Exec(t, 1, `UPDATE t SET v = 'new on n2' WHERE id = 1`) // later: wins
	e.Exec(t, 1, `UPDATE t SET v = 'old on n2' WHERE id = 2`)
	e.Exec(t, 2, `UPDATE t SET v = 'new on n3' WHERE id = 2`) // later: wins
	e.Exec(t, 2, `DELETE FROM t WHERE id = 3`)                // absent loses
	e.Exec(t, 0, `INSERT INTO t VALUES (200, 'only on n1')`)  // present wins

	res, err := Repair(ctx, e.Config, RepairOptions{Table: "public.t", LWW: true, Diff: fastOptions()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Differences != 4 {
		t.Fatalf("differences %d: %+v", res.Differences, res)
	}
	if len(res.Notes) == 0 || !strings.Contains(strings.Join(res.Notes, "\n"), "conflict_log") {
		t.Fatalf("notes %q: want a note that nothing was logged", res.Notes)
	}
	want := map[string]string{"1": "new on n2", "2": "new on n3", "3": "v", "200": "only on n1"}
	for node := range e.DSNs {
		for id, v := range want {
			var got string
			if err := e.Conn(t, node).QueryRow(ctx, "SELECT v FROM t WHERE id = $1::int", id).Scan(&got); err != nil || got != v {
				t.Fatalf("node %d id %s: %q %v, want %q", node, id, got, err, v)
			}
		}
	}
	// Commit time of key 1 on n1 and n3 is n2's; the transaction carries
	// the repair origin.
	var src, dst time.Time
	if err := e.Conn(t, 1).QueryRow(ctx, "SELECT pg_xact_commit_timestamp(xmin) FROM t WHERE id = 1").Scan(&src); err != nil {
		t.Fatal(err)
	}
	for _, node := range []int{0, 2} {
		if err := e.Conn(t, node).QueryRow(ctx, "SELECT pg_xact_commit_timestamp(xmin) FROM t WHERE id = 1").Scan(&dst); err != nil {
			t.Fatal(err)
		}
		if !dst.Equal(src) {
			t.Fatalf("node %d: commit time %v, want the source's %v", node, dst, src)
		}
		var origins []string
		if err := e.Conn(t, node).QueryRow(ctx, "SELECT array_agg(roname ORDER BY roname) FROM pg_replication_origin").Scan(&origins); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(origins, "pgmesh_n2_repair") {
			t.Fatalf("node %d: origins %q", node, origins)
		}
	}
	rep, err := Compare(ctx, e.Config, fastOptions())
	if err != nil || !rep.Identical() {
		t.Fatalf("after repair: %v %+v", err, rep)
	}
}

// TestRepairSkipsRowsChangedSinceDiff: an update whose target row no longer
// has the hash the diff saw is skipped, not overwritten.
func TestRepairGuardsAgainstRaces(t *testing.T) {
	e := sandboxtest.New(t, 2)
	ctx := context.Background()
	onAll(t, e, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')`)
	e.Exec(t, 1, `UPDATE t SET v = 'b' WHERE id = 1`)
	s, err := open(ctx, e.Config, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	tables, err := s.tables(ctx, e.Config, []string{"t"})
	if err != nil {
		t.Fatal(err)
	}
	tb := tables[0]
	_, diffs, err := s.scanTable(ctx, tb, func(string) {})
	if err != nil || len(diffs) != 1 {
		t.Fatalf("scan: %v %d", err, len(diffs))
	}
	vers, err := s.fetchVersions(ctx, tb, diffs)
	if err != nil {
		t.Fatal(err)
	}
	actions := s.plan(tb, diffs, vers, 0)
	e.Exec(t, 1, `UPDATE t SET v = 'c' WHERE id = 1`) // races with the repair
	res := &RepairResult{}
	if err := s.execute(ctx, tb, actions, false, res); err != nil {
		t.Fatal(err)
	}
	if len(actions) != 1 || actions[0].Op != "update" || actions[0].Skipped == "" {
		t.Fatalf("actions %+v", actions)
	}
	var v string
	if err := e.Conn(t, 1).QueryRow(ctx, "SELECT v FROM t WHERE id = 1").Scan(&v); err != nil || v != "c" {
		t.Fatalf("v = %q %v", v, err)
	}
}
