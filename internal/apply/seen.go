package apply

import (
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// Seen messages make conflict detection exact (issue 3, option (a)): a
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
// The claim used to be emitted on a separate connection before a whole
// flight of transactions was sent. A local transaction committing while
// that flight was still on its way was then taken by the peers as having
// seen U's changes although it had not: they applied it over U's version
// without a log row, leaving D alone to log the conflict when U's change
// reached it — and when that change reached D late (a slow or retried
// flight), D's row had meanwhile been overwritten by a third node's write
// that had seen U's change, which superseded it silently: the losing row
// was logged nowhere (the partition experiment caught it). Claiming per
// transaction costs one more statement in the pipeline, not a round trip.
//
// What remains inexact: an apply transaction that fails after its claim
// (the link restarts and applies it again) leaves a claim that ran ahead;
// a key that a remote update or delete found missing holds no row lock, so
// a local insert of it may commit after the claim without having seen the
// change (the peers then take the insert as later, which it is in commit
// order); and commit timestamps are taken before the commit record is inserted,
// so they are not strictly monotone in commit order: two transactions of U
// committing within microseconds of each other may be seen out of order,
// which peer_seen cannot tell apart.
//
// The claim is recorded in the downstream's own pgmesh.peer_seen too (peer
// = itself), which the conflict statements use to tell an update or delete
// of a row whose insert is still in flight from a conflict (see
// internal/conflict, classifyCTE); it commits with the transaction.
//
// Receiving side: a seen message from the upstream is queued and its
// entries are upserted at the start of the upstream's next remote
// transaction, after BEGIN and before its changes, so they commit
// atomically with the origin progress (a crash replays both).
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
		params := [][]byte{[]byte(w.a.o.Upstream), []byte(e.origin), []byte(e.until.UTC().Format(time.RFC3339Nano))}
		w.pipe.SendQueryPrepared(stmtSeen, params, nil, nil)
		w.add(item{kind: itemSeen, txn: t})
	}
}
