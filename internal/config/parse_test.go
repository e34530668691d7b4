package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const twoNodes = `cluster: shop
nodes:
  - name: paris
    dsn: "host=10.0.0.1 dbname=shop user=pgmesh"
  - name: tokyo
    dsn: "postgres://pgmesh@10.0.0.2/shop"
`

// parseErrorTests each hold one mistake, the line it must be reported at
// and part of the message. FuzzParse uses them as seeds.
var parseErrorTests = []struct {
	name string
	yaml string
	line int
	msg  string
}{
	{"unknown top key", twoNodes + "nodez: []\n", 7,
		`unknown key "nodez" (known: cluster, nodes, replicate, conflicts, sequences, ddl, agent)`},
	{"unknown node key", "cluster: shop\nnodes:\n  - name: a\n    dsn: x\n    port: 5432\n", 5,
		`node #1: unknown key "port" (known: name, dsn, admin_dsn, id)`},
	{"unknown replicate key", twoNodes + "replicate:\n  schema: [public]\n", 8,
		`replicate: unknown key "schema" (known: schemas, exclude)`},
	{"unknown conflicts key", twoNodes + "conflicts:\n  defaults: keep_local\n", 8,
		`conflicts: unknown key "defaults"`},
	{"unknown table key", twoNodes + "conflicts:\n  tables:\n    public.stock:\n      delta: [qty]\n", 10,
		`conflicts.tables.public.stock: unknown key "delta" (known: policy, delta_columns, delete_wins)`},
	{"unknown sequences key", twoNodes + "sequences: {strategy: step, nodes: 4}\n", 7,
		`sequences: unknown key "nodes"`},
	{"unknown ddl key", twoNodes + "ddl:\n  mode: auto\n", 8, `ddl: unknown key "mode" (known: capture)`},
	{"unknown agent key", twoNodes + "agent:\n  port: 9187\n", 8, `agent: unknown key "port" (known: listen, apply_workers, log_level)`},
	{"duplicate top key", twoNodes + "cluster: other\n", 7, `duplicate key "cluster" (first at line 1)`},
	{"duplicate node name", twoNodes + "  - name: paris\n    dsn: y\n", 7,
		`duplicate node name "paris" (first at line 3)`},
	{"bad node name", "cluster: shop\nnodes:\n  - name: Paris\n    dsn: x\n", 3,
		`node #1: name "Paris" must match ^[a-z][a-z0-9_]{0,30}$`},
	{"node name too long", "cluster: shop\nnodes:\n  - name: " + strings.Repeat("a", 32) + "\n    dsn: x\n", 3,
		`must match ^[a-z][a-z0-9_]{0,30}$`},
	{"bad name next to a password", "cluster: shop\nnodes:\n  - name: A\n    dsn: \"password=${PGMESH_TEST_PASSWORD}\"\n", 3,
		`node #1: name "A" must match`},
	{"missing node name", "cluster: shop\nnodes:\n  - dsn: x\n", 3, `node #1: missing name`},
	{"missing dsn", twoNodes + "  - name: berlin\n", 7, `node "berlin": missing dsn`},
	{"empty dsn", twoNodes + "  - name: berlin\n    dsn: \"\"\n", 8, `node #3: dsn is empty`},
	{"null dsn", twoNodes + "  - name: berlin\n    dsn:\n", 8, `node #3: dsn is empty`},
	{"unset env in dsn", twoNodes + "  - name: berlin\n    dsn: \"host=b password=${PGMESH_TEST_UNSET_VAR}\"\n", 8,
		`node #3: dsn: environment variable PGMESH_TEST_UNSET_VAR is not set`},
	{"missing cluster", "nodes:\n  - name: a\n    dsn: x\n", 1, `missing cluster:`},
	{"empty cluster", "cluster: \"\"\nnodes:\n  - name: a\n    dsn: x\n", 1, `cluster: the cluster name is empty`},
	{"bad cluster name", "nodes:\n  - name: a\n    dsn: x\ncluster: my-shop\n", 4,
		`cluster: name "my-shop" must match ^[a-z][a-z0-9_]{0,30}$`},
	{"missing nodes", "cluster: shop\n", 1, `missing nodes:`},
	{"empty nodes", "cluster: shop\nnodes: []\n", 2, `nodes: no nodes`},
	{"null nodes", "cluster: shop\nnodes:\n", 2, `nodes: no nodes`},
	{"nodes not a list", "cluster: shop\nnodes: {name: a}\n", 2, `nodes: want a list of {name, dsn}, got a mapping`},
	{"too many nodes", "cluster: shop\nsequences: {max_nodes: 1023}\nnodes:\n" + manyNodes(1024), 3,
		`nodes: 1024 nodes, at most 1023 are supported`},
	{"id zero", twoNodes + "  - name: berlin\n    dsn: z\n    id: 0\n", 9, `node #3: id 0 is out of range 1..1023`},
	{"id too big", twoNodes + "  - name: berlin\n    dsn: z\n    id: 1024\n", 9, `id 1024 is out of range 1..1023`},
	{"id not an integer", twoNodes + "  - name: berlin\n    dsn: z\n    id: three\n", 9, `node #3: id: want an integer, got a string`},
	{"id duplicated", twoNodes + "  - name: berlin\n    dsn: z\n    id: 2\n", 7,
		`node "berlin": id 2 is already used by node "tokyo" (line 5)`},
	{"unknown default policy", twoNodes + "conflicts:\n  default: newest_wins\n", 8,
		`conflicts.default: unknown policy "newest_wins" (known: last_update_wins, first_update_wins, keep_local, apply_remote, error)`},
	{"unknown table policy", twoNodes + "conflicts:\n  tables:\n    public.stock: {policy: merge}\n", 9,
		`conflicts.tables.public.stock.policy: unknown policy "merge"`},
	{"table not qualified", twoNodes + "conflicts:\n  tables:\n    stock: {delta_columns: [qty]}\n", 9,
		`conflicts.tables: "stock" is not written schema.table`},
	{"delete_wins not qualified", twoNodes + "conflicts:\n  tables:\n    a.b.c: {delete_wins: true}\n", 9,
		`conflicts.tables: "a.b.c" is not written schema.table`},
	{"delete_wins not bool", twoNodes + "conflicts:\n  tables:\n    public.t: {delete_wins: maybe}\n", 9,
		`conflicts.tables.public.t.delete_wins: want true or false, got a string`},
	{"delta column twice", twoNodes + "conflicts:\n  tables:\n    public.t:\n      delta_columns:\n        - qty\n        - qty\n", 12,
		`conflicts.tables.public.t.delta_columns: "qty" is listed twice`},
	{"exclude not qualified", twoNodes + "replicate:\n  exclude: [audit]\n", 8, `replicate.exclude: "audit" is not written schema.table`},
	{"empty schemas", twoNodes + "replicate:\n  schemas: []\n", 8, `replicate.schemas: empty`},
	{"bad strategy", twoNodes + "sequences:\n  strategy: uuid\n", 8,
		`sequences.strategy: "uuid" is not one of snowflake, step, range, none`},
	{"max_nodes below nodes", twoNodes + "sequences:\n  max_nodes: 1\n", 8, `sequences.max_nodes: 1 is less than the 2 nodes`},
	{"default max_nodes below nodes", "cluster: shop\nnodes:\n" + manyNodes(17), 2,
		`nodes: 17 nodes but sequences.max_nodes is 16 (the default)`},
	{"max_nodes out of range", twoNodes + "sequences:\n  max_nodes: 2000\n", 8, `sequences.max_nodes: 2000 is out of range 1..1023`},
	{"step id beyond max_nodes", twoNodes + "  - name: berlin\n    dsn: z\n    id: 9\nsequences: {strategy: step, max_nodes: 4}\n", 7,
		`node "berlin": id 9 exceeds sequences.max_nodes 4, which strategy step needs`},
	{"bad ddl capture", twoNodes + "ddl: {capture: always}\n", 7, `ddl.capture: "always" is not one of auto, manual`},
	{"bad log level", twoNodes + "agent:\n  log_level: verbose\n", 8, `agent.log_level: "verbose" is not one of debug, info, warn, error`},
	{"listen without port", twoNodes + "agent:\n  listen: localhost\n", 8, `agent.listen: "localhost": want host:port`},
	{"listen bad port", twoNodes + "agent:\n  listen: \"127.0.0.1:http\"\n", 8, `agent.listen: "127.0.0.1:http": port "http" is not a number`},
	{"node name clashes with apply origins", "cluster: c\nnodes:\n  - name: a\n    dsn: x\n  - name: a_2\n    dsn: y\n", 5, `node "a_2": the name is node "a"'s followed by _<number>`},
	{"no apply workers", twoNodes + "agent:\n  apply_workers: 0\n", 8, `agent.apply_workers: 0 is out of range 1..16`},
	{"too many apply workers", twoNodes + "agent:\n  apply_workers: 17\n", 8, `agent.apply_workers: 17 is out of range 1..16`},
	{"apply workers not a number", twoNodes + "agent:\n  apply_workers: many\n", 8, `agent.apply_workers: want an integer`},
	{"bad duration", twoNodes + "conflicts:\n  log_retention: 30 days\n", 8,
		`conflicts.log_retention: invalid duration "30 days"`},
	{"bad tombstone duration", twoNodes + "conflicts:\n  tombstone_retention: 1w\n", 8,
		`conflicts.tombstone_retention: invalid duration "1w"`},
	{"negative duration", twoNodes + "conflicts:\n  tombstone_retention: -1h\n", 8,
		`conflicts.tombstone_retention: duration "-1h" must be positive`},
	{"duration without unit", twoNodes + "conflicts:\n  log_retention: 30\n", 8,
		`conflicts.log_retention: invalid duration "30"`},
	{"section not a mapping", twoNodes + "ddl: auto\n", 7, `ddl: want a mapping (key: value), got a string`},
	{"top level not a mapping", "- a\n- b\n", 1, `want a mapping with keys cluster, nodes`},
	{"anchor", "cluster: &c shop\nnodes:\n  - name: a\n    dsn: x\n", 1, `anchors, aliases, merge keys and tags are not supported`},
	{"syntax error", "cluster: shop\nnodes:\n  - name: a\n    dsn: [x\n", 4, `invalid YAML: `},
	{"syntax error hides password", "cluster: shop\nnodes:\n  - name: a\n    dsn: \"host=a password=hunter2\n", 4, `invalid YAML: `},
	{"two documents", twoNodes + "---\ncluster: other\n", 8, `more than one YAML document`},
	{"empty file", "# nothing\n", 0, `empty config`},
}

func TestParseErrors(t *testing.T) {
	t.Setenv("PGMESH_TEST_PASSWORD", "s3cret")
	for _, tc := range parseErrorTests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tc.yaml), "pgmesh.yaml")
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want error %q", cfg, tc.msg)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != 1 {
				t.Fatalf("want exactly one problem, got:\n%v", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *config.Error", err)
			}
			if ce.Line != tc.line || ce.File != "pgmesh.yaml" {
				t.Errorf("error at %s:%d, want pgmesh.yaml:%d: %v", ce.File, ce.Line, tc.line, err)
			}
			if !strings.Contains(ce.Msg, tc.msg) {
				t.Errorf("message %q does not contain %q", ce.Msg, tc.msg)
			}
			prefix := "pgmesh.yaml: "
			if tc.line > 0 {
				prefix = "pgmesh.yaml:" + strconv.Itoa(tc.line) + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			for _, secret := range []string{"hunter2", "s3cret"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error shows a password: %v", err)
				}
			}
		})
	}
}

func manyNodes(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString("  - {name: n" + strconv.Itoa(i+1) + ", dsn: x}\n")
	}
	return b.String()
}

func TestParseReportsEveryProblem(t *testing.T) {
	yaml := "cluster: Shop\nnodes:\n  - name: a\n  - name: a\n    dsn: y\nagent: {listen: nowhere}\n"
	_, err := Parse([]byte(yaml), "/etc/pgmesh/pgmesh.yaml")
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	want := []string{
		`/etc/pgmesh/pgmesh.yaml:1: cluster: name "Shop" must match`,
		`/etc/pgmesh/pgmesh.yaml:3: node "a": missing dsn`,
		`/etc/pgmesh/pgmesh.yaml:4: duplicate node name "a" (first at line 3)`,
		`/etc/pgmesh/pgmesh.yaml:6: agent.listen: "nowhere": want host:port`,
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, lines[i], w)
		}
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := Parse([]byte(twoNodes), "")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Cluster: "shop",
		Nodes: []Node{
			{Name: "paris", DSN: "host=10.0.0.1 dbname=shop user=pgmesh", ID: 1, Line: 3},
			{Name: "tokyo", DSN: "postgres://pgmesh@10.0.0.2/shop", ID: 2, Line: 5},
		},
		Replicate: Replicate{Schemas: []string{"public"}},
		Conflicts: Conflicts{
			Default:            LastUpdateWins,
			Tables:             map[string]TableConfig{},
			LogRetention:       720 * time.Hour,
			TombstoneRetention: 24 * time.Hour,
		},
		Sequences: Sequences{Strategy: "snowflake", MaxNodes: 16},
		DDL:       DDL{Capture: "auto"},
		Agent:     Agent{Listen: "127.0.0.1:9187", ApplyWorkers: DefaultApplyWorkers},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

const fullConfig = `# a complete config
cluster: shop
nodes:
  - name: paris
    dsn: "host=10.0.0.1 dbname=shop user=pgmesh password=${PGMESH_TEST_PASSWORD}"
    id: 7
  - name: tokyo
    dsn: postgres://pgmesh@10.0.0.2/shop
  - {name: new_york_2, dsn: "host=ny"}
replicate:
  schemas: [public, sales]
  exclude: [public.local_audit]
conflicts:
  default: keep_local
  log_retention: 7d
  tombstone_retention: 90m
  tables:
    public.stock: { delta_columns: [qty, reserved] }
    sales.orders:
      policy: last_update_wins
      delete_wins: true
sequences: { strategy: step, max_nodes: 8 }
ddl: { capture: manual }
agent: { listen: ":9200", apply_workers: 4, log_level: warn }
`

func TestParseFull(t *testing.T) {
	t.Setenv("PGMESH_TEST_PASSWORD", "pw")
	path := filepath.Join(t.TempDir(), "pgmesh.yaml")
	if err := os.WriteFile(path, []byte(fullConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Path:    path,
		Cluster: "shop",
		Nodes: []Node{
			{Name: "paris", DSN: "host=10.0.0.1 dbname=shop user=pgmesh password=pw", ID: 7, Line: 4},
			{Name: "tokyo", DSN: "postgres://pgmesh@10.0.0.2/shop", ID: 2, Line: 7},
			{Name: "new_york_2", DSN: "host=ny", ID: 3, Line: 9},
		},
		Replicate: Replicate{Schemas: []string{"public", "sales"}, Exclude: []string{"public.local_audit"}},
		Conflicts: Conflicts{
			Default: KeepLocal,
			Tables: map[string]TableConfig{
				"public.stock": {DeltaColumns: []string{"qty", "reserved"}},
				"sales.orders": {Policy: LastUpdateWins, DeleteWins: true},
			},
			LogRetention:       7 * 24 * time.Hour,
			TombstoneRetention: 90 * time.Minute,
		},
		Sequences: Sequences{Strategy: "step", MaxNodes: 8},
		DDL:       DDL{Capture: "manual"},
		Agent:     Agent{Listen: ":9200", ApplyWorkers: 4, LogLevel: "warn"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
	if got := cfg.PolicyFor("public.stock"); got != KeepLocal {
		t.Errorf("PolicyFor(public.stock) = %s, want keep_local", got)
	}
	if got := cfg.PolicyFor("sales.orders"); got != LastUpdateWins {
		t.Errorf("PolicyFor(sales.orders) = %s, want last_update_wins", got)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want not-exist", err)
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"24h", 24 * time.Hour, true},
		{"30d", 720 * time.Hour, true},
		{"1h30m", 90 * time.Minute, true},
		{"0d", 0, false},
		{"0s", 0, false},
		{"d", 0, false},
		{"+3d", 0, false},
		{"-3d", 0, false},
		{"99999999999d", 0, false},
		{"1.5d", 0, false},
	}
	for _, tc := range tests {
		got, err := ParseDuration(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok {
			if back, err := ParseDuration(FormatDuration(got)); err != nil || back != got {
				t.Errorf("FormatDuration(%v) = %q does not parse back", got, FormatDuration(got))
			}
		}
	}
}

func TestRedact(t *testing.T) {
	tests := map[string]string{
		"host=a password=hunter2 user=b":       "host=a password=*** user=b",
		"host=a password = 'two words' user=b": "host=a password = *** user=b",
		"postgres://u:hunter2@h/db":            "postgres://u:***@h/db",
		"postgres://u@h/db":                    "postgres://u@h/db",
	}
	for in, want := range tests {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
