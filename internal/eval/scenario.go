package eval

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/netfault"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sequence"
	"github.com/pgmesh/pgmesh/internal/setup"
)

// Options configures one evaluation run.
type Options struct {
	Scenario string        // one of Scenarios
	Nodes    int           // default 3
	Duration time.Duration // how long the workload writes (default 60s)
	Seed     uint64        // workload randomness; 0 = from the clock
	Out      string        // report directory (created)
	BinDir   string        // PostgreSQL binaries of a new sandbox ("" = sandbox.FindBinDir)
	Workload WorkloadConfig
	// AgentBinary runs each node's agent as a `pgmesh run --node` child of
	// this binary, which the crash scenario SIGKILLs; "" runs the agents in
	// this process (a crash then cancels the agent instead).
	AgentBinary string
	Progress    io.Writer    // progress lines; nil = silent
	Logger      *slog.Logger // in-process agents' logs; nil = discarded
	// Cluster, when set, runs on these servers instead of a new sandbox:
	// database DB must exist, empty, on the first Nodes of them.
	Cluster *sandbox.Cluster
	DB      string
	// QuietTimeout bounds the wait for every link to catch up after the
	// run (default 5 minutes): a liveness bound, not a target.
	QuietTimeout time.Duration
}

// Fault is a window of time during which a fault was active.
type Fault struct {
	What  string  `json:"what"`
	Start float64 `json:"start"` // seconds since the start of the run
	End   float64 `json:"end"`
}

// Result is a finished run: its report, and what the invariants were
// computed from, so that they can be computed again.
type Result struct {
	Report *Report
	Config *config.Config // the nodes with direct DSNs
	Writes []Write
}

// scenario is a named fault schedule: steps run at fractions of the run.
type scenario struct {
	name, description string
	steps             []step
}

type step struct {
	at float64 // fraction of Duration
	do func(ctx context.Context, h *harness) error
}

// Scenarios are the names Run accepts, in the order `all` runs them.
var Scenarios = []string{"baseline", "latency", "partition", "crash", "burst"}

func scenarioByName(name string, nodes []string) (scenario, error) {
	last := nodes[len(nodes)-1]
	first := nodes[0]
	switch name {
	case "baseline":
		return scenario{name: name, description: "No faults: every node writes at a steady rate; the reference for the other scenarios."}, nil
	case "latency":
		return scenario{name: name,
			description: "Every link goes through a proxy that delays each direction by 100 ms ± 20 ms (a round trip of about 200 ms), for the whole run.",
			steps: []step{{0, func(ctx context.Context, h *harness) error {
				h.open("latency 100 ms ± 20 ms on every link")
				for _, name := range h.net.Names() {
					if err := h.net.SetLatency(name, 100*time.Millisecond, 20*time.Millisecond); err != nil {
						return err
					}
				}
				return nil
			}}}}, nil
	case "partition":
		return scenario{name: name,
			description: fmt.Sprintf("Node %s is cut off from every other node for the middle third of the run (split brain) while all nodes keep writing, then the network heals.", last),
			steps: []step{
				{1.0 / 3, func(ctx context.Context, h *harness) error {
					h.open(last + " isolated (network partition)")
					_, err := h.net.Isolate(last)
					return err
				}},
				{2.0 / 3, func(ctx context.Context, h *harness) error {
					h.close(last + " isolated (network partition)")
					return h.net.HealAll()
				}},
			}}, nil
	case "crash":
		return scenario{name: name,
			description: fmt.Sprintf("A third into the run, the agent of %s is killed (SIGKILL) and the server of %s crashes (pg_ctl stop -m immediate); both restart after a sixth of the run while the other nodes keep writing.", first, last),
			steps: []step{
				{1.0 / 3, func(ctx context.Context, h *harness) error {
					h.open("agent of " + first + " killed")
					if err := h.agents[first].kill(); err != nil {
						return err
					}
					h.open("server " + last + " crashed")
					return h.cl.Stop(ctx, last, "immediate")
				}},
				{0.5, func(ctx context.Context, h *harness) error {
					if err := h.cl.Start(ctx, last); err != nil {
						return err
					}
					h.close("server " + last + " crashed")
					if err := h.agents[first].start(ctx); err != nil {
						return err
					}
					h.close("agent of " + first + " killed")
					return nil
				}},
			}}, nil
	case "burst":
		return scenario{name: name,
			description: "For the middle third of the run every node writes at 10 times the base rate: how far the links fall behind, how much WAL the slots retain, how fast they recover.",
			steps: []step{
				{1.0 / 3, func(ctx context.Context, h *harness) error {
					h.open("burst: 10× write rate")
					h.wl.setFactor(10)
					return nil
				}},
				{2.0 / 3, func(ctx context.Context, h *harness) error {
					h.close("burst: 10× write rate")
					h.wl.setFactor(1)
					return nil
				}},
			}}, nil
	}
	return scenario{}, fmt.Errorf("unknown scenario %q (want one of %s, or all)", name, strings.Join(Scenarios, ", "))
}

// harness is one run in progress.
type harness struct {
	o          Options
	sc         scenario
	cl         *sandbox.Cluster
	ownCluster bool
	removeTmp  func()         // removes the new sandbox's directory
	cfg        *config.Config // direct DSNs, as pgmesh's role
	db         string         // the database on every node
	net        *netfault.Net
	agents     map[string]*nodeAgent
	wl         *workload
	dir        string // agents' config files and logs
	start      time.Time
	progress   func(format string, args ...any)

	smp    *sampler
	mu     sync.Mutex
	faults []Fault
	// healedAt is when the last fault healed while the workload ran.
	healedAt time.Time
}

func (h *harness) since() float64 { return time.Since(h.start).Seconds() }

func (h *harness) open(what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = append(h.faults, Fault{What: what, Start: h.since(), End: -1})
	h.progress("fault: %s", what)
}

func (h *harness) close(what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.faults {
		if h.faults[i].What == what && h.faults[i].End < 0 {
			h.faults[i].End = h.since()
			h.healedAt = time.Now()
			h.smp.setMark(h.healedAt)
			h.progress("healed: %s", what)
		}
	}
}

// closeAll ends every fault window still open; it reports whether there
// was one.
func (h *harness) closeAll() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	open := false
	for i := range h.faults {
		if h.faults[i].End < 0 {
			h.faults[i].End, open = h.since(), true
		}
	}
	return open
}

// Run runs one scenario end to end: servers, schema, init, one agent per
// node behind per-link proxies, the workload with the scenario's faults,
// heal, quiescence, invariants, and the report in o.Out. The error is for
// a run that could not be carried out; failed invariants are in the report.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes < 2 {
		return nil, errors.New("eval: --nodes must be at least 2")
	}
	if o.Duration <= 0 {
		o.Duration = time.Minute
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.QuietTimeout <= 0 {
		o.QuietTimeout = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Out == "" {
		return nil, errors.New("eval: no report directory (--out)")
	}
	names := make([]string, o.Nodes)
	for i := range names {
		names[i] = "n" + strconv.Itoa(i+1)
	}
	sc, err := scenarioByName(o.Scenario, names)
	if err != nil {
		return nil, err
	}
	if sc.name == "crash" && o.Cluster != nil {
		return nil, errors.New("eval: the crash scenario stops servers: run it on a sandbox of its own (no Cluster)")
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, fmt.Errorf("eval: report directory: %w", err)
	}
	out := o.Progress
	if out == nil {
		out = io.Discard
	}
	h := &harness{o: o, sc: sc, net: netfault.New(), agents: map[string]*nodeAgent{},
		progress: func(f string, a ...any) {
			fmt.Fprintf(out, "[%s] "+f+"\n", append([]any{sc.name}, a...)...)
		}}
	defer h.cleanup(ctx)
	// Agents' config files and logs stay beside the report, for diagnosis.
	h.dir = filepath.Join(o.Out, "agents")
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, fmt.Errorf("eval: %w", err)
	}
	if err := h.servers(ctx); err != nil {
		return nil, err
	}
	// The fault schedule names the cluster's own nodes.
	if h.sc, err = scenarioByName(o.Scenario, h.cfg.NodeNames()); err != nil {
		return nil, err
	}
	if err := h.prepare(ctx); err != nil {
		return nil, err
	}
	return h.run(ctx)
}

// cleanup stops the agents, then the proxies, then the sandbox if the run
// started it: nothing outlives a run, whatever way it ended.
func (h *harness) cleanup(ctx context.Context) {
	for _, a := range h.agents {
		_ = a.stop()
	}
	h.net.Close()
	if h.ownCluster {
		if err := h.cl.Down(context.WithoutCancel(ctx)); err != nil {
			h.progress("removing the sandbox: %v", err)
		}
	}
	if h.removeTmp != nil {
		h.removeTmp()
	}
}

// servers starts a sandbox or adopts the given servers, and builds the
// cluster config with direct DSNs.
func (h *harness) servers(ctx context.Context) error {
	db := h.o.DB
	if h.o.Cluster != nil {
		if len(h.o.Cluster.Nodes) < h.o.Nodes {
			return fmt.Errorf("eval: %d nodes wanted, the cluster has %d", h.o.Nodes, len(h.o.Cluster.Nodes))
		}
		h.cl = h.o.Cluster
	} else {
		d, remove, err := sandbox.TempDir("pgmesh-eval-cluster-")
		if err != nil {
			return err
		}
		h.removeTmp = remove
		db = "eval"
		h.progress("starting %d PostgreSQL servers", h.o.Nodes)
		cl, err := sandbox.Up(ctx, sandbox.Options{Dir: d, Nodes: h.o.Nodes, BinDir: h.o.BinDir, DB: db})
		if err != nil {
			return err
		}
		h.cl, h.ownCluster = cl, true
	}
	h.db = db
	var y strings.Builder
	y.WriteString("cluster: eval\nnodes:\n")
	for _, n := range h.cl.Nodes[:h.o.Nodes] {
		fmt.Fprintf(&y, "  - name: %s\n    dsn: %q\n    admin_dsn: %q\n", n.Name,
			h.cl.DSNAs(n.Name, db, sandbox.Pgmesh), h.cl.DSNAs(n.Name, db, sandbox.Admin))
	}
	y.WriteString(`replicate:
  schemas: [eval]
conflicts:
  default: last_update_wins
  tables:
    eval.counters: { delta_columns: [total] }
sequences: { strategy: snowflake }
ddl: { capture: manual }
`)
	cfg, err := config.Parse([]byte(y.String()), "")
	if err != nil {
		return fmt.Errorf("eval: cluster config: %w", err)
	}
	h.cfg = cfg
	return nil
}

// prepare creates the schema, converts the sequences, runs init, puts a
// proxy on every link and starts one agent per node.
func (h *harness) prepare(ctx context.Context) error {
	h.progress("creating schema eval on every node, sequences convert, init")
	for _, n := range h.cfg.Nodes {
		if err := execAll(ctx, h.cl.DSNAs(n.Name, h.db, sandbox.Owner), workloadSchema); err != nil {
			return fmt.Errorf("node %s: create schema: %w", n.Name, err)
		}
	}
	if _, err := sequence.Convert(ctx, h.cfg, sequence.Snowflake, 0, setup.Migrate); err != nil {
		return fmt.Errorf("sequences convert: %w", err)
	}
	if _, err := setup.Init(ctx, h.cfg, h.o.Logger); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	for _, n := range h.cfg.Nodes {
		if err := execAll(ctx, n.DSN, oracleSchema); err != nil {
			return fmt.Errorf("node %s: create the checker's function: %w", n.Name, err)
		}
	}
	// Proxy of link up → down: what down's agent dials to reach up.
	proxied := map[string]string{}
	for _, up := range h.cfg.Nodes {
		addr, err := hostPort(up.DSN)
		if err != nil {
			return fmt.Errorf("node %s: %w", up.Name, err)
		}
		for _, down := range h.cfg.Nodes {
			if up.Name == down.Name {
				continue
			}
			name := netfault.LinkName(up.Name, down.Name)
			listen, err := h.net.Proxy(name, addr)
			if err != nil {
				return err
			}
			proxied[name] = listen
		}
	}
	passfile, err := h.proxyPassfile(proxied)
	if err != nil {
		return err
	}
	h.progress("starting one agent per node, every link through its proxy")
	for _, down := range h.cfg.Nodes {
		view := *h.cfg
		view.Nodes = slices.Clone(h.cfg.Nodes)
		for i, up := range view.Nodes {
			if up.Name != down.Name {
				view.Nodes[i].DSN = redirect(up.DSN, proxied[netfault.LinkName(up.Name, down.Name)], passfile)
			}
		}
		a := &nodeAgent{node: down.Name, cfg: &view, bin: h.o.AgentBinary, dir: h.dir, logger: h.o.Logger}
		if err := a.start(ctx); err != nil {
			return err
		}
		h.agents[down.Name] = a
	}
	// Counter rows come from one node through the mesh, so that every
	// node starts from the same rows and the same commit times.
	h.progress("seeding %d counters through the mesh", h.wlConfig().Counters)
	if err := execAll(ctx, h.cl.DSNAs(h.cfg.Nodes[0].Name, h.db, sandbox.App), []string{fmt.Sprintf(
		`INSERT INTO eval.counters SELECT g, 0 FROM generate_series(1, %d) g`, h.wlConfig().Counters)}); err != nil {
		return fmt.Errorf("seed counters: %w", err)
	}
	if _, err := h.waitQuiet(ctx); err != nil {
		return fmt.Errorf("after seeding: %w", err)
	}
	for _, n := range h.cfg.Nodes {
		var c int
		if err := queryRow(ctx, n.DSN, `SELECT count(*) FROM eval.counters`, &c); err != nil {
			return err
		}
		if c != h.wlConfig().Counters {
			return fmt.Errorf("node %s has %d counter rows after seeding through the mesh, want %d", n.Name, c, h.wlConfig().Counters)
		}
	}
	return nil
}

func (h *harness) wlConfig() WorkloadConfig {
	c := h.o.Workload
	c.defaults()
	return c
}

// run writes with the scenario's faults, heals, waits for quiescence and
// checks the invariants.
func (h *harness) run(ctx context.Context) (*Result, error) {
	targets := make([]target, len(h.cfg.Nodes))
	for i, n := range h.cfg.Nodes {
		// The workload runs as an application role: no privilege on
		// schema pgmesh, ordinary privileges on the tables.
		targets[i] = target{name: n.Name, dsn: h.cl.DSNAs(n.Name, h.db, sandbox.App)}
	}
	h.wl = newWorkload(h.o.Workload, targets, h.o.Seed)
	h.start = time.Now()
	smp := &sampler{cfg: h.cfg, start: h.start}
	h.smp = smp
	sctx, stopSampler := context.WithCancel(ctx)
	var bg sync.WaitGroup
	bg.Go(func() { smp.run(sctx) })
	defer func() { stopSampler(); bg.Wait() }()

	stopWrites := make(chan struct{})
	var writers sync.WaitGroup
	writers.Go(func() { h.wl.run(ctx, stopWrites) })
	writers.Go(func() { heartbeats(ctx, h.cfg.Nodes, stopWrites) })
	h.progress("writing on %d nodes for %s (%.0f transactions/s per node, seed %d)", len(h.cfg.Nodes), h.o.Duration, h.wlConfig().Rate, h.o.Seed)

	var stepErr error
	for _, st := range h.sc.steps {
		at := h.start.Add(time.Duration(st.at * float64(h.o.Duration)))
		if !sleepUntil(ctx, at) {
			break
		}
		if err := st.do(ctx, h); err != nil {
			stepErr = fmt.Errorf("scenario %s at %.1fs: %w", h.sc.name, h.since(), err)
			break
		}
	}
	if stepErr == nil {
		sleepUntil(ctx, h.start.Add(h.o.Duration))
	}
	close(stopWrites)
	writers.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	writesEnd := time.Now()

	// Heal whatever is still broken, then let the links catch up.
	healErr := h.healAll(ctx)
	healedAtEnd := h.closeAll()
	if err := errors.Join(stepErr, healErr); err != nil {
		return nil, err
	}
	h.progress("writes stopped, faults healed; waiting for every link to catch up")
	if _, err := h.waitQuiet(ctx); err != nil {
		return nil, err
	}
	quietAt := time.Now()
	// Convergence after a heal while the writes went on: until every node
	// had applied what every other node wrote before the heal (the sampler
	// saw it in the heartbeats), or else until quiescence. Without such a
	// heal: from the end of the writes (and of the faults) to quiescence.
	converged := quietAt.Sub(writesEnd).Seconds()
	if !healedAtEnd && !h.healedAt.IsZero() {
		reached := smp.reached()
		if reached.IsZero() {
			reached = quietAt
		}
		converged = reached.Sub(h.healedAt).Seconds()
	}
	stopSampler()
	bg.Wait()
	for _, a := range h.agents {
		if err := a.stop(); err != nil {
			return nil, err
		}
	}

	if err := h.wl.resolve(ctx); err != nil {
		return nil, err
	}
	writes, errCounts, firstErrs := h.wl.snapshot()
	h.progress("checking invariants over %d writes", len(writes))
	inv, log, err := check(ctx, h.cfg, writes)
	if err != nil {
		return nil, err
	}
	lag, wal, walPeak := smp.results()
	rep := &Report{
		Scenario:           h.sc.name,
		Description:        h.sc.description,
		Nodes:              h.cfg.NodeNames(),
		PostgresMajor:      h.cl.Major,
		Seed:               h.o.Seed,
		DurationSeconds:    h.o.Duration.Seconds(),
		StartedAt:          h.start.UTC(),
		Workload:           h.wlConfig(),
		Invariants:         *inv,
		LagMS:              percentiles(lag),
		ConvergenceSeconds: converged,
		SlotWALPeakBytes:   walPeak,
		Faults:             h.faults,
		LagSamples:         lag,
		WALSamples:         wal,
	}
	rep.fill(writes, log, h.start, errCounts, firstErrs)
	if err := rep.Write(h.o.Out); err != nil {
		return nil, err
	}
	return &Result{Report: rep, Config: h.cfg, Writes: writes}, nil
}

// healAll ends every fault: proxies healed without latency, servers and
// agents running.
func (h *harness) healAll(ctx context.Context) error {
	errs := []error{h.net.HealAll()}
	for _, name := range h.net.Names() {
		errs = append(errs, h.net.SetLatency(name, 0, 0))
	}
	for _, n := range h.cfg.Nodes {
		errs = append(errs, h.cl.Start(ctx, n.Name))
	}
	for _, a := range h.agents {
		if !a.running() {
			errs = append(errs, a.start(ctx))
		}
	}
	return errors.Join(errs...)
}

// waitQuiet waits until every link streams and has confirmed its
// upstream's WAL (give or take the upstream's own bookkeeping) and returns
// the seconds it took.
func (h *harness) waitQuiet(ctx context.Context) (float64, error) {
	began := time.Now()
	deadline := began.Add(h.o.QuietTimeout)
	for {
		sts, err := agent.Status(ctx, h.cfg)
		if err != nil {
			return 0, err
		}
		var behind []string
		for _, s := range sts {
			if s.Problem != "" || s.State != agent.StateStreaming || s.LagBytes > agent.IdleLagBytes {
				behind = append(behind, fmt.Sprintf("%s: %s, %d bytes behind %s%s", s.Link, s.State, s.LagBytes, s.Problem, s.LastError))
			}
		}
		if len(behind) == 0 {
			return time.Since(began).Seconds(), nil
		}
		if time.Now().After(deadline) {
			var tails []string
			for _, a := range h.agents {
				if t := a.logTail(); t != "" {
					tails = append(tails, "agent of "+a.node+":\n"+t)
				}
			}
			return 0, fmt.Errorf("links not caught up after %s: %s\n%s", h.o.QuietTimeout, strings.Join(behind, "; "), strings.Join(tails, "\n"))
		}
		if !sleepUntil(ctx, time.Now().Add(200*time.Millisecond)) {
			return 0, ctx.Err()
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// hostPort returns the "host:port" a DSN connects to.
func hostPort(dsn string) (string, error) {
	c, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", fmt.Errorf("parse DSN: %w", err)
	}
	return net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port))), nil
}

// redirect makes a key/value DSN connect to addr instead, with the
// passwords of passfile: in libpq key/value strings a later keyword
// overrides an earlier one.
func redirect(dsn, addr, passfile string) string {
	host, port, _ := net.SplitHostPort(addr)
	return dsn + " host=" + host + " port=" + port + " passfile='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(passfile) + "'"
}

// proxyPassfile writes, in the harness's private directory, a password
// file that gives each proxy (link → the address that stands for its
// upstream) the passwords of its upstream: they are looked up by address.
func (h *harness) proxyPassfile(proxied map[string]string) (string, error) {
	aliases := map[string]string{}
	for _, up := range h.cfg.Nodes {
		for _, down := range h.cfg.Nodes {
			if addr, ok := proxied[netfault.LinkName(up.Name, down.Name)]; ok {
				aliases[addr] = up.Name
			}
		}
	}
	path := filepath.Join(h.dir, "passfile")
	if err := h.cl.AliasPassfile(path, aliases); err != nil {
		return "", fmt.Errorf("the proxies' password file: %w", err)
	}
	return path, nil
}

func queryRow(ctx context.Context, dsn, sql string, dest ...any) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if err := c.QueryRow(ctx, sql).Scan(dest...); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}
