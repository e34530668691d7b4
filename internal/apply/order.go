package apply

import (
	"context"
	"fmt"
	"strconv"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

// Commit order across workers (sql/0010_parallel_apply.sql). Transaction
// number s holds the session-level advisory lock (link, s) from its start
// until after its COMMIT, retries included. A transaction
//
//   - starts (apply_start) once the one before it has started or
//     committed: then every transaction it may wait for later has begun,
//     and its waits are lock waits that the deadlock detector sees;
//   - waits (apply_await) for the transaction that last touched what a
//     change touches, when that one runs on another session (deps.go);
//   - commits (apply_commit) once the one before it has committed.
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
// The first statement after a COMMIT is a BEGIN, or a release of the lock
// that ends its flight: a failure outside a transaction block must not let
// the next flight's statements run outside one.

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
	stmtRelease     = "pgmesh_release"
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
	{stmtStart, "SELECT pgmesh.apply_start($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"},
	{stmtWait, "SELECT pgmesh.apply_await($1, $2, $3, $4, $5)"},
	{stmtEnd, "SELECT pgmesh.apply_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"},
	{stmtRelease, "SELECT pgmesh.apply_release($1, $2)"},
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

// queueBegin queues the start of t: BEGIN; with other workers, the wait for
// t's predecessor to begin and t's lock; then, in a parallel apply, the wait
// for the transaction every later one waits for; then the seen entries
// received before t.
func (w *worker) queueBegin(t *txn) {
	w.pipe.SendQueryPrepared(stmtBegin, nil, nil, nil)
	w.pending = append(w.pending, item{kind: itemBegin, txn: t})
	if w.parallel() {
		link := w.linkText()
		ps := [][]byte{link, seqText(t.seq), nil, nil, nil, nil, nil, nil, nil, w.timeout(t)}
		if p := t.pred; p != nil && p.w != w && !w.a.isCommitted(p.seq) {
			ps[2], ps[3], ps[4] = seqText(p.seq), []byte(p.w.origin), []byte(p.end.EndLSN.String())
			if q := w.prevOf(p); q != nil && !w.a.isCommitted(q.seq) {
				ps[5], ps[6], ps[7] = seqText(q.seq), []byte(q.w.origin), []byte(q.end.EndLSN.String())
			}
		}
		if w.held != 0 {
			ps[8] = seqText(w.held)
			w.held = 0
		}
		w.pipe.SendQueryPrepared(stmtStart, ps, nil, nil)
		w.pending = append(w.pending, item{kind: itemStart, txn: t})
		w.waitFor(t, t.after)
	}
	w.queueReceived(t)
}

// prevOf is the transaction p's session runs before p (nil once p has
// committed).
func (w *worker) prevOf(p *txn) *txn {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return p.prevOnW
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
	ps := [][]byte{w.linkText(), seqText(d.seq), []byte(d.w.origin), []byte(d.end.EndLSN.String()), w.timeout(t)}
	w.pipe.SendQueryPrepared(stmtWait, ps, nil, nil)
	w.pending = append(w.pending, item{kind: itemWait, txn: t})
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
// workers, the release of its lock, by its session's next transaction when
// that is queued already, else right away.
func (w *worker) queueCommit(t *txn) error {
	w.ensurePipe()
	w.pipe.SendQueryPrepared(stmtConstraints, nil, nil, nil)
	w.pending = append(w.pending, item{kind: itemConstraints, txn: t})
	end, ts := []byte(t.end.EndLSN.String()), []byte(formatTime(t.end.CommitTime))
	if !w.parallel() {
		if t.claim {
			w.queueClaim(t)
		}
		w.params = append(w.params[:0], end, ts)
		w.pipe.SendQueryPrepared(stmtXact, w.params, nil, nil)
		w.pending = append(w.pending, item{kind: itemXact, txn: t})
	} else {
		ps := make([][]byte, 12)
		ps[0] = w.linkText()
		if p := t.pred; p != nil && p.w != w && !w.a.isCommitted(p.seq) {
			ps[1], ps[2], ps[3], ps[4] = seqText(p.seq), []byte(p.w.origin), []byte(p.end.EndLSN.String()), w.timeout(t)
		}
		ps[5], ps[6] = end, ts
		if t.claim {
			copy(ps[7:], w.claimParams(t))
		}
		w.pipe.SendQueryPrepared(stmtEnd, ps, nil, nil)
		w.pending = append(w.pending, item{kind: itemXact, txn: t})
	}
	w.pipe.SendQueryPrepared(stmtCommit, nil, nil, nil)
	w.pending = append(w.pending, item{kind: itemCommit, txn: t})
	w.commits++
	w.cur = nil
	if w.parallel() {
		w.held = t.seq
		if !w.nextIsTxn() {
			w.queueRelease()
			return w.send()
		}
	}
	return w.maybeSend()
}

// nextIsTxn tells whether the next op queued for this worker belongs to a
// transaction (which will begin next and release the lock held).
func (w *worker) nextIsTxn() bool {
	w.a.mu.Lock()
	defer w.a.mu.Unlock()
	return len(w.q) > 0 && w.q[0].t != nil
}

// queueRelease queues the release of the lock of the last transaction
// committed; the caller ends the flight with it.
func (w *worker) queueRelease() {
	if w.held == 0 {
		return
	}
	w.ensurePipe()
	w.pipe.SendQueryPrepared(stmtRelease, [][]byte{w.linkText(), seqText(w.held)}, nil, nil)
	w.pending = append(w.pending, item{kind: itemRelease})
	w.held = 0
}

// syncLocks, after a rollback, releases the ordering locks the session
// still holds for committed transactions. Its open ones keep theirs: their
// successors go on waiting while they run again (apply_start takes a lock
// held already once more, apply_release releases every hold).
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
	held := map[uint32]bool{}
	for _, r := range res.Rows {
		n, err := strconv.ParseInt(string(r[0]), 10, 64)
		if err != nil {
			return fmt.Errorf("read the ordering locks held: %w", err)
		}
		held[uint32(n)] = true
	}
	for _, t := range w.open {
		delete(held, uint32(t.seq))
	}
	w.held = 0
	for seq := range held {
		res := w.conn.ExecParams(ctx, "SELECT pgmesh.apply_release($1, $2)", [][]byte{w.linkText(), seqText(uint64(seq))}, nil, nil, nil).Read()
		if res.Err != nil {
			return fmt.Errorf("release the ordering lock of a committed transaction: %w", res.Err)
		}
	}
	return nil
}
