// Package sandboxtest gives the tests of a package real PostgreSQL servers:
// TestMain starts them once (Main), and every test gets fresh databases on
// them (New), dropped when the test ends.
//
// Servers are shared by the whole test package, so replication slots and
// origins (which are per server, not per database) are shared too: tests
// that create slots or origins with fixed names (pgmesh_n1_n2, pgmesh_n1)
// must not run in parallel with each other.
package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox"
)

// reaperEnv makes the test binary act as the reaper of the sandbox under
// the named directory (see startReaper).
const reaperEnv = "PGMESH_SANDBOXTEST_REAPER"

// opTimeout bounds each database operation of this package so that a hung
// server fails the test instead of hanging it.
const opTimeout = 2 * time.Minute

var (
	mu       sync.Mutex
	servers  *sandbox.Cluster // set by Main while the tests run
	dbSerial atomic.Int64
)

// Main starts `servers` PostgreSQL servers shared by the whole test package
// (binaries from $PGMESH_PG_BIN, else FindBinDir), runs the tests, stops the
// servers (also on panic/failure) and exits. Call from TestMain:
//
//	func TestMain(m *testing.M) { sandboxtest.Main(m, 3) }
//
// If no PostgreSQL binaries are found it fails loudly (exit 1) with a
// message that says to run `make deps` — never skips.
//
// A panicking test or a -timeout kills the test binary before any deferred
// code runs; a reaper process (the test binary itself, started with
// reaperEnv) notices its parent's death and stops the servers then.
func Main(m *testing.M, n int) {
	if base := os.Getenv(reaperEnv); base != "" {
		os.Exit(reap(base))
	}
	os.Exit(run(m, n))
}

func run(m *testing.M, n int) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "sandboxtest: "+format+"\n", args...)
		return 1
	}
	binDir, err := sandbox.FindBinDir("")
	if err != nil {
		return fail("%v\nsandboxtest: these tests need PostgreSQL: run `make deps`, or set %s to a PostgreSQL bin directory", err, sandbox.EnvBinDir)
	}
	base, err := os.MkdirTemp("", "pgmesh-test-")
	if err != nil {
		return fail("%v", err)
	}
	// MkdirTemp makes 0700; as root the servers run as postgres, which must
	// enter it.
	if err := os.Chmod(base, 0o755); err != nil {
		os.RemoveAll(base)
		return fail("%v", err)
	}
	reaper, err := startReaper(base)
	if err != nil {
		os.RemoveAll(base)
		return fail("start reaper: %v", err)
	}
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			mu.Lock()
			c := servers
			servers = nil
			mu.Unlock()
			if c != nil {
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				defer cancel()
				if err := c.Down(ctx); err != nil {
					fmt.Fprintf(os.Stderr, "sandboxtest: stop servers: %v\n", err)
				}
			}
			os.RemoveAll(base)
			reaper.stop()
		})
	}
	defer teardown()
	// A panic in TestMain's goroutine (not in a test's) still tears down.
	defer func() {
		if r := recover(); r != nil {
			teardown()
			panic(r)
		}
	}()

	upCtx, cancelUp := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancelUp()
	var interrupted bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer func() {
		signal.Stop(sigs)
		close(sigs) // ends the goroutine below
	}()
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "sandboxtest: %v: stopping the servers\n", s)
		mu.Lock()
		interrupted = true
		running := servers != nil
		mu.Unlock()
		cancelUp() // a pending Up gives up and cleans after itself
		if running {
			teardown()
			os.Exit(1)
		}
	}()

	c, err := sandbox.Up(upCtx, sandbox.Options{Dir: filepath.Join(base, "servers"), Nodes: n, BinDir: binDir, DB: "postgres"})
	if err != nil {
		return fail("start %d servers: %v", n, err)
	}
	mu.Lock()
	servers = c
	stop := interrupted
	mu.Unlock()
	if stop {
		return 1
	}
	return m.Run()
}

// reaper is a child process that stops the servers when the test binary
// dies without tearing down: it waits for EOF on a pipe whose write end
// only the test binary holds.
type reaper struct {
	cmd *exec.Cmd
	w   *os.File
}

func startReaper(base string) (*reaper, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), reaperEnv+"="+base)
	cmd.Stdin = r
	// Its own process group: a Ctrl-C meant for the tests must not kill it.
	// Stdout and stderr stay unset (/dev/null): `go test` waits for every
	// holder of its output pipe.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	r.Close()
	return &reaper{cmd: cmd, w: w}, nil
}

// stop lets the reaper go after a normal teardown (nothing left to reap).
func (r *reaper) stop() {
	r.w.Close()
	r.cmd.Wait()
}

// reap waits until the test binary that started us is gone, then stops
// whatever sandbox is left under base.
func reap(base string) int {
	signal.Ignore(os.Interrupt, syscall.SIGHUP)
	io.Copy(io.Discard, os.Stdin)
	if c, err := sandbox.Open(filepath.Join(base, "servers")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		c.Down(ctx)
	}
	os.RemoveAll(base)
	return 0
}

func shared(t testing.TB) *sandbox.Cluster {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if servers == nil {
		t.Fatal("sandboxtest: no servers: call sandboxtest.Main(m, N) from TestMain")
	}
	return servers
}

// Env is a fresh database named after the test on each of the first n
// servers, with the sandbox's roles (internal/sandbox: Pgmesh, Owner, App,
// Admin) set up in it as production would have them.
type Env struct {
	Cluster *sandbox.Cluster
	DB      string // database name (same on every node)
	// DSNs connect as pgmesh's role (not a superuser), per node, index 0 =
	// n1: the nodes' dsn in Config.
	DSNs []string
	// Config names nodes n1..nN on these databases (replicate.schemas
	// [public]), each with its superuser admin_dsn, which `pgmesh init`
	// uses for the DDL capture event triggers only.
	Config     *config.Config
	ConfigPath string // the same config written to a file in t.TempDir()

	mu    sync.Mutex
	conns []*pgx.Conn // Exec's connections, per node, opened on first use
}

// New creates the databases (dropped in t.Cleanup, after terminating their
// backends and dropping leftover replication slots of that database).
func New(t testing.TB, n int) *Env {
	t.Helper()
	c := shared(t)
	if n < 1 || n > len(c.Nodes) {
		t.Fatalf("sandboxtest.New(t, %d): TestMain started %d servers", n, len(c.Nodes))
	}
	e := &Env{Cluster: c, DB: dbName(t.Name(), dbSerial.Add(1)), conns: make([]*pgx.Conn, n)}
	nodes := c.Nodes[:n]
	// Registered first, so it runs last: after the connections are closed,
	// and even when creating a later database fails.
	t.Cleanup(func() {
		for _, node := range nodes {
			if err := dropDB(c, node, e.DB); err != nil {
				t.Errorf("sandboxtest cleanup: %v", err)
			}
		}
	})
	t.Cleanup(e.closeConns)
	var admins []string
	for _, node := range nodes {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err := c.CreateDB(ctx, node.Name, e.DB)
		cancel()
		if err != nil {
			t.Fatalf("sandboxtest: create database %s: %v", e.DB, err)
		}
		e.DSNs = append(e.DSNs, c.DSNAs(node.Name, e.DB, sandbox.Pgmesh))
		admins = append(admins, c.DSNAs(node.Name, e.DB, sandbox.Admin))
	}
	e.ConfigPath = filepath.Join(t.TempDir(), "pgmesh.yaml")
	var yaml []byte
	e.Config, yaml = buildConfig(e.ConfigPath, e.DSNs, admins)
	if err := os.WriteFile(e.ConfigPath, yaml, 0o600); err != nil {
		t.Fatalf("sandboxtest: %v", err)
	}
	return e
}

// buildConfig returns the test config of a cluster on dsns (nodes n1..nN)
// and the pgmesh.yaml text that says the same.
func buildConfig(path string, dsns, admins []string) (*config.Config, []byte) {
	cfg := &config.Config{
		Path:      path,
		Cluster:   "test",
		Replicate: config.Replicate{Schemas: []string{"public"}},
		Conflicts: config.Conflicts{
			Default:            config.LastUpdateWins,
			Tables:             map[string]config.TableConfig{},
			LogRetention:       30 * 24 * time.Hour,
			TombstoneRetention: 24 * time.Hour,
		},
		Sequences: config.Sequences{Strategy: "snowflake", MaxNodes: 16},
		DDL:       config.DDL{Capture: "auto"},
		Agent:     config.Agent{Listen: "127.0.0.1:0", ApplyWorkers: config.DefaultApplyWorkers},
	}
	var b strings.Builder
	b.WriteString("cluster: test\nnodes:\n")
	line := 3 // of the first "- name:"
	for i, dsn := range dsns {
		name := fmt.Sprintf("n%d", i+1)
		cfg.Nodes = append(cfg.Nodes, config.Node{Name: name, DSN: dsn, AdminDSN: admins[i], ID: i + 1, Line: line})
		fmt.Fprintf(&b, "  - name: %s\n    dsn: %q\n    admin_dsn: %q\n", name, dsn, admins[i])
		line += 3
	}
	b.WriteString(`replicate:
  schemas: [public]
conflicts:
  default: last_update_wins
sequences:
  strategy: snowflake
  max_nodes: 16
ddl:
  capture: auto
agent:
  listen: "127.0.0.1:0"
`)
	return cfg, []byte(b.String())
}

// dbName derives a database name from a test name: lower case, [a-z0-9_],
// made unique by serial, at most 63 bytes (PostgreSQL's limit).
func dbName(test string, serial int64) string {
	suffix := fmt.Sprintf("_%d", serial)
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := b.String()
	if limit := 63 - len(suffix); len(name) > limit {
		name = name[:limit]
	}
	return name + suffix
}

// admin runs f on a connection to node's postgres database.
func admin(c *sandbox.Cluster, node *sandbox.Node, f func(context.Context, *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := c.AdminConn(ctx, node.Name, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := f(ctx, conn); err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	return nil
}

// dropDB drops db on node with everything that would keep it alive or
// outlive it: its sessions (walsenders included), its replication slots, and
// the pgmesh_* replication origins (per server) that no session uses.
func dropDB(c *sandbox.Cluster, node *sandbox.Node, db string) error {
	return admin(c, node, func(ctx context.Context, conn *pgx.Conn) error {
		for attempt := 0; ; attempt++ {
			// The timeout argument waits for the backends to exit, so that
			// their slots and origins are free afterwards.
			if _, err := conn.Exec(ctx, `
				SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
				WHERE datname = $1 AND pid <> pg_backend_pid()`, db); err != nil {
				return fmt.Errorf("terminate sessions of %s: %w", db, err)
			}
			var left []string
			rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots WHERE database = $1", db)
			if err == nil {
				left, err = pgx.CollectRows(rows, pgx.RowTo[string])
			}
			if err != nil {
				return fmt.Errorf("list slots of %s: %w", db, err)
			}
			if len(left) == 0 {
				break
			}
			var dropErr error
			for _, slot := range left {
				// Fails if a client reconnected meanwhile: next round.
				if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
					dropErr = fmt.Errorf("drop slot %s of %s: %w", slot, db, err)
				}
			}
			if dropErr != nil && attempt >= 50 {
				return dropErr
			}
			if dropErr != nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pg.Ident(db)+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", db, err)
		}
		rows, err := conn.Query(ctx, `SELECT roname FROM pg_replication_origin WHERE roname LIKE 'pgmesh\_%'`)
		if err != nil {
			return fmt.Errorf("list origins: %w", err)
		}
		origins, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("list origins: %w", err)
		}
		for _, origin := range origins {
			if _, err := conn.Exec(ctx, "SELECT pg_replication_origin_drop($1)", origin); err != nil {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == "55006" { // in use by a session of another test
					continue
				}
				return fmt.Errorf("drop origin %s: %w", origin, err)
			}
		}
		return nil
	})
}

// Conn opens a connection to the test database on node (0-based) as the
// role that owns the application's tables and runs its DDL
// (sandbox.Owner), closed at cleanup.
func (e *Env) Conn(t testing.TB, node int) *pgx.Conn {
	t.Helper()
	return e.ConnAs(t, node, sandbox.Owner)
}

// App opens a connection as an application role (sandbox.App): ordinary
// table privileges, nothing on schema pgmesh.
func (e *Env) App(t testing.TB, node int) *pgx.Conn {
	t.Helper()
	return e.ConnAs(t, node, sandbox.App)
}

// Pgmesh opens a connection as pgmesh's role, which reads and writes schema
// pgmesh; like every pgmesh session its search_path is pg.SearchPath.
func (e *Env) Pgmesh(t testing.TB, node int) *pgx.Conn {
	t.Helper()
	return e.ConnAs(t, node, sandbox.Pgmesh)
}

// Inspect opens a connection for a test's assertions: pgmesh's role (it
// reads schema pgmesh and, as a member of the owner, every table) with
// public on its search_path, for the test's unqualified table names.
func (e *Env) Inspect(t testing.TB, node int) *pgx.Conn {
	t.Helper()
	conn := e.ConnAs(t, node, sandbox.Pgmesh)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if _, err := conn.Exec(ctx, "SET search_path = public"); err != nil {
		t.Fatalf("sandboxtest: n%d: %v", node+1, err)
	}
	return conn
}

// Admin opens a superuser connection to the test database on node: for
// what a DBA does (and for inspecting what no other role may read).
func (e *Env) Admin(t testing.TB, node int) *pgx.Conn {
	t.Helper()
	return e.ConnAs(t, node, sandbox.Admin)
}

// AdminExec runs sql as a superuser on the test database of node (0-based)
// and fails the test on error: what a DBA does (ALTER DATABASE … SET,
// ALTER ROLE, ALTER SYSTEM).
func (e *Env) AdminExec(t testing.TB, node int, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn, err := e.connect(node, sandbox.Admin)
	if err != nil {
		t.Fatalf("sandboxtest: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("sandboxtest: n%d (as a superuser): %s: %v", node+1, sql, err)
	}
}

// DSNAs is the DSN of the test database on node (0-based) for role.
func (e *Env) DSNAs(node int, role sandbox.Role) string {
	if node < 0 || node >= len(e.DSNs) {
		return ""
	}
	return e.Cluster.DSNAs(e.Cluster.Nodes[node].Name, e.DB, role)
}

// ConnAs opens a connection to the test database on node as role, closed at
// cleanup.
func (e *Env) ConnAs(t testing.TB, node int, role sandbox.Role) *pgx.Conn {
	t.Helper()
	conn, err := e.connect(node, role)
	if err != nil {
		t.Fatalf("sandboxtest: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func (e *Env) connect(node int, role sandbox.Role) (*pgx.Conn, error) {
	if node < 0 || node >= len(e.DSNs) {
		return nil, fmt.Errorf("node index %d: the env has %d nodes", node, len(e.DSNs))
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	name := fmt.Sprintf("n%d", node+1)
	if role == sandbox.Pgmesh {
		return pg.Connect(ctx, name, e.DSNAs(node, role), "pgmesh-test")
	}
	return pg.ConnectUser(ctx, name, e.DSNAs(node, role), "pgmesh-test")
}

// Exec runs sql as the table owner (sandbox.Owner) on the test database of
// node (0-based) and fails the test on error. Without args, sql may hold
// several statements.
func (e *Env) Exec(t testing.TB, node int, sql string, args ...any) {
	t.Helper()
	if err := e.exec(node, sql, args...); err != nil {
		t.Fatalf("sandboxtest: n%d: %s: %v", node+1, sql, err)
	}
}

// ExecUncaptured runs sql as the table owner on node (0-based) without DDL
// capture, as a node where capture is off would: in a session of pgmesh's
// role (the only kind in which pgmesh.in_ddl counts) that sets the role to
// the owner.
func (e *Env) ExecUncaptured(t testing.TB, node int, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	conn := e.Pgmesh(t, node)
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, q := range []string{"SET LOCAL pgmesh.in_ddl = on", "SET LOCAL ROLE " + pg.Ident(string(sandbox.Owner)),
			`SET LOCAL search_path = "$user", public`, sql} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("sandboxtest: n%d: %v", node+1, err)
	}
}

func (e *Env) exec(node int, sql string, args ...any) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if node < 0 || node >= len(e.conns) {
		return fmt.Errorf("node index %d: the env has %d nodes", node, len(e.conns))
	}
	if e.conns[node] == nil || e.conns[node].IsClosed() {
		conn, err := e.connect(node, sandbox.Owner)
		if err != nil {
			return err
		}
		e.conns[node] = conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := e.conns[node].Exec(ctx, sql, args...)
	return err
}

func (e *Env) closeConns() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, conn := range e.conns {
		if conn != nil {
			conn.Close(context.Background())
			e.conns[i] = nil
		}
	}
}

// Major is the servers' PostgreSQL major version (15, 18…).
func (e *Env) Major() int { return e.Cluster.Major }
