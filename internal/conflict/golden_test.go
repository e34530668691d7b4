package conflict

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ with the statements generated now")

// insertFull, updateFull and deleteFull are the full statements alone, as
// the fast statements fall back to them (in mode slow) and as the tests
// compare the fast path with them (mode direct).
func insertFull(t Table, m mode) string               { return full(t, opInsert, t.Columns, m) }
func updateFull(t Table, set []string, m mode) string { return full(t, opUpdate, set, m) }
func deleteFull(t Table, m mode) string               { return full(t, opDelete, nil, m) }

// goldenDDL are the tables of the golden files: every kind of identity and
// unique index, types that need care, and names that need quoting.
var goldenDDL = []string{
	itemDDL,
	// A composite key.
	"CREATE TABLE line (order_id bigint, line_no int, sku text NOT NULL, amount numeric(12,2), PRIMARY KEY (order_id, line_no))",
	// Secondary unique indexes, one of them on two columns.
	"CREATE TABLE account (id uuid PRIMARY KEY, tenant int NOT NULL, login text NOT NULL, email text UNIQUE, UNIQUE (tenant, login))",
	// No key: the whole row identifies it, json has no equality.
	"CREATE TABLE ev (a int, b text UNIQUE, doc json, at timestamptz)", "ALTER TABLE ev REPLICA IDENTITY FULL",
	// Delta columns.
	"CREATE TABLE stock (id int PRIMARY KEY, name text, qty int NOT NULL, price numeric)", "ALTER TABLE stock REPLICA IDENTITY FULL",
	// A key whose text depends on TimeZone and IntervalStyle.
	"CREATE TABLE session (started timestamptz, span interval, who text, PRIMARY KEY (started, span))",
	// The key is the whole row.
	"CREATE TABLE tag (name text PRIMARY KEY)",
	// Names to quote.
	`CREATE TABLE "it's ""odd""" ("Id" int PRIMARY KEY, "na""me" text)`,
	// Every other kind of unique index, and an exclusion constraint.
	`CREATE TABLE member (id int PRIMARY KEY, email text, team int, active bool, nick text, slot int4range, seat int, code text COLLATE "C")`,
	"CREATE UNIQUE INDEX member_email ON member (lower(email))",
	"CREATE UNIQUE INDEX member_captain ON member (team) WHERE active",
	"CREATE UNIQUE INDEX member_nick ON member (team, nick) NULLS NOT DISTINCT",
	"ALTER TABLE member ADD CONSTRAINT member_slot EXCLUDE USING gist (slot WITH &&)",
	"ALTER TABLE member ADD CONSTRAINT member_seat UNIQUE (seat) DEFERRABLE INITIALLY DEFERRED",
	`CREATE UNIQUE INDEX member_code ON member (code COLLATE "POSIX")`,
	// A deferrable key.
	"CREATE TABLE slot (id int PRIMARY KEY DEFERRABLE, v text)",
}

// goldenCase is one table with its conflict settings, and the statement
// shapes whose golden files testdata/<name>/ holds.
type goldenCase struct {
	name, table string
	mod         func(*Table)
	set         []string // columns of the update; nil: all
	shapes      []string // nil: every shape
}

var goldenCases = []goldenCase{
	{name: "item", table: "item"},
	{name: "item_unchanged_toast", table: "item", set: []string{"id", "email", "qty"}, shapes: []string{"update", "update_full", "move"}},
	{name: "item_delete_wins", table: "item", mod: deleteWins},
	{name: "item_first_update_wins", table: "item", mod: policy(config.FirstUpdateWins)},
	{name: "item_keep_local", table: "item", mod: policy(config.KeepLocal)},
	{name: "item_apply_remote", table: "item", mod: policy(config.ApplyRemote)},
	{name: "item_error", table: "item", mod: policy(config.PolicyError)},
	{name: "line", table: "line"},
	{name: "account", table: "account"},
	{name: "account_key_unchanged", table: "account", set: []string{"id", "tenant", "email"}, shapes: []string{"update", "update_full"}},
	{name: "ev", table: "ev"},
	{name: "ev_unchanged_toast", table: "ev", set: []string{"a", "b", "at"}, shapes: []string{"update"}},
	{name: "stock", table: "stock", mod: func(t *Table) { t.DeltaColumns = []string{"qty"} }},
	{name: "stock_only_delta", table: "stock", mod: func(t *Table) { t.DeltaColumns = []string{"qty"} }, set: []string{"id", "qty"}, shapes: []string{"update", "update_full"}},
	{name: "session", table: "session"},
	{name: "tag", table: "tag"},
	{name: "quoting", table: `it's "odd"`},
	{name: "member", table: "member"},
	{name: "member_unchanged_toast", table: "member", set: []string{"id", "team", "active", "slot", "seat", "code"}, shapes: []string{"update", "update_full"}},
	// The upstream does not send column code: member_code cannot be
	// checked before a write.
	{name: "member_code_not_sent", table: "member", mod: withoutColumn("code"), shapes: []string{"insert", "update", "move"}},
	{name: "slot", table: "slot", shapes: []string{"insert", "deferred_check"}},
}

// withoutColumn narrows a table to the columns but one, as the applier
// does when the upstream does not send that column.
func withoutColumn(name string) func(*Table) {
	return func(t *Table) {
		i := slices.Index(t.Columns, name)
		t.Columns = slices.Delete(slices.Clone(t.Columns), i, i+1)
		t.Types = slices.Delete(slices.Clone(t.Types), i, i+1)
	}
}

// Every statement shape of representative tables is its golden file, so
// that a change of the generator shows as a diff of the SQL; go test
// -run TestGolden -update rewrites them. In the files of the statements
// that carry the full statement they fall back to (moves, guarded ones) it
// is elided: it is <op>_full.sql with other parameter references. Each statement is also prepared on the server
// (the fallback as resolve_change prepares it), so the golden files are
// valid SQL for these tables.
func TestGolden(t *testing.T) {
	f := newFixture(t, goldenDDL...)
	ctx := context.Background()
	seen := map[string]bool{}
	for _, gc := range goldenCases {
		tbl := f.table(gc.table, gc.mod)
		set := gc.set
		if set == nil {
			set = tbl.Columns
		}
		shapes := map[string]string{}
		fallbacks := map[string]string{}
		for _, op := range []string{opInsert, opUpdate, opDelete} {
			if len(tbl.Key) == 0 && op != opInsert {
				// Updates and deletes of a table without key run the
				// full statement alone.
				shapes[op] = full(tbl, op, set, direct)
				continue
			}
			fallbacks[op] = full(tbl, op, set, slow)
			shapes[op] = elideFallback(t, statement(tbl, op, set), fallbacks[op])
			shapes[op+"_full"] = full(tbl, op, set, direct)
		}
		if len(tbl.Key) > 0 && !slices.ContainsFunc(tbl.Key, func(k string) bool { return !slices.Contains(set, k) }) {
			b := newBuilder(tbl, opMove, set, fast)
			shapes[opMove] = elideFallback(t, elideFallback(t, MoveSQL(tbl, set), b.Removal), b.Addition)
		}
		shapes[opTruncate] = TruncateSQL(tbl)
		if ManyOK(tbl) {
			shapes["insert_many"] = elideFallback(t, InsertManySQL(tbl), fallbacks[opInsert])
		}
		if tbl.Deferrable() {
			shapes[opDeferredCheck] = DeferredCheckSQL(tbl)
		}
		want := gc.shapes
		if want == nil {
			for _, shape := range []string{"insert", "insert_full", "insert_many", "update", "update_full", "delete", "delete_full", "move", "truncate", "deferred_check"} {
				if _, ok := shapes[shape]; ok {
					want = append(want, shape)
				}
			}
		}
		for _, shape := range want {
			sql, ok := shapes[shape]
			if !ok {
				t.Fatalf("%s: no shape %s", gc.name, shape)
			}
			path := filepath.Join("testdata", gc.name, shape+".sql")
			seen[path] = true
			checkGolden(t, path, sql)
			checkTidy(t, path, sql)
		}
		for _, shape := range []string{"insert", "insert_many", "update", "delete", "move", "truncate", "deferred_check"} {
			var sql string
			switch {
			case shape == "insert_many" && shapes[shape] == "":
				continue
			case shape == "insert_many":
				sql = InsertManySQL(tbl)
			case (shape == opMove || shape == opDeferredCheck) && shapes[shape] == "":
				continue
			case shape == opDeferredCheck:
				sql = shapes[shape]
			case shape == opMove:
				sql = MoveSQL(tbl, set)
			case shape == opTruncate:
				sql = TruncateSQL(tbl)
			default:
				sql = statement(tbl, shape, set)
			}
			if _, err := f.conn.PgConn().Prepare(ctx, "", sql, nil); err != nil {
				t.Errorf("%s %s: prepare: %v\n%s", gc.name, shape, err, sql)
			}
			if fb, ok := fallbacks[shape]; ok {
				if _, err := f.conn.Exec(ctx, "PREPARE golden_fallback (text[]) AS "+fb); err != nil {
					t.Errorf("%s %s: prepare the fallback: %v\n%s", gc.name, shape, err, fb)
				}
				f.exec("DEALLOCATE golden_fallback")
			}
		}
	}
	// A golden file that no case produces is a leftover.
	files, err := filepath.Glob(filepath.Join("testdata", "*", "*.sql"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if !seen[file] {
			if *update {
				if err := os.Remove(file); err != nil {
					t.Fatal(err)
				}
				continue
			}
			t.Errorf("%s: no statement shape produces it (go test -run TestGolden -update removes it)", file)
		}
	}
}

// elideFallback replaces the full statement that a move or a guarded
// statement carries with a mark; a fast statement names its fallback
// instead (Fallbacks).
func elideFallback(t *testing.T, sql, fallback string) string {
	t.Helper()
	quoted := (&builder{Fallback: fallback}).FallbackText()
	switch n := strings.Count(sql, quoted); {
	case n == 0 && len(Fallbacks(sql)) == 1 && Fallbacks(sql)[0].SQL == fallback:
		return sql
	case n != 1:
		t.Fatalf("the statement neither carries its fallback once nor names it:\n%s", sql)
	}
	return strings.Replace(sql, quoted, "$pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$", 1)
}

func checkGolden(t *testing.T, path, sql string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(sql+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("%s: %v (go test -run TestGolden -update writes it)", path, err)
		return
	}
	if got := sql + "\n"; got != string(want) {
		t.Errorf("%s: the generated statement differs from the golden file (go test -run TestGolden -update rewrites it, then read the diff):\n%s",
			path, firstDifference(string(want), got))
	}
}

// checkTidy: the templates leave no blank line and no trailing blank (the
// tables here have no names with line breaks).
func checkTidy(t *testing.T, path, sql string) {
	t.Helper()
	for i, line := range strings.Split(sql, "\n") {
		if strings.TrimSpace(line) == "" || strings.TrimRight(line, " \t") != line {
			t.Errorf("%s:%d: blank line or trailing blank: %q", path, i+1, line)
		}
	}
}

// firstDifference shows the first line where want and got differ.
func firstDifference(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := range max(len(w), len(g)) {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d\n golden:    %s\n generated: %s", i+1, wl, gl)
		}
	}
	return "(trailing difference)"
}
