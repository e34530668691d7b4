package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// newBase returns an empty directory that the postgres OS user can traverse
// (t.TempDir's parent is private), removed at cleanup together with any
// sandbox left in dir.
func newBase(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp("", "sandbox-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "cluster")
	t.Cleanup(func() {
		if c, err := Open(dir); err == nil {
			if err := c.Down(context.Background()); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		os.RemoveAll(base)
	})
	return dir
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func show(t *testing.T, conn *pgx.Conn, setting string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(context.Background(), "SELECT current_setting($1)", setting).Scan(&v); err != nil {
		t.Fatalf("current_setting(%s): %v", setting, err)
	}
	return v
}

// processesIn lists the pids whose command line mentions dir.
func processesIn(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			pids = append(pids, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return pids
}

// TestLifecycle runs against the binaries FindBinDir picks ($PGMESH_PG_BIN):
// run it once per PostgreSQL version (make test-sandbox does).
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := newBase(t)
	c, err := Up(ctx, Options{Dir: dir, Nodes: 2, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PostgreSQL %d from %s", c.Major, c.BinDir)
	if len(c.Nodes) != 2 || c.Nodes[0].Name != "n1" || c.Nodes[1].Name != "n2" || c.DB != DefaultDB {
		t.Fatalf("Up = %+v, want nodes n1, n2 with database %s", c, DefaultDB)
	}
	for _, n := range c.Nodes {
		conn := connect(t, c.DSNAs(n.Name, "", Admin))
		for setting, want := range map[string]string{
			"wal_level":              "logical",
			"track_commit_timestamp": "on",
			"max_replication_slots":  "32",
			"listen_addresses":       "127.0.0.1",
			"port":                   strconv.Itoa(n.Port),
		} {
			if got := show(t, conn, setting); got != want {
				t.Errorf("%s: %s = %q, want %q", n.Name, setting, got, want)
			}
		}
		if got := show(t, conn, "server_version_num"); !strings.HasPrefix(got, strconv.Itoa(c.Major)) {
			t.Errorf("%s: server_version_num %s, want major %d", n.Name, got, c.Major)
		}
		if c.Major >= 18 {
			if got := show(t, conn, "max_active_replication_origins"); got != "32" {
				t.Errorf("%s: max_active_replication_origins = %q, want 32", n.Name, got)
			}
		}
	}
	yaml, err := os.ReadFile(filepath.Join(dir, "pgmesh.yaml"))
	if err != nil || string(yaml) != string(c.ConfigYAML("")) {
		t.Errorf("pgmesh.yaml = %q, %v; want ConfigYAML", yaml, err)
	}

	// Up again: same servers, nothing restarted.
	pid1, _ := postmasterPID(c.Nodes[0].DataDir)
	again, err := Up(ctx, Options{Dir: dir, Nodes: 2})
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if pid, _ := postmasterPID(again.Nodes[0].DataDir); pid != pid1 || again.Nodes[0].Port != c.Nodes[0].Port || again.Nodes[1].Port != c.Nodes[1].Port {
		t.Errorf("second Up changed the servers: %+v %+v (pid %d), was %+v %+v (pid %d)", again.Nodes[0], again.Nodes[1], pid, c.Nodes[0], c.Nodes[1], pid1)
	}
	if _, err := Up(ctx, Options{Dir: dir, Nodes: 3}); err == nil || !strings.Contains(err.Error(), "sandbox down") {
		t.Errorf("Up with another node count = %v, want an error that says to run down", err)
	}

	// Crash n1 after a commit: the commit survives, the server recovers.
	n1 := connect(t, c.DSNAs("n1", "", Owner))
	if _, err := n1.Exec(ctx, "CREATE TABLE crash (id int PRIMARY KEY); INSERT INTO crash VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx, "n1", "immediate"); err != nil {
		t.Fatal(err)
	}
	if c.Nodes[0].Running() {
		t.Fatal("n1 runs after Stop immediate")
	}
	if err := c.Stop(ctx, "n1", "immediate"); err != nil {
		t.Errorf("Stop of a stopped node: %v", err)
	}
	if err := c.Stop(ctx, "n1", "smart"); err == nil {
		t.Error("Stop accepted mode smart")
	}
	if err := c.Start(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := connect(t, c.DSNAs("n1", "", Owner)).QueryRow(ctx, "SELECT count(*) FROM crash").Scan(&n); err != nil || n != 1 {
		t.Errorf("after crash and restart: %d rows, %v; want 1", n, err)
	}
	if !strings.Contains(tail(c.Nodes[0].LogFile(), 0, 1000), "database system was interrupted") {
		t.Error("n1's log shows no crash recovery after Stop immediate")
	}

	// A fast-stopped node is started again by Up, which also adds a database.
	if err := c.Stop(ctx, "n2", "fast"); err != nil {
		t.Fatal(err)
	}
	if _, err := Up(ctx, Options{Dir: dir, Nodes: 2, DB: "other db"}); err != nil {
		t.Fatalf("Up with a stopped node: %v", err)
	}
	connect(t, c.DSNAs("n2", "other db", App))
	reopened, err := Open(dir)
	if err != nil || reopened.DB != "other db" {
		t.Fatalf("Open after Up with another database = %+v, %v", reopened, err)
	}

	var pids []int
	for _, n := range c.Nodes {
		pid, alive := postmasterPID(n.DataDir)
		if !alive {
			t.Fatalf("%s not running before Down", n.Name)
		}
		pids = append(pids, pid)
	}
	if err := c.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Down left %s: %v", dir, err)
	}
	for _, pid := range pids {
		if processAlive(pid) {
			t.Errorf("postmaster %d survives Down", pid)
		}
	}
	if left := processesIn(t, dir); len(left) > 0 {
		t.Errorf("processes of %s survive Down:\n%s", dir, strings.Join(left, "\n"))
	}
}

func TestUpRefuses(t *testing.T) {
	ctx := context.Background()
	dir := newBase(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "precious"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no dir", Options{Nodes: 1}, "no directory"},
		{"no nodes", Options{Dir: dir}, "0 nodes"},
		{"foreign dir", Options{Dir: dir, Nodes: 1}, "not empty"},
		{"bad bin dir", Options{Dir: dir + "2", Nodes: 1, BinDir: dir}, "--pg-bin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Up(ctx, tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Up(%+v) = %v, want error containing %q", tt.o, err, tt.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Errorf("Up touched a foreign directory: %v", err)
	}
	if _, err := os.Stat(dir + "2"); !os.IsNotExist(err) {
		t.Errorf("failed Up left %s: %v", dir+"2", err)
	}
}
