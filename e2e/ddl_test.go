package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// ddlMesh starts a 3-node mesh whose nodes have table items, with an agent.
func ddlMesh(t *testing.T, items string) (*sandboxtest.Env, []*pgx.Conn) {
	t.Helper()
	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, items)
	cs := conns(t, env, 3)
	startAgent(t, env.ConfigPath)
	return env, cs
}

// runDDL runs `pgmesh ddl --node node SQL` with extra args and returns the
// DDL id and the exit code.
func runDDL(t *testing.T, env *sandboxtest.Env, node, sql string, args ...string) (string, int) {
	t.Helper()
	out, code := runCLI(t, append([]string{"ddl", "-c", env.ConfigPath, "--node", node, "--role", "app_owner", "--json", sql}, args...)...)
	var res struct{ ID, Applied string }
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&res); err != nil || res.ID == "" {
		t.Fatalf("pgmesh ddl --node %s %q: exit %d, no id (%v)\n%s", node, sql, code, err, out)
	}
	if code == 0 && slicesContain(args, "--wait") && res.Applied != "all" {
		t.Fatalf("pgmesh ddl --wait exited 0 with applied %q", res.Applied)
	}
	return res.ID, code
}

func slicesContain(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// eventuallyAll waits until query returns want on every node; a query
// that fails or returns NULL (object or row not there yet) is "not yet".
func eventuallyAll(t *testing.T, cs []*pgx.Conn, what, query, want string) {
	t.Helper()
	eventually(t, 90*time.Second, what, func() (bool, string) {
		for i, c := range cs {
			var got *string
			if err := c.QueryRow(context.Background(), query).Scan(&got); err != nil {
				return false, fmt.Sprintf("n%d: %v", i+1, err)
			}
			if got == nil || *got != want {
				return false, fmt.Sprintf("n%d: %v, want %q", i+1, deref(got), want)
			}
		}
		return true, ""
	})
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

// linkStatus is agent.LinkStatus as `pgmesh status --json` prints it.
type linkStatus struct {
	Link      string `json:"link"`
	State     string `json:"state"`
	LastError string `json:"last_error"`
}

func statusOf(t *testing.T, cfgPath, link string) linkStatus {
	t.Helper()
	out, _ := runCLI(t, "status", "-c", cfgPath, "--json")
	var sts []linkStatus
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&sts); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, s := range sts {
		if s.Link == link {
			return s
		}
	}
	t.Fatalf("status --json: no link %s in\n%s", link, out)
	return linkStatus{}
}

// TestDDLAddColumnUnderLoad adds a column with a default through `pgmesh
// ddl --wait` on n2 while n1 and n3 insert: rows from before, during and
// after the change all reach every node, and the values written into the
// new column after the DDL are everywhere.
func TestDDLAddColumnUnderLoad(t *testing.T) {
	env, cs := ddlMesh(t, `CREATE TABLE items (id bigint PRIMARY KEY, node int NOT NULL, val int NOT NULL)`)

	var added, stop atomic.Bool
	type counts struct{ plain, tagged int64 }
	res := make([]counts, 3)
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for _, n := range []int{0, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				ctx := context.Background()
				c, err := pgx.Connect(ctx, env.DSNAs(n, sandbox.App))
				if err != nil {
					return err
				}
				defer c.Close(ctx)
				for id := int64(n)*1_000_000 + 1; !stop.Load(); id++ {
					// Only once every node has the column may a writer
					// fill it: before that it takes the default.
					if added.Load() {
						_, err = c.Exec(ctx, `INSERT INTO items (id, node, val, tag) VALUES ($1, $2, 1, $3)`, id, n, fmt.Sprint("t", id))
						res[n].tagged++
					} else {
						_, err = c.Exec(ctx, `INSERT INTO items (id, node, val) VALUES ($1, $2, 1)`, id, n)
						res[n].plain++
					}
					if err != nil {
						return fmt.Errorf("n%d: insert %d: %w", n+1, id, err)
					}
					time.Sleep(5 * time.Millisecond) // leave CPU to the agents
				}
				return nil
			}()
		}()
	}
	time.Sleep(2 * time.Second)
	if _, code := runDDL(t, env, "n2", `ALTER TABLE items ADD COLUMN tag text NOT NULL DEFAULT 'none'`, "--wait", "--timeout", "90s"); code != 0 {
		stop.Store(true)
		wg.Wait()
		t.Fatalf("pgmesh ddl --wait: exit %d", code)
	}
	added.Store(true)
	time.Sleep(2 * time.Second)
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	var plain, tagged int64
	for _, r := range res {
		plain, tagged = plain+r.plain, tagged+r.tagged
	}
	if plain == 0 || tagged == 0 {
		t.Fatalf("workload wrote %d rows before and %d after the DDL: both must be > 0", plain, tagged)
	}
	// Every row on every node, each with the default or its own tag: a
	// node that left the column out of a peer's rows after the DDL
	// reached it holds the default instead of the tag.
	eventually(t, 90*time.Second, "every row with its tag on every node", func() (bool, string) {
		var detail []string
		for i, c := range cs {
			var gotPlain, gotTagged, other int64
			if err := c.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE tag = 'none'), count(*) FILTER (WHERE tag = 't' || id),
			    count(*) FILTER (WHERE tag <> 'none' AND tag <> 't' || id) FROM items`).Scan(&gotPlain, &gotTagged, &other); err != nil {
				return false, fmt.Sprintf("n%d: %v", i+1, err)
			}
			if gotPlain != plain || gotTagged != tagged || other != 0 {
				detail = append(detail, fmt.Sprintf("n%d: %d rows with the default, %d with their tag, %d other (writers: %d, %d)",
					i+1, gotPlain, gotTagged, other, plain, tagged))
			}
		}
		return len(detail) == 0, strings.Join(detail, "; ")
	})
	if final := waitConverged(t, env, cs, "items", "id"); final.Rows != plain+tagged {
		t.Fatalf("converged to %d rows, writers committed %d", final.Rows, plain+tagged)
	}
}

// TestDDLStatementsInOrder replicates one kind of DDL after the other
// through `pgmesh ddl`, each from a different node; after each, a row of
// the new shape written on some node must reach every node.
func TestDDLStatementsInOrder(t *testing.T) {
	env, cs := ddlMesh(t, `CREATE TABLE items (id bigint PRIMARY KEY, node int NOT NULL, val int NOT NULL, note text, extra int)`)
	env.Exec(t, 0, `INSERT INTO items VALUES (1, 1, 1, 'first', 42)`)
	eventuallyAll(t, cs, "first row", `SELECT note FROM items WHERE id = 1`, "first")

	steps := []struct {
		name, node, ddl string
		writes          map[int]string // node index → SQL in the new shape
		check, want     string         // on every node
	}{
		{"drop column", "n2", `ALTER TABLE items DROP COLUMN extra`,
			map[int]string{2: `INSERT INTO items VALUES (2, 3, 2, 'after drop')`},
			`SELECT (SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'items' AND column_name = 'extra')::text
			        || ':' || (SELECT note FROM items WHERE id = 2)`, "0:after drop"},
		{"rename column", "n3", `ALTER TABLE items RENAME COLUMN note TO remark`,
			map[int]string{0: `INSERT INTO items (id, node, val, remark) VALUES (3, 1, 3, 'renamed')`},
			`SELECT remark FROM items WHERE id = 3`, "renamed"},
		{"create index", "n1", `CREATE INDEX items_val ON items (val)`,
			map[int]string{1: `INSERT INTO items (id, node, val, remark) VALUES (4, 2, 4, 'indexed')`},
			`SELECT (SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = 'items_val')
			        || ':' || (SELECT remark FROM items WHERE id = 4)`, "CREATE INDEX items_val ON public.items USING btree (val):indexed"},
		{"create table", "n2", `CREATE TABLE orders (id bigint PRIMARY KEY, item bigint NOT NULL, qty int NOT NULL DEFAULT 1)`,
			map[int]string{0: `INSERT INTO orders VALUES (1, 1, 10)`, 2: `INSERT INTO orders (id, item) VALUES (2, 3)`},
			`SELECT string_agg(id || '/' || item || '/' || qty, ',' ORDER BY id) FROM orders`, "1/1/10,2/3/1"},
		{"alter column type", "n3", `ALTER TABLE items ALTER COLUMN val TYPE bigint`,
			map[int]string{1: `INSERT INTO items (id, node, val, remark) VALUES (5, 2, 5000000000, 'big')`},
			`SELECT format_type(atttypid, atttypmod) || ':' || (SELECT val FROM items WHERE id = 5)
			   FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'val'`, "bigint:5000000000"},
	}
	var ids []string
	for _, s := range steps {
		id, code := runDDL(t, env, s.node, s.ddl, "--wait", "--timeout", "90s")
		if code != 0 {
			t.Fatalf("%s: pgmesh ddl --wait: exit %d", s.name, code)
		}
		ids = append(ids, id)
		for n, sql := range s.writes {
			env.Exec(t, n, sql)
		}
		eventuallyAll(t, cs, s.name, s.check, s.want)
	}

	// In order: every node applied the DDLs in the order they were run.
	eventuallyAll(t, cs, "ddl_log order",
		fmt.Sprintf(`SELECT string_agg(id, ',' ORDER BY applied_at) FROM pgmesh.ddl_log WHERE status = 'applied' AND id IN ('%s')`, strings.Join(ids, "','")),
		strings.Join(ids, ","))
	waitConverged(t, env, cs, "items", "id")
	waitConverged(t, env, cs, "orders", "id")
}

// TestDDLCapturedCreateTable types a CREATE TABLE in a plain session on n1
// (captured by the event trigger, no pgmesh ddl): the table, with its
// primary key, and rows written on n1 and n3 reach every node.
func TestDDLCapturedCreateTable(t *testing.T) {
	env, cs := ddlMesh(t, `CREATE TABLE items (id bigint PRIMARY KEY)`)
	env.Exec(t, 0, `CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)`)
	env.Exec(t, 0, `INSERT INTO notes SELECT g, 'n1-' || g FROM generate_series(1, 3) g`)
	eventuallyAll(t, cs, "notes with its primary key",
		`SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
		  WHERE i.indrelid = to_regclass('public.notes') AND i.indisprimary`, "id")
	env.Exec(t, 2, `INSERT INTO notes SELECT g, 'n3-' || g FROM generate_series(11, 13) g`)
	if st := waitConverged(t, env, cs, "notes", "id"); st.Rows != 6 {
		t.Fatalf("notes converged to %d rows, want 6", st.Rows)
	}
}

// TestDDLDivergentColumns: n1 adds a column (captured, replicated) while n2
// adds another one by hand with capture suppressed. The column only n2 has
// stops n2's links with an error naming it, check reports the drift, and
// once the operator adds the column on the other nodes (the README's fix)
// every row written meanwhile arrives.
func TestDDLDivergentColumns(t *testing.T) {
	env, cs := ddlMesh(t, `CREATE TABLE items (id bigint PRIMARY KEY, node int NOT NULL, val int NOT NULL)`)
	// Back to back: n2 has its column before n1's arrives there.
	env.Exec(t, 0, `ALTER TABLE items ADD COLUMN color text`)
	env.ExecUncaptured(t, 1, `ALTER TABLE items ADD COLUMN weight int`)
	eventuallyAll(t, cs, "color on every node",
		`SELECT string_agg(attname, ',') FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'color'`, "color")
	// Rows in the columns every node has, from every node.
	for n := range 3 {
		env.Exec(t, n, `INSERT INTO items (id, node, val) SELECT $1::int * 100 + g, $1, g FROM generate_series(1, 5) g`, n)
	}

	for _, link := range []string{"n2->n1", "n2->n3"} {
		eventually(t, 90*time.Second, link+" stopped on column weight", func() (bool, string) {
			s := statusOf(t, env.ConfigPath, link)
			return strings.Contains(s.LastError, `"weight"`), fmt.Sprintf("%+v", s)
		})
	}
	fs, code := checkJSON(t, env.ConfigPath)
	if code != 1 {
		t.Errorf("check: exit %d, want 1", code)
	}
	var drift bool
	for _, f := range fs {
		drift = drift || (f.Check == "schema" && f.Status != "PASS" && strings.Contains(f.Message, "weight"))
	}
	if !drift {
		t.Errorf("check reports no schema drift naming column weight:\n%+v", fs)
	}
	// Nothing lost: n2's rows wait in its slot while the others flow.
	eventuallyAll(t, cs, "rows of n1 and n3", `SELECT count(*)::text FROM items WHERE node IN (0, 2)`, "10")

	for _, n := range []int{0, 2} {
		env.ExecUncaptured(t, n, `ALTER TABLE items ADD COLUMN weight int`)
	}
	// Column order differs between nodes now: compare by name.
	st := waitConverged(t, env, cs, "(SELECT id, node, val, color, weight FROM items)", "id")
	if st.Rows != 15 {
		t.Fatalf("converged to %d rows, want 15", st.Rows)
	}
	for _, link := range []string{"n2->n1", "n2->n3"} {
		eventually(t, 90*time.Second, link+" streaming again", func() (bool, string) {
			s := statusOf(t, env.ConfigPath, link)
			return s.State == "streaming", fmt.Sprintf("%+v", s)
		})
	}
}

// TestDDLFailedOnPeerSkipped: a DDL that cannot run on n3 (the table is
// already there) stops link n1->n3 with the DDL id in its status; after
// `pgmesh ddl skip` the link goes on and later rows converge.
func TestDDLFailedOnPeerSkipped(t *testing.T) {
	env, cs := ddlMesh(t, `CREATE TABLE items (id bigint PRIMARY KEY, val int NOT NULL)`)
	const create = `CREATE TABLE x (id int PRIMARY KEY, v text)`
	env.ExecUncaptured(t, 2, create)

	id, code := runDDL(t, env, "n1", create)
	if code != 0 {
		t.Fatalf("pgmesh ddl: exit %d", code)
	}
	env.Exec(t, 0, `INSERT INTO items VALUES (1, 1)`)
	env.Exec(t, 0, `INSERT INTO x VALUES (1, 'one')`)
	eventually(t, 90*time.Second, "n1->n3 stopped on the DDL", func() (bool, string) {
		s := statusOf(t, env.ConfigPath, "n1->n3")
		return strings.Contains(s.LastError, id) && strings.Contains(s.LastError, "already exists"), fmt.Sprintf("%+v", s)
	})
	// n2 is not held up; a next DDL refuses to start while n3 lags.
	eventuallyAll(t, cs[:2], "x on n1 and n2", `SELECT v FROM x WHERE id = 1`, "one")
	out, code := runCLI(t, "ddl", "-c", env.ConfigPath, "--node", "n2", "--role", "app_owner", "ALTER TABLE items ADD COLUMN note text")
	if code != 1 || !strings.Contains(out, id) || !strings.Contains(out, "n3 failed") {
		t.Fatalf("ddl while %s failed on n3: exit %d, want 1 naming the DDL and n3:\n%s", id, code, out)
	}

	mustCLI(t, "ddl", "skip", id, "--node", "n3", "-c", env.ConfigPath)
	// n3's x was made by hand outside pgmesh: only n1 writes it.
	env.Exec(t, 0, `INSERT INTO x VALUES (2, 'two')`)
	env.Exec(t, 2, `INSERT INTO items (id, val) VALUES (2, 2)`)
	if st := waitConverged(t, env, cs, "items", "id"); st.Rows != 2 {
		t.Fatalf("items converged to %d rows, want 2", st.Rows)
	}
	if st := waitConverged(t, env, cs, "x", "id"); st.Rows != 2 {
		t.Fatalf("x converged to %d rows, want 2", st.Rows)
	}
	eventually(t, 90*time.Second, "n1->n3 streaming", func() (bool, string) {
		s := statusOf(t, env.ConfigPath, "n1->n3")
		return s.State == "streaming" && s.LastError == "", fmt.Sprintf("%+v", s)
	})
	out = mustCLI(t, "ddl", "list", "-c", env.ConfigPath, "--pending")
	if strings.Contains(out, id) {
		t.Fatalf("ddl %s still pending after skip:\n%s", id, out)
	}
}

// TestDDLReplayedUnderIssuerSettings: a literal in a captured DDL reads on
// the peers as it read where it ran, whatever the DateStyle, IntervalStyle
// and TimeZone of the issuer's session and of the peers' databases.
func TestDDLReplayedUnderIssuerSettings(t *testing.T) {
	env := sandboxtest.New(t, 2)
	initMesh(t, env, 2, `CREATE TABLE items (id int PRIMARY KEY)`)
	// n2's database reads dates the other way round.
	if _, err := env.Admin(t, 1).Exec(context.Background(), fmt.Sprintf(
		`ALTER DATABASE %s SET DateStyle = 'SQL, MDY'`, env.DB)); err != nil {
		t.Fatal(err)
	}
	startAgent(t, env.ConfigPath)
	owner := env.Conn(t, 0)
	for _, q := range []string{
		`SET DateStyle = 'SQL, DMY'`, `SET IntervalStyle = 'sql_standard'`, `SET TimeZone = 'Asia/Kolkata'`,
		`ALTER TABLE items ADD COLUMN d date DEFAULT '01/02/2024', ADD COLUMN i interval DEFAULT '-1 2:03:04',
			ADD COLUMN ts timestamptz DEFAULT '2024-02-01 10:00'`,
	} {
		sqlOn(t, owner, q)
	}
	cs := conns(t, env, 2)
	const q = `SELECT string_agg(pg_get_expr(d.adbin, d.adrelid), ' | ' ORDER BY d.adnum)
		FROM pg_attrdef d WHERE d.adrelid = 'public.items'::regclass`
	for _, c := range cs {
		sqlOn(t, c, `SET DateStyle = 'ISO'`)
		sqlOn(t, c, `SET IntervalStyle = 'postgres'`)
		sqlOn(t, c, `SET TimeZone = 'UTC'`)
	}
	want := `'2024-02-01'::date | '-1 days -02:03:04'::interval | '2024-02-01 04:30:00+00'::timestamp with time zone`
	eventuallyAll(t, cs, "the defaults on every node", q, want)
}
