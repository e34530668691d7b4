package apply

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

// Commit order across workers (sql/0012_parallel_apply.sql). Transaction
// number s holds the session-level advisory lock (link, s) from its BEGIN
// until right after its COMMIT, retries included. A transaction
//
//   - waits (apply_await) for the transaction that last touched what a
//     change touches, when that one runs on another session (deps.go), and
//     at its start for the one that recorded seen entries or ran DDL;
//   - commits (apply_commit) once the one before it has committed.
//
// A transaction that has not begun yet is waited for through its session's
// gate, a lock the session holds but while it begins a transaction: so
// every wait is a lock wait on the session that will make progress, and
// the deadlock detector sees every cycle — also one through a worker that
// is still busy (even waiting, client side, for results) with an earlier
// transaction that waits for a local one. Every wait is on a transaction
// before it in the commit order, and a session runs its transactions in
// that order, so the waits never form a cycle among the link's sessions
// alone; a cycle through a local transaction or another link is found by
// the waiting session itself (apply_wait_lock: between steps of 100 ms it
// follows pg_blocking_pids from the session it waits for), which ends its
// transaction with a deadlock error and runs it again: the victim is ours,
// not the local transaction, which a serial apply would not have blocked.
// No one else would find a cycle across links: the server's detector runs
// once per wait, after deadlock_timeout, and the steps are shorter.
//
// Why that is exactly-once: a transaction commits only after its
// predecessor committed and is visible (the predecessor's lock was free and
// its row of pgmesh.apply_progress, visible with its changes, reached its
// end; a free lock without that row means its session is gone, and the
// waiter fails instead of committing; the origin's own progress would move
// already when the commit record is written). So at any
// moment, and after any crash, the committed transactions are a prefix of
// the upstream's stream, each one's end recorded in the origin of the
// session that committed it; the greatest progress among the link's
// origins is the end of the prefix, and resuming after it skips every
// committed transaction and none other. Local commit records follow the
// same order (the lock is released after the commit record), so the
// greatest flushed progress is also a prefix that is durable.
//
// A transaction's lock is released by the session's next transaction right
// after its BEGIN (apply_begin), when that one is queued at the COMMIT.
// Otherwise the release is a statement of its own after the COMMIT,
// outside any transaction block, and it ends its flight: if it failed, the
// server would skip the rest of the flight, and statements of the next
// transaction in a later flight would run without their BEGIN.

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
	stmtPause       = "pgmesh_pause"
)

// PauseLock is the advisory lock (two-key form: 'pm', 'join') that every
// apply transaction, on every worker's session, holds in share mode from
// right after its BEGIN (and its ordering lock) until it has committed.
// `pgmesh node add` takes it exclusively on the source node for the moment
// it creates the copy's snapshot and reads the source's origin progress:
// origin progress is not MVCC, so only with apply paused do the snapshot
// and the progress describe the same set of applied transactions. Locks
// are released after the commit is visible and the origin advanced, and
// the lock is taken before the transaction writes (has an xid), so the
// slot creation, which waits for running xids, never waits for a paused
// apply transaction. It is taken after apply_begin, which releases the
// ordering lock of the session's previous transaction: a transaction of
// another worker that holds the pause lock in share mode and waits for
// that one to commit is not kept waiting by the pause.
var PauseLock = [2]int32{28781, 0x6a6f696e}

// A remote transaction starts with stmtBegin, (parallel) stmtStart and
// stmtPause. A serial remote transaction ends with stmtConstraints, stmtClaim (see
// seen.go), stmtXact and stmtCommit; a parallel one with stmtConstraints,
// stmtEnd (wait, claim and origin setup) and stmtCommit.
// PostgreSQL 16+ advances the session's origin to the LSN given to
// pg_replication_origin_xact_setup even when the transaction then aborts, so
// that call must come after everything that can fail: deferred constraint
// triggers are fired before it (SET CONSTRAINTS ALL IMMEDIATE), and COMMIT
// follows in the same flight, so only a crash of the agent (a flight cut
// short) can come in between. For that case the same statement records the
// end in pgmesh.apply_progress, which commits with the data or not at all:
// the link's progress is read from there (pgmesh.origin_applied,
// origin.LinkProgress), never from an origin alone. The xid makes even a
// transaction whose changes all missed their rows write a commit record,
// which advances the origin.
var fixedStatements = []struct{ name, sql string }{
	// Read committed whatever the server default: a serialization failure
	// at COMMIT would come after the origin setup.
	{stmtBegin, "BEGIN ISOLATION LEVEL READ COMMITTED"},
	{stmtConstraints, "SET CONSTRAINTS ALL IMMEDIATE"},
	{stmtXact, "SELECT pg_catalog.pg_current_xact_id(), pgmesh.note_applied($3, $1), pg_catalog.pg_replication_origin_xact_setup($1, $2)"},
	{stmtCommit, "COMMIT"},
	{stmtSeen, conflict.SeenSQL()},
	{stmtClaim, "SELECT pgmesh.claim_seen($1, $2, $3, $4, $5, $6)"},
	{stmtStart, "SELECT pgmesh.apply_begin($1, $2, $3, $4)"},
	{stmtWait, "SELECT pgmesh.apply_await($1, $2, $3, $4, $5, $6)"},
	{stmtEnd, "SELECT pgmesh.apply_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"},
	{stmtRelease, "SELECT pgmesh.apply_release($1, $2)"},
	{stmtPause, fmt.Sprintf("SELECT pg_catalog.pg_advisory_xact_lock_shared(%d, %d)", PauseLock[0], PauseLock[1])},
}

// waitTimeout bounds each wait of a transaction for another one (the
// lock_timeout of the wait): a wait in a cycle that the deadlock detector
// keeps breaking on the other side, or one it cannot see (a transaction
// that has not begun), ends and the transaction runs again.
const waitTimeout = "5s"

// seqText is a transaction number as the int key of its lock.
func seqText(seq uint64) []byte { return strconv.AppendInt(nil, int64(int32(uint32(seq))), 10) }

// linkText is the first key of the link's ordering locks.
func (w *worker) linkText() []byte { return strconv.AppendInt(nil, int64(w.a.link), 10) }

// gate is the key of the worker's gate: the link's id in the high half, the
// worker's number in the low one (bigint advisory locks are a key space of
// their own; the conflict statements' bigint keys are hashes). The key
// 65536 below is the session's life lock (apply_gate), which tells a
// session that is gone from one that is beginning a transaction.
func (w *worker) gate() int64 { return int64(w.a.link)<<32 | int64(0x7fff0000+w.id) }

func (w *worker) gateText() []byte { return strconv.AppendInt(nil, w.gate(), 10) }

// queueBegin queues the start of t: BEGIN; with other workers, t's lock
// (apply_begin) and the wait for the transaction every later one waits
// for; then the seen entries received before t.
func (w *worker) queueBegin(t *txn) {
	w.pipe.SendQueryPrepared(stmtBegin, nil, nil, nil)
	w.add(item{kind: itemBegin, txn: t})
	if w.parallel() {
		var prev []byte
		if w.held != 0 {
			prev, w.held = seqText(w.held), 0
		}
		w.pipe.SendQueryPrepared(stmtStart, [][]byte{w.linkText(), seqText(t.seq), w.gateText(), prev}, nil, nil)
		w.add(item{kind: itemStart, txn: t})
	}
	w.pipe.SendQueryPrepared(stmtPause, nil, nil, nil)
	w.add(item{kind: itemPause, txn: t})
	if t.queuedAt.IsZero() {
		t.queuedAt = time.Now()
	}
	if w.parallel() {
		w.waitFor(t, t.after)
	}
	w.queueReceived(t)
}

// awaitParams name transaction d for apply_await: number, origin, end,
// its session's gate.
func awaitParams(d *txn) [][]byte {
	return [][]byte{seqText(d.seq), []byte(d.w.origin), []byte(d.end.EndLSN.String()), d.w.gateText()}
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
	ps := append([][]byte{w.linkText()}, awaitParams(d)...)
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
// workers, the release of its lock, which ends the flight.
func (w *worker) queueCommit(t *txn) error {
	w.ensurePipe()
	w.queueDeferredChecks(t)
	w.pipe.SendQueryPrepared(stmtConstraints, nil, nil, nil)
	w.add(item{kind: itemConstraints, txn: t})
	end, ts := []byte(t.end.EndLSN.String()), []byte(formatTime(t.end.CommitTime))
	if !w.parallel() {
		if t.claim {
			w.queueClaim(t)
		}
		w.params = append(w.params[:0], end, ts, []byte(w.origin))
		w.pipe.SendQueryPrepared(stmtXact, w.params, nil, nil)
		w.add(item{kind: itemXact, txn: t})
	} else {
		ps := make([][]byte, 14)
		ps[0] = w.linkText()
		if p := t.pred; p != nil && p.w != w && !w.a.isCommitted(p.seq) {
			copy(ps[1:5], awaitParams(p))
			ps[5] = w.timeout(t)
		}
		ps[6], ps[7] = end, ts
		if t.claim {
			copy(ps[8:13], w.claimParams(t))
		}
		ps[13] = []byte(w.origin)
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
	// The lock goes when the session's next transaction begins, right
	// after, if one is queued already: no flight ends per transaction.
	w.held = t.seq
	if w.nextTxn() != nil {
		return w.maybeSend()
	}
	return w.release()
}

// release queues the release of the lock of the transaction committed
// last and sends the flight, which the release ends.
func (w *worker) release() error {
	if w.held == 0 {
		return nil
	}
	w.ensurePipe()
	w.pipe.SendQueryPrepared(stmtRelease, [][]byte{w.linkText(), seqText(w.held)}, nil, nil)
	w.add(item{kind: itemRelease})
	w.held = 0
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

// syncLocks, after a rollback, takes the session's gate again if a failure
// left it open, and releases the ordering locks the session still holds for
// committed transactions (a failed release). The others stay: the
// successors of its open transactions go on waiting while those run again
// (a lock held already is taken once more, apply_release releases every
// hold).
func (w *worker) syncLocks(ctx context.Context) error {
	if !w.parallel() {
		return nil
	}
	res := w.conn.ExecParams(ctx, `SELECT objsubid::int, (classid::bigint << 32 | objid::bigint)::text FROM pg_catalog.pg_locks
	  WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() AND mode = 'ExclusiveLock' AND granted`, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("read the ordering locks held: %w", res.Err)
	}
	gate := false
	w.held = 0
	committed := uint32(w.a.committedN.Load())
	for _, r := range res.Rows {
		key, err := strconv.ParseInt(string(r[1]), 10, 64)
		if err != nil {
			return fmt.Errorf("read the ordering locks held: %w", err)
		}
		switch {
		case string(r[0]) == "1" && key == w.gate():
			gate = true
		case string(r[0]) == "2" && int32(key>>32) == w.a.link:
			// Numbers are compared as the lock keys wrap: within 2^31.
			if seq := uint32(key); int32(committed-seq) >= 0 {
				res := w.conn.ExecParams(ctx, "SELECT pgmesh.apply_release($1, $2)", [][]byte{w.linkText(), seqText(uint64(seq))}, nil, nil, nil).Read()
				if res.Err != nil {
					return fmt.Errorf("release the ordering lock of a committed transaction: %w", res.Err)
				}
			}
		}
	}
	if !gate {
		if res := w.conn.ExecParams(ctx, "SELECT pgmesh.apply_gate($1)", [][]byte{w.gateText()}, nil, nil, nil).Read(); res.Err != nil {
			return fmt.Errorf("take the session's gate: %w", res.Err)
		}
	}
	return nil
}
