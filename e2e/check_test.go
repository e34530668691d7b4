package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// finding is check.Finding as `pgmesh check --json` prints it.
type finding struct {
	Status, Node, Check, Object, Message, Fix string
}

// checkJSON runs `pgmesh check --json` with extra args and returns the
// findings and the exit code.
func checkJSON(t *testing.T, cfgPath string, args ...string) ([]finding, int) {
	t.Helper()
	out, code := runCLI(t, append([]string{"check", "-c", cfgPath, "--json"}, args...)...)
	// The JSON comes first; on exit 1 the error line follows it.
	var fs []finding
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&fs); err != nil {
		t.Fatalf("check --json (exit %d): %v\n%s", code, err, out)
	}
	return fs, code
}

// findingWith returns the first finding of status on node whose check,
// object or message contains each of words.
func findingWith(fs []finding, status, node string, words ...string) (finding, bool) {
	for _, f := range fs {
		if f.Status != status || f.Node != node {
			continue
		}
		text := f.Check + " " + f.Object + " " + f.Message
		all := true
		for _, w := range words {
			all = all && strings.Contains(text, w)
		}
		if all {
			return f, true
		}
	}
	return finding{}, false
}

func failures(fs []finding) string {
	var b strings.Builder
	for _, f := range fs {
		if f.Status == "FAIL" {
			fmt.Fprintf(&b, "%s %s %s: %s\n", f.Node, f.Check, f.Object, f.Message)
		}
	}
	return b.String()
}

// writeCheckConfig writes pgmesh.yaml for the given DSNs (n1..nN).
func writeCheckConfig(t *testing.T, dsns []string, extra string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("cluster: test\nnodes:\n")
	for i, dsn := range dsns {
		fmt.Fprintf(&b, "  - name: n%d\n    dsn: %q\n", i+1, dsn)
	}
	b.WriteString("replicate:\n  schemas: [public]\n" + extra)
	p := filepath.Join(t.TempDir(), "pgmesh.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCheckFindsAndFixes builds a cluster with one problem of each kind,
// checks that `pgmesh check` fails naming each, applies the fixes (those of
// the privileges as check prints them) and checks that it then passes.
func TestCheckFindsAndFixes(t *testing.T) {
	env := sandboxtest.New(t, 3)
	// Roles are per server and the servers are shared by the package's
	// tests: a name of this database's.
	role := env.DB + "_user"
	admin := env.Admin(t, 1)
	dba := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(context.Background(), sql); err != nil {
			t.Fatalf("n2 (as a superuser): %s: %v", sql, err)
		}
	}
	dba(fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD 'check-test'", role))
	t.Cleanup(func() {
		// Before sandboxtest drops the database: what the role owns there
		// and its grants must go before the role can.
		dba(fmt.Sprintf("REASSIGN OWNED BY %[1]s TO postgres; DROP OWNED BY %[1]s; DROP ROLE %[1]s", role))
	})
	for i := range 3 {
		env.Exec(t, i, `CREATE TABLE items (id serial PRIMARY KEY, sku text NOT NULL, qty integer NOT NULL DEFAULT 0);
			CREATE INDEX items_sku_idx ON items (sku);
			CREATE TABLE notes (code text NOT NULL, body text)`)
	}
	// n2 connects as a role that may create schema pgmesh and set
	// session_replication_role, but lacks REPLICATION, the replication
	// origin functions, pg_logical_emit_message and membership in the
	// tables' owner.
	dba(fmt.Sprintf(`GRANT CREATE ON DATABASE %[2]s TO %[1]s;
		GRANT SET ON PARAMETER session_replication_role TO %[1]s`, role, env.DB))
	// Drift: a column only n2 has.
	env.Exec(t, 1, "ALTER TABLE items ADD COLUMN extra text")
	dsns := append([]string(nil), env.DSNs...)
	dsns[1] = strings.Replace(dsns[1], "user=pgmesh", "user="+role+" password=check-test", 1)
	if dsns[1] == env.DSNs[1] {
		t.Fatalf("DSN %q has no user=pgmesh to replace", dsns[1])
	}
	// Event triggers need a superuser; this cluster changes its schema
	// with pgmesh ddl.
	cfg := writeCheckConfig(t, dsns, "ddl:\n  capture: manual\n")

	out, code := runCLI(t, "check", "-c", cfg)
	if code != 1 {
		t.Fatalf("check: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"public.notes", "column extra exists on n2 only", "public.items.id", "replication", role} {
		if !strings.Contains(out, want) {
			t.Errorf("check output does not name %q:\n%s", want, out)
		}
	}

	fs, code := checkJSON(t, cfg)
	if code != 1 {
		t.Fatalf("check --json: exit %d, want 1", code)
	}
	expect := []struct {
		node  string
		words []string
		fix   string
	}{
		{"n1", []string{"identity", "public.notes"}, "ADD PRIMARY KEY"},
		{"n3", []string{"identity", "public.notes"}, "ADD PRIMARY KEY"},
		{"n2", []string{"schema", "public.items", "column extra exists on n2 only"}, `DROP COLUMN IF EXISTS "extra"`},
		{"", []string{"sequences", "public.items.id", "can both generate"}, "pgmesh sequences"},
		{"n2", []string{"privileges", "replication", role}, "ALTER ROLE \"" + role + "\" REPLICATION;"},
		{"n2", []string{"privileges", "replication origins", "pg_replication_origin_session_setup"}, "GRANT EXECUTE ON FUNCTION"},
		{"n2", []string{"privileges", "pg_logical_emit_message"}, "GRANT EXECUTE ON FUNCTION pg_logical_emit_message"},
		{"n2", []string{"privileges", "table owners", "app_owner"}, `GRANT "app_owner" TO "` + role + `"`},
	}
	for _, e := range expect {
		f, ok := findingWith(fs, "FAIL", e.node, e.words...)
		if !ok {
			t.Errorf("no FAIL on %q with %q; FAILs:\n%s", e.node, e.words, failures(fs))
			continue
		}
		if !strings.Contains(f.Fix, e.fix) {
			t.Errorf("FAIL %s %s: fix %q lacks %q", f.Node, f.Object, f.Fix, e.fix)
		}
	}
	// Only the one drifted column is drift: converted or not, sequences
	// and defaults are the same text on every node.
	for _, f := range fs {
		if f.Check == "schema" && f.Status != "PASS" && !strings.Contains(f.Message, "extra") {
			t.Errorf("unexpected drift: %+v", f)
		}
	}
	if t.Failed() {
		t.Fatalf("check output:\n%s", out)
	}

	// The fixes.
	for i := range 3 {
		env.Exec(t, i, "ALTER TABLE notes ADD PRIMARY KEY (code)")
	}
	env.Exec(t, 1, "ALTER TABLE items DROP COLUMN extra")
	for _, f := range fs {
		if f.Node == "n2" && f.Check == "privileges" && f.Status == "FAIL" {
			dba(f.Fix) // the SQL exactly as check prints it, run by a DBA
		}
	}
	mustCLI(t, "sequences", "-c", cfg, "convert", "--strategy", "step")

	fs, code = checkJSON(t, cfg)
	if code != 0 {
		t.Fatalf("check after the fixes: exit %d, FAILs:\n%s", code, failures(fs))
	}
	for _, want := range []struct{ check, object string }{
		{"sequences", "public.items.id"}, {"schema", ""}, {"privileges", "role " + role},
	} {
		found := false
		for _, f := range fs {
			found = found || f.Status == "PASS" && f.Check == want.check && f.Object == want.object
		}
		if !found {
			t.Errorf("no PASS %s %s after the fixes: %+v", want.check, want.object, fs)
		}
	}
}

// TestCheckSlots checks the slots of an initialised cluster: inactive while
// no agent runs (WARN, and the --max-slot-wal threshold), invalidated when
// the upstream dropped the WAL (FAIL with the way back).
func TestCheckSlots(t *testing.T) {
	env := sandboxtest.New(t, 2)
	for i := range 2 {
		env.Exec(t, i, "CREATE TABLE items (id bigint PRIMARY KEY, note text)")
	}
	mustCLI(t, "init", "-c", env.ConfigPath)

	fs, code := checkJSON(t, env.ConfigPath)
	if code != 0 {
		t.Fatalf("check after init: exit %d, FAILs:\n%s", code, failures(fs))
	}
	for _, slot := range []struct{ node, name string }{{"n1", "pgmesh_n1_n2"}, {"n2", "pgmesh_n2_n1"}} {
		f, ok := findingWith(fs, "WARN", slot.node, "slots", slot.name, "inactive")
		if !ok || !strings.Contains(f.Fix, "pgmesh run") {
			t.Errorf("no inactive WARN for %s with a pgmesh run fix: %+v", slot.name, fs)
		}
	}
	if out, code := runCLI(t, "check", "-c", env.ConfigPath, "--max-slot-wal", "lots"); code != 2 || !strings.Contains(out, "--max-slot-wal") {
		t.Errorf("bad --max-slot-wal: exit %d, want 2\n%s", code, out)
	}
	// Every slot retains at least the record of its own creation.
	fs, _ = checkJSON(t, env.ConfigPath, "--max-slot-wal", "1")
	if _, ok := findingWith(fs, "WARN", "n1", "pgmesh_n1_n2", "above the threshold of 1 B"); !ok {
		t.Errorf("no threshold WARN with --max-slot-wal 1: %+v", fs)
	}

	// Invalidate pgmesh_n1_n2: allow almost no retained WAL on n1, write
	// past it and checkpoint.
	admin := env.Admin(t, 0)
	dba := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(context.Background(), sql); err != nil {
			t.Fatalf("n1 (as a superuser): %s: %v", sql, err)
		}
	}
	dba("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
	t.Cleanup(func() {
		dba("ALTER SYSTEM RESET max_slot_wal_keep_size")
		dba("SELECT pg_reload_conf()")
	})
	dba("SELECT pg_reload_conf()")
	// The checkpointer applies the reload asynchronously: write, switch
	// segments and checkpoint until it has invalidated the slot.
	eventually(t, time.Minute, "slot pgmesh_n1_n2 lost", func() (bool, string) {
		env.Exec(t, 0, "INSERT INTO items SELECT g, repeat('x', 100) FROM generate_series(1, 100) g ON CONFLICT (id) DO UPDATE SET note = excluded.note")
		dba("SELECT pg_switch_wal()")
		dba("CHECKPOINT")
		var status string
		if err := admin.QueryRow(t.Context(), "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pgmesh_n1_n2'").Scan(&status); err != nil {
			t.Fatalf("read slot pgmesh_n1_n2: %v", err)
		}
		return status == "lost", "wal_status " + status
	})

	out, code := runCLI(t, "check", "-c", env.ConfigPath)
	if code != 1 {
		t.Fatalf("check with a lost slot: exit %d, want 1\n%s", code, out)
	}
	fs, _ = checkJSON(t, env.ConfigPath)
	f, ok := findingWith(fs, "FAIL", "n1", "slots", "pgmesh_n1_n2", "wal_status = lost")
	if !ok {
		t.Fatalf("no FAIL for the lost slot:\n%s", out)
	}
	for _, want := range []string{"pg_drop_replication_slot('pgmesh_n1_n2')", "pg_create_logical_replication_slot('pgmesh_n1_n2', 'pgoutput')", "pgmesh repair", "--from n1"} {
		if !strings.Contains(f.Fix, want) {
			t.Errorf("fix of the lost slot lacks %q:\n%s", want, f.Fix)
		}
	}
	// Re-created, the slot is back to inactive (no agent runs here).
	dba("SELECT pg_drop_replication_slot('pgmesh_n1_n2')")
	dba("SELECT pg_create_logical_replication_slot('pgmesh_n1_n2', 'pgoutput')")
	fs, code = checkJSON(t, env.ConfigPath)
	if code != 0 {
		t.Fatalf("check after re-creating the slot: exit %d, FAILs:\n%s", code, failures(fs))
	}
	if _, ok := findingWith(fs, "WARN", "n1", "pgmesh_n1_n2", "inactive"); !ok {
		t.Errorf("re-created slot not reported inactive: %+v", fs)
	}
}

// TestCheckBadConfig: an invalid config is exit 2 with file and line, before
// any connection.
func TestCheckBadConfig(t *testing.T) {
	const two = "cluster: shop\nnodes:\n  - name: n1\n    dsn: \"host=127.0.0.1 dbname=a\"\n  - name: n2\n    dsn: \"host=127.0.0.1 dbname=b\"\n"
	cases := []struct {
		name, yaml, line, msg string
	}{
		{"unknown key", two + "replicat:\n  schemas: [public]\n", "pgmesh.yaml:7", `unknown key "replicat"`},
		{"bad node name", "cluster: shop\nnodes:\n  - name: Paris\n    dsn: x\n  - name: n2\n    dsn: y\n", "pgmesh.yaml:3", `name "Paris" must match`},
		{"duplicate node", two + "  - name: n1\n    dsn: \"host=127.0.0.1 dbname=c\"\n", "pgmesh.yaml:7", `duplicate node name "n1"`},
		{"empty dsn", two + "  - name: n3\n    dsn: \"\"\n", "pgmesh.yaml:8", "dsn is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "pgmesh.yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			out, code := runCLI(t, "check", "-c", p)
			if code != 2 {
				t.Fatalf("exit %d, want 2\n%s", code, out)
			}
			if !strings.Contains(out, tc.line) || !strings.Contains(out, tc.msg) {
				t.Errorf("output lacks %q and %q:\n%s", tc.line, tc.msg, out)
			}
		})
	}
}

// TestCheckSchemaDrift: identical definitions compare equal whatever the
// sessions' search_path; each kind of difference is named, and the SQL
// check suggests for the odd node removes it.
func TestCheckSchemaDrift(t *testing.T) {
	env := sandboxtest.New(t, 2)
	for i := range 2 {
		env.Exec(t, i, `CREATE TYPE mood AS ENUM ('ok', 'bad');
			CREATE TABLE skus (sku text PRIMARY KEY);
			CREATE TABLE items (
				id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
				sku text NOT NULL REFERENCES skus (sku),
				name text COLLATE "C",
				note text,
				qty integer NOT NULL DEFAULT 0 CONSTRAINT items_qty_check CHECK (qty >= 0),
				m mood DEFAULT 'ok',
				total numeric(10,2) GENERATED ALWAYS AS (qty * 2) STORED,
				UNIQUE (sku, name));
			CREATE INDEX items_lower_name ON items (lower(name)) WHERE qty > 0`)
	}
	// On n1 nothing of public is on the search_path: catalog functions
	// print public.mood, public.skus there but mood, skus on n2.
	if _, err := env.Admin(t, 0).Exec(context.Background(), fmt.Sprintf("ALTER DATABASE %s SET search_path = pg_catalog", env.DB)); err != nil {
		t.Fatal(err)
	}

	schemaFindings := func() []finding {
		fs, _ := checkJSON(t, env.ConfigPath)
		var out []finding
		for _, f := range fs {
			if f.Check == "schema" {
				out = append(out, f)
			}
		}
		return out
	}
	if fs := schemaFindings(); len(fs) != 1 || fs[0].Status != "PASS" {
		t.Fatalf("identical tables: %+v", fs)
	}

	env.Exec(t, 1, `ALTER TABLE items ALTER COLUMN note TYPE varchar(20);
		ALTER TABLE items ALTER COLUMN name SET NOT NULL;
		ALTER TABLE items ALTER COLUMN m SET DEFAULT 'bad';
		ALTER TABLE items DROP CONSTRAINT items_qty_check, ADD CONSTRAINT items_qty_check CHECK (qty > 0);
		DROP INDEX items_lower_name;
		ALTER TABLE items REPLICA IDENTITY FULL`)
	fs := schemaFindings()
	want := []struct{ status, msg string }{
		{"FAIL", "column note is text on n1, character varying(20) on n2"},
		{"FAIL", "column name is nullable on n1, NOT NULL on n2"},
		{"WARN", "column m has default 'ok'::public.mood on n1, default 'bad'::public.mood on n2"},
		{"WARN", "check constraint items_qty_check is CHECK ((qty >= 0)) on n1, CHECK ((qty > 0)) on n2"},
		{"WARN", "index items_lower_name missing on n2"},
		{"FAIL", "replica identity is DEFAULT on n1, FULL on n2"},
	}
	if len(fs) != len(want) {
		t.Errorf("%d schema findings, want %d: %+v", len(fs), len(want), fs)
	}
	for _, w := range want {
		if _, ok := findingWith(fs, w.status, "n2", "public.items", w.msg); !ok {
			t.Errorf("no %s %q in %+v", w.status, w.msg, fs)
		}
	}
	// The first line of each fix is the SQL for n2: "on n2: SQL;".
	for _, f := range fs {
		line, _, _ := strings.Cut(f.Fix, "\n")
		sql, ok := strings.CutPrefix(line, "on n2: ")
		if !ok {
			t.Fatalf("fix of %q does not start with the SQL for n2: %q", f.Message, f.Fix)
		}
		env.Exec(t, 1, sql)
	}
	if fs := schemaFindings(); len(fs) != 1 || fs[0].Status != "PASS" {
		t.Fatalf("after the suggested fixes: %+v", fs)
	}
}

// TestCheckMoney: money columns of every shape (money, a domain over it, an
// array of it, a composite type holding it) are found on every node, and
// nodes that format money alike pass. (Nodes whose lc_monetary format money
// differently FAIL: see check.TestMoneyFindings; this machine may have no
// second monetary locale to try.)
func TestCheckMoney(t *testing.T) {
	env := sandboxtest.New(t, 2)
	for i := range 2 {
		env.Exec(t, i, `CREATE DOMAIN price AS money CHECK (VALUE >= '0'::money);
CREATE TYPE order_line AS (qty int, amounts money[]);
CREATE TABLE orders (id int PRIMARY KEY, total money, net price, parts money[], lines order_line[], note numeric);
CREATE TABLE other (id int PRIMARY KEY, n numeric)`)
	}
	fs, code := checkJSON(t, env.ConfigPath)
	if code != 0 {
		t.Fatalf("check: exit %d, FAILs:\n%s", code, failures(fs))
	}
	f, ok := findingWith(fs, "PASS", "", "money", "formats money alike")
	if !ok {
		t.Fatalf("no money PASS: %+v", fs)
	}
	if want := "public.orders.lines, public.orders.net, public.orders.parts, public.orders.total"; f.Object != want {
		t.Errorf("money columns %q, want %q", f.Object, want)
	}
}
