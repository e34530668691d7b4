package eval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/setup"
)

// MeshBenchOptions configures BenchMesh.
type MeshBenchOptions struct {
	Dir      string // sandbox directory (a temp dir when empty); removed at the end
	BinDir   string // PostgreSQL binaries ("" = sandbox.FindBinDir); 16 or newer
	Nodes    int
	Rate     int           // pgbench transactions per second on every node
	Duration time.Duration // of the load, per mesh
	Scale    int           // pgbench scale
	Workers  int           // pgmesh apply sessions per link (0 = the default)
	Out      io.Writer     // progress
}

// MeshResult is what one mesh did under the load.
type MeshResult struct {
	Mesh string `json:"mesh"` // "native" or "pgmesh"
	// Lag is the age of a peer's heartbeat row as this node sees it,
	// sampled every 100 ms on every node for every peer (includes up to
	// the 100 ms heartbeat period), in milliseconds.
	LagP50Ms float64 `json:"lag_p50_ms"`
	LagP99Ms float64 `json:"lag_p99_ms"`
	LagMaxMs float64 `json:"lag_max_ms"`
	Samples  int     `json:"lag_samples"`
	// ClientTPS is the rate the pgbench clients achieved, per node, and
	// ClientFailed the transactions they gave up (errors after retries).
	ClientTPS    []float64 `json:"client_tps"`
	ClientFailed int       `json:"client_failed"`
	// LinkRestarts counts pgmesh links torn down and restarted, Retries
	// the transactions retried in place; ApplyErrors the native apply
	// workers' errors (pg_stat_subscription_stats).
	LinkRestarts int      `json:"link_restarts"`
	Retries      int      `json:"retries"`
	ApplyErrors  int      `json:"apply_errors"`
	Errors       []string `json:"errors,omitempty"` // the first distinct ones
	// Converged is whether every table was identical on every node once
	// replication had caught up; Differing names the tables that were not.
	Converged   bool     `json:"converged"`
	Differing   []string `json:"differing_tables,omitempty"`
	CatchUpSecs float64  `json:"catch_up_seconds"`
}

// MeshBenchResult compares a pgmesh mesh with a native origin = none mesh
// under the same steady multi-master load on the same servers.
type MeshBenchResult struct {
	Nodes         int          `json:"nodes"`
	Rate          int          `json:"rate_per_node"`
	DurationSecs  float64      `json:"duration_seconds"`
	Scale         int          `json:"scale"`
	Workers       int          `json:"pgmesh_apply_workers"`
	ServerVersion int          `json:"server_major"`
	Meshes        []MeshResult `json:"meshes"`
}

// meshTables are compared between the nodes once replication caught up.
var meshTables = []string{"pgbench_accounts", "pgbench_tellers", "pgbench_branches", "pgbench_history", "heartbeat"}

// BenchMesh runs pgbench TPC-B at a fixed rate on every node at once, first
// against a native logical replication mesh (PostgreSQL 16+ subscriptions
// WITH origin = none, copy_data = false) and then against a pgmesh mesh, on
// the same servers, each in its own database, and measures replication lag
// with heartbeats: every node updates its own heartbeat row every 100 ms,
// and every node reads its peers' rows every 100 ms.
func BenchMesh(ctx context.Context, o MeshBenchOptions) (*MeshBenchResult, error) {
	if o.Nodes < 2 || o.Rate <= 0 || o.Duration <= 0 || o.Scale <= 0 {
		return nil, errors.New("bench mesh: --nodes must be at least 2, --rate, --duration and --scale positive")
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	dir := o.Dir
	if dir == "" {
		d, remove, err := sandbox.TempDir("pgmesh-bench-")
		if err != nil {
			return nil, err
		}
		defer remove()
		dir = d
	}
	cl, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Nodes: o.Nodes, BinDir: o.BinDir, DB: "native",
		Logf: func(f string, a ...any) { fmt.Fprintf(o.Out, "  "+f+"\n", a...) }})
	if err != nil {
		return nil, err
	}
	defer cl.Down(context.WithoutCancel(ctx))
	if cl.Major < 16 {
		return nil, fmt.Errorf("bench mesh: the native mesh needs subscriptions WITH (origin = none), PostgreSQL 16 or newer; these servers are %d (set --pg-bin or PGMESH_PG_BIN)", cl.Major)
	}
	pgbench, err := findPgbench(cl.BinDir)
	if err != nil {
		return nil, err
	}
	m := &meshBench{o: o, cl: cl, pgbench: pgbench}
	res := &MeshBenchResult{Nodes: o.Nodes, Rate: o.Rate, DurationSecs: o.Duration.Seconds(), Scale: o.Scale, ServerVersion: cl.Major}
	if err := m.prepare(ctx); err != nil {
		return nil, err
	}
	res.Workers = m.meshCfg.Agent.Workers()

	fmt.Fprintf(o.Out, "native mesh (origin = none): %d nodes × %d txn/s for %s\n", o.Nodes, o.Rate, o.Duration)
	native, err := m.runNative(ctx)
	if err != nil {
		return nil, fmt.Errorf("native mesh: %w", err)
	}
	fmt.Fprintf(o.Out, "pgmesh mesh: %d nodes × %d txn/s for %s\n", o.Nodes, o.Rate, o.Duration)
	mesh, err := m.runPgmesh(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgmesh mesh: %w", err)
	}
	res.Meshes = []MeshResult{*native, *mesh}
	return res, nil
}

type meshBench struct {
	o       MeshBenchOptions
	cl      *sandbox.Cluster
	pgbench string
	meshCfg *config.Config
}

// dsn connects to database db of node i as the application role, which
// the load runs as; dsnAs as another.
func (m *meshBench) dsn(i int, db string) string { return m.dsnAs(i, db, sandbox.App) }

func (m *meshBench) dsnAs(i int, db string, r sandbox.Role) string {
	return m.cl.DSNAs(m.cl.Nodes[i].Name, db, r)
}

// prepare creates databases native and mesh on every node with the same
// pgbench tables and heartbeat rows, and the pgmesh cluster on mesh.
func (m *meshBench) prepare(ctx context.Context) error {
	fmt.Fprintln(m.o.Out, "preparing pgbench tables and heartbeats on every node")
	for i := range m.cl.Nodes {
		if err := m.cl.CreateDB(ctx, m.cl.Nodes[i].Name, "mesh"); err != nil {
			return err
		}
		for _, db := range []string{"native", "mesh"} {
			if err := runPgbench(ctx, m.pgbench, "-i", "-s", strconv.Itoa(m.o.Scale), "-q", m.dsnAs(i, db, sandbox.Owner)); err != nil {
				return err
			}
			for _, q := range []string{
				// pgbench_history has no key; it only ever gets inserts.
				`ALTER TABLE pgbench_history REPLICA IDENTITY FULL`,
				`CREATE TABLE heartbeat (node text PRIMARY KEY, ts timestamptz NOT NULL)`,
				`INSERT INTO heartbeat SELECT 'n' || g, '2000-01-01' FROM generate_series(1, ` + strconv.Itoa(len(m.cl.Nodes)) + `) g`,
			} {
				if err := execSQL(ctx, m.dsnAs(i, db, sandbox.Owner), q); err != nil {
					return err
				}
			}
		}
	}
	m.meshCfg = &config.Config{
		Cluster:   "bench",
		Replicate: config.Replicate{Schemas: []string{"public"}},
		Conflicts: config.Conflicts{Default: config.LastUpdateWins},
		Sequences: config.Sequences{Strategy: "none", MaxNodes: 16},
		DDL:       config.DDL{Capture: "manual"},
		Agent:     config.Agent{Listen: "-", ApplyWorkers: m.o.Workers},
	}
	for i, n := range m.cl.Nodes {
		m.meshCfg.Nodes = append(m.meshCfg.Nodes, config.Node{Name: n.Name, DSN: m.dsnAs(i, "mesh", sandbox.Pgmesh),
			AdminDSN: m.dsnAs(i, "mesh", sandbox.Admin), ID: i + 1})
	}
	if _, err := setup.Init(ctx, m.meshCfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return fmt.Errorf("pgmesh init: %w", err)
	}
	return nil
}

// runNative builds the native mesh (every node subscribes to every other
// with origin = none) and runs the load on it.
func (m *meshBench) runNative(ctx context.Context) (*MeshResult, error) {
	for i := range m.cl.Nodes {
		// FOR ALL TABLES and CREATE SUBSCRIPTION need a superuser, as
		// native subscriptions usually have.
		if err := execSQL(ctx, m.dsnAs(i, "native", sandbox.Admin), `CREATE PUBLICATION mesh FOR ALL TABLES`); err != nil {
			return nil, err
		}
	}
	for i, n := range m.cl.Nodes {
		for j, p := range m.cl.Nodes {
			if i == j {
				continue
			}
			// The subscriber's walreceiver runs as the server's OS user,
			// which cannot read the sandbox's password file.
			pub, err := m.cl.ServerDSN(p.Name, "native", sandbox.Admin)
			if err != nil {
				return nil, err
			}
			sub := fmt.Sprintf(`CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION mesh WITH (origin = none, copy_data = false)`,
				pg.Ident(n.Name+"_from_"+p.Name), pg.QuoteLiteral(pub))
			if err := execSQL(ctx, m.dsnAs(i, "native", sandbox.Admin), sub); err != nil {
				return nil, fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
	}
	res, err := m.load(ctx, "native")
	if err != nil {
		return nil, err
	}
	for i := range m.cl.Nodes {
		var errs int
		if err := queryArgs(ctx, m.dsn(i, "native"), `SELECT coalesce(sum(apply_error_count + sync_error_count), 0)::int FROM pg_stat_subscription_stats`, &errs); err != nil {
			return nil, err
		}
		res.ApplyErrors += errs
	}
	if err := m.converge(ctx, "native", res); err != nil {
		return nil, err
	}
	// Stop the native mesh: the pgmesh run must not share the servers
	// with its apply workers.
	for i, n := range m.cl.Nodes {
		for j, p := range m.cl.Nodes {
			if i != j {
				if err := execSQL(ctx, m.dsnAs(i, "native", sandbox.Admin), `ALTER SUBSCRIPTION `+pg.Ident(n.Name+"_from_"+p.Name)+` DISABLE`); err != nil {
					return nil, err
				}
			}
		}
	}
	return res, nil
}

// runPgmesh runs an agent for every link of the mesh in this process and
// the load on it.
func (m *meshBench) runPgmesh(ctx context.Context) (*MeshResult, error) {
	counter := &logCounter{}
	a, err := agent.New(m.meshCfg, agent.Options{Listen: "-", Logger: slog.New(counter)})
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { cancel(); <-done }()
	res, err := m.load(ctx, "mesh")
	if err != nil {
		return nil, err
	}
	res.Mesh = "pgmesh"
	if err := m.converge(ctx, "mesh", res); err != nil {
		return nil, err
	}
	res.LinkRestarts = int(counter.restarts.Load())
	res.Retries = int(counter.retries.Load())
	res.Errors = counter.errors()
	return res, nil
}

// load runs pgbench at the rate on every node, the heartbeats and the lag
// sampling, for the duration.
func (m *meshBench) load(ctx context.Context, db string) (*MeshResult, error) {
	res := &MeshResult{Mesh: db}
	n := len(m.cl.Nodes)
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lags []float64
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil && lctx.Err() == nil {
			firstErr = err
		}
		stop()
	}
	sampling := make(chan struct{}) // closed once every node saw every peer's heartbeat
	for i := range n {
		node := m.cl.Nodes[i].Name
		wg.Go(func() { // heartbeat
			c, err := pgx.Connect(lctx, m.dsn(i, db))
			if err != nil {
				fail(err)
				return
			}
			defer c.Close(context.WithoutCancel(lctx))
			for tick := time.NewTicker(100 * time.Millisecond); ; {
				if _, err := c.Exec(lctx, `UPDATE heartbeat SET ts = clock_timestamp() WHERE node = $1`, node); err != nil {
					fail(fmt.Errorf("heartbeat on %s: %w", node, err))
					return
				}
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
				}
			}
		})
		wg.Go(func() { // lag of the peers' heartbeats on this node
			c, err := pgx.Connect(lctx, m.dsn(i, db))
			if err != nil {
				fail(err)
				return
			}
			defer c.Close(context.WithoutCancel(lctx))
			select {
			case <-lctx.Done():
				return
			case <-sampling:
			}
			for tick := time.NewTicker(100 * time.Millisecond); ; {
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
				}
				rows, err := c.Query(lctx, `SELECT extract(epoch FROM clock_timestamp() - ts)::float8 * 1000 FROM heartbeat WHERE node <> $1`, node)
				if err != nil {
					fail(fmt.Errorf("lag on %s: %w", node, err))
					return
				}
				ms, err := pgx.CollectRows(rows, pgx.RowTo[float64])
				if err != nil {
					fail(fmt.Errorf("lag on %s: %w", node, err))
					return
				}
				mu.Lock()
				lags = append(lags, ms...)
				mu.Unlock()
			}
		})
	}
	// Sampling and the clients start once every node has seen a heartbeat
	// of every peer: the links run.
	for {
		seen := 0
		for i := range n {
			var k int
			if err := queryArgs(lctx, m.dsn(i, db), `SELECT count(*)::int FROM heartbeat WHERE ts > '2000-01-02'`, &k); err != nil {
				stop()
				wg.Wait()
				return nil, err
			}
			seen += k
		}
		if seen == n*n {
			break
		}
		if lctx.Err() != nil {
			wg.Wait()
			return nil, firstErr
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(sampling)
	// The clients: TPC-B at the rate, 2 clients per node; deadlocks and
	// serialization failures retried by pgbench (--max-tries).
	outs := make([]string, n)
	var pwg sync.WaitGroup
	for i := range n {
		pwg.Go(func() {
			cmd := exec.CommandContext(lctx, m.pgbench, "-n", "-c", "2", "-j", "2", "-R", strconv.Itoa(m.o.Rate),
				"-T", strconv.Itoa(int(m.o.Duration.Seconds())), "--max-tries", "10", m.dsn(i, db))
			out, err := cmd.CombinedOutput()
			outs[i] = string(out)
			if err != nil {
				fail(fmt.Errorf("pgbench on %s: %w\n%s", m.cl.Nodes[i].Name, err, tail(string(out), 10)))
			}
		})
	}
	pwg.Wait()
	stop()
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	for i, out := range outs {
		tps, failed, err := parsePgbench(out)
		if err != nil {
			return nil, fmt.Errorf("pgbench on %s: %w", m.cl.Nodes[i].Name, err)
		}
		res.ClientTPS = append(res.ClientTPS, tps)
		res.ClientFailed += failed
	}
	slices.Sort(lags)
	res.Samples = len(lags)
	if len(lags) > 0 {
		res.LagP50Ms = percentile(lags, 0.50)
		res.LagP99Ms = percentile(lags, 0.99)
		res.LagMaxMs = lags[len(lags)-1]
	}
	fmt.Fprintf(m.o.Out, "  lag p50 %.0f ms, p99 %.0f ms, max %.0f ms; clients %v txn/s\n", res.LagP50Ms, res.LagP99Ms, res.LagMaxMs, res.ClientTPS)
	return res, nil
}

// converge waits until every node has applied everything its peers wrote
// (each peer's replication slots confirmed past the peer's WAL position)
// and compares the tables.
// queryArgs reads one value with arguments.
func queryArgs(ctx context.Context, dsn, sql string, dest any, args ...any) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if err := c.QueryRow(ctx, sql, args...).Scan(dest); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

func (m *meshBench) converge(ctx context.Context, db string, res *MeshResult) error {
	start := time.Now()
	ends := make([]string, len(m.cl.Nodes))
	for i := range m.cl.Nodes {
		if err := queryArgs(ctx, m.dsn(i, db), `SELECT pg_current_wal_lsn()::text`, &ends[i]); err != nil {
			return err
		}
	}
	for {
		behind := 0
		for i := range m.cl.Nodes {
			var n int
			if err := queryArgs(ctx, m.dsn(i, db), `SELECT count(*)::int FROM pg_replication_slots
				WHERE database = current_database() AND slot_type = 'logical' AND coalesce(confirmed_flush_lsn < $1::pg_lsn, true)`, &n, ends[i]); err != nil {
				return err
			}
			behind += n
		}
		if behind == 0 {
			break
		}
		if time.Since(start) > 5*time.Minute {
			res.Differing = append(res.Differing, "(replication did not catch up within 5 minutes)")
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	res.CatchUpSecs = time.Since(start).Seconds()
	for _, tbl := range meshTables {
		var first string
		for i := range m.cl.Nodes {
			var sum string
			q := `SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM ` + pg.Ident(tbl) + ` t`
			if err := queryArgs(ctx, m.dsn(i, db), q, &sum); err != nil {
				return err
			}
			if i == 0 {
				first = sum
			} else if sum != first {
				res.Differing = append(res.Differing, tbl)
				break
			}
		}
	}
	res.Converged = len(res.Differing) == 0
	return nil
}

var (
	pgbenchTPS    = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	pgbenchFailed = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbench reads the achieved rate and the failed transactions of a
// pgbench run.
func parsePgbench(out string) (float64, int, error) {
	mt := pgbenchTPS.FindStringSubmatch(out)
	if mt == nil {
		return 0, 0, fmt.Errorf("no tps in the output:\n%s", tail(out, 10))
	}
	tps, err := strconv.ParseFloat(mt[1], 64)
	if err != nil {
		return 0, 0, err
	}
	failed := 0
	if mf := pgbenchFailed.FindStringSubmatch(out); mf != nil {
		failed, _ = strconv.Atoi(mf[1])
	}
	return tps, failed, nil
}

func runPgbench(ctx context.Context, pgbench string, args ...string) error {
	out, err := exec.CommandContext(ctx, pgbench, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgbench %v: %w\n%s", args, err, out)
	}
	return nil
}

// percentile of sorted xs (nearest rank).
func percentile(xs []float64, p float64) float64 {
	i := int(p*float64(len(xs))+0.5) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logCounter is a slog handler that counts the agent's link restarts and
// in-place retries and keeps the first distinct errors.
type logCounter struct {
	restarts, retries atomic.Int64
	mu                sync.Mutex
	errs              []string
}

func (c *logCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (c *logCounter) WithAttrs([]slog.Attr) slog.Handler           { return c }
func (c *logCounter) WithGroup(string) slog.Handler                { return c }

func (c *logCounter) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "link failed, retrying":
		c.restarts.Add(1)
	case "remote transaction rolled back, running it again":
		c.retries.Add(1)
	default:
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			c.mu.Lock()
			if len(c.errs) < 5 && !slices.Contains(c.errs, a.Value.String()) {
				c.errs = append(c.errs, a.Value.String())
			}
			c.mu.Unlock()
		}
		return true
	})
	return nil
}

func (c *logCounter) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errs)
}
