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

// Seen messages make conflict detection exact (issue 3, option (a)): a
// remote change from peer P on a local row last written by node O at T is
// a conflict only if P had not applied O's write when it committed the
// change, i.e. if T is after pgmesh.peer_seen(P, O).
//
// Sending side: before a flight that commits remote transactions of U is
// sent to the downstream D, D's WAL gets the non-transactional message
// {"node": D, "seen": {U: max remote commit time of the flight}}, emitted
// on a connection without replication origin (so every peer's slot ships
// it) and waited for. Why before: a local transaction on D that saw a row
// applied by the flight started after that row's commit, so its commit
// record follows the flight's commit, which follows the message in D's
// WAL; each peer therefore receives the message before that local change,
// and records it before judging it. Emitted after the commit, the message
// could land behind such a local change, which would then look concurrent
// with U's write (a false conflict). Announcing early cannot hide a real
// conflict from last_update_wins: a local write that committed between
// the message and the flight's commits without seeing them is judged as
// causal by the peers, whose outcome under last_update_wins is the same
// (commit time order) — only its conflict_log row is missing on them, and
// D itself logs it when it applies U's change on top of it. The same
// holds when the flight then fails: the claim runs ahead until the retry.
// What remains inexact: commit timestamps are taken before the commit
// record is inserted, so they are not strictly monotone in commit order;
// two transactions of U committing within microseconds of each other may
// be seen out of order, which peer_seen cannot tell apart.
//
// The sender also records its own claim in its own pgmesh.peer_seen (peer
// = itself), which the conflict statements use to tell an update or delete
// of a row whose insert is still in flight from a conflict (see
// internal/conflict, classifyCTE).
//
// Receiving side: a seen message from the upstream is queued and its
// entries are upserted at the start of the upstream's next remote
// transaction, after BEGIN and before its changes, so they commit
// atomically with the origin progress (a crash replays both).

// emitSeen writes the seen message for the flight about to be sent, unless
// it announces nothing new.
func (a *Applier) emitSeen(ctx context.Context) error {
	ts := a.flightSeen
	a.flightSeen = time.Time{}
	if a.o.SeenConn == nil || !ts.After(a.seenSent) {
		return nil
	}
	msg, err := conflict.SeenMessage{Node: a.o.Node, Seen: map[string]time.Time{a.o.Upstream: ts}}.Marshal()
	if err != nil {
		return fmt.Errorf("upstream %s: seen message: %w", a.o.Upstream, err)
	}
	// The same statement records the claim for this node itself, as
	// peer_seen(this node, upstream): the conflict statements ask it
	// whether a change of another peer arrives ahead of an upstream change
	// it depends on (an update of a row whose insert is still on its way
	// here is no conflict). Recorded, like the message, just before the
	// flight commits, so it may run ahead of what is committed by one
	// flight; it only decides whether a missing row is logged, never an
	// outcome.
	res := a.o.SeenConn.ExecParams(ctx, `WITH own AS (
  INSERT INTO pgmesh.peer_seen (peer, origin, seen_until) VALUES ($3::text, $4::text, $5::timestamptz)
  ON CONFLICT (peer, origin) DO UPDATE SET seen_until = greatest(pgmesh.peer_seen.seen_until, excluded.seen_until))
SELECT pg_logical_emit_message(false, $1, $2::text)`,
		[][]byte{[]byte(conflict.SeenPrefix), msg, []byte(a.o.Node), []byte(a.o.Upstream), []byte(ts.UTC().Format(time.RFC3339Nano))},
		nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("upstream %s: emit seen message on %s: %w", a.o.Upstream, a.o.Node, res.Err)
	}
	a.seenSent = ts
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
		params := [][]byte{[]byte(a.o.Upstream), []byte(origin), []byte(a.received[origin].UTC().Format(time.RFC3339Nano))}
		a.pipe.SendQueryPrepared(stmtSeen, params, nil, nil)
		a.pending = append(a.pending, item{kind: itemSeen, txn: a.txn})
	}
	clear(a.received)
}
