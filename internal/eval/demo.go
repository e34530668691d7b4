package eval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sequence"
	"github.com/pgmesh/pgmesh/internal/setup"
)

// DemoOptions configures a demo cluster.
type DemoOptions struct {
	Dir    string // sandbox directory; a temporary one when empty
	Nodes  int
	BinDir string
	Out    io.Writer // progress lines
	Logger *slog.Logger
}

// Demo is a running local cluster with its agent.
type Demo struct {
	Cluster *sandbox.Cluster
	Config  *config.Config
	out     io.Writer
	stop    context.CancelFunc
	done    chan error
}

// demoSchema is created on every node before init: accounts are the hot
// rows every node updates (conflicts), orders get snowflake ids.
var demoSchema = []string{
	`CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL, updated_on text NOT NULL)`,
	`INSERT INTO accounts SELECT g, 'customer ' || g, 1000, 'seed' FROM generate_series(1, 100) g ON CONFLICT DO NOTHING`,
	`CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, account int NOT NULL, amount numeric NOT NULL, node text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`,
}

// StartDemo starts the servers, creates the demo schema, converts the
// order ids to snowflake, runs init and starts an agent for every link.
func StartDemo(ctx context.Context, o DemoOptions) (*Demo, error) {
	if o.Nodes < 2 {
		return nil, errors.New("demo: --nodes must be at least 2")
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Dir == "" {
		// Not removed: --keep leaves the cluster running there.
		d, _, err := sandbox.TempDir("pgmesh-demo-")
		if err != nil {
			return nil, err
		}
		o.Dir = d
	}
	step := func(f string, a ...any) { fmt.Fprintf(o.Out, "==> "+f+"\n", a...) }

	step("starting %d PostgreSQL servers in %s", o.Nodes, o.Dir)
	cl, err := sandbox.Up(ctx, sandbox.Options{Dir: o.Dir, Nodes: o.Nodes, BinDir: o.BinDir,
		Logf: func(f string, a ...any) { fmt.Fprintf(o.Out, "    "+f+"\n", a...) }})
	if err != nil {
		return nil, err
	}
	d := &Demo{Cluster: cl, out: o.Out}
	cfg, err := config.Load(filepath.Join(cl.Dir, "pgmesh.yaml"))
	if err != nil {
		return d, err
	}
	d.Config = cfg

	step("creating tables accounts (100 shared rows) and orders on every node, as role %s", sandbox.Owner)
	for _, n := range cfg.Nodes {
		if err := execAll(ctx, cl.DSNAs(n.Name, "", sandbox.Owner), demoSchema); err != nil {
			return d, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	step("pgmesh sequences convert --strategy snowflake")
	if _, err := sequence.Convert(ctx, cfg, sequence.Snowflake, 0, setup.Migrate); err != nil {
		return d, err
	}
	step("pgmesh init")
	rep, err := setup.Init(ctx, cfg, o.Logger)
	if err != nil {
		return d, err
	}
	fmt.Fprintf(o.Out, "    %d actions (publication, slots, origins, triggers)\n", len(rep.Actions))

	step("pgmesh run (agent for all %d links)", o.Nodes*(o.Nodes-1))
	a, err := agent.New(cfg, agent.Options{Listen: "-", Logger: o.Logger})
	if err != nil {
		return d, err
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.stop, d.done = cancel, make(chan error, 1)
	go func() { d.done <- a.Run(actx) }()
	return d, nil
}

// WorkloadStats counts what the demo workload did.
type WorkloadStats struct {
	Transactions int64
	Orders       int64
	Updates      int64
	Deletes      int64
}

// Workload writes on every node at once for the given time: orders with
// snowflake ids, balance updates of which a share hits five hot accounts
// that every node updates concurrently (conflicts), and some deletes.
func (d *Demo) Workload(ctx context.Context, dur time.Duration) (WorkloadStats, error) {
	fmt.Fprintf(d.out, "==> mixed workload as role %s on every node for %s (hot accounts 1-5 updated everywhere: conflicts)\n", sandbox.App, dur)
	var st WorkloadStats
	var wg sync.WaitGroup
	errs := make(chan error, len(d.Config.Nodes))
	deadline := time.Now().Add(dur)
	for i, n := range d.Config.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- demoWriter(ctx, n.Name, d.Cluster.DSNAs(n.Name, "", sandbox.App), uint64(i), deadline, &st)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return st, err
		}
	}
	fmt.Fprintf(d.out, "    %d transactions: %d orders, %d balance updates, %d deletes\n", st.Transactions, st.Orders, st.Updates, st.Deletes)
	return st, nil
}

// demoWriter writes as an application role (sandbox.App): snowflake ids
// and tombstones work without any grant on schema pgmesh.
func demoWriter(ctx context.Context, node, dsn string, seed uint64, deadline time.Time, st *WorkloadStats) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	rng := rand.New(rand.NewPCG(seed, 7))
	for time.Now().Before(deadline) {
		account := 6 + rng.IntN(95)
		if rng.IntN(3) == 0 {
			account = 1 + rng.IntN(5)
		}
		amount := 1 + rng.IntN(50)
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO orders (account, amount, node) VALUES ($1, $2, $3)`, account, amount, node); err != nil {
				return err
			}
			atomic.AddInt64(&st.Orders, 1)
			if _, err := tx.Exec(ctx, `UPDATE accounts SET balance = balance - $2, updated_on = $3 WHERE id = $1`, account, amount, node); err != nil {
				return err
			}
			atomic.AddInt64(&st.Updates, 1)
			if rng.IntN(10) == 0 {
				tag, err := tx.Exec(ctx, `DELETE FROM orders WHERE id = (SELECT min(id) FROM orders WHERE node = $1)`, node)
				if err != nil {
					return err
				}
				atomic.AddInt64(&st.Deletes, tag.RowsAffected())
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("node %s: workload: %w", node, err)
		}
		atomic.AddInt64(&st.Transactions, 1)
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
	}
	return nil
}

// WaitQuiet waits until every link has confirmed all of its upstream's WAL
// (give or take the upstream's own bookkeeping writes).
func (d *Demo) WaitQuiet(ctx context.Context, timeout time.Duration) ([]agent.LinkStatus, error) {
	fmt.Fprintln(d.out, "==> waiting for every link to catch up")
	deadline := time.Now().Add(timeout)
	for {
		sts, err := agent.Status(ctx, d.Config)
		if err != nil {
			return nil, err
		}
		quiet := true
		for _, s := range sts {
			if s.Problem != "" || s.State != agent.StateStreaming || s.LagBytes > agent.IdleLagBytes {
				quiet = false
			}
		}
		if quiet {
			return sts, nil
		}
		if time.Now().After(deadline) {
			return sts, fmt.Errorf("links not caught up after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// Stop stops the agent; Teardown also removes the servers.
func (d *Demo) Stop() error {
	if d.stop == nil {
		return nil
	}
	d.stop()
	d.stop = nil
	return <-d.done
}

// Teardown stops the agent and the servers and removes the directory.
func (d *Demo) Teardown(ctx context.Context) error {
	err := d.Stop()
	if d.Cluster != nil {
		err = errors.Join(err, d.Cluster.Down(ctx))
	}
	return err
}

func execAll(ctx context.Context, dsn string, stmts []string) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	for _, q := range stmts {
		if _, err := c.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}
