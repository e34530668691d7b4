// Package apply applies the transactions of one link onto the downstream:
// each remote transaction becomes one local transaction, run under the
// link's replication origin so that PostgreSQL records the remote commit
// time and origin with the rows and advances the origin atomically with
// the data.
//
// Statements go through one pgconn pipeline with prepared statements and
// raw text parameters. Several remote transactions share a flight (one
// round trip) with a single Sync at its end. No transaction can commit past
// a failed one: after an error the server skips the rest of the flight, and
// a failure inside a transaction leaves its block aborted, so that every
// statement of later flights fails too until the Applier gives up (a
// flight is never cut between a transaction's last statement and its
// COMMIT, which would end the aborted block).
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

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// DefaultMaxFlight is the number of statements after which a flight is
// sent even in the middle of a transaction.
const DefaultMaxFlight = 1000

// Options configure an Applier.
type Options struct {
	Upstream string       // upstream node name, for logs, errors and conflict resolution
	Origin   string       // replication origin on the downstream, e.g. "pgmesh_n1"; must exist
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
	// MaxFlight is the number of statements per pipeline flight after which
	// the flight is sent even mid-transaction (0 = DefaultMaxFlight).
	MaxFlight int
	// OnMessage, when set, is called for every logical decoding message
	// (but pgmesh.seen ones, which the Applier handles) after everything
	// queued before it has been executed, so it may use the apply
	// connection: for a transactional message, inside the remote
	// transaction (what it writes commits with it). Outside one, what it
	// commits on that connection has a local commit time but is still
	// marked with the origin, as the whole session is. Local tables are
	// looked up again afterwards: the hook may have changed them (DDL).
	// Without it messages are ignored.
	OnMessage func(ctx context.Context, m stream.Message) error
	// MissingColumn, when set, is asked about a remote column that does not
	// exist locally ("schema.table", column): is a DDL about it on its way
	// between the nodes? See ColumnFate. Without it such a column is an
	// apply error that names it.
	MissingColumn func(ctx context.Context, table, column string) (ColumnFate, error)
	// RecheckDeferred is the commit LSN of a remote transaction that failed
	// at its end on a deferrable unique or exclusion constraint (see
	// DeferredCheckFailed): it is applied with those constraints decided
	// row by row (conflict.Table.DeferredNow), which cannot fail there.
	RecheckDeferred stream.LSN
	// OnApplied, when set, is called on the Applier's goroutine for every
	// remote transaction whose COMMIT the server confirmed. It must return
	// quickly (it runs between pipeline results).
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

// Stats is a snapshot of what an Applier has applied (confirmed by the
// server).
type Stats struct {
	Txns           uint64     // remote transactions committed
	Changes        uint64     // row changes and truncates in them
	Flights        uint64     // pipeline flights sent (round trips)
	LastCommitTime time.Time  // remote commit time of the last committed transaction
	LastEndLSN     stream.LSN // its EndLSN
	// Conflicts counts the conflicts of the committed transactions by kind
	// (conflict.InsertExists…): what pgmesh.conflict_log received.
	Conflicts map[string]uint64
	// ConflictsBy counts the same conflicts by table, kind and resolution.
	ConflictsBy map[ConflictKey]uint64
}

// Applier applies one link's stream onto the downstream. It implements
// stream.Handler. Handler methods, Progress and Close must be called from
// one goroutine; Stats may be called from any.
//
// Every row change is one statement built by internal/conflict that finds
// the local row, resolves a conflict inside the database and answers one
// row (kind, resolution), so no decision waits for a round trip and
// transactions keep being pipelined.
//
// The Applier keeps references to the Data of the Changes it is given
// until the flight holding them has been answered (to name the key in
// logs): the stream must not reuse those buffers.
type Applier struct {
	conn *pgconn.PgConn
	o    Options
	log  *slog.Logger

	pipe    *pgconn.Pipeline // open while statements are queued or in the air
	pending []item           // queued since the last Sync
	inAir   [][]item         // sent flights whose results are unread, oldest first
	spare   [][]item         // emptied flights, reused
	err     error            // first failure; the Applier is dead afterwards

	rels map[uint32]*relInfo // by upstream relation id
	// checked maps the tables checked for code that would run as pgmesh
	// ("schema.table") to the refusal, "" when the table is fine
	// (checkTrusted); cleared with rels.
	checked map[string]string
	stmts   map[string]string // SQL → prepared statement name
	params  [][]byte          // scratch: parameters of the statement being queued
	shape   []byte            // scratch: statement shape key
	txn     *txn              // current remote transaction, nil between transactions
	lastEnd stream.LSN        // EndLSN of the last remote transaction queued for commit

	// Seen messages: what the upstream had applied of other nodes, to be
	// recorded at the start of its next transaction (received), and the
	// newest remote commit time claimed in the downstream's WAL (claimed).
	received map[string]time.Time // by origin
	claimed  time.Time
	// held is the LSN of the last non-transactional message handled: the
	// origin's progress must pass it (see saveMessages) before the stream
	// may confirm it to the upstream. heldSince is when the first message
	// not yet saved arrived.
	held      stream.LSN
	heldSince time.Time

	closed bool

	txns, changes, flights, lastEndLSN atomic.Uint64
	lastCommit                         atomic.Int64 // unix nanoseconds, 0 = none
	mu                                 sync.Mutex
	conflicts                          map[ConflictKey]uint64 // under mu
}

// txn is one remote transaction.
type txn struct {
	begin stream.Begin
	// The first parameters of every statement: remote commit time and
	// commit LSN as text.
	commitTime, commitLSN []byte
	end                   stream.Commit
	started               bool // BEGIN queued
	skip                  bool // already applied before (at or before the origin's progress)
	recheck               bool // Options.RecheckDeferred
	// written are the keys it wrote in tables with deferrable constraints,
	// checked when it ends (see queueDeferredChecks).
	written   []*writtenKeys
	changes   uint64
	queuedAt  time.Time              // when its BEGIN was queued
	conflicts map[ConflictKey]uint64 // met so far, counted in Stats once it commits
}

// Fixed statements, prepared once per session.
const (
	stmtBegin       = "pgmesh_begin"
	stmtConstraints = "pgmesh_constraints"
	stmtXact        = "pgmesh_xact"
	stmtCommit      = "pgmesh_commit"
	stmtSeen        = "pgmesh_seen"
	stmtClaim       = "pgmesh_claim"
	stmtPause       = "pgmesh_pause"
)

// PauseLock is the advisory lock (two-key form: 'pm', 'join') that every
// apply transaction holds in share mode from right after its BEGIN until
// it has committed. `pgmesh node add` takes it exclusively on the source
// node for the moment it creates the copy's snapshot and reads the
// source's origin progress: origin progress is not MVCC, so only with
// apply paused do the snapshot and the progress describe the same set of
// applied transactions. Locks are released after the commit is visible
// and the origin advanced, and the lock is taken before the transaction
// writes (has an xid), so the slot creation, which waits for running
// xids, never waits for a paused apply transaction.
var PauseLock = [2]int32{28781, 0x6a6f696e}

// A remote transaction starts with stmtBegin and stmtPause and ends with
// stmtConstraints, stmtClaim (see seen.go), stmtXact and stmtCommit.
// PostgreSQL 15+ advances the session's origin to the LSN given to
// pg_replication_origin_xact_setup even when the transaction then aborts, so
// that call must come after everything that can fail: deferred constraint
// triggers are fired before it (SET CONSTRAINTS ALL IMMEDIATE), and COMMIT
// follows in the same flight, so only a crash can come in between. The xid
// makes even a transaction whose changes all missed their rows write a
// commit record, which advances the origin.
var fixedStatements = []struct{ name, sql string }{
	// Read committed whatever the server default: a serialization failure
	// at COMMIT would come after the origin setup.
	{stmtBegin, "BEGIN ISOLATION LEVEL READ COMMITTED"},
	{stmtConstraints, "SET CONSTRAINTS ALL IMMEDIATE"},
	{stmtXact, "SELECT pg_current_xact_id(), pg_replication_origin_xact_setup($1, $2)"},
	{stmtCommit, "COMMIT"},
	{stmtSeen, conflict.SeenSQL()},
	{stmtClaim, "SELECT pgmesh.claim_seen($1, $2, $3, $4, $5, $6)"},
	{stmtPause, fmt.Sprintf("SELECT pg_catalog.pg_advisory_xact_lock_shared(%d, %d)", PauseLock[0], PauseLock[1])},
}

// New prepares the apply session on conn, an ordinary connection to the
// downstream dedicated to this Applier: replica role (no FK checks or
// ordinary triggers, as in the native apply worker), asynchronous commit
// (durability is tracked through the origin's flushed progress), and the
// replication origin set up for the session.
func New(ctx context.Context, conn *pgconn.PgConn, o Options) (*Applier, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxFlight <= 0 {
		o.MaxFlight = DefaultMaxFlight
	}
	a := &Applier{
		conn:      conn,
		o:         o,
		log:       o.Logger.With("upstream", o.Upstream, "origin", o.Origin),
		rels:      map[uint32]*relInfo{},
		checked:   map[string]string{},
		stmts:     map[string]string{},
		conflicts: map[ConflictKey]uint64{},
		received:  map[string]time.Time{},
	}
	if o.Claim && o.Node == "" {
		return nil, fmt.Errorf("apply session for upstream %s: seen messages need the downstream node name", o.Upstream)
	}
	setup := []struct{ what, sql string }{
		{"set session_replication_role", "SET session_replication_role = replica"},
		{"set synchronous_commit", "SET synchronous_commit = off"},
	}
	for _, s := range setup {
		if _, err := conn.Exec(ctx, s.sql).ReadAll(); err != nil {
			return nil, fmt.Errorf("apply session for upstream %s: %s: %w", o.Upstream, s.what, err)
		}
	}
	if _, err := conn.ExecParams(ctx, "SELECT pg_replication_origin_session_setup($1)", [][]byte{[]byte(o.Origin)}, nil, nil, nil).Close(); err != nil {
		hint := ""
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			switch pe.Code {
			case "42704":
				hint = " (the origin does not exist: run pgmesh init)"
			case "55006":
				hint = " (another apply session uses it: is a second agent running this link?)"
			}
		}
		return nil, fmt.Errorf("apply session for upstream %s: set up replication origin %q: %w%s", o.Upstream, o.Origin, err, hint)
	}
	for _, p := range fixedStatements {
		if _, err := conn.Prepare(ctx, p.name, p.sql, nil); err != nil {
			return nil, fmt.Errorf("apply session for upstream %s: prepare %s: %w", o.Upstream, p.sql, err)
		}
	}
	start, err := a.progress(ctx)
	if err != nil {
		return nil, err
	}
	a.lastEnd = start
	return a, nil
}

// Begin starts a remote transaction. Nothing is sent until its first change,
// so that transactions without changes cost nothing.
func (a *Applier) Begin(ctx context.Context, b stream.Begin) error {
	if a.err != nil {
		return a.err
	}
	if a.txn != nil {
		return a.fail(fmt.Errorf("upstream %s: BEGIN of remote transaction %s inside transaction %s", a.o.Upstream, b.FinalLSN, a.txn.begin.FinalLSN))
	}
	a.txn = &txn{begin: b, commitTime: []byte(formatTime(b.CommitTime)), commitLSN: []byte(b.FinalLSN.String()),
		recheck: a.o.RecheckDeferred != 0 && b.FinalLSN == a.o.RecheckDeferred}
	// A transaction whose commit record lies before the end of the last one
	// applied was applied already (a resend after a reconnect): skipping it
	// keeps apply exactly-once whatever position the upstream resumes from.
	if b.FinalLSN < a.lastEnd {
		a.txn.skip = true
		a.log.Debug("skip remote transaction applied before", "commit_lsn", b.FinalLSN.String(), "progress", a.lastEnd.String())
	}
	return nil
}

// Change queues one row change (or truncate) of the current transaction.
func (a *Applier) Change(ctx context.Context, c *stream.Change) error {
	if a.err != nil {
		return a.err
	}
	if a.txn == nil {
		return a.fail(fmt.Errorf("upstream %s: change outside a transaction", a.o.Upstream))
	}
	if a.txn.skip {
		return nil
	}
	if err := a.queueChange(ctx, c); err != nil {
		return a.fail(err)
	}
	a.txn.changes++
	return a.maybeSend(ctx)
}

// Message records a peer's seen message (see receiveSeen), or hands any
// other logical decoding message to Options.OnMessage once everything
// before it has been executed.
func (a *Applier) Message(ctx context.Context, m stream.Message) error {
	if a.err != nil {
		return a.err
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
	if a.o.OnMessage == nil || (a.txn != nil && a.txn.skip) {
		return nil
	}
	if m.Transactional && a.txn != nil {
		a.startTxn(ctx)
	}
	if err := a.drain(ctx); err != nil {
		return err
	}
	if a.txn == nil {
		// The last transaction's remote commit LSN and time are still set
		// up: what the hook commits must not be stamped with them.
		if _, err := a.conn.Exec(ctx, "SELECT pg_replication_origin_xact_reset()").ReadAll(); err != nil {
			return a.fail(fmt.Errorf("upstream %s: reset origin transaction state: %w", a.o.Upstream, err))
		}
	}
	if err := a.o.OnMessage(ctx, m); err != nil {
		if m.Transactional && a.txn != nil {
			b := a.txn.begin
			return a.fail(&TxnError{Upstream: a.o.Upstream, CommitLSN: b.FinalLSN, CommitTime: b.CommitTime, XID: b.XID,
				What: fmt.Sprintf("message %q at %s", m.Prefix, m.LSN), Err: err})
		}
		return a.fail(fmt.Errorf("upstream %s: message %q at %s: %w", a.o.Upstream, m.Prefix, m.LSN, err))
	}
	clear(a.rels)
	clear(a.checked)
	return nil
}

// Commit queues the end of the remote transaction: deferred checks and the
// origin setup with its EndLSN and commit time, then COMMIT. It does not wait for
// the server; Idle or a full flight sends it.
func (a *Applier) Commit(ctx context.Context, c stream.Commit) error {
	if a.err != nil {
		return a.err
	}
	t := a.txn
	if t == nil {
		return a.fail(fmt.Errorf("upstream %s: COMMIT %s outside a transaction", a.o.Upstream, c.CommitLSN))
	}
	a.txn = nil
	if t.skip || !t.started {
		return nil
	}
	t.end = c
	a.ensurePipe(ctx)
	a.queueDeferredChecks(t)
	a.pipe.SendQueryPrepared(stmtConstraints, nil, nil, nil)
	a.pending = append(a.pending, item{kind: itemConstraints, txn: t})
	if err := a.claim(t); err != nil {
		return a.fail(err)
	}
	a.params = append(a.params[:0], []byte(c.EndLSN.String()), []byte(formatTime(c.CommitTime)))
	a.pipe.SendQueryPrepared(stmtXact, a.params, nil, nil)
	a.pending = append(a.pending, item{kind: itemXact, txn: t})
	a.pipe.SendQueryPrepared(stmtCommit, nil, nil, nil)
	a.pending = append(a.pending, item{kind: itemCommit, txn: t})
	a.lastEnd = c.EndLSN
	return a.maybeSend(ctx)
}

// Idle sends what is queued and waits for every answer: the stream has
// nothing else for us, so this is the moment to make the work visible and
// to surface errors. Messages that no remote transaction has carried for
// a while are saved then (saveMessages).
func (a *Applier) Idle(ctx context.Context) error {
	if a.err != nil {
		return a.err
	}
	if err := a.drain(ctx); err != nil {
		return err
	}
	return a.saveMessages(ctx)
}

// Progress is the origin's progress: the EndLSN of the last remote
// transaction committed on the downstream (0 if none), the point to resume
// streaming after. Everything queued is executed first.
func (a *Applier) Progress(ctx context.Context) (stream.LSN, error) {
	if a.err != nil {
		return 0, a.err
	}
	if err := a.drain(ctx); err != nil {
		return 0, err
	}
	return a.progress(ctx)
}

func (a *Applier) progress(ctx context.Context) (stream.LSN, error) {
	res := a.conn.ExecParams(ctx, "SELECT pg_replication_origin_progress($1, false)", [][]byte{[]byte(a.o.Origin)}, nil, nil, nil).Read()
	if res.Err != nil {
		return 0, fmt.Errorf("upstream %s: read progress of origin %s: %w", a.o.Upstream, a.o.Origin, res.Err)
	}
	if len(res.Rows) != 1 || res.Rows[0][0] == nil {
		return 0, nil
	}
	lsn, err := pglogrepl.ParseLSN(string(res.Rows[0][0]))
	if err != nil {
		return 0, fmt.Errorf("upstream %s: progress of origin %s: %w", a.o.Upstream, a.o.Origin, err)
	}
	return lsn, nil
}

// Stats returns what has been applied so far. Safe from any goroutine.
func (a *Applier) Stats() Stats {
	s := Stats{
		Txns:       a.txns.Load(),
		Changes:    a.changes.Load(),
		Flights:    a.flights.Load(),
		LastEndLSN: stream.LSN(a.lastEndLSN.Load()),
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

// Close executes what is queued (complete remote transactions commit; an
// unfinished one is rolled back) and returns the session to normal: origin
// released, settings and prepared statements discarded. The connection
// stays open: it belongs to the caller.
func (a *Applier) Close(ctx context.Context) error {
	if a.closed {
		return nil
	}
	a.closed = true
	dead := a.err != nil
	var errs []error
	if a.pipe != nil {
		if dead {
			// Leaving pipeline mode needs a Sync after the last request;
			// the server skips or fails what follows the error, and the
			// unfinished transaction is rolled back below.
			if len(a.pending) > 0 {
				if err := a.pipe.Sync(); err != nil {
					errs = append(errs, err)
				}
			}
			var pe *pgconn.PgError
			if err := a.closePipe(); err != nil && !errors.As(err, &pe) {
				errs = append(errs, err)
			}
		} else {
			a.txn = nil
			if err := a.drain(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	a.fail(errors.New("apply session closed"))
	if !a.conn.IsClosed() {
		errs = append(errs, a.resetSession(ctx)...)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("upstream %s: close apply session: %w", a.o.Upstream, err)
	}
	return nil
}

func (a *Applier) resetSession(ctx context.Context) []error {
	var errs []error
	if a.conn.TxStatus() != 'I' {
		if _, err := a.conn.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			errs = append(errs, fmt.Errorf("roll back unfinished transaction: %w", err))
		}
	}
	if _, err := a.conn.Exec(ctx, "SELECT pg_replication_origin_session_reset()").ReadAll(); err != nil {
		errs = append(errs, fmt.Errorf("release origin %s: %w", a.o.Origin, err))
	}
	if _, err := a.conn.Exec(ctx, "DISCARD ALL").ReadAll(); err != nil {
		errs = append(errs, fmt.Errorf("discard session state: %w", err))
	}
	return errs
}

// fail records the first error; the Applier refuses all work afterwards.
func (a *Applier) fail(err error) error {
	if a.err == nil {
		a.err = err
	}
	return a.err
}

// formatTime renders a commit time for a timestamptz parameter.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05.999999Z07:00")
}
