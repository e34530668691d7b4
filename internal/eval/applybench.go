// Package eval holds workloads and measurements run against real clusters:
// the apply benchmark, the demo workload, and evaluation scenarios.
package eval

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/setup"
)

// ApplyBenchOptions configures BenchApply.
type ApplyBenchOptions struct {
	Dir    string // sandbox directory (a temp dir when empty); removed at the end
	BinDir string // PostgreSQL binaries ("" = sandbox.FindBinDir)
	Txns   int    // pgbench transactions per round
	Rounds int
	// BigRows, when set, replaces the pgbench backlog by one transaction
	// that inserts BigRows rows into one table (bigint key, 96-byte text).
	BigRows int
	// Scale is the pgbench scale (default 1: one branch, which every
	// transaction updates).
	Scale int
	// Workers is the pgmesh link's apply sessions (agent.apply_workers;
	// 0 = the default).
	Workers int
	Out     io.Writer // progress and results
}

// ApplyRound is one measured catch-up.
type ApplyRound struct {
	Round   int     `json:"round"`
	Applier string  `json:"applier"` // "native" or "pgmesh"
	Seconds float64 `json:"seconds"`
	TPS     float64 `json:"tps"`
	// PeakRSSMiB is the bench process's peak resident memory during a
	// pgmesh round (the agent runs in it), 0 for native.
	PeakRSSMiB float64 `json:"peak_rss_mib,omitempty"`
}

// ApplyBenchResult compares the two appliers on the same servers and backlog sizes.
type ApplyBenchResult struct {
	Txns          int          `json:"txns_per_round"`
	BigRows       int          `json:"big_rows,omitempty"`
	Workers       int          `json:"workers"`
	Rounds        []ApplyRound `json:"rounds"`
	NativeMedian  float64      `json:"native_median_seconds"`
	PgmeshMedian  float64      `json:"pgmesh_median_seconds"`
	Ratio         float64      `json:"ratio_native_over_pgmesh"` // pgmesh speed as a fraction of native
	PeakRSSMiB    float64      `json:"pgmesh_peak_rss_mib"`
	ServerVersion int          `json:"server_major"`
}

// BenchApply measures how fast a backlog of pgbench TPC-B transactions is
// caught up by a native subscription and by a pgmesh link, on the same two
// servers, interleaving the two over several rounds so that drift of this
// shared machine hits both alike. Each applier has its own database (same
// schema, same data), so neither sees the other's backlog.
func BenchApply(ctx context.Context, o ApplyBenchOptions) (*ApplyBenchResult, error) {
	if (o.Txns <= 0 && o.BigRows <= 0) || o.Rounds <= 0 {
		return nil, fmt.Errorf("bench apply: --txns (or --big-rows) and --rounds must be positive")
	}
	if o.BigRows > 0 {
		o.Txns = 1
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
	cl, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Nodes: 2, BinDir: o.BinDir, DB: "native",
		Logf: func(f string, a ...any) { fmt.Fprintf(o.Out, "  "+f+"\n", a...) }})
	if err != nil {
		return nil, err
	}
	defer cl.Down(context.WithoutCancel(ctx))
	pgbench, err := findPgbench(cl.BinDir)
	if err != nil {
		return nil, err
	}

	b := &applyBench{o: o, cl: cl, pgbench: pgbench}
	if err := b.prepare(ctx); err != nil {
		return nil, err
	}
	res := &ApplyBenchResult{Txns: o.Txns, BigRows: o.BigRows, Workers: b.meshCfg.Agent.Workers(), ServerVersion: cl.Major}
	var native, mesh []float64
	for r := 1; r <= o.Rounds; r++ {
		for _, which := range []string{"native", "pgmesh"} {
			resetPeakRSS()
			secs, err := b.round(ctx, which, r)
			if err != nil {
				return nil, fmt.Errorf("round %d (%s): %w", r, which, err)
			}
			round := ApplyRound{Round: r, Applier: which, Seconds: secs, TPS: float64(o.Txns) / secs}
			if which == "pgmesh" {
				round.PeakRSSMiB = peakRSSMiB()
				res.PeakRSSMiB = max(res.PeakRSSMiB, round.PeakRSSMiB)
			}
			res.Rounds = append(res.Rounds, round)
			n, unit := o.Txns, "txn/s"
			if o.BigRows > 0 {
				n, unit = o.BigRows, "rows/s"
			}
			fmt.Fprintf(o.Out, "round %d  %-6s  %6.2fs  %8.0f %-6s  %5.0f MiB\n", r, which, secs, float64(n)/secs, unit, round.PeakRSSMiB)
			if which == "native" {
				native = append(native, secs)
			} else {
				mesh = append(mesh, secs)
			}
		}
	}
	res.NativeMedian, res.PgmeshMedian = median(native), median(mesh)
	res.Ratio = res.NativeMedian / res.PgmeshMedian
	return res, nil
}

type applyBench struct {
	o       ApplyBenchOptions
	cl      *sandbox.Cluster
	pgbench string
	meshCfg *config.Config
}

func findPgbench(binDir string) (string, error) {
	for _, p := range []string{filepath.Join(binDir, "pgbench"), "/usr/lib/postgresql/15/bin/pgbench"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("pgbench not found next to %s nor in /usr/lib/postgresql/15/bin: install postgresql-15 (make deps)", binDir)
}

// prepare creates database "mesh" beside "native" on both nodes, pgbench
// tables in both, a native publication/subscription (disabled) for
// "native", and a pgmesh cluster for "mesh".
func (b *applyBench) prepare(ctx context.Context) error {
	fmt.Fprintln(b.o.Out, "preparing pgbench tables, a native subscription and a pgmesh link")
	for _, n := range b.cl.Nodes {
		if err := b.cl.CreateDB(ctx, n.Name, "mesh"); err != nil {
			return err
		}
		for _, db := range []string{"native", "mesh"} {
			if err := b.run(ctx, "-i", "-s", strconv.Itoa(max(b.o.Scale, 1)), "-q", b.cl.DSNAs(n.Name, db, sandbox.Owner)); err != nil {
				return err
			}
			// pgbench_history has no key; it only ever gets inserts.
			if err := execSQL(ctx, b.cl.DSNAs(n.Name, db, sandbox.Owner), `ALTER TABLE pgbench_history REPLICA IDENTITY FULL`); err != nil {
				return err
			}
			if err := execSQL(ctx, b.cl.DSNAs(n.Name, db, sandbox.Owner), `CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL)`); err != nil {
				return err
			}
		}
	}
	n1, n2 := b.cl.Nodes[0].Name, b.cl.Nodes[1].Name
	// The native side runs as a superuser, as native subscriptions usually
	// do (FOR ALL TABLES and CREATE SUBSCRIPTION need one).
	if err := execSQL(ctx, b.cl.DSNAs(n1, "native", sandbox.Admin), `CREATE PUBLICATION bench FOR ALL TABLES`); err != nil {
		return err
	}
	// The subscriber's walreceiver runs as the server's OS user, which
	// cannot read the sandbox's password file.
	pub, err := b.cl.ServerDSN(n1, "native", sandbox.Admin)
	if err != nil {
		return err
	}
	sub := fmt.Sprintf(`CREATE SUBSCRIPTION bench CONNECTION %s PUBLICATION bench WITH (copy_data = false, enabled = false)`,
		pg.QuoteLiteral(pub))
	if err := execSQL(ctx, b.cl.DSNAs(n2, "native", sandbox.Admin), sub); err != nil {
		return err
	}
	b.meshCfg = &config.Config{
		Cluster: "bench",
		Nodes: []config.Node{
			{Name: n1, DSN: b.cl.DSNAs(n1, "mesh", sandbox.Pgmesh), AdminDSN: b.cl.DSNAs(n1, "mesh", sandbox.Admin), ID: 1},
			{Name: n2, DSN: b.cl.DSNAs(n2, "mesh", sandbox.Pgmesh), AdminDSN: b.cl.DSNAs(n2, "mesh", sandbox.Admin), ID: 2},
		},
		Replicate: config.Replicate{Schemas: []string{"public"}},
		Conflicts: config.Conflicts{Default: config.LastUpdateWins},
		Sequences: config.Sequences{Strategy: "none", MaxNodes: 16},
		DDL:       config.DDL{Capture: "manual"},
		Agent:     config.Agent{Listen: "-", ApplyWorkers: b.o.Workers},
	}
	if _, err := setup.Init(ctx, b.meshCfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return fmt.Errorf("pgmesh init: %w", err)
	}
	return nil
}

// round builds a backlog of Txns pgbench transactions on n1 while the
// applier is stopped, then starts it and times the catch-up up to a marker
// transaction committed after the backlog.
func (b *applyBench) round(ctx context.Context, which string, r int) (float64, error) {
	db := map[string]string{"native": "native", "pgmesh": "mesh"}[which]
	n1, n2 := b.cl.Nodes[0].Name, b.cl.Nodes[1].Name
	if b.o.BigRows > 0 {
		first := (r-1)*b.o.BigRows + 1
		if err := execSQL(ctx, b.cl.DSNAs(n1, db, sandbox.App), fmt.Sprintf(`INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(%d, %d) g`,
			first, first+b.o.BigRows-1)); err != nil {
			return 0, err
		}
	} else if err := b.run(ctx, "-n", "-c", "4", "-j", "2", "-t", strconv.Itoa(b.o.Txns/4), b.cl.DSNAs(n1, db, sandbox.App)); err != nil {
		return 0, err
	}
	marker := fmt.Sprintf("%s-%d-%d", which, r, time.Now().UnixNano())
	if err := execSQL(ctx, b.cl.DSNAs(n1, db, sandbox.App), `UPDATE pgbench_branches SET filler = '`+marker+`' WHERE bid = 1`); err != nil {
		return 0, err
	}

	// ALTER SUBSCRIPTION needs the subscription's owner.
	down, err := pgx.Connect(ctx, b.cl.DSNAs(n2, db, sandbox.Admin))
	if err != nil {
		return 0, err
	}
	defer down.Close(ctx)

	start := time.Now()
	stop := func() error { return nil }
	switch which {
	case "native":
		if _, err := down.Exec(ctx, `ALTER SUBSCRIPTION bench ENABLE`); err != nil {
			return 0, err
		}
		stop = func() error {
			_, err := down.Exec(ctx, `ALTER SUBSCRIPTION bench DISABLE`)
			return err
		}
	case "pgmesh":
		a, err := agent.New(b.meshCfg, agent.Options{Node: n2, Listen: "-", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			return 0, err
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		stop = func() error { cancel(); return <-done }
	}
	for {
		var filler *string
		if err := down.QueryRow(ctx, `SELECT trim(filler) FROM pgbench_branches WHERE bid = 1`).Scan(&filler); err != nil {
			_ = stop()
			return 0, err
		}
		if filler != nil && *filler == marker {
			break
		}
		if time.Since(start) > 10*time.Minute {
			_ = stop()
			return 0, fmt.Errorf("%s did not catch up within 10 minutes", which)
		}
		time.Sleep(5 * time.Millisecond)
	}
	secs := time.Since(start).Seconds()
	if err := stop(); err != nil {
		return 0, fmt.Errorf("stop %s applier: %w", which, err)
	}
	// The backlog must have been applied in full, not just the marker.
	var up, dn int64
	if err := down.QueryRow(ctx, `SELECT count(*) FROM pgbench_history`).Scan(&dn); err != nil {
		return 0, err
	}
	upConn, err := pgx.Connect(ctx, b.cl.DSNAs(n1, db, sandbox.App))
	if err != nil {
		return 0, err
	}
	defer upConn.Close(ctx)
	if err := upConn.QueryRow(ctx, `SELECT count(*) FROM pgbench_history`).Scan(&up); err != nil {
		return 0, err
	}
	if up != dn {
		return 0, fmt.Errorf("%s: pgbench_history has %d rows upstream, %d downstream", which, up, dn)
	}
	return secs, nil
}

func (b *applyBench) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, b.pgbench, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgbench %v: %w\n%s", args, err, out)
	}
	return nil
}

func execSQL(ctx context.Context, dsn, sql string) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		// A subscription's connection string carries a password.
		if i := strings.Index(sql, " CONNECTION "); i >= 0 {
			sql = sql[:i] + " CONNECTION …"
		}
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// resetPeakRSS restarts the peak resident memory this process reports
// (Linux: 5 in clear_refs resets VmHWM); elsewhere it does nothing.
func resetPeakRSS() {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSSMiB is this process's peak resident memory since the last reset,
// 0 when unknown.
func peakRSSMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err == nil {
				return kb / 1024
			}
		}
	}
	return 0
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
