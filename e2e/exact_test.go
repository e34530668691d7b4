package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// exactColumns are the columns of the exact-values table after id and ver,
// with their types; rows are written with the value sets below.
var exactColumns = []struct{ name, typ string }{
	{"f8", "float8"}, {"f4", "real"}, {"f8arr", "float8[]"}, {"num", "numeric"},
	{"d", "date"}, {"ts", "timestamp"}, {"tstz", "timestamptz"}, {"tm", "time"}, {"ttz", "timetz"}, {"iv", "interval"},
	{"b", "bytea"}, {"txt", "text"}, {"tarr", "text[]"}, {"iarr", "int[]"}, {"tzarr", "timestamptz[]"}, {"ivarr", "interval[]"},
	{"e", "app.mood"}, {"earr", "app.mood[]"}, {"dom", "app.posint"},
	{"r", "int4range"}, {"tr", "tstzrange"}, {"dr", "daterange"}, {"nr", "numrange"},
	{"j", "json"}, {"jb", "jsonb"}, {"vb", "varbit"}, {"bt", "bit(4)"},
	{"u", "uuid"}, {"ip", "inet"}, {"cn", "cidr"}, {"m", "money"}, {"pt", "point"}, {"rt", "regtype"},
	{"tsv", "tsvector"}, {"x", "xml"},
}

// exactValues are SQL expressions for the columns above, one set per
// version of a row. Every literal reads the same under any DateStyle,
// IntervalStyle, TimeZone, array_nulls or xmloption of the writing session
// (ISO 8601 forms, explicit offsets, ARRAY constructors, XMLPARSE).
var exactValues = [][]string{
	{
		`'NaN'`, `'-Infinity'`, `ARRAY['Infinity', '-0', 'NaN', '1e-310']::float8[]`, `'NaN'`,
		`'infinity'`, `'-infinity'`, `'infinity'`, `'24:00:00'`, `'00:00:00+15:59'`, `'P-1Y2M-3DT-4H5M6.789S'`,
		`'\x00ff5c27'::bytea`, `E'tab\there "q" \\ back ''s é'`,
		`ARRAY['a"b', 'c\d', NULL, '', 'NULL', ' x ', '{}', ',', 'é']`, `ARRAY[1, NULL, -3]`,
		`ARRAY['2024-02-29 23:59:59.999999+05:30'::timestamptz, '-infinity']`, `ARRAY['P1Y-1M'::interval, 'PT-0.000001S']`,
		`'happy ''quoted'''`, `ARRAY['sad', 'happy ''quoted''']::app.mood[]`, `1`,
		`'empty'`, `'[-infinity,infinity]'`, `'[2024-01-01,)'`, `'(,0.5]'`,
		`'{"a":1,  "a" : 2, "b" : [1, 2 ,3] }'`, `'{"z": 1.50, "a": [null, "é\\"], "n": 1e2}'`, `B'10110'`, `B'0101'`,
		`'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'`, `'::ffff:1.2.3.4/96'`, `'10.0.0.0/8'`, `'-92233720368547758.08'`,
		`'(0.1,-0)'`, `'app.mood'`, `'a:1A fat:2B,4C cat:5'`, `XMLPARSE(CONTENT '<a b="1">x &amp; y</a>tail')`,
	},
	{
		`'-0'`, `'1.17549435e-38'`, `ARRAY[NULL, 1.7976931348623157e308]::float8[]`, `('0.' || repeat('0', 999) || '1')::numeric`,
		`'4713-01-01 BC'`, `'0044-03-15 12:34:56.789012 BC'`, `'1900-01-01 00:00:00+00'`, `'00:00:00.000001'`, `'23:59:59.999999-15:59'`, `'P1DT-1S'`,
		`''::bytea`, `''`,
		`ARRAY[]::text[]`, `ARRAY[NULL]::int[]`,
		`ARRAY['1900-01-01 00:00:00+00'::timestamptz, NULL]`, `ARRAY['-178000000 years'::interval]`,
		`'sad'`, `ARRAY[NULL]::app.mood[]`, `2147483647`,
		`'[,)'`, `'["2024-03-31 02:30:00+01",)'`, `'(,)'`, `'[-1e-20,1e20)'`,
		`'[]'`, `'{}'`, `B''`, `B'1111'`,
		`'00000000-0000-0000-0000-000000000000'`, `'2001:db8::1/64'`, `'2001:db8::/32'`, `'92233720368547758.07'`,
		`'(1e308,5e-324)'`, `'pg_catalog.int4'`, `''`, `XMLPARSE(CONTENT '')`,
	},
	{
		`'0.30000000000000004'`, `'3.4028235e38'`, `ARRAY[0.1, 1/3.0]::float8[]`, `'-123456789012345678901234567890.123456789'`,
		`'2024-02-29'`, `'2024-02-29 23:59:59.999999'`, `'2024-03-31 02:30:00+01'`, `'12:34:56.789'`, `'12:00:00+05:30'`, `'P0D'`,
		`'\x5c6e'::bytea`, `E'line\nbreak\r\n'`,
		`ARRAY['"', '\', '\\', E'\n']`, `ARRAY[-2147483648, 2147483647]`,
		`ARRAY['2024-03-31 02:30:00+01'::timestamptz]`, `ARRAY['-1 day +1 second'::interval]`,
		`'ok'`, `ARRAY[]::app.mood[]`, `42`,
		`'[1,2)'`, `'[2024-01-01 00:00:00+14,2024-01-01 00:00:00-12)'`, `'[2024-01-01,2024-01-02)'`, `'[NaN,NaN]'`,
		`'  {"k":"v"}  '`, `'[1, 2.0, 3e-5]'`, `B'1'`, `B'1000'`,
		`'ffffffff-ffff-ffff-ffff-ffffffffffff'`, `'255.255.255.255'`, `'0.0.0.0/0'`, `'0.01'`,
		`'(-0.0000001,123456789.123456789)'`, `'app.mood[]'`, `'a:1,2,3'`, `XMLPARSE(CONTENT '<?xml version="1.0"?><r/>')`,
	},
}

// nodeSettings gives the test database on node settings that change how
// values print and parse, the way an operator would: ALTER DATABASE for
// everyone, ALTER ROLE … IN DATABASE for the role the agents connect as.
// It needs the rights of the database owner and of a role administrator.
func nodeSettings(t *testing.T, env *sandboxtest.Env, node int, db, role map[string]string) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(env.Config.Nodes[node].DSN)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range slices.Sorted(mapKeys(db)) {
		env.AdminExec(t, node, fmt.Sprintf("ALTER DATABASE %s SET %s = %s", pgx.Identifier{env.DB}.Sanitize(), k, quoteLit(db[k])))
	}
	for _, k := range slices.Sorted(mapKeys(role)) {
		env.AdminExec(t, node, fmt.Sprintf("ALTER ROLE %s IN DATABASE %s SET %s = %s", pgx.Identifier{cfg.User}.Sanitize(),
			pgx.Identifier{env.DB}.Sanitize(), k, quoteLit(role[k])))
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func quoteLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// pinnedSQL are the settings under which the test reads values back: one
// text form per value, whatever the node's own settings.
const pinnedSQL = `SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC';
SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET search_path = pg_catalog;
SET xmloption = content; SET array_nulls = on`

// TestExactValues: three nodes whose databases and agent role print and
// parse values differently (DateStyle SQL/DMY, German, Postgres/MDY; time
// zones with odd and historical offsets; extra_float_digits 0 and below;
// every IntervalStyle; bytea_output escape; array_nulls off; xmloption
// document; a search_path that makes regtype print unqualified). Rows of a
// table with edge values of many types are inserted on one node and
// updated on another through a running mesh; every value must then be the
// same on every node, byte for byte in its text form (json included) and
// equal by IS NOT DISTINCT FROM, and no conflict may be logged. A repair
// from one node must copy values as exactly.
func TestExactValues(t *testing.T) {
	env := sandboxtest.New(t, 3)
	ctx := context.Background()
	cols := exactColumns
	var xmlErr *pgconn.PgError
	if err := env.Conn(t, 0).QueryRow(ctx, `SELECT '<a/>'::xml::text`).Scan(new(string)); errors.As(err, &xmlErr) && xmlErr.Code == "0A000" {
		t.Logf("server built without libxml: no xml column")
		cols = cols[:len(cols)-1]
	} else if err != nil {
		t.Fatal(err)
	}
	var defs []string
	for _, c := range cols {
		defs = append(defs, c.name+" "+c.typ)
	}
	initMesh(t, env, 3,
		`CREATE SCHEMA app`,
		`CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy ''quoted''')`,
		`CREATE DOMAIN app.posint AS int CHECK (VALUE > 0)`,
		`CREATE TABLE exact (id int PRIMARY KEY, ver int NOT NULL, `+strings.Join(defs, ", ")+`)`)

	nodeSettings(t, env, 0,
		map[string]string{"DateStyle": "SQL, DMY", "TimeZone": "Asia/Kolkata", "extra_float_digits": "0",
			"IntervalStyle": "sql_standard", "bytea_output": "escape"},
		map[string]string{"xmloption": "document"})
	nodeSettings(t, env, 1,
		map[string]string{"DateStyle": "German", "TimeZone": "America/St_Johns", "IntervalStyle": "iso_8601"},
		map[string]string{"extra_float_digits": "-3", "array_nulls": "off"})
	nodeSettings(t, env, 2,
		map[string]string{"DateStyle": "Postgres, MDY", "TimeZone": "Pacific/Chatham"},
		map[string]string{"IntervalStyle": "postgres_verbose", "search_path": "app, public", "bytea_output": "escape"})
	// Sessions opened from now on get the settings, like the agents'.
	cs := conns(t, env, 3)
	startAgent(t, env.ConfigPath)

	write := func(node int, sql string) {
		t.Helper()
		if _, err := cs[node].Exec(ctx, sql); err != nil {
			t.Fatalf("n%d: %s: %v", node+1, sql, err)
		}
	}
	insert := func(node, id, set int) {
		t.Helper()
		names, vals := []string{"id", "ver"}, []string{fmt.Sprint(id), "1"}
		for i, c := range cols {
			names, vals = append(names, c.name), append(vals, exactValues[set][i])
		}
		write(node, fmt.Sprintf("INSERT INTO public.exact (%s) VALUES (%s)", strings.Join(names, ", "), strings.Join(vals, ", ")))
	}
	update := func(node, id, set int) {
		t.Helper()
		sets := []string{"ver = 2"}
		for i, c := range cols {
			sets = append(sets, c.name+" = "+exactValues[set][i])
		}
		write(node, fmt.Sprintf("UPDATE public.exact SET %s WHERE id = %d", strings.Join(sets, ", "), id))
	}
	// Row id is inserted on node id-1 and updated on the next node.
	for id := 1; id <= 3; id++ {
		insert(id-1, id, id-1)
	}
	waitVersions(t, cs, 1)
	for id := 1; id <= 3; id++ {
		update(id%3, id, id%3)
	}
	waitVersions(t, cs, 2)

	want := assertSameValues(t, env, cols)
	// The update on node id%3 wrote value set id%3: what every node must
	// hold is what that node holds, and its json is the literal's bytes.
	for id := 1; id <= 3; id++ {
		j := slices.IndexFunc(cols, func(c struct{ name, typ string }) bool { return c.name == "j" })
		lit := strings.Trim(exactValues[id%3][j], "'")
		if got := want[id][j]; got == nil || *got != lit {
			t.Errorf("row %d: json %v, want the bytes written %q", id, deref(got), lit)
		}
	}
	if out, code := runCLI(t, "diff", "-c", env.ConfigPath); code != 0 {
		t.Errorf("pgmesh diff: exit %d\n%s", code, out)
	}
	for n, c := range cs {
		if got := totalLog(t, c); got != 0 {
			t.Errorf("n%d: %d conflict_log rows for changes made one after the other", n+1, got)
		}
	}

	// A repair copies values as exactly: n2 loses row 1 and has row 2
	// changed behind the mesh's back; a repair from n1 restores both.
	hiddenExec(t, env, 1, `DELETE FROM public.exact WHERE id = 1`)
	hiddenExec(t, env, 1, `UPDATE public.exact SET j = '{}', f8 = 0, txt = 'x' WHERE id = 2`)
	mustCLI(t, "repair", "-c", env.ConfigPath, "--table", "public.exact", "--from", "n1")
	if got := assertSameValues(t, env, cols); !equalValues(got, want) {
		t.Errorf("after repair the values differ from before:\n%v\nwant\n%v", got, want)
	}
}

// waitVersions waits until every node has rows 1..3 at version ver.
func waitVersions(t *testing.T, cs []*pgx.Conn, ver int) {
	t.Helper()
	eventually(t, 90*time.Second, fmt.Sprintf("rows 1-3 at version %d on every node", ver), func() (bool, string) {
		var states []string
		for n, c := range cs {
			var got string
			if err := c.QueryRow(context.Background(), `SELECT coalesce(string_agg(id || ':' || ver, ',' ORDER BY id), '') FROM public.exact`).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != fmt.Sprintf("1:%d,2:%d,3:%d", ver, ver, ver) {
				states = append(states, fmt.Sprintf("n%d %s", n+1, got))
			}
		}
		return len(states) == 0, strings.Join(states, "; ")
	})
}

// assertSameValues reads every value of every node in its text form under
// pinned settings and fails unless all nodes hold the same bytes; then it
// checks on every node that each value IS NOT DISTINCT FROM n1's text read
// back in its type (text comparison only for types without equality).
// It returns n1's values by id.
func assertSameValues(t *testing.T, env *sandboxtest.Env, cols []struct{ name, typ string }) map[int][]*string {
	t.Helper()
	ctx := context.Background()
	texts := make([]string, len(cols))
	for i, c := range cols {
		texts[i] = textOf(c.name, c.typ)
	}
	read := make([]map[int][]*string, len(env.DSNs))
	pinned := make([]*pgx.Conn, len(env.DSNs))
	for n := range env.DSNs {
		c := env.Conn(t, n)
		if _, err := c.Exec(ctx, pinnedSQL); err != nil {
			t.Fatal(err)
		}
		pinned[n] = c
		rows, err := c.Query(ctx, fmt.Sprintf(`SELECT id, ARRAY[%s] FROM public.exact ORDER BY id`, strings.Join(texts, ", ")))
		if err != nil {
			t.Fatal(err)
		}
		read[n] = map[int][]*string{}
		for rows.Next() {
			var id int
			var vals []*string
			if err := rows.Scan(&id, &vals); err != nil {
				t.Fatal(err)
			}
			read[n][id] = vals
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	for n := 1; n < len(read); n++ {
		for id, vals := range read[0] {
			other, ok := read[n][id]
			if !ok {
				t.Errorf("n%d lacks row %d", n+1, id)
				continue
			}
			for i, c := range cols {
				if deref(vals[i]) != deref(other[i]) || (vals[i] == nil) != (other[i] == nil) {
					t.Errorf("row %d column %s (%s): n1 %q, n%d %q", id, c.name, c.typ, deref(vals[i]), n+1, deref(other[i]))
				}
			}
		}
		if len(read[n]) != len(read[0]) {
			t.Errorf("n%d has %d rows, n1 %d", n+1, len(read[n]), len(read[0]))
		}
	}
	noEquality := map[string]bool{"json": true, "xml": true, "point": true}
	for n, c := range pinned {
		for id, vals := range read[0] {
			var conds []string
			args := []any{id}
			for i, col := range cols {
				args = append(args, vals[i])
				p := fmt.Sprintf("$%d::text", len(args))
				if noEquality[col.typ] {
					conds = append(conds, fmt.Sprintf("%s IS NOT DISTINCT FROM %s", textOf(col.name, col.typ), p))
				} else {
					conds = append(conds, fmt.Sprintf("%s IS NOT DISTINCT FROM %s::%s", col.name, p, col.typ))
				}
			}
			var same []bool
			q := fmt.Sprintf(`SELECT ARRAY[%s] FROM public.exact WHERE id = $1`, strings.Join(conds, ", "))
			if err := c.QueryRow(ctx, q, args...).Scan(&same); err != nil {
				t.Fatalf("n%d row %d: %v", n+1, id, err)
			}
			for i, ok := range same {
				if !ok {
					t.Errorf("n%d row %d column %s: not IS NOT DISTINCT FROM n1's %q", n+1, id, cols[i].name, deref(vals[i]))
				}
			}
		}
	}
	return read[0]
}

// textOf is column col as text the way its type prints it. xml's cast to
// text keeps the stored bytes, its output drops a declaration that says
// nothing (version 1.0 alone), which therefore never reaches the peers.
func textOf(col, typ string) string {
	if typ == "xml" {
		return "textin(xml_out(" + col + "))"
	}
	return col + "::text"
}

func equalValues(a, b map[int][]*string) bool {
	if len(a) != len(b) {
		return false
	}
	for id, va := range a {
		vb, ok := b[id]
		if !ok || len(va) != len(vb) {
			return false
		}
		for i := range va {
			if (va[i] == nil) != (vb[i] == nil) || deref(va[i]) != deref(vb[i]) {
				return false
			}
		}
	}
	return true
}
