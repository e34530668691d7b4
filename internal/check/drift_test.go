package check

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// items is the reference definition every node starts from; each call
// returns a fresh copy a test may change.
func items() *pg.Fingerprint {
	return &pg.Fingerprint{
		Table:           "public.items",
		ReplicaIdentity: 'd',
		Columns: []pg.ColumnDef{
			// Converted to snowflake: the same default text on every node.
			{Name: "id", Type: "bigint", NotNull: true, Default: "pgmesh.snowflake_nextval('public.items_id_seq'::regclass)"},
			{Name: "sku", Type: "text", NotNull: true},
			{Name: "qty", Type: "integer", NotNull: true, Default: "0"},
			{Name: "note", Type: "text", Default: "''::text"},
		},
		Constraints: []pg.ConstraintDef{
			{Name: "items_pkey", Kind: 'p', Def: "PRIMARY KEY (id)"},
			{Name: "items_qty_check", Kind: 'c', Def: "CHECK ((qty >= 0))"},
		},
		Indexes: []pg.IndexDef{
			{Name: "items_sku_idx", Def: "CREATE INDEX items_sku_idx ON public.items USING btree (sku)"},
		},
	}
}

func dropColumn(fp *pg.Fingerprint, name string) {
	for i, c := range fp.Columns {
		if c.Name == name {
			fp.Columns = append(fp.Columns[:i], fp.Columns[i+1:]...)
			return
		}
	}
	panic("no column " + name)
}

func column(fp *pg.Fingerprint, name string) *pg.ColumnDef {
	for i := range fp.Columns {
		if fp.Columns[i].Name == name {
			return &fp.Columns[i]
		}
	}
	panic("no column " + name)
}

func TestDriftFindings(t *testing.T) {
	tests := []struct {
		name  string
		nodes int
		// change alters node i's (0-based) copy of items.
		change func(i int, fp *pg.Fingerprint)
		// want are "STATUS node: message" of every finding, in order.
		want []string
		// fixes are substrings of the findings' fixes, by index.
		fixes map[int][]string
	}{
		{
			name:   "identical, snowflake defaults included",
			nodes:  3,
			change: func(int, *pg.Fingerprint) {},
			want:   []string{"PASS : the 1 replicated tables have the same definition on all 3 nodes that have them"},
		},
		{
			name:  "extra column on one node",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 1 {
					fp.Columns = append(fp.Columns, pg.ColumnDef{Name: "extra", Type: "text"})
				}
			},
			want: []string{"FAIL n2: column extra exists on n2 only"},
			fixes: map[int][]string{0: {
				`on n2: ALTER TABLE "public"."items" DROP COLUMN IF EXISTS "extra";`,
				`pgmesh ddl -c pgmesh.yaml --node n2 'ALTER TABLE "public"."items" DROP COLUMN IF EXISTS "extra"'`,
				`to make every node like n2: pgmesh ddl -c pgmesh.yaml --node n2 'ALTER TABLE "public"."items" ADD COLUMN IF NOT EXISTS "extra" text'`,
			}},
		},
		{
			name:  "column missing on one node",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 2 {
					dropColumn(fp, "note")
				}
			},
			want: []string{"FAIL n3: column note missing on n3"},
			fixes: map[int][]string{0: {
				// The SQL has a literal: double-quoted for the shell.
				`on n3: ALTER TABLE "public"."items" ADD COLUMN IF NOT EXISTS "note" text DEFAULT ''::text;`,
				`--node n3 "ALTER TABLE \"public\".\"items\" ADD COLUMN IF NOT EXISTS \"note\" text DEFAULT ''::text"`,
			}},
		},
		{
			name:  "two nodes: a tie goes to the node first in the config",
			nodes: 2,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 0 {
					fp.Columns = append(fp.Columns, pg.ColumnDef{Name: "extra", Type: "text"})
				}
			},
			want:  []string{"FAIL n2: column extra missing on n2"},
			fixes: map[int][]string{0: {`to make every node like n2: pgmesh ddl -c pgmesh.yaml --node n2 'ALTER TABLE "public"."items" DROP COLUMN IF EXISTS "extra"'`}},
		},
		{
			name:  "type",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 2 {
					column(fp, "qty").Type = "bigint"
				}
			},
			want:  []string{"FAIL n3: column qty is integer on n1 and n2, bigint on n3"},
			fixes: map[int][]string{0: {`on n3: ALTER TABLE "public"."items" ALTER COLUMN "qty" TYPE integer USING "qty"::integer;`}},
		},
		{
			name:  "nullability and default of one column",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 0 {
					column(fp, "qty").NotNull = false
					column(fp, "qty").Default = "1"
				}
			},
			want: []string{
				"FAIL n1: column qty is nullable on n1, NOT NULL on n2 and n3",
				"WARN n1: column qty has default 1 on n1, default 0 on n2 and n3",
			},
			fixes: map[int][]string{
				0: {`ALTER COLUMN "qty" SET NOT NULL`},
				1: {`ALTER COLUMN "qty" SET DEFAULT 0`},
			},
		},
		{
			name:  "default missing everywhere but one node",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i > 0 {
					column(fp, "note").Default = ""
				}
			},
			want:  []string{"WARN n1: column note has default ''::text on n1, no default on n2 and n3"},
			fixes: map[int][]string{0: {`ALTER COLUMN "note" DROP DEFAULT`}},
		},
		{
			name:  "identity always on one node",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 1 {
					c := column(fp, "id")
					c.Identity, c.Default = "always", ""
				}
			},
			want: []string{
				"FAIL n2: column id is not an identity column on n1 and n3, GENERATED ALWAYS AS IDENTITY on n2",
				"WARN n2: column id has default pgmesh.snowflake_nextval('public.items_id_seq'::regclass) on n1 and n3, no default on n2",
			},
		},
		{
			name:  "generated column",
			nodes: 2,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 1 {
					c := column(fp, "note")
					c.Generated, c.Default = "stored: sku || 'x'", ""
				}
			},
			want: []string{
				"FAIL n2: column note is not generated on n1, generated (stored: sku || 'x') on n2",
				"WARN n2: column note has default ''::text on n1, no default on n2",
			},
			fixes: map[int][]string{0: {`DROP EXPRESSION IF EXISTS`}},
		},
		{
			name:  "primary key missing",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 2 {
					fp.Constraints = fp.Constraints[1:]
				}
			},
			want: []string{"FAIL n3: primary key items_pkey missing on n3"},
			fixes: map[int][]string{0: {
				`on n3: ALTER TABLE "public"."items" ADD CONSTRAINT "items_pkey" PRIMARY KEY (id);`,
				`'ALTER TABLE "public"."items" DROP CONSTRAINT IF EXISTS "items_pkey", ADD CONSTRAINT "items_pkey" PRIMARY KEY (id)'`,
			}},
		},
		{
			name:  "check constraint differs",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 2 {
					fp.Constraints[1].Def = "CHECK ((qty > 0))"
				}
			},
			want: []string{"WARN n3: check constraint items_qty_check is CHECK ((qty >= 0)) on n1 and n2, CHECK ((qty > 0)) on n3"},
		},
		{
			name:  "unique constraint on one node",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 0 {
					fp.Constraints = append(fp.Constraints, pg.ConstraintDef{Name: "items_sku_key", Kind: 'u', Def: "UNIQUE (sku)"})
				}
			},
			want:  []string{"FAIL n1: unique constraint items_sku_key exists on n1 only"},
			fixes: map[int][]string{0: {`DROP CONSTRAINT IF EXISTS "items_sku_key"`}},
		},
		{
			name:  "foreign key missing",
			nodes: 2,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 0 {
					fp.Constraints = append(fp.Constraints, pg.ConstraintDef{Name: "items_sku_fkey", Kind: 'f', Def: "FOREIGN KEY (sku) REFERENCES public.skus(sku)"})
				}
			},
			want: []string{"WARN n2: foreign key items_sku_fkey missing on n2"},
		},
		{
			name:  "index missing",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 2 {
					fp.Indexes = nil
				}
			},
			want: []string{"WARN n3: index items_sku_idx missing on n3"},
			fixes: map[int][]string{0: {
				"on n3: CREATE INDEX items_sku_idx ON public.items USING btree (sku);",
				"'CREATE INDEX IF NOT EXISTS items_sku_idx ON public.items USING btree (sku)'",
			}},
		},
		{
			name:  "index differs",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 1 {
					fp.Indexes[0].Def = "CREATE INDEX items_sku_idx ON public.items USING hash (sku)"
				}
			},
			want: []string{"WARN n2: index items_sku_idx is btree (sku) on n1 and n3, hash (sku) on n2"},
		},
		{
			name:  "unique index on some nodes",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i < 2 {
					fp.Indexes = append(fp.Indexes, pg.IndexDef{Name: "items_lower_sku", Unique: true,
						Def: "CREATE UNIQUE INDEX items_lower_sku ON public.items USING btree (lower(sku))"})
				}
			},
			want: []string{"FAIL n3: unique index items_lower_sku missing on n3"},
		},
		{
			name:  "missing on most, different where it exists",
			nodes: 4,
			change: func(i int, fp *pg.Fingerprint) {
				switch i {
				case 0, 1:
					fp.Indexes = nil
				case 3:
					fp.Indexes[0].Def = "CREATE INDEX items_sku_idx ON public.items USING hash (sku)"
				}
			},
			want:  []string{"WARN n3,n4: index items_sku_idx is missing on n1 and n2, btree (sku) on n3, hash (sku) on n4"},
			fixes: map[int][]string{0: {`on n3 and n4: DROP INDEX IF EXISTS "public"."items_sku_idx";`}},
		},
		{
			name:  "replica identity",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				if i == 0 {
					fp.ReplicaIdentity = 'f'
				}
			},
			want:  []string{"FAIL n1: replica identity is FULL on n1, DEFAULT on n2 and n3"},
			fixes: map[int][]string{0: {`ALTER TABLE "public"."items" REPLICA IDENTITY DEFAULT`}},
		},
		{
			name:  "two odd nodes",
			nodes: 3,
			change: func(i int, fp *pg.Fingerprint) {
				column(fp, "qty").Type = []string{"integer", "bigint", "numeric"}[i]
			},
			want: []string{"FAIL n2,n3: column qty is integer on n1, bigint on n2, numeric on n3"},
		},
	}
	cfg := &config.Config{Path: "pgmesh.yaml"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var nfs []nodeFingerprints
			for i := range tt.nodes {
				fp := items()
				tt.change(i, fp)
				nfs = append(nfs, nodeFingerprints{node: fmt.Sprintf("n%d", i+1), tables: map[string]*pg.Fingerprint{fp.Table: fp}})
			}
			fs := driftFindings(cfg, nfs)
			var got []string
			for _, f := range fs {
				got = append(got, fmt.Sprintf("%s %s: %s", f.Status, f.Node, f.Message))
				if f.Status != Pass && (f.Object != "public.items" || f.Check != "schema" || f.Fix == "") {
					t.Errorf("finding without object, check or fix: %+v", f)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			for i, subs := range tt.fixes {
				for _, sub := range subs {
					if !strings.Contains(fs[i].Fix, sub) {
						t.Errorf("fix of %q lacks\n%s\nfix:\n%s", fs[i].Message, sub, fs[i].Fix)
					}
				}
			}
		})
	}
}

// A table some nodes lack is checkPresence's finding; drift compares only
// the nodes that have it, and nothing when only one has it.
func TestDriftSkipsMissingTables(t *testing.T) {
	cfg := &config.Config{}
	only := items()
	only.Table = "public.only_here"
	a, b, c := items(), items(), items()
	column(c, "qty").Type = "bigint"
	nfs := []nodeFingerprints{
		{node: "n1", tables: map[string]*pg.Fingerprint{"public.items": a, "public.only_here": only}},
		{node: "n2", tables: map[string]*pg.Fingerprint{}},
		{node: "n3", tables: map[string]*pg.Fingerprint{"public.items": b}},
		{node: "n4", tables: map[string]*pg.Fingerprint{"public.items": c}},
	}
	fs := driftFindings(cfg, nfs)
	if len(fs) != 1 || fs[0].Message != "column qty is integer on n1 and n3, bigint on n4" {
		t.Fatalf("got %+v", fs)
	}
	if got := driftFindings(cfg, nfs[:1]); got != nil {
		t.Fatalf("one node: %+v", got)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		`ALTER TABLE "t" DROP COLUMN "c"`:           `'ALTER TABLE "t" DROP COLUMN "c"'`,
		`ALTER TABLE t ALTER c SET DEFAULT 'x'`:     `"ALTER TABLE t ALTER c SET DEFAULT 'x'"`,
		`SET DEFAULT '$1' || "c" || '\' || '` + "`": `"SET DEFAULT '\$1' || \"c\" || '\\' || '\` + "`" + `"`,
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%s) = %s, want %s", in, got, want)
		}
	}
}
