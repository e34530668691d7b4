// Package apply applies the transactions of one link onto the downstream:
// each remote transaction becomes one local transaction, run under a
// replication origin so that PostgreSQL records the remote commit time and
// origin with the rows and advances the origin atomically with the data.
//
// A link applies on one or more sessions (workers), each a connection with
// its own replication origin (one origin can be set up by one session at a
// time). The stream's goroutine is the dispatcher: it numbers the remote
// transactions in commit order, works out which earlier transactions each
// change depends on (deps.go) and hands the transaction to a worker. The
// workers run transactions concurrently and commit them strictly in the
// upstream's commit order (order.go), so the transactions committed under
// all of the link's origins always form a prefix of the upstream's stream:
// the link's progress is the greatest of its origins' (internal/origin),
// and resuming after it applies every transaction exactly once.
//
// Each worker sends its statements through one pgconn pipeline with
// prepared statements and raw text parameters; several remote transactions
// share a flight (one round trip) with a single Sync at its end. A failure
// inside a transaction leaves its block aborted, so that nothing of it or
// after it on that worker commits (a flight is never cut between a
// transaction's last statement and its COMMIT, which would end the aborted
// block). A deadlock, serialization failure or lock timeout makes the
// worker roll back and run the transaction again at once (worker.go);
// anything else stops the Applier.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// DefaultMaxFlight is the number of statements (rows, for a multi-row
// one) after which a flight is sent even in the middle of a transaction.
const DefaultMaxFlight = 1000

// Options configure an Applier.
type Options struct {
	Upstream string       // upstream node name, for logs, errors and conflict resolution
	Logger   *slog.Logger // nil = slog.Default()
	// Config supplies the conflict settings (policies, delta_columns,
	// delete_wins) of the tables; nil = defaults.
	Config *config.Config
	// Node is the downstream node's name, the sender of the seen messages.
	Node string
	// Claim makes each applied transaction announce, with a "pgmesh.seen"
	// message in the downstream's WAL, that Node has seen the upstream up
	// to its commit time: what makes conflict detection exact (see
	// seen.go). false = no seen messages (tests, tools).
	Claim bool
	// MaxFlight is the number of statements (rows, for a multi-row one)
	// per pipeline flight after which the flight is sent even
	// mid-transaction (0 = DefaultMaxFlight).
	MaxFlight int
	// ResumeAfter is the link's progress over all its origins
	// (origin.Progress), which may be ahead of the sessions' own origins
	// when the number of workers changed: transactions ending at or before
	// it are skipped.
	ResumeAfter stream.LSN
	// Catalog is a connection to the downstream, free for the Applier's
	// own use: with more than one session, the dispatcher reads the unique
	// indexes and foreign keys of the tables on it.
	Catalog *pgconn.PgConn
	// OnMessage, when set, is called for every logical decoding message
	// (but pgmesh.seen ones, which the Applier handles) with the session
	// (conn) to run it on, once every transaction before it has committed
	// and nothing after it runs: for a transactional message, inside the
	// remote transaction (what it writes commits with it). Outside one,
	// what it commits on that connection has a local commit time but is
	// still marked with the origin, as the whole session is. Local tables
	// are looked up again afterwards: the hook may have changed them (DDL).
	// Without it messages are ignored.
	OnMessage func(ctx context.Context, conn *pgconn.PgConn, m stream.Message) error
	// MissingColumn, when set, is asked about a remote column that does not
	// exist locally ("schema.table", column): is a DDL about it on its way
	// between the nodes? See ColumnFate. Without it such a column is an
	// apply error that names it. Workers call it concurrently.
	MissingColumn func(ctx context.Context, table, column string) (ColumnFate, error)
	// RecheckDeferred is the commit LSN of a remote transaction that failed
	// at its end on a deferrable unique or exclusion constraint (see
	// DeferredCheckFailed): it is applied with those constraints decided
	// row by row (conflict.Table.DeferredNow), which cannot fail there.
	RecheckDeferred stream.LSN
	// OnApplied, when set, is called for every remote transaction whose
	// COMMIT the server confirmed, on the goroutine of the worker that
	// applied it (workers call it concurrently). It must return quickly
	// (it runs between pipeline results).
	OnApplied func(Applied)
}

// ColumnFate is what becomes of the values of a remote column that does
// not exist here. No value is ever left out silently.
type ColumnFate int

const (
	// ColumnUnknown: no DDL explains it. An apply error names the column.
	ColumnUnknown ColumnFate = iota
	// ColumnComing: a DDL that the upstream applied and this node has not
	// yet (one that adds or renames it) is on its way. The change is held:
	// the Applier fails with a *HeldError, and the transaction is applied
	// again once the DDL has arrived.
	ColumnComing
	// ColumnGone: a DDL that this node applied and the upstream has not yet
	// (one that drops or renames it). The upstream's changes written before
	// it applies the DDL carry the column for good: the rest of each row
	// is applied, and the row with the column's values is logged in
	// pgmesh.conflict_log (kind missing_column, resolution skip_column).
	ColumnGone
)

// HeldError stops the Applier before a change that carries a column which
// a DDL still on its way here will create: the transaction is rolled back
// and must be applied again once the DDL has been applied here (the caller
// retries; nothing is lost, as the origin has not moved).
type HeldError struct {
	Upstream, Table, Column string
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("upstream %s: table %s: column %q sent by the upstream does not exist here yet: a DDL the upstream applied (pgmesh ddl list --pending) has not reached this node; the change waits for it",
		e.Upstream, e.Table, e.Column)
}

// Applied describes one committed remote transaction.
type Applied struct {
	CommitLSN stream.LSN // FinalLSN of the remote transaction
	Changes   uint64
	// Duration runs from its BEGIN being queued on the apply connection to
	// its COMMIT being confirmed: execution, plus the wait behind the
	// transactions pipelined before it.
	Duration time.Duration
}

// ConflictKey names a conflict counter.
type ConflictKey struct{ Table, Kind, Resolution string }

// TxnError is the failure of one remote transaction: which transaction,
// and the request of it that failed. The Applier is dead afterwards; the
// transaction was rolled back on the downstream.
type TxnError struct {
	Upstream   string
	CommitLSN  stream.LSN // FinalLSN: the LSN of its commit record upstream
	CommitTime time.Time
	XID        uint32
	What       string // the failed request: "insert public.t", "COMMIT"…
	Table      string // "schema.table" when the request concerned one table
	Key        string // the changed row's key, when a row change failed
	Err        error
	hint       string
}

func (e *TxnError) Error() string {
	return fmt.Sprintf("upstream %s: apply remote transaction %s: %s: %v%s", e.Upstream, e.CommitLSN, e.What, e.Err, e.hint)
}

func (e *TxnError) Unwrap() error { return e.Err }

// Session is one apply connection to the downstream, dedicated to the
// Applier, and the replication origin it applies under (must exist).
type Session struct {
	Conn   *pgconn.PgConn
	Origin string
}

// Stats is a snapshot of what an Applier has applied (confirmed by the
// server).
type Stats struct {
	Txns           uint64     // remote transactions committed
	Changes        uint64     // row changes and truncates in them
	Flights        uint64     // pipeline flights sent (round trips)
	LastCommitTime time.Time  // remote commit time of the last committed transaction
	LastEndLSN     stream.LSN // its EndLSN
	// Retries counts remote transactions rolled back by a deadlock,
	// serialization failure or lock timeout and run again on the spot.
	Retries uint64
	// Conflicts counts the conflicts of the committed transactions by kind
	// (conflict.InsertExists…): what pgmesh.conflict_log received.
	Conflicts map[string]uint64
	// ConflictsBy counts the same conflicts by table, kind and resolution.
	ConflictsBy map[ConflictKey]uint64
}

// Applier applies one link's stream onto the downstream. It implements
// stream.Handler: Handler methods, Wait, Progress and Close must be called
// from one goroutine; Stats and Failed from any.
//
// Every row change is one statement built by internal/conflict that finds
// the local row, resolves a conflict inside the database and answers one
// row (kind, resolution), so no decision waits for a round trip and
// transactions keep being pipelined.
//
// The Applier keeps references to the Data of the Changes it is given
// until their transaction has committed (to run it again after a deadlock,
// and to name the key in logs): the stream must not reuse those buffers.
type Applier struct {
	o       Options
	log     *slog.Logger
	workers []*worker
	// link is the first key of the ordering locks (order.go): the id of
	// the first session's origin, unique on the downstream server.
	link int32

	ctx    context.Context // the workers'; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stopping counts the stopWorkers loops that fail started: Close resets
	// the sessions only after them, or a cancel request they sent just as
	// the worker ended could interrupt the reset's statements.
	stopping sync.WaitGroup

	// Dispatcher state, the stream's goroutine only.
	cur     *txn       // remote transaction being received
	last    *txn       // last transaction handed to a worker in full
	seq     uint64     // number of the last transaction numbered
	lastEnd stream.LSN // EndLSN of the last remote transaction dispatched or applied before
	rr      int        // round robin among equally loaded workers
	// spreadAfter is the backlog above which transactions spread over the
	// workers (see assign); tests lower it.
	spreadAfter uint64
	noAffinity  bool     // tests: no pull to the worker of a dependency
	deps        *tracker // nil with one worker
	depRels     map[*stream.Relation]*depRel
	received    map[string]time.Time // seen entries not yet recorded, by origin
	claimed     time.Time            // newest commit time claimed
	started     stream.LSN           // progress when the Applier started
	// held is the LSN of the last non-transactional message handled: the
	// link's progress must pass it (see saveMessages) before the stream
	// may confirm it to the upstream. heldSince is when the first message
	// not yet saved arrived.
	held      stream.LSN
	heldSince time.Time
	saved     stream.LSN // held when saveMessages last committed it

	mu          sync.Mutex
	cond        *sync.Cond // signalled on every change of the state below
	committed   uint64     // greatest committed transaction number (commits are in order)
	flushGen    uint64     // bumped by Idle: workers send what they hold
	serialUntil time.Time  // no spreading before (see assign)
	closing     bool       // Close: workers finish their queues and stop
	err         error      // first fatal error; the Applier is dead afterwards
	failed      chan struct{}
	conflicts   map[ConflictKey]uint64
	closed      bool

	txns, changes, flights, lastEndLSN, retries atomic.Uint64
	lastCommit                                  atomic.Int64 // unix nanoseconds, 0 = none
	committedN                                  atomic.Uint64
}

// New prepares the apply sessions: replica role (no FK checks or ordinary
// triggers, as in the native apply worker), asynchronous commit
// (durability is tracked through the origins' flushed progress), each
// session's replication origin set up, and starts one worker per session.
func New(ctx context.Context, sessions []Session, o Options) (*Applier, error) {
	if len(sessions) == 0 {
		return nil, fmt.Errorf("apply session for upstream %s: no connection", o.Upstream)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxFlight <= 0 {
		o.MaxFlight = DefaultMaxFlight
	}
	if o.Claim && o.Node == "" {
		return nil, fmt.Errorf("apply session for upstream %s: seen messages need the downstream node name", o.Upstream)
	}
	if len(sessions) > 1 && o.Catalog == nil {
		return nil, fmt.Errorf("apply session for upstream %s: parallel apply needs a catalog connection", o.Upstream)
	}
	a := &Applier{
		o:           o,
		log:         o.Logger.With("upstream", o.Upstream),
		conflicts:   map[ConflictKey]uint64{},
		received:    map[string]time.Time{},
		depRels:     map[*stream.Relation]*depRel{},
		failed:      make(chan struct{}),
		spreadAfter: spreadAfter,
	}
	a.cond = sync.NewCond(&a.mu)
	if len(sessions) > 1 {
		a.deps = newTracker()
	}
	if len(sessions) > 1 {
		id, err := originID(ctx, sessions[0].Conn, sessions[0].Origin)
		if err != nil {
			return nil, fmt.Errorf("apply session for upstream %s: %w", o.Upstream, err)
		}
		a.link = id
	}
	start := o.ResumeAfter
	for i, s := range sessions {
		w, progress, err := newWorker(ctx, a, i, s, len(sessions) > 1)
		if err != nil {
			for _, w := range a.workers {
				w.reset(context.WithoutCancel(ctx))
			}
			return nil, err
		}
		a.workers = append(a.workers, w)
		start = max(start, progress)
	}
	a.lastEnd, a.started = start, start
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	for _, w := range a.workers {
		a.wg.Add(1)
		go w.run()
	}
	return a, nil
}

// Begin starts a remote transaction. Nothing is sent until its first change
// or its commit.
func (a *Applier) Begin(ctx context.Context, b stream.Begin) error {
	if err := a.Err(); err != nil {
		return err
	}
	if a.cur != nil {
		return a.fail(fmt.Errorf("upstream %s: BEGIN of remote transaction %s inside transaction %s", a.o.Upstream, b.FinalLSN, a.cur.begin.FinalLSN))
	}
	t := &txn{begin: b, commitTime: []byte(formatTime(b.CommitTime)), commitLSN: []byte(b.FinalLSN.String()), retain: true,
		recheck: a.o.RecheckDeferred != 0 && b.FinalLSN == a.o.RecheckDeferred}
	a.cur = t
	// A transaction whose commit record lies before the end of the last one
	// applied was applied already (a resend after a reconnect): skipping it
	// keeps apply exactly-once whatever position the upstream resumes from.
	if b.FinalLSN < a.lastEnd {
		t.skip = true
		a.log.Debug("skip remote transaction applied before", "commit_lsn", b.FinalLSN.String(), "progress", a.lastEnd.String())
		return nil
	}
	a.number(t)
	return nil
}

// Change queues one row change (or truncate) of the current transaction.
func (a *Applier) Change(ctx context.Context, c *stream.Change) error {
	if err := a.Err(); err != nil {
		return err
	}
	t := a.cur
	if t == nil {
		return a.fail(fmt.Errorf("upstream %s: change outside a transaction", a.o.Upstream))
	}
	if t.skip {
		return nil
	}
	o := op{kind: opChange, t: t, c: c}
	if a.deps != nil && !t.exclusive {
		dep, err := a.changeDeps(ctx, t, c)
		if err != nil {
			return a.fail(err)
		}
		o.dep = dep
	}
	return a.add(t, o)
}

// Message records a peer's seen message (see receiveSeen), or hands any
// other logical decoding message to Options.OnMessage once everything
// before it has committed.
func (a *Applier) Message(ctx context.Context, m stream.Message) error {
	if err := a.Err(); err != nil {
		return err
	}
	if !m.Transactional {
		if a.held <= a.lastEnd {
			a.heldSince = time.Now()
		}
		a.held = max(a.held, m.LSN)
	}
	if m.Prefix == conflict.SeenPrefix {
		a.receiveSeen(m)
		return nil
	}
	if a.o.OnMessage == nil || (a.cur != nil && a.cur.skip) {
		return nil
	}
	if m.Transactional && a.cur != nil {
		return a.exclusiveMessage(a.cur, m)
	}
	return a.outsideMessage(m)
}

// Commit queues the end of the remote transaction. It does not wait for the
// server.
func (a *Applier) Commit(ctx context.Context, c stream.Commit) error {
	if err := a.Err(); err != nil {
		return err
	}
	t := a.cur
	if t == nil {
		return a.fail(fmt.Errorf("upstream %s: COMMIT %s outside a transaction", a.o.Upstream, c.CommitLSN))
	}
	a.cur = nil
	if t.skip {
		return nil
	}
	t.end = c
	if a.o.Claim && c.CommitTime.After(a.claimed) {
		t.claim = true
		a.claimed = c.CommitTime
	}
	if err := a.add(t, op{kind: opCommit, t: t}); err != nil {
		return err
	}
	a.last = t
	a.lastEnd = c.EndLSN
	if t.exclusive {
		// Its messages may have changed tables (DDL): nothing after it
		// runs, or looks a table up, before it has committed.
		if err := a.waitCommitted(t.seq); err != nil {
			return err
		}
		a.forgetTables()
	}
	return nil
}

// Idle tells the workers to send what they hold: the stream has nothing
// else for now. Messages that no remote transaction has carried for a
// while are saved then (saveMessages). It returns the error that stopped
// the Applier, if any.
func (a *Applier) Idle(ctx context.Context) error {
	a.mu.Lock()
	a.flushGen++
	a.cond.Broadcast()
	err := a.err
	a.mu.Unlock()
	if err != nil {
		return err
	}
	return a.saveMessages(ctx)
}

// Wait returns once every remote transaction handed over in full has
// committed, or with the error that stopped the Applier.
func (a *Applier) Wait(ctx context.Context) error {
	if err := a.Idle(ctx); err != nil {
		return err
	}
	if a.last == nil {
		return nil
	}
	return a.waitCommitted(a.last.seq)
}

// Progress is the EndLSN of the last remote transaction committed (or
// skipped as applied before), the point to resume streaming after. Every
// transaction handed over in full is committed first.
func (a *Applier) Progress(ctx context.Context) (stream.LSN, error) {
	if err := a.Wait(ctx); err != nil {
		return 0, err
	}
	if a.last == nil {
		return max(a.started, a.saved), nil
	}
	return max(a.started, a.saved, a.last.end.EndLSN), nil
}

// Err is the error that stopped the Applier, nil while it runs.
func (a *Applier) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// Failed is closed when the Applier stops on an error (Err says which):
// a worker may fail while the stream has nothing to deliver.
func (a *Applier) Failed() <-chan struct{} { return a.failed }

// Stats returns what has been applied so far. Safe from any goroutine.
func (a *Applier) Stats() Stats {
	s := Stats{
		Txns:       a.txns.Load(),
		Changes:    a.changes.Load(),
		Flights:    a.flights.Load(),
		LastEndLSN: stream.LSN(a.lastEndLSN.Load()),
		Retries:    a.retries.Load(),
	}
	if ns := a.lastCommit.Load(); ns != 0 {
		s.LastCommitTime = time.Unix(0, ns)
	}
	a.mu.Lock()
	s.ConflictsBy = maps.Clone(a.conflicts)
	a.mu.Unlock()
	s.Conflicts = map[string]uint64{}
	for k, n := range s.ConflictsBy {
		s.Conflicts[k.Kind] += n
	}
	return s
}

// Close commits what was handed over in full (an unfinished remote
// transaction is rolled back) and returns the sessions to normal: origins
// released, ordering locks, settings and prepared statements discarded.
// The connections stay open: they belong to the caller.
func (a *Applier) Close(ctx context.Context) error {
	if a.closed {
		return nil
	}
	a.closed = true
	a.mu.Lock()
	a.closing = true
	dead := a.err != nil
	a.cond.Broadcast()
	a.mu.Unlock()
	// The workers commit what is queued (after a failure, the stop loop
	// that fail started interrupts them); a transaction that keeps waiting
	// (for another link's, or one that runs again and again) must not hold
	// the close past ctx: then it is rolled back, as on a failure.
	stopped := make(chan struct{})
	go func() { a.wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		a.fail(fmt.Errorf("upstream %s: close apply session: %w", a.o.Upstream, ctx.Err()))
		<-stopped
	}
	a.cancel()
	var errs []error
	if !dead {
		if err := a.Err(); err != nil {
			errs = append(errs, err)
		}
	}
	a.fail(errors.New("apply session closed"))
	// Every cancel request sent has been acknowledged: it reached a
	// session idle between statements, which ignores it.
	a.stopping.Wait()
	for _, w := range a.workers {
		errs = append(errs, w.reset(ctx)...)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("upstream %s: close apply session: %w", a.o.Upstream, err)
	}
	return nil
}

// fail records the first fatal error and stops the workers; the Applier
// refuses all work afterwards.
func (a *Applier) fail(err error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil {
		a.err = err
		close(a.failed)
		a.cond.Broadcast()
		a.stopping.Add(1)
		go func() {
			defer a.stopping.Done()
			a.stopWorkers()
		}()
	}
	return a.err
}

// stopWorkers interrupts whatever a worker's session is executing (a wait
// for a transaction that will not commit now) until every worker has
// stopped: a cancel request that arrives between two statements is lost,
// so it is repeated.
func (a *Applier) stopWorkers() {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	for {
		for _, w := range a.workers {
			if w.busy.Load() {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = w.conn.CancelRequest(ctx)
				cancel()
			}
		}
		select {
		case <-done:
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// markCommitted records the commit of t (its COMMIT answered).
func (a *Applier) markCommitted(t *txn) {
	a.txns.Add(1)
	a.changes.Add(t.changes)
	if uint64(t.end.EndLSN) > a.lastEndLSN.Load() {
		a.lastEndLSN.Store(uint64(t.end.EndLSN))
		a.lastCommit.Store(t.end.CommitTime.UnixNano())
	}
	a.mu.Lock()
	if t.seq > a.committed {
		a.committed = t.seq
		a.committedN.Store(t.seq)
	}
	for k, n := range t.conflicts {
		a.conflicts[k] += n
	}
	a.cond.Broadcast()
	a.mu.Unlock()
	if a.o.OnApplied != nil {
		a.o.OnApplied(Applied{CommitLSN: t.begin.FinalLSN, Changes: t.changes, Duration: time.Since(t.queuedAt)})
	}
}

// isCommitted tells whether transaction number seq has committed.
func (a *Applier) isCommitted(seq uint64) bool { return a.committedN.Load() >= seq }

// waitCommitted waits until transaction number seq has committed.
func (a *Applier) waitCommitted(seq uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.flushGen++
	a.cond.Broadcast()
	for a.committed < seq && a.err == nil {
		a.cond.Wait()
	}
	return a.err
}

// originID is the id of a replication origin.
func originID(ctx context.Context, conn *pgconn.PgConn, origin string) (int32, error) {
	res := conn.ExecParams(ctx, "SELECT pg_catalog.pg_replication_origin_oid($1)::int", [][]byte{[]byte(origin)}, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, fmt.Errorf("read the id of origin %s: %w", origin, res.Err)
	}
	if len(res.Rows) != 1 || res.Rows[0][0] == nil {
		return 0, fmt.Errorf("origin %s does not exist (run pgmesh init)", origin)
	}
	var id int32
	if _, err := fmt.Sscan(string(res.Rows[0][0]), &id); err != nil {
		return 0, fmt.Errorf("id of origin %s: %w", origin, err)
	}
	return id, nil
}

// formatTime renders a commit time for a timestamptz parameter.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05.999999Z07:00")
}
