package apply

import (
	"context"
	"fmt"
	"strconv"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

// Commit order across workers (sql/0010_parallel_apply.sql). Transaction
// number s holds the session-level advisory lock (link, s) from its BEGIN
// until right after its COMMIT, retries included; when its session already
// has its next transaction queued at a COMMIT, it takes that one's lock
// before releasing its own (apply_handoff), so that a wait for a
// transaction that has not begun is a wait for the session busy before it.
// A transaction
//
//   - waits (apply_await) for the transaction that last touched what a
//     change touches, when that one runs on another session (deps.go), and
//     at its start for the one that recorded seen entries or ran DDL;
//   - commits (apply_commit) once the one before it has committed.
//
// Every wait is on a transaction before it in the commit order, and a
// session runs its transactions in that order, so the waits never form a
// cycle among the link's sessions; a cycle through a local transaction
// (or another link) is a lock cycle the deadlock detector breaks, and the
// victim runs again.
//
// Why that is exactly-once: a transaction commits only after its
// predecessor committed (the predecessor's lock was free and its origin's
// progress reached its end; a free lock without that progress means its
// session is gone, and the waiter fails instead of committing). So at any
// moment, and after any crash, the committed transactions are a prefix of
// the upstream's stream, each one's end recorded in the origin of the
// session that committed it; the greatest progress among the link's
// origins is the end of the prefix, and resuming after it skips every
// committed transaction and none other. Local commit records follow the
// same order (the lock is released after the commit record), so the
// greatest flushed progress is also a prefix that is durable.
//
// The statement after a COMMIT (the lock release) runs outside any
// transaction block, so it ends its flight: if it failed, the server would
// skip the rest of the flight, and statements of the next transaction in a
// later flight would run without their BEGIN.

// Fixed statements, prepared once per session.
const (
	stmtBegin       = "pgmesh_begin"
	stmtConstraints = "pgmesh_constraints"
	stmtXact        = "pgmesh_xact"
	stmtCommit      = "pgmesh_commit"
	stmtSeen        = "pgmesh_seen"
	stmtClaim       = "pgmesh_claim"
	stmtStart       = "pgmesh_start"
	stmtWait        = "pgmesh_wait"
	stmtEnd         = "pgmesh_end"
	stmtHandoff     = "pgmesh_handoff"
)

// A serial remote transaction ends with stmtConstraints, stmtClaim (see
// seen.go), stmtXact and stmtCommit; a parallel one with stmtConstraints,
// stmtEnd (wait, claim and origin setup) and stmtCommit.
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
	{stmtXact, "SELECT pg_catalog.pg_current_xact_id(), pg_catalog.pg_replication_origin_xact_setup($1, $2)"},
	{stmtCommit, "COMMIT"},
	{stmtSeen, conflict.SeenSQL()},
	{stmtClaim, "SELECT pgmesh.claim_seen($1, $2, $3, $4, $5, $6)"},
	{stmtStart, "SELECT pg_catalog.pg_advisory_lock($1, $2)"},
	{stmtWait, "SELECT pgmesh.apply_await($1, $2, $3, $4, $5, $6, $7, $8)"},
	{stmtEnd, "SELECT pgmesh.apply_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"},
	{stmtHandoff, "SELECT pgmesh.apply_handoff($1, $2, $3)"},
}

// waitTimeout bounds each wait of a transaction for another one (the
// lock_timeout of the wait): a wait in a cycle that the deadlock detector
// keeps breaking on the other side, or one it cannot see (a transaction
// that has not begun), ends and the transaction runs again.
const waitTimeout = "2s"

// seqText is a transaction number as the int key of its lock.
func seqText(seq uint64) []byte { return strconv.AppendInt(nil, int64(int32(uint32(seq))), 10) }

// linkText is the first key of the link's ordering locks.
func (w *worker) linkText() []byte { return strconv.AppendInt(nil, int64(w.a.link), 10) }

// queueBegin queues the start of t: BEGIN; with other workers, t's lock
// and the wait for the transaction every later one waits for; then the
// seen entries received before t.
func (w *worker) queueBegin(t *txn) {
	w.pipe.SendQueryPrepared(stmtBegin, nil, nil, nil)
	w.add(item{kind: itemBegin, txn: t})
	if w.parallel() {
		w.pipe.SendQueryPrepared(stmtStart, [][]byte{w.linkText(), seqText(t.seq)}, nil, nil)
		w.add(item{kind: itemStart, txn: t})
		w.waitFor(t, t.after)
	}
	w.queueReceived(t)
}

// awaitParams are the parameters that name transaction d for apply_await:
// number, origin, end, and the same for its session's previous transaction
// unless that one has committed.
func (w *worker) awaitParams(d *txn) [][]byte {
	ps := [][]byte{seqText(d.seq), []byte(d.w.origin), []byte(d.end.EndLSN.String()), nil, nil, nil}
	if q := w.prevOf(d); q != nil && !w.a.isCommitted(q.seq) {
		ps[3], ps[4], ps[5] = seqText(q.seq), []byte(q.w.origin), []byte(q.end.EndLSN.String())
	}
	return ps
}

// prevOf is the transaction d's session runs before d (nil once d has
// committed).
func (w *worker) prevOf(d *txn) *txn {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return d.prevOnW
}

// waitFor queues t's wait for transaction d to commit, unless that is
// sure already: d is t, or d committed, or d runs on this session (before
// t), or t waited for d or a later one.
func (w *worker) waitFor(t, d *txn) {
	if d == nil || d == t || d.seq <= t.waited || d.w == w || w.a.isCommitted(d.seq) {
		return
	}
	t.waited = d.seq
	w.ensurePipe()
	ps := append([][]byte{w.linkText()}, w.awaitParams(d)...)
	ps = append(ps, w.timeout(t))
	w.pipe.SendQueryPrepared(stmtWait, ps, nil, nil)
	w.add(item{kind: itemWait, txn: t})
}

// timeout is the lock timeout of t's waits: none for a transaction too big
// to run again (a timeout would stop the link).
func (w *worker) timeout(t *txn) []byte {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	if !t.retain {
		return nil
	}
	return []byte(waitTimeout)
}

// queueCommit queues the end of t: deferred checks, the wait for its
// predecessor, the claim and the origin setup, then COMMIT; with other
// workers, the release of its lock (handed to its session's next
// transaction when that is queued already), which ends the flight.
func (w *worker) queueCommit(t *txn) error {
	w.ensurePipe()
	w.pipe.SendQueryPrepared(stmtConstraints, nil, nil, nil)
	w.add(item{kind: itemConstraints, txn: t})
	end, ts := []byte(t.end.EndLSN.String()), []byte(formatTime(t.end.CommitTime))
	if !w.parallel() {
		if t.claim {
			w.queueClaim(t)
		}
		w.params = append(w.params[:0], end, ts)
		w.pipe.SendQueryPrepared(stmtXact, w.params, nil, nil)
		w.add(item{kind: itemXact, txn: t})
	} else {
		ps := make([][]byte, 15)
		ps[0] = w.linkText()
		if p := t.pred; p != nil && p.w != w && !w.a.isCommitted(p.seq) {
			copy(ps[1:7], w.awaitParams(p))
			ps[7] = w.timeout(t)
		}
		ps[8], ps[9] = end, ts
		if t.claim {
			copy(ps[10:], w.claimParams(t))
		}
		w.pipe.SendQueryPrepared(stmtEnd, ps, nil, nil)
		w.add(item{kind: itemXact, txn: t})
	}
	w.pipe.SendQueryPrepared(stmtCommit, nil, nil, nil)
	w.add(item{kind: itemCommit, txn: t})
	w.commits++
	w.cur = nil
	if !w.parallel() {
		return w.maybeSend()
	}
	var next []byte
	if n := w.nextTxn(); n != nil {
		next = seqText(n.seq)
	}
	w.pipe.SendQueryPrepared(stmtHandoff, [][]byte{w.linkText(), seqText(t.seq), next}, nil, nil)
	w.add(item{kind: itemRelease})
	return w.send()
}

// nextTxn is the transaction of the next op queued for this worker, which
// will begin next, if any.
func (w *worker) nextTxn() *txn {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	if len(w.q) > 0 {
		return w.q[0].t
	}
	return nil
}

// syncLocks, after a rollback, releases the ordering locks the session
// still holds for committed transactions (a failed release). The others
// stay: the successors of its open transactions go on waiting while those
// run again (a lock held already is taken once more, apply_release
// releases every hold).
func (w *worker) syncLocks(ctx context.Context) error {
	if !w.parallel() {
		return nil
	}
	res := w.conn.ExecParams(ctx, `SELECT objid::bigint FROM pg_catalog.pg_locks
	  WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() AND classid = $1::int::oid AND objsubid = 2 AND mode = 'ExclusiveLock'`,
		[][]byte{w.linkText()}, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("read the ordering locks held: %w", res.Err)
	}
	committed := uint32(w.a.committedN.Load())
	for _, r := range res.Rows {
		n, err := strconv.ParseInt(string(r[0]), 10, 64)
		if err != nil {
			return fmt.Errorf("read the ordering locks held: %w", err)
		}
		// Numbers are compared as the lock keys wrap: within 2^31.
		if seq := uint32(n); int32(committed-seq) >= 0 {
			res := w.conn.ExecParams(ctx, "SELECT pgmesh.apply_release($1, $2)", [][]byte{w.linkText(), seqText(uint64(seq))}, nil, nil, nil).Read()
			if res.Err != nil {
				return fmt.Errorf("release the ordering lock of a committed transaction: %w", res.Err)
			}
		}
	}
	return nil
}
