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
// confirms a message to the upstream only once the origin's durable
// progress has passed it, so a claim is never confirmed, and dropped by the
// upstream, while it is only in memory here. An upstream that relays its
// peers' changes but writes nothing itself sends claims and no
// transaction: when none has come for saveDelay, the claims are saved in a
// transaction of their own that sets the origin's progress to the last
// message (saveMessages), and the upstream may forget them. (Not at once:
// a busy upstream sends a claim after nearly every transaction it applies,
// and its own next transaction carries them for free.)

// claim queues the seen claim of remote transaction t, unless it announces
// nothing new.
func (a *Applier) claim(t *txn) error {
	ts := t.end.CommitTime
	if !a.o.Claim || !ts.After(a.claimed) {
		return nil
	}
	msg, err := conflict.SeenMessage{Node: a.o.Node, Seen: map[string]time.Time{a.o.Upstream: ts}}.Marshal()
	if err != nil {
		return fmt.Errorf("upstream %s: seen message: %w", a.o.Upstream, err)
	}
	a.params = append(a.params[:0], []byte(a.o.Origin), []byte(conflict.SeenPrefix), msg,
		[]byte(a.o.Node), []byte(a.o.Upstream), []byte(formatTime(ts)))
	a.pipe.SendQueryPrepared(stmtClaim, a.params, nil, nil)
	a.pending = append(a.pending, item{kind: itemClaim, txn: t})
	a.claimed = ts
	return nil
}

// receiveSeen queues the entries of a seen message from the upstream.
// Anything malformed is logged and ignored: it only costs exactness.
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

// queueReceived queues the upserts of the seen entries received since the
// last remote transaction, in the transaction just begun.
func (a *Applier) queueReceived() {
	for _, origin := range slices.Sorted(maps.Keys(a.received)) {
		a.pipe.SendQueryPrepared(stmtSeen, a.seenParams(origin), nil, nil)
		a.pending = append(a.pending, item{kind: itemSeen, txn: a.txn})
	}
	clear(a.received)
}

func (a *Applier) seenParams(origin string) [][]byte {
	return [][]byte{[]byte(a.o.Upstream), []byte(origin), []byte(a.received[origin].UTC().Format(time.RFC3339Nano))}
}

// saveDelay is how long messages wait for a remote transaction to carry
// them before saveMessages commits them on their own.
const saveDelay = time.Second

// saveMessages commits, between remote transactions, what the messages
// received since the last one say (the seen entries) together with the
// origin's progress set to the last message's LSN: from then on the stream
// may confirm them, and a restart resumes after them. Nothing is done when
// a remote transaction committed after them already carried both, or
// while one may still come to do it.
func (a *Applier) saveMessages(ctx context.Context) error {
	if a.txn != nil || a.held <= a.lastEnd || time.Since(a.heldSince) < saveDelay {
		return nil
	}
	type step struct {
		what, name string
		params     [][]byte
	}
	steps := []step{{"BEGIN", stmtBegin, nil}}
	for _, origin := range slices.Sorted(maps.Keys(a.received)) {
		steps = append(steps, step{"record peer_seen", stmtSeen, a.seenParams(origin)})
	}
	// The commit time is only the origin's bookkeeping here: the
	// transaction writes no replicated row.
	steps = append(steps,
		step{"origin setup", stmtXact, [][]byte{[]byte(a.held.String()), []byte(formatTime(time.Now()))}},
		step{"COMMIT", stmtCommit, nil})
	for _, st := range steps {
		if _, err := a.conn.ExecPrepared(ctx, st.name, st.params, nil, nil).Close(); err != nil {
			// Close rolls the transaction back.
			return a.fail(fmt.Errorf("upstream %s: save the messages received up to %s: %s: %w", a.o.Upstream, a.held, st.what, err))
		}
	}
	clear(a.received)
	a.lastEnd = a.held
	return nil
}
