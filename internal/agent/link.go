// Package agent runs the inbound links of one node (or of every node): per
// link it wires a stream from the upstream slot to an apply engine on the
// downstream, restarts it with backoff when either side goes away, and
// records the link's state for `pgmesh status`.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgmesh/pgmesh/internal/apply"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/deadletter"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/stream"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Link states, as recorded in pgmesh.link_state for `pgmesh status`: what
// the link's supervisor is doing.
const (
	StateConnecting = "connecting"
	StateStreaming  = "streaming"
	StateRetrying   = "retrying"
	StateStopped    = "stopped"
	// StateWaiting: one of the link's nodes is copying its data (pgmesh
	// node add) or leaving the mesh; the link starts once it is ready.
	StateWaiting = "waiting"
)

// waitPoll is how often a waiting link looks at its nodes' join state.
const waitPoll = time.Second

// holdError says why a link may not run yet.
type holdError struct{ node, state string }

func (e *holdError) Error() string {
	return fmt.Sprintf("node %s is %s: the link waits until it is ready", e.node, e.state)
}

// link supervises one upstream → downstream edge.
type link struct {
	topology.Link
	up, down config.Node
	// conflicts returns the conflict settings for a new session: the
	// config file is read again each time, so that a policy changed by the
	// operator (e.g. away from `error`) takes effect on the next retry.
	conflicts func() *config.Config
	workers   int          // apply sessions (agent.apply_workers)
	log       *slog.Logger // every line carries the link
	backoff   backoff
	applyTime prometheus.Observer // seconds per applied remote transaction
	stop      context.CancelFunc  // ends run, set by Agent.start
	// ungated: run whatever the nodes' join states (CatchUp, which
	// delivers the last changes of a node being removed).
	ungated bool

	mu      sync.Mutex
	state   string
	lastErr string
	applier *apply.Applier // current session's applier, nil between sessions
	before  linkSnapshot   // totals of the sessions that ended
	// conflictsBefore counts the conflicts of the sessions that ended.
	conflictsBefore map[apply.ConflictKey]uint64
	blocked         *BlockedTxn // the remote transaction the link fails on, if any
	// sessionConflicts are the conflict settings the running session
	// started with; endSession cancels it (config reload), and reload
	// tells run that the session ended for that reason.
	sessionConflicts config.Conflicts
	endSession       context.CancelFunc
	reload           bool
	// recheck is the remote transaction that failed at its end on a
	// deferrable constraint: the next session applies it with them
	// decided row by row (apply.Options.RecheckDeferred).
	recheck stream.LSN
}

// linkSnapshot is what the agent knows of a link at one moment. It is
// comparable: recordStates writes pgmesh.link_state only when it changes.
type linkSnapshot struct {
	state, lastErr string
	txns, changes  uint64 // applied since the agent started
	lastEndLSN     stream.LSN
	lastCommitTime time.Time
	// retries counts the sessions that failed, restarts the streaming
	// sessions that ended and were started again, applyRetries the remote
	// transactions rolled back and run again in place (deadlock,
	// serialization failure, lock timeout).
	retries, restarts, applyRetries uint64
	lastErrAt                       time.Time
}

// BlockedTxn is a remote transaction that failed to apply: the link
// retries it, and nothing behind it applies, until it goes through (the
// cause fixed on the downstream) or is dealt with by the operator. It is
// identified by its commit LSN upstream, which an operator action on it
// must match.
type BlockedTxn struct {
	Link       string    `json:"link"`
	Upstream   string    `json:"upstream"`
	Downstream string    `json:"downstream"`
	CommitLSN  string    `json:"commit_lsn"`
	CommitTime time.Time `json:"commit_time"`
	XID        uint32    `json:"xid"`
	What       string    `json:"what"`            // the failed request
	Table      string    `json:"table,omitempty"` // "schema.table"
	Key        string    `json:"key,omitempty"`
	Error      string    `json:"error"`
	Since      time.Time `json:"since"` // its first failure
	Attempts   int       `json:"attempts"`
	lsn        stream.LSN
}

// conflictCounts returns the conflicts met since the agent started.
func (l *link) conflictCounts() map[apply.ConflictKey]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := maps.Clone(l.conflictsBefore)
	if out == nil {
		out = map[apply.ConflictKey]uint64{}
	}
	if l.applier != nil {
		for k, n := range l.applier.Stats().ConflictsBy {
			out[k] += n
		}
	}
	return out
}

func (l *link) setState(state string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = state
	if err != nil {
		l.lastErr = err.Error()
		l.before.lastErrAt = time.Now()
	} else if state == StateStreaming {
		l.lastErr = ""
	}
}

func (l *link) snapshot() linkSnapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	snap := l.before
	snap.state, snap.lastErr = l.state, l.lastErr
	if l.applier != nil {
		addStats(&snap, l.applier.Stats())
	}
	return snap
}

// blockedTxn returns the transaction the link is blocked on, or nil. A
// blocked transaction is forgotten once the link applied past it.
func (l *link) blockedTxn() *BlockedTxn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.blocked == nil {
		return nil
	}
	applied := l.before.lastEndLSN
	if l.applier != nil {
		applied = max(applied, l.applier.Stats().LastEndLSN)
	}
	if applied > l.blocked.lsn {
		l.blocked = nil
		return nil
	}
	b := *l.blocked
	return &b
}

// noteFailure counts a failed session and, when a remote transaction
// failed, remembers it as blocking the link (the same one again: one more
// attempt).
func (l *link) noteFailure(err error, streamed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.before.retries++
	if streamed {
		l.before.restarts++
	}
	var te *apply.TxnError
	if !errors.As(err, &te) || !refused(te.Err) {
		return
	}
	if l.blocked != nil && l.blocked.lsn == te.CommitLSN {
		l.blocked.Attempts++
		l.blocked.Error = err.Error()
		return
	}
	l.blocked = &BlockedTxn{
		Link: l.Name(), Upstream: l.Up, Downstream: l.Down, CommitLSN: te.CommitLSN.String(), CommitTime: te.CommitTime, XID: te.XID,
		What: te.What, Table: te.Table, Key: te.Key, Error: err.Error(), Since: time.Now(), Attempts: 1, lsn: te.CommitLSN,
	}
}

// refused tells whether the downstream refused a statement for a reason
// that retrying alone does not fix (a constraint, a trigger, a missing
// table, a failed DDL), as opposed to the connection or the server going
// away, a deadlock or a cancel: only such a failure blocks a link on its
// transaction.
func refused(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Severity != "ERROR" || len(pe.Code) != 5 {
		return false
	}
	switch pe.Code[:2] {
	case "08", // connection exception
		"40", // transaction rollback: deadlock, serialization failure
		"53", // insufficient resources
		"57", // operator intervention: cancel, shutdown
		"58": // system error
		return false
	}
	return pe.Code != "55P03" // lock not available
}

// addStats adds one session's applier statistics to s.
func addStats(s *linkSnapshot, st apply.Stats) {
	s.txns += st.Txns
	s.changes += st.Changes
	s.applyRetries += st.Retries
	if st.LastEndLSN > s.lastEndLSN {
		s.lastEndLSN, s.lastCommitTime = st.LastEndLSN, st.LastCommitTime
	}
}

// restart ends the running session so that the link starts a new one at
// once, with the conflict settings of cfg, if they differ from the
// session's. It reports whether it did.
func (l *link) restart(cfg *config.Config) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.endSession == nil || reflect.DeepEqual(l.sessionConflicts, cfg.Conflicts) {
		return false
	}
	l.reload = true
	l.endSession()
	return true
}

// run keeps the link streaming until ctx is done: a failed session is
// logged and retried with exponential backoff, so one bad link never stops
// the others. A session ended for a config reload starts again at once.
func (l *link) run(ctx context.Context) {
	for {
		l.setState(StateConnecting, nil)
		started := time.Now()
		streamed, err := l.session(ctx)
		if ctx.Err() != nil {
			l.setState(StateStopped, nil)
			s := l.snapshot()
			l.log.Info("link stopped", "applied_up_to", s.lastEndLSN.String(), "applied_transactions", s.txns)
			return
		}
		l.mu.Lock()
		reload := l.reload
		l.reload = false
		l.mu.Unlock()
		if reload {
			l.mu.Lock()
			l.before.restarts++
			l.mu.Unlock()
			l.log.Info("link restarting with the reloaded conflict settings")
			continue
		}
		// A session that streamed for a while was healthy: start over
		// with a short delay instead of the long one reached earlier.
		if time.Since(started) > time.Minute {
			l.backoff.reset()
		}
		var hold *holdError
		if errors.As(err, &hold) {
			if l.snapshot().state != StateWaiting {
				l.log.Info("link waiting", "link", l.Name(), "node", hold.node, "state", hold.state)
			}
			l.setState(StateWaiting, err)
			select {
			case <-ctx.Done():
				l.setState(StateStopped, nil)
				return
			case <-time.After(waitPoll):
			}
			continue
		}
		l.noteFailure(err, streamed)
		l.recordDDLFailure(ctx, err)
		if lsn, ok := apply.DeferredCheckFailed(err); ok {
			l.log.Warn("a remote transaction broke a deferrable constraint at its end: applying it again with the constraint decided row by row",
				"commit_lsn", lsn.String())
			l.mu.Lock()
			l.recheck = lsn
			l.mu.Unlock()
		}
		wait := l.backoff.next()
		var held *apply.HeldError
		if errors.As(err, &held) {
			// Not a failure: a DDL is on its way over another link, and
			// the change waits for it (the reason shows in status).
			wait = heldRetry
			l.backoff.reset()
			l.log.Info("change held until a DDL arrives", "table", held.Table, "column", held.Column, "retry_in", wait.String())
		} else {
			l.log.Warn("link failed, retrying", "in", wait.String(), "err", err)
		}
		l.setState(StateRetrying, err)
		select {
		case <-ctx.Done():
			l.setState(StateStopped, nil)
			return
		case <-time.After(wait):
		}
	}
}

// session is one connection of the link: downstream apply sessions (one
// per worker, each with its origin), resume point from the link's origins,
// upstream replication stream. streamed tells whether it got as far as
// streaming.
//
// When ctx is cancelled (SIGTERM) or the session is ended for a reload,
// the stream stops and the applier is closed: transactions whose COMMIT was
// queued commit, an unfinished one is rolled back, and the origins'
// progress says where the next session resumes, so nothing is applied twice
// or lost. closeTimeout bounds that: past it the connections are dropped
// and the server rolls back what is open.
func (l *link) session(ctx context.Context) (streamed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var conns []*pgx.Conn
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	connect := func(what string, exact bool) (*pgx.Conn, error) {
		dial := pg.Connect
		if exact {
			dial = pg.ConnectExact
		}
		c, err := dial(ctx, l.Down, l.down.DSN, "pgmesh "+what+" "+l.Name())
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", l.Name(), err)
		}
		conns = append(conns, c)
		return c, nil
	}
	sessions := make([]apply.Session, l.workers)
	for k := range sessions {
		c, err := connect(fmt.Sprintf("apply %d", k), true)
		if err != nil {
			return false, err
		}
		if k == 0 && !l.ungated {
			if err := l.gate(ctx, c); err != nil {
				return false, err
			}
		}
		sessions[k] = apply.Session{Conn: c.PgConn(), Origin: origin.Name(l.Up, k)}
	}
	var catalog *pgconn.PgConn
	if l.workers > 1 {
		c, err := connect("catalog", false)
		if err != nil {
			return false, err
		}
		catalog = c.PgConn()
	}
	// A connection of its own answers "what is durable" for the feedback
	// to the upstream while the apply connections are busy with pipelines.
	monConn, err := connect("monitor", false)
	if err != nil {
		return false, err
	}
	// Questions about in-flight DDL are asked on a connection of their own,
	// by one worker at a time: the apply connections are busy with
	// pipelines when they come up.
	ddlConn, err := connect("ddl", false)
	if err != nil {
		return false, err
	}
	var ddlMu sync.Mutex
	// ...and to the upstream, opened when the first such question comes up
	// (a remote column that this node lacks: rare).
	var ddlUp *pgx.Conn
	defer func() {
		if ddlUp != nil {
			ddlUp.Close(context.WithoutCancel(ctx))
		}
	}()

	// A worker's origin is missing when agent.apply_workers was raised, or
	// on a node that joined (node add sets up the first): it starts with
	// no progress, and the link's progress is the greatest of its origins'.
	created, err := origin.Ensure(ctx, monConn, l.Up, l.workers)
	if err != nil {
		return false, fmt.Errorf("link %s: on %s: %w", l.Name(), l.Down, err)
	}
	if len(created) > 0 {
		l.log.Info("created the origins of new apply workers", "origins", created)
	}
	resume, err := origin.Progress(ctx, monConn, l.Up, false)
	if err != nil {
		return false, fmt.Errorf("link %s: on %s: %w", l.Name(), l.Down, err)
	}
	ddlExec := &ddl.Executor{Node: l.Down, Logger: l.log}
	cfg := l.conflicts()
	l.mu.Lock()
	recheck := l.recheck
	l.mu.Unlock()
	applier, err := apply.New(ctx, sessions, apply.Options{
		Upstream:    l.Up,
		Logger:      l.log,
		Config:      cfg,
		Node:        l.Down,
		Claim:       true,
		ResumeAfter: resume,
		Catalog:     catalog,
		OnMessage: func(ctx context.Context, conn *pgconn.PgConn, m stream.Message) error {
			if m.Prefix == deadletter.Prefix {
				return deadletter.Store(ctx, conn, l.Up, m)
			}
			return ddlExec.Handle(ctx, ddl.ConnExecer{Conn: conn}, m)
		},
		MissingColumn: func(ctx context.Context, table, column string) (apply.ColumnFate, error) {
			ddlMu.Lock()
			defer ddlMu.Unlock()
			if ddlUp == nil || ddlUp.IsClosed() {
				c, err := pg.Connect(ctx, l.Up, l.up.DSN, "pgmesh ddl check "+l.Name())
				if err != nil {
					return apply.ColumnUnknown, err
				}
				ddlUp = c
			}
			return columnFate(ctx, ddlConn, ddlUp, table, column)
		},
		RecheckDeferred: recheck,
		OnApplied:       func(ap apply.Applied) { l.applyTime.Observe(ap.Duration.Seconds()) },
	})
	if err != nil {
		return false, fmt.Errorf("link %s: start apply session on %s: %w", l.Name(), l.Down, err)
	}
	l.mu.Lock()
	l.applier = applier
	l.sessionConflicts = cfg.Conflicts
	l.endSession = cancel
	l.mu.Unlock()
	// Runs after Close (deferred below), so that what Close commits is
	// counted.
	defer func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		st := applier.Stats()
		addStats(&l.before, st)
		if l.conflictsBefore == nil {
			l.conflictsBefore = map[apply.ConflictKey]uint64{}
		}
		for k, n := range st.ConflictsBy {
			l.conflictsBefore[k] += n
		}
		l.applier, l.endSession = nil, nil
	}()
	defer func() {
		closeCtx, c := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer c()
		if cerr := applier.Close(closeCtx); cerr != nil && ctx.Err() == nil {
			l.log.Debug("close apply session", "err", cerr)
		}
	}()
	start, err := applier.Progress(ctx)
	if err != nil {
		return false, fmt.Errorf("link %s: read origin progress on %s: %w", l.Name(), l.Down, err)
	}

	replConn, err := pg.ConnectReplication(ctx, l.Up, l.up.DSN, "pgmesh "+l.Name())
	if err != nil {
		return false, fmt.Errorf("link %s: %w", l.Name(), err)
	}
	defer replConn.Close(context.WithoutCancel(ctx))
	major, err := majorVersion(replConn.ParameterStatus("server_version"))
	if err != nil {
		return false, fmt.Errorf("link %s: upstream %s: %w", l.Name(), l.Up, err)
	}

	l.setState(StateStreaming, nil)
	l.log.Info("link streaming", "slot", l.Slot(), "origins", origin.Names(l.Up, l.workers),
		"resume_after", start.String(), "upstream_major", major)

	// A worker may fail while the stream has nothing to deliver.
	go func() {
		select {
		case <-applier.Failed():
			cancel()
		case <-ctx.Done():
		}
	}()
	// A transaction the operator ordered skipped (`pgmesh skip`) goes into
	// pgmesh.dead_letter instead of the tables.
	skip, err := deadletter.Pending(ctx, monConn, l.Up)
	if err != nil {
		return true, fmt.Errorf("link %s: node %s: %w", l.Name(), l.Down, err)
	}
	var handler stream.Handler = applier
	if skip != 0 {
		l.log.Warn("the operator ordered a transaction skipped: it goes into pgmesh.dead_letter", "commit_lsn", skip.String())
		handler = deadletter.Divert(applier, skip)
	}
	flushed := func(ctx context.Context) (stream.LSN, error) {
		return origin.Progress(ctx, monConn, l.Up, true)
	}
	err = stream.Run(ctx, replConn, stream.Options{
		Node:        l.Up,
		Slot:        l.Slot(),
		Publication: setup.Publication,
		StartLSN:    start,
		OriginNone:  major >= 16,
		Logger:      l.log,
	}, handler, flushed)
	if aerr := applier.Err(); aerr != nil {
		return true, fmt.Errorf("link %s: %w", l.Name(), aerr)
	}
	if err != nil {
		return true, fmt.Errorf("link %s: %w", l.Name(), err)
	}
	return true, errors.New("link " + l.Name() + ": stream ended")
}

// gate returns a holdError while either node of the link is copying its
// data or leaving: the downstream's origin does not hold the resume point
// before the copy is complete, and an upstream that is still copying has
// no slot for the link yet.
func (l *link) gate(ctx context.Context, down *pgx.Conn) error {
	st, err := memberState(ctx, down)
	if err != nil {
		return fmt.Errorf("link %s: node %s: %w", l.Name(), l.Down, err)
	}
	if !joinstate.LinksAllowed(st) {
		return &holdError{node: l.Down, state: st}
	}
	up, err := pg.Connect(ctx, l.Up, l.up.DSN, "pgmesh agent")
	if err != nil {
		return fmt.Errorf("link %s: %w", l.Name(), err)
	}
	defer up.Close(context.WithoutCancel(ctx))
	if st, err = memberState(ctx, up); err != nil {
		return fmt.Errorf("link %s: node %s: %w", l.Name(), l.Up, err)
	}
	if !joinstate.LinksAllowed(st) {
		return &holdError{node: l.Up, state: st}
	}
	return nil
}

// memberState is a node's join state, or "not set up" when pgmesh has not
// made the database a node yet (a node just added to the config file).
func memberState(ctx context.Context, conn *pgx.Conn) (string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgmesh.local_node') IS NOT NULL").Scan(&exists); err != nil {
		return "", fmt.Errorf("look for pgmesh.local_node: %w", err)
	}
	if exists {
		// A query naming the table parses only once it exists.
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pgmesh.local_node)").Scan(&exists); err != nil {
			return "", fmt.Errorf("read pgmesh.local_node: %w", err)
		}
	}
	if !exists {
		return "not set up", nil
	}
	return joinstate.StateOf(ctx, conn)
}

// columnFate tells what becomes of a column that the upstream sends but
// this node lacks (apply.ColumnFate): ColumnComing when a DDL mentioning it
// has been applied upstream and not here (it adds or renames it, and is on
// its way), ColumnGone when one has been applied here and not upstream (it
// dropped or renamed it here first). local and up are connections to the
// downstream and the upstream that are free on the handler's goroutine.
func columnFate(ctx context.Context, local, up *pgx.Conn, table, column string) (apply.ColumnFate, error) {
	if ok, err := ddl.InFlight(ctx, local, up, table, column); err != nil || ok {
		return apply.ColumnComing, err
	}
	if ok, err := ddl.InFlight(ctx, up, local, table, column); err != nil || ok {
		return apply.ColumnGone, err
	}
	return apply.ColumnUnknown, nil
}

// recordDDLFailure keeps a DDL that stopped the link in the downstream's
// ddl_log (outside the rolled-back apply transaction), so that `pgmesh ddl
// list` and `check` show it.
func (l *link) recordDDLFailure(ctx context.Context, err error) {
	ae, ok := ddl.AsApplyError(err)
	if !ok {
		return
	}
	conn, cerr := pg.Connect(ctx, l.Down, l.down.DSN, "pgmesh agent")
	if cerr != nil {
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if rerr := ddl.RecordFailure(ctx, conn, ae); rerr != nil {
		l.log.Warn("record failed DDL", "err", rerr)
	}
}

// majorVersion parses server_version ("15.18 (Debian…)", "18.4") to 15, 18.
func majorVersion(v string) (int, error) {
	head, _, _ := strings.Cut(v, ".")
	head, _, _ = strings.Cut(head, " ")
	n, err := strconv.Atoi(head)
	if err != nil || n < 10 {
		return 0, fmt.Errorf("unrecognised server_version %q", v)
	}
	return n, nil
}

// heldRetry is how soon a link whose change waits for a DDL (apply.
// HeldError) looks again: the DDL usually follows within moments.
const heldRetry = time.Second

// closeTimeout bounds the end of an apply session: committing what was
// queued, rolling back an unfinished transaction, releasing the origin.
const closeTimeout = 10 * time.Second

// maxBackoff caps the wait between reconnections: a healed partition or a
// restarted server should be noticed within seconds, and a failed attempt
// costs the nodes only a connection.
const maxBackoff = 5 * time.Second

// backoff doubles from 500ms up to maxBackoff.
type backoff struct{ cur time.Duration }

func (b *backoff) next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = 500 * time.Millisecond
	case b.cur < maxBackoff:
		b.cur = min(2*b.cur, maxBackoff)
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }
