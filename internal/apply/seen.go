package apply

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// Seen messages make conflict detection exact: a
// remote change from peer P on a local row last written by node O at T is
// a conflict only if P had not applied O's write when it committed the
// change, i.e. if T is after pgmesh.peer_seen(P, O).
//
// Sending side: every remote transaction of U applied on the downstream D
// announces, inside its own apply transaction, after its changes and before
// its COMMIT, the non-transactional message {"node": D, "seen": {U: its
// commit time}} (pgmesh.claim_seen, which emits it outside the link's
// replication origin so that every peer's slot ships it). Non-transactional
// messages are written to the WAL at once, so the claim lands between the
// changes and the commit record, and that is the one place where it is
// exact for the rows the transaction touched:
//
//   - a local transaction on D that commits after the claim and writes one
//     of those rows waited for the apply transaction's row lock (taken by
//     the changes, before the claim) and then saw U's version: it is
//     causally after U's change, as the claim tells the peers;
//   - a local transaction that commits before the claim did not see U's
//     change, and it reaches the peers before the claim: they judge it
//     concurrent with U's change, as it is.
//
// Anywhere else the claim is wrong: emitted on another connection before
// a flight of transactions is sent, it would let a local transaction that
// commits while the flight is on its way pass for having seen U's changes;
// the peers would apply it over U's version without a log row, and the
// losing row could end up logged nowhere. Claiming per transaction costs
// one more statement in the pipeline, not a round trip.
//
// What remains inexact: an apply transaction that fails after its claim
// (the link restarts and applies it again) leaves a claim that ran ahead;
// a key that a remote update or delete found missing holds no row lock, so
// a local insert of it may commit after the claim without having seen the
// change (the peers then take the insert as later, which it is in commit
// order, and keep it as this node does, but the loss of a delete that the
// insert did not see may be logged nowhere); and commit timestamps are
// taken before the commit record is inserted, so they are not strictly
// monotone in commit order: two transactions of U committing within
// microseconds of each other may be seen out of order, which peer_seen
// cannot tell apart (a local write between the two may be taken for one
// that had seen both). The same missing key written by another link's
// apply transaction is no such gap: a remote insert and a remote delete of
// a key absent here are ordered by the key's gate (sql/0010_key_gates.sql),
// so the second sees the first's row or tombstone.
//
// The claim is recorded in the downstream's own pgmesh.peer_seen too (peer
// = itself), which the conflict statements use to tell an update or delete
// of a row whose insert is still in flight from a conflict (see the
// causality CTEs in internal/conflict/templates/full.sql.tmpl); it commits
// with the transaction.
//
// Receiving side: a seen message from the upstream is queued and its
// entries are upserted at the start of the upstream's next remote
// transaction, after BEGIN and before its changes, so they commit
// atomically with the origin progress (a crash replays both). The stream
// confirms a message to the upstream only once the link's durable progress
// has passed it, so a claim is never confirmed, and dropped by the
// upstream, while it is only in memory here. An upstream that relays its
// peers' changes but writes nothing itself sends claims and no
// transaction: when none has come for saveDelay, the claims are saved in a
// transaction of their own that sets the progress of the first worker's
// origin to the last message (saveMessages), and the upstream may forget
// them. (Not at once: a busy upstream sends a claim after nearly every
// transaction it applies, and its own next transaction carries them for
// free.)
//
// With several workers the claims and the recorded entries mean what they
// mean in a serial apply. A transaction claims after its predecessor has
// committed (in apply_commit, right before its own commit), so that every
// transaction the claim covers has committed and holds its rows' locks no
// longer than a serial apply would. The transaction that records received
// entries makes every later transaction wait for its commit before their
// changes (dispatch.go), so that each change is judged with exactly the
// entries received before its transaction; the claim's own row in
// peer_seen is only read by other links' statements.

// claimParams are the parameters of pgmesh.claim_seen but the time for
// the claim of t: origin, prefix, message, self, upstream.
func (w *worker) claimParams(t *txn) [][]byte {
	a := w.a
	// SeenMessage marshals a map of times: it cannot fail.
	msg, _ := conflict.SeenMessage{Node: a.o.Node, Seen: map[string]time.Time{a.o.Upstream: t.end.CommitTime}}.Marshal()
	return [][]byte{[]byte(w.origin), []byte(conflict.SeenPrefix), msg, []byte(a.o.Node), []byte(a.o.Upstream)}
}

// queueClaim queues the seen claim of t (serial apply; a parallel one
// claims in apply_commit, after the wait for t's predecessor).
func (w *worker) queueClaim(t *txn) {
	w.params = append(w.params[:0], w.claimParams(t)...)
	w.params = append(w.params, []byte(formatTime(t.end.CommitTime)))
	w.pipe.SendQueryPrepared(stmtClaim, w.params, nil, nil)
	w.add(item{kind: itemClaim, txn: t})
}

// receiveSeen keeps the entries of a seen message from the upstream for
// the next remote transaction. Anything malformed is logged and ignored:
// it only costs exactness.
func (a *Applier) receiveSeen(m stream.Message) {
	bad := func(why string, err error) {
		a.log.Warn("ignoring malformed seen message", "lsn", m.LSN.String(), "why", why, "err", err, "content", string(m.Content))
	}
	if m.Transactional {
		bad("transactional", nil)
		return
	}
	sm, err := conflict.ParseSeenMessage(m.Content)
	if err != nil {
		bad("parse", err)
		return
	}
	if sm.Node != a.o.Upstream {
		bad("sent by "+sm.Node+", not by the upstream", nil)
		return
	}
	// Kept per origin, the latest only: an upstream that relays others'
	// changes but writes nothing itself sends many messages before its
	// next transaction.
	for origin, ts := range sm.Seen {
		// An entry about the sender itself says nothing.
		if origin != sm.Node && ts.After(a.received[origin]) {
			a.received[origin] = ts
		}
	}
}

// queueReceived queues the upserts of the seen entries received before t,
// in t just begun.
func (w *worker) queueReceived(t *txn) {
	for _, e := range t.seen {
		w.pipe.SendQueryPrepared(stmtSeen, w.a.seenParams(e), nil, nil)
		w.add(item{kind: itemSeen, txn: t})
	}
}

func (a *Applier) seenParams(e seenEntry) [][]byte {
	return [][]byte{[]byte(a.o.Upstream), []byte(e.origin), []byte(e.until.UTC().Format(time.RFC3339Nano))}
}

// saveDelay is how long messages wait for a remote transaction to carry
// them before saveMessages commits them on their own.
const saveDelay = time.Second

// saveMessages commits, between remote transactions, what the messages
// received since the last one say (the seen entries) together with the
// first worker's origin's progress set to the last message's LSN: from
// then on the stream may confirm them, and a restart resumes after them.
// Every transaction before them has committed first, so the link's
// progress (the greatest of its origins') stays the end of a prefix of the
// stream. Nothing is done when a remote transaction dispatched after them
// carries both, or while one may still come to do it.
func (a *Applier) saveMessages(ctx context.Context) error {
	if a.cur != nil || a.held <= a.lastEnd || time.Since(a.heldSince) < saveDelay {
		return nil
	}
	var seen []seenEntry
	for _, origin := range slices.Sorted(maps.Keys(a.received)) {
		seen = append(seen, seenEntry{origin, a.received[origin]})
	}
	if err := a.runAlone(ctx, op{kind: opSave, m: stream.Message{LSN: a.held}, seen: seen}); err != nil {
		return err
	}
	clear(a.received)
	a.lastEnd, a.saved = a.held, a.held
	return nil
}

// save runs the transaction of saveMessages on this worker's session, with
// nothing else in flight.
func (w *worker) save(o op) error {
	a := w.a
	if err := w.release(); err != nil {
		return err
	}
	if err := w.drain(); err != nil {
		return err
	}
	type step struct {
		what, name string
		params     [][]byte
	}
	steps := []step{{"BEGIN", stmtBegin, nil}}
	for _, e := range o.seen {
		steps = append(steps, step{"record peer_seen", stmtSeen, a.seenParams(e)})
	}
	// The commit time is only the origin's bookkeeping here: the
	// transaction writes no replicated row.
	steps = append(steps,
		step{"origin setup", stmtXact, [][]byte{[]byte(o.m.LSN.String()), []byte(formatTime(time.Now())), []byte(w.origin)}},
		step{"COMMIT", stmtCommit, nil})
	w.busy.Store(true)
	defer w.busy.Store(false)
	for _, st := range steps {
		if _, err := w.conn.ExecPrepared(a.ctx, st.name, st.params, nil, nil).Close(); err != nil {
			if w.conn.TxStatus() != 'I' {
				_, _ = w.conn.Exec(a.ctx, "ROLLBACK").ReadAll()
			}
			return fatal{fmt.Errorf("upstream %s: save the messages received up to %s: %s: %w", a.o.Upstream, o.m.LSN, st.what, err)}
		}
	}
	close(o.done)
	return nil
}
