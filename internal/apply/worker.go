package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// worker applies the transactions handed to it on one session, in the
// order they were handed over.
type worker struct {
	a      *Applier
	id     int
	conn   *pgconn.PgConn
	origin string
	log    func(msg string, args ...any)

	// Under Applier.mu.
	q    []op // handed over, not taken yet
	last *txn // last transaction handed to this worker

	busy atomic.Bool // executing statements (stopWorkers cancels them)

	// The worker's goroutine only.
	pipe     *pgconn.Pipeline // open while statements are queued or in the air
	pending  []item           // queued since the last Sync
	inAir    [][]item         // sent flights whose results are unread, oldest first
	pendingW int              // rows in pending (a multi-row statement counts its rows)
	inAirN   int              // rows in inAir
	spare    [][]item         // emptied flights, reused
	commits  int              // COMMITs in pending: others may be waiting for them
	flushed  uint64           // Applier.flushGen last acted upon

	cur  *txn   // transaction whose statements are being queued
	open []*txn // transactions begun on this session and not committed, in order
	// held is the committed transaction whose lock the session's next
	// transaction releases (0: none).
	held uint64
	rels map[uint32]*relInfo
	// checked maps the tables checked for code that would run as pgmesh
	// ("schema.table") to the refusal, "" when the table is fine
	// (checkTrusted); cleared with rels.
	checked map[string]string
	stmts   map[string]*stmt // SQL → prepared statement
	nstmt   int              // prepared statement names given out

	params [][]byte // scratch: parameters of the statement being queued
	shape  []byte   // scratch: statement shape key
}

// newWorker prepares session s: settings, origin, fixed statements, and
// with other sessions (parallel) its gate (order.go). It returns the
// origin's progress.
func newWorker(ctx context.Context, a *Applier, id int, s Session, parallel bool) (*worker, stream.LSN, error) {
	w := &worker{a: a, id: id, conn: s.Conn, origin: s.Origin, rels: map[uint32]*relInfo{}, checked: map[string]string{}, stmts: map[string]*stmt{}}
	w.log = a.log.With("origin", s.Origin).Info
	up := a.o.Upstream
	setup := []struct{ what, sql string }{
		{"set session_replication_role", "SET session_replication_role = replica"},
		{"set synchronous_commit", "SET synchronous_commit = off"},
		// A session whose agent died must end, and release its origin and
		// locks, also while it waits for a lock or for another session.
		{"set client_connection_check_interval", "SET client_connection_check_interval = '1s'"},
	}
	for _, st := range setup {
		if _, err := w.conn.Exec(ctx, st.sql).ReadAll(); err != nil {
			return nil, 0, fmt.Errorf("apply session for upstream %s: %s: %w", up, st.what, err)
		}
	}
	if _, err := w.conn.ExecParams(ctx, "SELECT pg_catalog.pg_replication_origin_session_setup($1)", [][]byte{[]byte(s.Origin)}, nil, nil, nil).Close(); err != nil {
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
		return nil, 0, fmt.Errorf("apply session for upstream %s: set up replication origin %q: %w%s", up, s.Origin, err, hint)
	}
	for _, p := range fixedStatements {
		if _, err := w.conn.Prepare(ctx, p.name, p.sql, nil); err != nil {
			w.reset(context.WithoutCancel(ctx))
			return nil, 0, fmt.Errorf("apply session for upstream %s: prepare %s: %w", up, p.sql, err)
		}
	}
	if parallel {
		if res := w.conn.ExecParams(ctx, "SELECT pgmesh.apply_gate($1)", [][]byte{w.gateText()}, nil, nil, nil).Read(); res.Err != nil {
			w.reset(context.WithoutCancel(ctx))
			return nil, 0, fmt.Errorf("apply session for upstream %s: take the session's gate: %w (run pgmesh init to install the current pgmesh schema)", up, res.Err)
		}
	}
	res := w.conn.ExecParams(ctx, "SELECT pgmesh.origin_applied($1, false)::text", [][]byte{[]byte(s.Origin)}, nil, nil, nil).Read()
	if res.Err != nil {
		w.reset(context.WithoutCancel(ctx))
		return nil, 0, fmt.Errorf("upstream %s: read progress of origin %s: %w", up, s.Origin, res.Err)
	}
	var progress stream.LSN
	if len(res.Rows) == 1 && res.Rows[0][0] != nil {
		p, err := pglogrepl.ParseLSN(string(res.Rows[0][0]))
		if err != nil {
			w.reset(context.WithoutCancel(ctx))
			return nil, 0, fmt.Errorf("upstream %s: progress of origin %s: %w", up, s.Origin, err)
		}
		progress = p
	}
	return w, progress, nil
}

// parallel tells whether the link has other workers to order with.
func (w *worker) parallel() bool { return len(w.a.workers) > 1 }

// run takes ops until the Applier stops or closes.
func (w *worker) run() {
	defer w.a.wg.Done()
	a := w.a
	for {
		o, ok, idle := w.take()
		if !ok {
			w.finish()
			return
		}
		var err error
		switch {
		case !idle:
			err = w.do(o)
		case len(w.pending) > 0 && w.mustSend():
			err = w.send()
		case len(w.inAir) > 0:
			err = w.readFlight()
		default:
			w.waitForWork()
			continue
		}
		if err != nil {
			if err = w.handle(err); err != nil {
				a.fail(err)
			}
		}
	}
}

// take returns the next op; idle when there is none right now; !ok when
// the worker must stop: the Applier failed, or closes and nothing is left.
func (w *worker) take() (o op, ok, idle bool) {
	a := w.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return op{}, false, false
	}
	if len(w.q) == 0 {
		if a.closing && len(w.pending) == 0 && len(w.inAir) == 0 {
			return op{}, false, false
		}
		return op{}, true, true
	}
	o = w.q[0]
	w.q[0] = op{}
	w.q = w.q[1:]
	a.cond.Broadcast() // room for the dispatcher
	return o, true, false
}

// mustSend tells whether the statements queued must go now that nothing
// else is to be queued. With other workers always: any of them may be
// waiting for what they hold (a transaction to begin or commit), while the
// dispatcher waits for room in another worker's queue. Alone, when they
// end a transaction, or the stream is idle, or the Applier closes;
// otherwise the rest of the transaction comes first.
func (w *worker) mustSend() bool {
	if w.parallel() {
		return true
	}
	a := w.a
	a.mu.Lock()
	defer a.mu.Unlock()
	return w.commits > 0 || a.flushGen != w.flushed || a.closing
}

// waitForWork blocks until an op arrives, the stream goes idle, or the
// Applier stops or closes.
func (w *worker) waitForWork() {
	a := w.a
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(w.q) == 0 && a.err == nil && !a.closing {
		if a.flushGen != w.flushed {
			if len(w.pending) > 0 {
				return // run sends them
			}
			w.flushed = a.flushGen
		}
		a.cond.Wait()
	}
}

// do carries out one op.
func (w *worker) do(o op) error {
	switch o.kind {
	case opChange:
		if err := w.ensureTxn(o.t); err != nil {
			return err
		}
		w.waitFor(o.t, o.dep)
		if o.c.Op == stream.Insert && o.c.Rel != nil {
			if done, err := w.queueInserts(o); done || err != nil {
				return err
			}
		}
		if err := w.queueChange(o.t, o.c); err != nil {
			return err
		}
		o.t.changes++
		return w.maybeSend()
	case opWait:
		if err := w.ensureTxn(o.t); err != nil {
			return err
		}
		w.waitFor(o.t, o.dep)
		return w.maybeSend()
	case opMessage:
		return w.message(o)
	case opCommit:
		if err := w.ensureTxn(o.t); err != nil {
			return err
		}
		return w.queueCommit(o.t)
	case opForget:
		clear(w.rels)
		clear(w.checked)
		return nil
	case opSave:
		return w.save(o)
	}
	return fmt.Errorf("upstream %s: unknown apply op %d", w.a.o.Upstream, o.kind)
}

// ensureTxn begins t on the session unless its statements are being queued
// already.
func (w *worker) ensureTxn(t *txn) error {
	if w.cur == t {
		return nil
	}
	if w.cur != nil {
		return fmt.Errorf("upstream %s: remote transaction %s begins before %s has ended", w.a.o.Upstream, t, w.cur)
	}
	w.cur = t
	w.open = append(w.open, t)
	w.ensurePipe()
	w.queueBegin(t)
	return nil
}

// message runs OnMessage on this session once everything queued before it
// has been executed: inside its transaction, or outside any.
func (w *worker) message(o op) error {
	a := w.a
	if o.t != nil {
		if err := w.ensureTxn(o.t); err != nil {
			return err
		}
	} else if err := w.release(); err != nil {
		return err
	}
	if err := w.drain(); err != nil {
		return err
	}
	if o.t == nil {
		// The last transaction's remote commit LSN and time are still set
		// up: what the hook commits must not be stamped with them.
		if _, err := w.conn.Exec(a.ctx, "SELECT pg_catalog.pg_replication_origin_xact_reset()").ReadAll(); err != nil {
			return fmt.Errorf("upstream %s: reset origin transaction state: %w", a.o.Upstream, err)
		}
	}
	w.busy.Store(true)
	err := a.o.OnMessage(a.ctx, w.conn, o.m)
	w.busy.Store(false)
	if err != nil {
		if t := o.t; t != nil {
			b := t.begin
			return fatal{&TxnError{Upstream: a.o.Upstream, CommitLSN: b.FinalLSN, CommitTime: b.CommitTime, XID: b.XID,
				What: fmt.Sprintf("message %q at %s", o.m.Prefix, o.m.LSN), Err: err}}
		}
		return fatal{fmt.Errorf("upstream %s: message %q at %s: %w", a.o.Upstream, o.m.Prefix, o.m.LSN, err)}
	}
	clear(w.rels)
	clear(w.checked)
	if o.done != nil {
		close(o.done)
	}
	return nil
}

// committed records the commit of the oldest open transaction.
func (w *worker) committed(t *txn) {
	if len(w.open) > 0 && w.open[0] == t {
		w.open = w.open[1:]
	}
	a := w.a
	// Nothing to run again, and no chain of transactions kept alive.
	a.mu.Lock()
	t.ops, t.prevOnW = nil, nil
	a.mu.Unlock()
	t.pred, t.after = nil, nil
	a.markCommitted(t)
}

// fatal marks an error that no retry can help.
type fatal struct{ error }

func (f fatal) Unwrap() error { return f.error }

// retryable tells whether err is a deadlock, a serialization failure or a
// lock timeout: the transaction may simply run again.
func retryable(err error) bool {
	var f fatal
	if errors.As(err, &f) {
		return false
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	switch pe.Code {
	case "40P01", "40001", "55P03":
		return true
	}
	return false
}

// handle deals with an error met by the worker: a retryable one rolls the
// open transactions back and queues them again; any other is returned.
func (w *worker) handle(err error) error {
	if !retryable(err) {
		return err
	}
	if rerr := w.retry(err); rerr != nil {
		return errors.Join(err, rerr)
	}
	return nil
}

// retry rolls back what the session began and queues its open transactions
// again, in front of the rest. The results still in the air are read
// first: after the failed statement the server skipped the rest of its
// flight, and later flights failed in the aborted transaction block (the
// first statement after a COMMIT is always a BEGIN or ends its flight, so
// nothing ran outside a transaction block).
func (w *worker) retry(cause error) error {
	a := w.a
	ctx := a.ctx
	if len(w.pending) > 0 {
		// Queued after the failure: they must be synced to leave
		// pipeline mode; they fail in the aborted block or are skipped.
		w.pipe.SendPipelineSync()
		w.add(item{kind: itemSync})
		if err := w.pipe.Flush(); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		w.inAir = append(w.inAir, w.pending)
		w.inAirN += w.pendingW
		w.pending, w.pendingW = nil, 0
	}
	for len(w.inAir) > 0 {
		if err := w.skipFlight(); err != nil {
			return err
		}
	}
	w.commits = 0
	if w.pipe != nil {
		if err := w.pipe.Close(); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				w.pipe = nil
				return fmt.Errorf("leave pipeline mode: %w", err)
			}
		}
		w.pipe = nil
	}
	if w.conn.TxStatus() != 'I' {
		if _, err := w.conn.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			return fmt.Errorf("roll back: %w", err)
		}
	}
	if err := w.syncLocks(ctx); err != nil {
		return err
	}
	// Statements whose preparation was skipped do not exist.
	for sql, st := range w.stmts {
		if !st.ok {
			delete(w.stmts, sql)
		}
	}
	for _, ri := range w.rels {
		for shape, st := range ri.stmts {
			if !st.ok {
				delete(ri.stmts, shape)
			}
		}
	}
	again := w.open
	w.open, w.cur = nil, nil
	if len(again) == 0 {
		return nil
	}
	a.mu.Lock()
	var redo []op
	for _, t := range again {
		if !t.retain {
			a.mu.Unlock()
			return fmt.Errorf("remote transaction %s is too big to run again in place (%d changes and more): the link restarts and streams it again", t, retainMax)
		}
		redo = append(redo, t.ops...)
	}
	rest := w.q[:0:0]
	for _, o := range w.q {
		if !slices.Contains(again, o.t) {
			rest = append(rest, o)
		}
	}
	w.q = append(redo, rest...)
	a.mu.Unlock()
	for _, t := range again {
		t.changes, t.waited, t.conflicts, t.written = 0, 0, nil, nil
	}
	first := again[0]
	first.tries++
	a.retries.Add(1)
	a.mu.Lock()
	a.serialUntil = time.Now().Add(serialAfterRetry)
	a.mu.Unlock()
	detail := ""
	if pe := (*pgconn.PgError)(nil); errors.As(cause, &pe) {
		detail = pe.Detail
	}
	w.log("remote transaction rolled back, running it again", "commit_lsn", first.String(), "attempt", first.tries+1, "err", cause, "detail", detail)
	// A transaction that keeps failing meets the same lock again and
	// again: let the other side get somewhere.
	if first.tries > 3 {
		time.Sleep(min(time.Duration(first.tries)*10*time.Millisecond, time.Second))
	}
	return nil
}

// finish ends the worker: on close, what is queued has been sent and read;
// an unfinished transaction is rolled back by reset.
func (w *worker) finish() {
	if w.a.Err() != nil {
		// Read what is in the air so that the session can be reset.
		if w.pipe != nil && len(w.pending) > 0 {
			w.pipe.SendPipelineSync()
			w.add(item{kind: itemSync})
			if err := w.pipe.Flush(); err == nil {
				w.inAir = append(w.inAir, w.pending)
				w.inAirN += w.pendingW
			}
			w.pending, w.pendingW = nil, 0
		}
		for len(w.inAir) > 0 {
			if err := w.skipFlight(); err != nil {
				break
			}
		}
	}
	if w.pipe != nil {
		_ = w.pipe.Close()
		w.pipe = nil
	}
}

// reset returns the session to normal: unfinished transaction rolled back,
// origin released, ordering locks, settings and prepared statements
// discarded.
func (w *worker) reset(ctx context.Context) []error {
	if w.conn.IsClosed() {
		return nil
	}
	var errs []error
	if w.conn.TxStatus() != 'I' {
		if _, err := w.conn.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
			errs = append(errs, fmt.Errorf("roll back unfinished transaction: %w", err))
		}
	}
	if _, err := w.conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_session_reset()").ReadAll(); err != nil {
		errs = append(errs, fmt.Errorf("release origin %s: %w", w.origin, err))
	}
	if _, err := w.conn.Exec(ctx, "DISCARD ALL").ReadAll(); err != nil {
		errs = append(errs, fmt.Errorf("discard session state: %w", err))
	}
	return errs
}
