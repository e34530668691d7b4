package eval

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/join"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/setup"
)

// JoinBenchOptions configures BenchJoin.
type JoinBenchOptions struct {
	Dir    string // sandbox directory (a temp dir when empty); removed at the end
	BinDir string // PostgreSQL binaries ("" = sandbox.FindBinDir); pg_dump and psql must be there or on PATH
	Rows   int    // rows inserted in one transaction
	// SingleTxns more rows are inserted one per transaction: each has its
	// own commit time, which the copy keeps (one transaction per run).
	SingleTxns int
	Jobs       int
	Out        io.Writer
}

// JoinBenchResult compares `pgmesh node add` of an existing database with
// pg_dump -t | psql of the same table, on the same servers.
type JoinBenchResult struct {
	ServerVersion int     `json:"server_major"`
	Rows          int     `json:"rows"`
	TableBytes    int64   `json:"table_bytes"`
	DumpSeconds   float64 `json:"pg_dump_psql_seconds"`
	DumpPeakKiB   int64   `json:"pg_dump_psql_peak_rss_kib"` // the larger of the two processes
	JoinSeconds   float64 `json:"node_add_seconds"`          // the whole node add, without waiting for the catch-up
	CopySeconds   float64 `json:"copy_seconds"`              // its data copy
	CopyTxns      int64   `json:"copy_transactions"`
	JoinPeakKiB   int64   `json:"node_add_peak_rss_kib"` // the whole benchmark process, node add included
	Ratio         float64 `json:"ratio_dump_over_node_add"`
}

// BenchJoin builds a table of o.Rows (+ o.SingleTxns) rows on n1 of a
// 3-node sandbox, copies it with pg_dump -t | psql into n2, then makes n1 a
// 1-node mesh and adds n3 with node add (copy from n1), and compares.
func BenchJoin(ctx context.Context, o JoinBenchOptions) (*JoinBenchResult, error) {
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
	cl, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Nodes: 3, BinDir: o.BinDir, DB: "app",
		Logf: func(f string, a ...any) { fmt.Fprintf(o.Out, "  "+f+"\n", a...) }})
	if err != nil {
		return nil, err
	}
	defer cl.Down(context.WithoutCancel(ctx))
	dump, psql := toolPath(cl.BinDir, "pg_dump"), toolPath(cl.BinDir, "psql")
	res := &JoinBenchResult{ServerVersion: cl.Major, Rows: o.Rows + o.SingleTxns}

	src := cl.DSNAs("n1", "", sandbox.Admin)
	fmt.Fprintf(o.Out, "filling public.big on n1: %d rows in one transaction, %d in one transaction each\n", o.Rows, o.SingleTxns)
	if err := execSQL(ctx, src, `CREATE TABLE big (id bigint PRIMARY KEY, customer int NOT NULL, amount numeric(12,2) NOT NULL,
		note text, created timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, err
	}
	if err := execSQL(ctx, src, fmt.Sprintf(`INSERT INTO big (id, customer, amount, note)
		SELECT g, g %% 10000, (g %% 100000) / 100.0, 'order ' || g FROM generate_series(1, %d) g`, o.Rows)); err != nil {
		return nil, err
	}
	c, err := pgx.Connect(ctx, src)
	if err != nil {
		return nil, err
	}
	for i := 0; i < o.SingleTxns; i++ {
		if _, err := c.Exec(ctx, `INSERT INTO big (id, customer, amount, note) VALUES ($1, 1, 1, 'single')`, o.Rows+1+i); err != nil {
			c.Close(ctx)
			return nil, err
		}
	}
	if _, err := c.Exec(ctx, `VACUUM ANALYZE big`); err != nil {
		c.Close(ctx)
		return nil, err
	}
	if err := c.QueryRow(ctx, `SELECT pg_total_relation_size('big')`).Scan(&res.TableBytes); err != nil {
		c.Close(ctx)
		return nil, err
	}
	c.Close(ctx)

	fmt.Fprintln(o.Out, "pg_dump -t public.big n1 | psql n2")
	began := time.Now()
	dumpCmd := exec.CommandContext(ctx, dump, "--table=public.big", "--dbname="+src)
	psqlCmd := exec.CommandContext(ctx, psql, "--quiet", "--no-psqlrc", "--set=ON_ERROR_STOP=1", "--dbname="+cl.DSNAs("n2", "", sandbox.Admin))
	pipe, err := dumpCmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	psqlCmd.Stdin = pipe
	psqlCmd.Stdout, psqlCmd.Stderr, dumpCmd.Stderr = io.Discard, o.Out, o.Out
	if err := psqlCmd.Start(); err != nil {
		return nil, err
	}
	if err := dumpCmd.Run(); err != nil {
		return nil, fmt.Errorf("pg_dump: %w", err)
	}
	if err := psqlCmd.Wait(); err != nil {
		return nil, fmt.Errorf("psql: %w", err)
	}
	res.DumpSeconds = time.Since(began).Seconds()
	res.DumpPeakKiB = max(maxRSS(dumpCmd), maxRSS(psqlCmd))

	fmt.Fprintln(o.Out, "pgmesh init on n1 alone, then node add n3")
	data := fmt.Sprintf("cluster: bench\nnodes:\n  - name: n1\n    dsn: %q\n    admin_dsn: %q\nddl:\n  capture: manual\n",
		cl.DSNAs("n1", "", sandbox.Pgmesh), src)
	cfg, err := config.Parse([]byte(data), "")
	if err != nil {
		return nil, err
	}
	if _, err := setup.Init(ctx, cfg, slog.New(slog.DiscardHandler)); err != nil {
		return nil, fmt.Errorf("init n1: %w", err)
	}
	cfg.Nodes = append(cfg.Nodes, config.Node{Name: "n3", DSN: cl.DSNAs("n3", "", sandbox.Pgmesh), AdminDSN: cl.DSNAs("n3", "", sandbox.Admin), ID: 3})
	began = time.Now()
	rep, err := join.Add(ctx, cfg, join.Options{Node: "n3", Jobs: o.Jobs, PgBin: filepath.Dir(dump), Out: o.Out})
	if err != nil {
		return nil, fmt.Errorf("node add n3: %w", err)
	}
	res.JoinSeconds = time.Since(began).Seconds()
	res.CopySeconds = rep.Seconds
	for _, t := range rep.Tables {
		res.CopyTxns += t.Txns
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		res.JoinPeakKiB = ru.Maxrss
	}
	res.Ratio = res.DumpSeconds / res.JoinSeconds
	var n1, n3 int64
	for _, x := range []struct {
		dsn string
		n   *int64
	}{{src, &n1}, {cl.DSNAs("n3", "", sandbox.Admin), &n3}} {
		if err := queryInt(ctx, x.dsn, `SELECT count(*) FROM big`, x.n); err != nil {
			return nil, err
		}
	}
	if n1 != n3 {
		return nil, fmt.Errorf("n3 has %d rows of big, n1 %d", n3, n1)
	}
	return res, nil
}

func toolPath(binDir, name string) string {
	for _, p := range []string{filepath.Join(binDir, name), "/usr/lib/postgresql/15/bin/" + name} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return name
}

func maxRSS(c *exec.Cmd) int64 {
	if c.ProcessState == nil {
		return 0
	}
	if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}

func queryInt(ctx context.Context, dsn, q string, out *int64) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	return c.QueryRow(ctx, q).Scan(out)
}
