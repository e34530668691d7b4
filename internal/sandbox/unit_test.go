package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fakeBinDir makes dir/bin with executable stand-ins for the server programs.
func fakeBinDir(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range serverPrograms {
		if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}

func TestFindBinDirOrder(t *testing.T) {
	tmp := t.TempDir()
	flagDir := fakeBinDir(t, filepath.Join(tmp, "flag"))
	envDir := fakeBinDir(t, filepath.Join(tmp, "env"))
	pgcDir := fakeBinDir(t, filepath.Join(tmp, "pgconfig"))
	root := filepath.Join(tmp, "usrlib")
	fakeBinDir(t, filepath.Join(root, "9.6"))
	newest := fakeBinDir(t, filepath.Join(root, "15"))
	fakeBinDir(t, filepath.Join(root, "13"))
	// A newer version without server programs (client-only install) is skipped.
	if err := os.MkdirAll(filepath.Join(root, "17", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(tmp, "nothing")
	pgConfig := func(dir string) func() (string, error) {
		return func() (string, error) {
			if dir == "" {
				return "", errors.New("pg_config: not found")
			}
			return dir, nil
		}
	}
	tests := []struct {
		name      string
		flag, env string
		pgConfig  string
		root      string
		want      string
		wantErr   string
	}{
		{name: "flag first", flag: flagDir, env: envDir, pgConfig: pgcDir, root: root, want: flagDir},
		{name: "env second", env: envDir, pgConfig: pgcDir, root: root, want: envDir},
		{name: "pg_config third", pgConfig: pgcDir, root: root, want: pgcDir},
		{name: "newest debian dir last", root: root, want: newest},
		{name: "pg_config without server programs falls through", pgConfig: broken, root: root, want: newest},
		{name: "bad flag is an error", flag: broken, env: envDir, root: root, wantErr: "--pg-bin"},
		{name: "bad env is an error", env: broken, root: root, wantErr: "$PGMESH_PG_BIN"},
		{name: "nothing found", root: filepath.Join(tmp, "none"), wantErr: "make deps"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findBinDir(tt.flag, tt.env, pgConfig(tt.pgConfig), tt.root)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("findBinDir = %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("findBinDir = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseMajor(t *testing.T) {
	tests := []struct {
		in   string
		want int
	}{
		{"postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", 15},
		{"postgres (PostgreSQL) 18.1\n", 18},
		{"postgres (PostgreSQL) 19devel\n", 19},
	}
	for _, tt := range tests {
		got, err := parseMajor(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("parseMajor(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
	if _, err := parseMajor("bash: postgres: not found"); err == nil {
		t.Error("parseMajor accepted garbage")
	}
}

func TestServerConf(t *testing.T) {
	common := []string{
		"listen_addresses = '127.0.0.1'\n",
		"port = 54321\n",
		"unix_socket_directories = ''\n",
		"wal_level = logical\n",
		"track_commit_timestamp = on\n",
		"max_replication_slots = 32\n",
		"max_wal_senders = 32\n",
		"max_worker_processes = 32\n",
		"fsync = off\n",
		"shared_buffers = 64MB\n",
		"max_connections = 100\n",
		"wal_sender_timeout = 10s\n",
		"logging_collector = off\n",
	}
	const origins = "max_active_replication_origins = 32\n"
	for _, tt := range []struct {
		major   int
		origins bool
	}{{15, false}, {17, false}, {18, true}} {
		conf := serverConf(tt.major, 54321)
		for _, line := range common {
			if !strings.Contains(conf, line) {
				t.Errorf("PG%d config lacks %q:\n%s", tt.major, line, conf)
			}
		}
		// The setting does not exist before 18: the server would refuse to start.
		if got := strings.Contains(conf, origins); got != tt.origins {
			t.Errorf("PG%d config has max_active_replication_origins = %v, want %v", tt.major, got, tt.origins)
		}
	}
}

func TestDSN(t *testing.T) {
	tests := []struct {
		db, passfile, want string
	}{
		{"app", "/s/passfile", "host=127.0.0.1 port=5999 dbname=app user=app passfile=/s/passfile sslmode=disable"},
		{"my db", "/my sandbox/passfile", "host=127.0.0.1 port=5999 dbname='my db' user=app passfile='/my sandbox/passfile' sslmode=disable"},
		{`o'k\`, "/s/passfile", `host=127.0.0.1 port=5999 dbname='o\'k\\' user=app passfile=/s/passfile sslmode=disable`},
	}
	for _, tt := range tests {
		if got := dsn(5999, tt.db, "app", tt.passfile); got != tt.want {
			t.Errorf("dsn(%q) = %q, want %q", tt.db, got, tt.want)
		}
	}
}

func TestConfigYAML(t *testing.T) {
	c := &Cluster{Dir: "/x", Major: 15, DB: "app", Nodes: []*Node{{Name: "n1", Port: 5001}, {Name: "n2", Port: 5002}}}
	want := `# pgmesh sandbox in /x (PostgreSQL 15)
cluster: sandbox
nodes:
  - name: n1
    dsn: "host=127.0.0.1 port=5001 dbname=other user=pgmesh passfile=/x/passfile sslmode=disable"
    admin_dsn: "host=127.0.0.1 port=5001 dbname=other user=postgres passfile=/x/passfile sslmode=disable"
  - name: n2
    dsn: "host=127.0.0.1 port=5002 dbname=other user=pgmesh passfile=/x/passfile sslmode=disable"
    admin_dsn: "host=127.0.0.1 port=5002 dbname=other user=postgres passfile=/x/passfile sslmode=disable"
replicate:
  schemas: [public]
`
	if got := string(c.ConfigYAML("other")); got != want {
		t.Errorf("ConfigYAML:\n%s\nwant:\n%s", got, want)
	}
	if got := c.DSNAs("n2", "", App); got != dsn(5002, "app", "app", "/x/passfile") {
		t.Errorf("DSNAs(n2, \"\", App) = %q, want the cluster's database", got)
	}
	if got := c.DSNAs("n3", "app", Owner); got != "" {
		t.Errorf("DSNAs of a missing node = %q, want \"\"", got)
	}
}

func TestScramVerifier(t *testing.T) {
	v, err := scramVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "SCRAM-SHA-256$4096:") || strings.Contains(v, "secret") {
		t.Errorf("verifier %q", v)
	}
	if w, _ := scramVerifier("secret"); w == v {
		t.Error("two verifiers of one password are equal: no random salt")
	}
}

func TestCheckTraversable(t *testing.T) {
	// Not t.TempDir: its parent is private (0700) by design.
	base, err := os.MkdirTemp("", "sandbox-traverse-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	closed := filepath.Join(base, "closed")
	inner := filepath.Join(closed, "inner")
	if err := os.MkdirAll(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	for dir, mode := range map[string]os.FileMode{base: 0o755, closed: 0o700} {
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
	}
	// A uid/gid that owns nothing here: only "other" bits count for it.
	const uid, gid = 54321, 54321
	if err := checkTraversable(base, uid, gid); err != nil {
		t.Fatalf("checkTraversable(%s) = %v, want nil", base, err)
	}
	err = checkTraversable(inner, uid, gid)
	if err == nil || !strings.Contains(err.Error(), "cannot enter "+closed+" ") || !strings.Contains(err.Error(), "chmod o+x "+closed) {
		t.Fatalf("checkTraversable(%s) = %v, want an error naming %s", inner, err, closed)
	}
	// The owner itself may enter its 0700 directory.
	st, err := os.Stat(closed)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if err := checkTraversable(inner, sys.Uid, sys.Gid); err != nil {
		t.Fatalf("checkTraversable(%s) as its owner = %v, want nil", inner, err)
	}
}
