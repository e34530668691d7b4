package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Options configures an Agent.
type Options struct {
	// Node restricts the agent to the inbound links of one node; "" runs
	// every link of the cluster (sandbox, demo, tests).
	Node string
	// Listen overrides agent.listen of the config; "-" disables HTTP.
	Listen string
	// Logger receives every log line; the lines of a link carry its name
	// (link=n1->n2), the agent's own lines start with "agent".
	Logger *slog.Logger
	// LogLevel, when set, is the level of Logger's handler: the agent sets
	// it from agent.log_level of the config at start and on Reload. nil
	// leaves the level alone (a --log-level flag pins it).
	LogLevel *slog.LevelVar
	// SampleInterval is how often the agent reads the nodes for the
	// metrics and the status page (lag, slots, clocks, recent conflicts);
	// CountInterval how often it counts tombstones, conflict_log rows and
	// pending DDL. Defaults DefaultSampleInterval, DefaultCountInterval.
	SampleInterval, CountInterval time.Duration
}

// Default sampling intervals (see Options).
const (
	DefaultSampleInterval = 2 * time.Second
	DefaultCountInterval  = 30 * time.Second
)

// Agent runs links.
type Agent struct {
	opts Options
	log  *slog.Logger

	httpAddr chan string // the bound HTTP address, once

	applyTime *prometheus.HistogramVec // per link: seconds per applied transaction
	mon       *monitor

	mu          sync.Mutex
	cfg         *config.Config // the nodes whose links run, under mu
	links       []*link        // under mu
	conflictCfg *config.Config // last good read of the config file, under mu
	// The outcome of the last Reload, under mu.
	reloadOK bool
	reloadAt time.Time
}

// config returns the config whose nodes the agent runs links of.
func (a *Agent) config() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// currentLinks returns the links the agent runs now.
func (a *Agent) currentLinks() []*link {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.links)
}

// reloadConflicts reads the config file again for its conflict settings
// (policies, delta_columns…); the nodes and links stay those the agent
// started with. A file that no longer parses is reported and the last good
// settings are kept: a typo must not stop the links.
func (a *Agent) reloadConflicts() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg.Path == "" {
		return a.conflictCfg
	}
	cfg, err := config.Load(a.cfg.Path)
	if err != nil {
		a.log.Warn("agent: re-reading the config for conflict settings failed, keeping the previous ones", "path", a.cfg.Path, "err", err)
		return a.conflictCfg
	}
	a.conflictCfg = cfg
	return cfg
}

// New checks the options against the config and prepares the links.
func New(cfg *config.Config, opts Options) (*Agent, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Node != "" {
		if _, ok := cfg.NodeByName(opts.Node); !ok {
			return nil, fmt.Errorf("node %q is not in %s (nodes: %v)", opts.Node, cfg.Path, cfg.NodeNames())
		}
	}
	if opts.Listen == "" {
		opts.Listen = cfg.Agent.Listen
	}
	if opts.SampleInterval <= 0 {
		opts.SampleInterval = DefaultSampleInterval
	}
	if opts.CountInterval <= 0 {
		opts.CountInterval = DefaultCountInterval
	}
	a := &Agent{cfg: cfg, opts: opts, log: opts.Logger, httpAddr: make(chan string, 1), conflictCfg: cfg,
		applyTime: newApplyTimeHistogram(), reloadOK: true, reloadAt: time.Now()}
	a.setLogLevel(cfg)
	a.links = a.wantLinks(cfg)
	// With a config file, nodes may be added to it later (pgmesh node
	// add): the agent waits for them.
	if len(a.links) == 0 && cfg.Path == "" {
		return nil, errors.New("no links to run: the cluster needs at least two nodes")
	}
	if len(a.links) == 0 {
		a.log.Info("agent: no links yet: waiting for nodes to be added to the config", "path", cfg.Path)
	}
	a.mon = newMonitor(a)
	return a, nil
}

// wantLinks returns the links of cfg this agent runs (new, not started).
func (a *Agent) wantLinks(cfg *config.Config) []*link {
	var out []*link
	for _, l := range cfg.Links() {
		if a.opts.Node != "" && l.Down != a.opts.Node {
			continue
		}
		up, _ := cfg.NodeByName(l.Up)
		down, _ := cfg.NodeByName(l.Down)
		out = append(out, &link{
			Link: l, up: up, down: down, log: a.log.With("link", l.Name()), conflicts: a.reloadConflicts,
			workers:   cfg.Agent.Workers(),
			state:     StateConnecting,
			applyTime: a.applyTime.WithLabelValues(l.Name(), l.Up, l.Down),
		})
	}
	return out
}

// setLogLevel applies agent.log_level of cfg, when the agent owns the
// level and the config sets one.
func (a *Agent) setLogLevel(cfg *config.Config) {
	if a.opts.LogLevel == nil || cfg.Agent.LogLevel == "" {
		return
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(cfg.Agent.LogLevel)); err == nil {
		a.opts.LogLevel.Set(lv)
	}
}

// Reload reads the config file again (SIGHUP). What changes without a
// restart: the conflict settings (policies, delta_columns, delete_wins),
// applied by restarting the sessions of the links whose settings changed
// (at a transaction boundary: see link.session); the retention windows,
// used from the next prune round; agent.log_level. The nodes, their DSNs,
// the cluster name and agent.listen need a restart of the agent: a change
// to them is reported and ignored. A file that does not load leaves
// everything as it was and is returned as the error.
func (a *Agent) Reload() error {
	running := a.config()
	if running.Path == "" {
		return errors.New("agent: reload: the config was not read from a file")
	}
	cfg, err := config.Load(running.Path)
	a.mu.Lock()
	a.reloadOK = err == nil
	if err == nil {
		a.conflictCfg, a.reloadAt = cfg, time.Now()
	}
	a.mu.Unlock()
	if err != nil {
		a.log.Error("agent: config reload failed, keeping the running config", "path", running.Path, "err", err)
		return fmt.Errorf("agent: reload %s: %w", running.Path, err)
	}
	var restart []string
	if cfg.Cluster != running.Cluster || cfg.Agent.Listen != running.Agent.Listen {
		restart = append(restart, "cluster or agent.listen")
	}
	if !reflect.DeepEqual(cfg.Replicate, running.Replicate) || cfg.DDL != running.DDL || cfg.Sequences != running.Sequences {
		restart = append(restart, "replicate, ddl or sequences (run pgmesh init)")
	}
	a.setLogLevel(cfg)
	var restarted []string
	for _, l := range a.currentLinks() {
		if l.restart(cfg) {
			restarted = append(restarted, l.Name())
		}
	}
	a.log.Info("agent: config reloaded", "path", running.Path, "log_level", cfg.Agent.LogLevel,
		"links_restarted_for_conflict_settings", restarted, "changes_needing_a_restart", restart)
	return nil
}

// HTTPAddr returns the address the HTTP endpoint listens on, once it does.
func (a *Agent) HTTPAddr(ctx context.Context) (string, error) {
	select {
	case addr := <-a.httpAddr:
		a.httpAddr <- addr
		return addr, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Run runs every link until ctx is cancelled (SIGINT/SIGTERM in the CLI),
// then stops them cleanly. It returns an error only when it cannot start.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	if a.opts.Listen != "-" {
		ln, err := net.Listen("tcp", a.opts.Listen)
		if err != nil {
			return fmt.Errorf("agent HTTP: listen on %s: %w (set agent.listen or --listen)", a.opts.Listen, err)
		}
		a.httpAddr <- ln.Addr().String()
		srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("agent: HTTP stopped", "err", err)
			}
		}()
		go func() {
			<-ctx.Done()
			shut, c := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer c()
			_ = srv.Shutdown(shut)
		}()
		a.log.Info("agent: HTTP listening", "addr", ln.Addr().String())
	}

	for _, l := range a.currentLinks() {
		a.start(ctx, &wg, l)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.recordStates(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.followMembers(ctx, &wg)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.prune(ctx)
	}()
	// The monitor feeds /metrics and the status page only.
	if a.opts.Listen != "-" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.mon.run(ctx)
		}()
	}
	a.log.Info("agent: running", "links", len(a.currentLinks()))
	wg.Wait()
	a.log.Info("agent: stopped")
	return nil
}

// start runs l until ctx ends or l is stopped.
func (a *Agent) start(ctx context.Context, wg *sync.WaitGroup, l *link) {
	ctx, cancel := context.WithCancel(ctx)
	l.stop = cancel
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.run(ctx)
	}()
}

// MembersInterval is how often the agent reads the config file again for
// nodes added (pgmesh node add) or removed (pgmesh node remove).
const MembersInterval = 2 * time.Second

// followMembers starts the links of nodes added to the config file and
// stops those of nodes removed from it. A link of a node that is still
// copying its data waits (see link.gate), so the file may list a node
// before it is ready.
func (a *Agent) followMembers(ctx context.Context, wg *sync.WaitGroup) {
	path := a.config().Path
	if path == "" {
		return
	}
	tick := time.NewTicker(MembersInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cfg, err := config.Load(path)
		if err != nil {
			continue // reloadConflicts reports a broken file
		}
		a.mu.Lock()
		if slices.Equal(cfg.Nodes, a.cfg.Nodes) {
			a.mu.Unlock()
			continue
		}
		want := a.wantLinks(cfg)
		var keep, stop []*link
		for _, l := range a.links {
			if slices.ContainsFunc(want, func(w *link) bool { return w.Link == l.Link && w.up.DSN == l.up.DSN && w.down.DSN == l.down.DSN }) {
				keep = append(keep, l)
			} else {
				stop = append(stop, l)
			}
		}
		var started []*link
		for _, w := range want {
			if !slices.ContainsFunc(keep, func(l *link) bool { return l.Link == w.Link }) {
				started = append(started, w)
			}
		}
		a.cfg, a.links = cfg, append(keep, started...)
		a.mu.Unlock()
		for _, l := range stop {
			a.log.Info("node left the config: stopping link", "link", l.Name())
			l.stop()
		}
		for _, l := range started {
			a.log.Info("node joined the config: starting link", "link", l.Name())
			a.start(ctx, wg, l)
		}
	}
}

// recordStates writes each link's state into pgmesh.link_state on its
// downstream whenever it changes, for `pgmesh status`. Nothing is written
// while nothing changes, so an idle cluster produces no WAL.
func (a *Agent) recordStates(ctx context.Context) {
	w := &stateWriter{conns: map[string]*pgx.Conn{}}
	defer w.close()
	written := map[string]recorded{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	promoted := time.Now()
	for {
		if time.Since(promoted) >= PromoteInterval {
			promoted = time.Now()
			a.promote(ctx)
		}
		for _, l := range a.currentLinks() {
			snap := l.recorded()
			if written[l.Name()] == snap {
				continue
			}
			if err := w.write(ctx, l, snap); err != nil {
				if ctx.Err() == nil {
					l.log.Debug("record link state", "err", err)
				}
				continue
			}
			written[l.Name()] = snap
		}
		select {
		case <-ctx.Done():
			// Record "stopped" on the way out, with a short deadline.
			stopCtx, c := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			for _, l := range a.currentLinks() {
				// Still blocked, if it was: `pgmesh skip` works with the
				// agent stopped.
				snap := l.recorded()
				snap.state, snap.lastErr = StateStopped, ""
				_ = w.write(stopCtx, l, snap)
			}
			c()
			return
		case <-tick.C:
		}
	}
}

// recorded is what pgmesh.link_state holds of a link: its snapshot and the
// transaction it is blocked on (zero: none), which `pgmesh skip` reads.
type recorded struct {
	linkSnapshot
	blocked BlockedTxn
}

// recorded is what pgmesh.link_state should hold of l now.
func (l *link) recorded() recorded {
	r := recorded{linkSnapshot: l.snapshot()}
	if b := l.blockedTxn(); b != nil {
		r.blocked = *b
	}
	return r
}

// stateWriter keeps one connection per downstream node for link states.
type stateWriter struct{ conns map[string]*pgx.Conn }

func (w *stateWriter) write(ctx context.Context, l *link, s recorded) error {
	conn := w.conns[l.Down]
	if conn == nil || conn.IsClosed() {
		c, err := pg.Connect(ctx, l.Down, l.down.DSN, "pgmesh agent")
		if err != nil {
			return err
		}
		conn, w.conns[l.Down] = c, c
	}
	var lsn, ts any
	if s.lastEndLSN != 0 {
		lsn = s.lastEndLSN.String()
		ts = s.lastCommitTime
	}
	var blocked any
	if s.blocked.CommitLSN != "" {
		b, err := json.Marshal(s.blocked)
		if err != nil {
			return err
		}
		blocked = string(b)
	}
	_, err := conn.Exec(ctx, `
INSERT INTO pgmesh.link_state AS s (upstream, state, last_error, last_commit_lsn, last_commit_time, applied_txns, blocked, updated_at)
VALUES ($1, $2, NULLIF($3, ''), $4::pg_lsn, $5, $6, $7::jsonb, now())
ON CONFLICT (upstream) DO UPDATE SET state = EXCLUDED.state, last_error = EXCLUDED.last_error,
  last_commit_lsn = COALESCE(EXCLUDED.last_commit_lsn, s.last_commit_lsn),
  last_commit_time = COALESCE(EXCLUDED.last_commit_time, s.last_commit_time),
  applied_txns = EXCLUDED.applied_txns, blocked = EXCLUDED.blocked, updated_at = now()`,
		l.Up, s.state, s.lastErr, lsn, ts, int64(s.txns), blocked)
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("link %s: write pgmesh.link_state on %s: %w", l.Name(), l.Down, err)
	}
	return nil
}

func (w *stateWriter) close() {
	for _, c := range w.conns {
		c.Close(context.Background())
	}
}
