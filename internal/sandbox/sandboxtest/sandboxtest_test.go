package sandboxtest

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox"
)

func TestMain(m *testing.M) { Main(m, 2) }

func TestNew(t *testing.T) {
	ctx := context.Background()
	e := New(t, 2)
	if len(e.DSNs) != 2 || !strings.HasPrefix(e.DB, "testnew_") {
		t.Fatalf("New = DB %q, DSNs %q; want 2 DSNs to a database named after the test", e.DB, e.DSNs)
	}
	for i := range e.DSNs {
		var db, version string
		if err := e.Conn(t, i).QueryRow(ctx, "SELECT current_database(), current_setting('server_version_num')").Scan(&db, &version); err != nil {
			t.Fatal(err)
		}
		if db != e.DB || !strings.HasPrefix(version, strconv.Itoa(e.Major())) {
			t.Errorf("n%d: database %s, version %s; want %s on PostgreSQL %d", i+1, db, version, e.DB, e.Major())
		}
	}
	e.Exec(t, 0, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
	e.Exec(t, 0, "INSERT INTO t VALUES ($1, $2)", 2, "b")
	var n int
	if err := e.Conn(t, 0).QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil || n != 2 {
		t.Errorf("rows after Exec: %d, %v; want 2", n, err)
	}
	// The databases are separate: n2 has no table t.
	if err := e.Conn(t, 1).QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err == nil {
		t.Error("table t exists on n2")
	}

	if e.Config.Path != e.ConfigPath || e.Config.Cluster != "test" || len(e.Config.Nodes) != 2 {
		t.Fatalf("Config = %+v", e.Config)
	}
	for i, node := range e.Config.Nodes {
		if node.Name != "n"+strconv.Itoa(i+1) || node.ID != i+1 || node.DSN != e.DSNs[i] {
			t.Errorf("Config.Nodes[%d] = %+v, want n%d with DSN %s", i, node, i+1, e.DSNs[i])
		}
	}
	// The file says what the struct says.
	loaded, err := config.Load(e.ConfigPath)
	if err != nil {
		t.Fatalf("load %s: %v", e.ConfigPath, err)
	}
	if !reflect.DeepEqual(loaded, e.Config) {
		t.Errorf("config.Load(ConfigPath) = %+v\nEnv.Config = %+v", loaded, e.Config)
	}
}

// A test that leaves sessions, an active and an inactive replication slot
// and a replication origin in use behind still gets its databases dropped.
func TestCleanup(t *testing.T) {
	ctx := context.Background()
	const origin = "pgmesh_cleanup_test"
	var env *Env
	var leaked []func()
	t.Cleanup(func() {
		for _, f := range leaked {
			f()
		}
	})
	t.Run("mess", func(t *testing.T) {
		e := New(t, 2)
		env = e
		for i, slot := range []string{"pgmesh_n1_n2", "pgmesh_n2_n1"} {
			if _, err := e.Pgmesh(t, i).Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", slot); err != nil {
				t.Fatal(err)
			}
		}
		// A replication client still streaming from n1's slot, like an
		// agent that outlives its test.
		rc, err := pg.ConnectReplication(ctx, "n1", e.DSNs[0], "leak")
		if err != nil {
			t.Fatal(err)
		}
		leaked = append(leaked, func() { rc.Close(context.Background()) })
		if err := pglogrepl.StartReplication(ctx, rc, "pgmesh_n1_n2", 0, pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication}); err != nil {
			t.Fatal(err)
		}
		// A session on n2 that holds an origin, not closed by the test.
		conn, err := pgx.Connect(ctx, e.DSNs[1])
		if err != nil {
			t.Fatal(err)
		}
		leaked = append(leaked, func() { conn.Close(context.Background()) })
		if _, err := conn.Exec(ctx, "SELECT pg_replication_origin_create($1)", origin); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT pg_replication_origin_session_setup($1)", origin); err != nil {
			t.Fatal(err)
		}
	})
	if env == nil {
		t.Fatal("subtest made no env")
	}
	for _, node := range env.Cluster.Nodes {
		var dbs, slots, origins int
		err := admin(env.Cluster, node, func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT
				(SELECT count(*) FROM pg_database WHERE datname = $1),
				(SELECT count(*) FROM pg_replication_slots WHERE database = $1),
				(SELECT count(*) FROM pg_replication_origin WHERE roname = $2)`, env.DB, origin).Scan(&dbs, &slots, &origins)
		})
		if err != nil {
			t.Fatal(err)
		}
		if dbs+slots+origins != 0 {
			t.Errorf("%s after cleanup: %d databases, %d slots, %d origins left", node.Name, dbs, slots, origins)
		}
	}
}

func TestDBName(t *testing.T) {
	long := "TestSomething/" + strings.Repeat("very_long_subtest_name_", 5)
	tests := []struct {
		test   string
		serial int64
		want   string
	}{
		{"TestNew", 1, "testnew_1"},
		{"TestApply/insert-exists#01", 12, "testapply_insert_exists_01_12"},
		{"TestÜber", 3, "test_ber_3"},
		{long, 7, strings.ToLower(strings.ReplaceAll(long, "/", "_"))[:61] + "_7"},
		{long, 1234, strings.ToLower(strings.ReplaceAll(long, "/", "_"))[:58] + "_1234"},
	}
	for _, tt := range tests {
		got := dbName(tt.test, tt.serial)
		if got != tt.want || len(got) > 63 {
			t.Errorf("dbName(%q, %d) = %q (%d bytes), want %q", tt.test, tt.serial, got, len(got), tt.want)
		}
	}
}

// The reaper stops the servers of a test binary that died without
// tearing down (here: simulated by closing the pipe it watches).
func TestReaper(t *testing.T) {
	ctx := context.Background()
	base, err := os.MkdirTemp("", "pgmesh-reaper-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "servers")
	t.Cleanup(func() {
		if c, err := sandbox.Open(dir); err == nil {
			c.Down(context.Background())
		}
		os.RemoveAll(base)
	})
	c, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Nodes: 1, BinDir: shared(t).BinDir})
	if err != nil {
		t.Fatal(err)
	}
	r, err := startReaper(base)
	if err != nil {
		t.Fatal(err)
	}
	r.stop() // the write end closes as when the test binary dies
	if c.Nodes[0].Running() {
		t.Error("server still runs after the reaper ran")
	}
	if _, err := os.Stat(base); !os.IsNotExist(err) {
		t.Errorf("reaper left %s: %v", base, err)
	}
}
