package apply

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// txn is one remote transaction on its way through the Applier.
type txn struct {
	begin stream.Begin
	end   stream.Commit
	// The first parameters of every statement: remote commit time and
	// commit LSN as text.
	commitTime, commitLSN []byte
	skip                  bool // applied before (at or before the link's progress)

	seq  uint64 // number in the upstream's commit order, from 1 in this Applier
	pred *txn   // the transaction numbered just before, nil for the first
	// after is the transaction that everything after it waits for
	// (recorded seen messages, DDL), nil when none is pending.
	after     *txn
	seen      []seenEntry // received seen entries recorded at its start
	claim     bool        // claims the commit time (seen.go)
	exclusive bool        // carries a message for OnMessage: runs alone
	keys      int         // keys recorded in the dependency tracker
	coarse    bool        // recorded too many: every later change waits for it

	// Set when it is handed to a worker.
	w       *worker
	prevOnW *txn // the worker's transaction before it, nil for its first
	buf     []op // ops held back until the transaction is handed over

	// ops are all the ops handed over, kept until the commit so that the
	// worker can run the transaction again after a deadlock; retain turns
	// false (and ops nil) once the transaction is too big to keep.
	// Guarded by Applier.mu.
	ops    []op
	nops   int
	retain bool

	recheck bool // Options.RecheckDeferred: deferrable constraints decided row by row

	// Worker state, the worker's goroutine only.
	changes uint64 // row changes applied, reported at commit
	waited  uint64 // number of the latest transaction it already waited for
	tries   int    // failed attempts
	// written are the keys it wrote in tables with deferrable constraints,
	// checked when it ends (see queueDeferredChecks).
	written   []*writtenKeys
	queuedAt  time.Time              // when its BEGIN was first queued
	conflicts map[ConflictKey]uint64 // met so far, counted in Stats once it commits
}

// opKind is what a worker is asked to do.
type opKind byte

const (
	opChange  opKind = iota + 1 // apply a change of t (after waiting for dep)
	opWait                      // wait for dep (the whole-transaction dependencies)
	opMessage                   // run OnMessage (inside t, or outside any transaction when t is nil)
	opCommit                    // commit t
	opForget                    // look the local tables up again
	opSave                      // commit the seen entries and the progress of messages (saveMessages)
)

type op struct {
	kind opKind
	t    *txn
	c    *stream.Change
	m    stream.Message
	dep  *txn          // transaction to wait for first (nil: none)
	done chan struct{} // opMessage outside a transaction, opSave: closed once run
	seen []seenEntry   // opSave
}

// maxQueue bounds the ops waiting for one worker; the dispatcher (and so
// the stream) waits when it is full.
const maxQueue = 4096

// handOverAfter is the number of changes after which a transaction is
// handed to a worker before its commit has arrived (a big one), instead of
// being held back until its worker can be chosen knowing all its changes.
const handOverAfter = 256

// retainMax is the number of ops above which a transaction is not kept for
// a retry: a deadlock in a bigger one stops the link, which then streams it
// again from the upstream.
const retainMax = 20_000

// seenEntry is a seen watermark to record: the upstream had applied origin
// up to until.
type seenEntry struct {
	origin string
	until  time.Time
}

// number gives t its place in the commit order, and the seen entries
// received since the last transaction: recorded at its start, before its
// changes are judged, and seen by every later transaction (which waits for
// it), as in a serial apply.
func (a *Applier) number(t *txn) {
	a.seq++
	t.seq = a.seq
	t.pred = a.last
	if a.deps != nil {
		if g := a.deps.after; g != nil && !a.isCommitted(g.seq) {
			t.after = g
		}
	}
	if len(a.received) > 0 {
		for _, origin := range slices.Sorted(maps.Keys(a.received)) {
			t.seen = append(t.seen, seenEntry{origin, a.received[origin]})
		}
		clear(a.received)
		if a.deps != nil {
			a.deps.after = t
		}
	}
}

// add hands op to t's worker, or holds it back while t is small and its
// commit has not arrived.
func (a *Applier) add(t *txn, o op) error {
	if t.w == nil {
		t.buf = append(t.buf, o)
		if o.kind != opCommit && len(t.buf) < handOverAfter {
			return nil
		}
		a.assign(t)
		buf := t.buf
		t.buf = nil
		for _, o := range buf {
			if err := a.push(t.w, o); err != nil {
				return err
			}
		}
		return nil
	}
	return a.push(t.w, o)
}

// assign chooses t's worker. While the link keeps up (few transactions
// waiting to commit), and for a while after a deadlock or lock timeout,
// the worker of the transaction before: apply is then serial, and no
// transaction holds locks while it waits for an earlier one to commit —
// the wait through which a local transaction, waiting for one of them
// while holding what the earlier one needs, closes a cycle that only the
// deadlock detector (after deadlock_timeout) breaks. With a backlog, the
// least loaded worker, in turn among equals. Dependencies pull a
// transaction to the worker of the one it depends on when its changes
// held back show a dependency (a transaction handed over before its
// commit goes to the least loaded worker): a wait across sessions costs
// two context switches, and a chain of dependent transactions runs best
// on one session.
func (a *Applier) assign(t *txn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// The latest uncommitted transaction t depends on, as far as its
	// changes held back show.
	var dep *txn
	for _, o := range t.buf {
		if o.dep != nil && o.dep.seq > a.committed && (dep == nil || o.dep.seq > dep.seq) {
			dep = o.dep
		}
	}
	load := func(v *worker) int {
		n := len(v.q)
		if v.last != nil && v.last.seq > a.committed {
			n += int(v.last.seq - a.committed)
		}
		return n
	}
	var w *worker
	switch p := t.pred; {
	case p != nil && p.w != nil && (a.seq-a.committed <= a.spreadAfter || time.Now().Before(a.serialUntil)):
		w = p.w
	default:
		best := -1
		var bestLoad int
		for i := range a.workers {
			k := (a.rr + i) % len(a.workers)
			if l := load(a.workers[k]); best < 0 || l < bestLoad {
				best, bestLoad = k, l
			}
		}
		w = a.workers[best]
		// Its changes would wait for that one: run after it on its
		// session instead, with no wait across sessions — when it is that
		// session's last transaction (a chain), or that session has no
		// more to do than the least loaded one. Otherwise several chains
		// begun while the link applied serially would stay on one session.
		if dep != nil && dep.w != nil && !a.noAffinity && (dep.w.last == dep || load(dep.w) <= bestLoad+1) {
			w = dep.w
		} else {
			a.rr = (best + 1) % len(a.workers)
		}
	}
	t.w = w
	t.prevOnW = w.last
	w.last = t
}

// spreadAfter is the number of transactions waiting to commit above which
// the link has a backlog and spreads them over its workers.
const spreadAfter = 4

// serialAfterRetry is how long a link applies serially after a deadlock or
// lock timeout (see assign).
const serialAfterRetry = 10 * time.Second

// push appends op to w's queue, waiting for room.
func (a *Applier) push(w *worker, o op) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for len(w.q) >= maxQueue && a.err == nil {
		a.cond.Wait()
	}
	if a.err != nil {
		return a.err
	}
	w.q = append(w.q, o)
	if t := o.t; t != nil && t.retain {
		t.ops = append(t.ops, o)
		t.nops++
		if t.nops > retainMax {
			t.retain, t.ops = false, nil
		}
	}
	a.cond.Broadcast()
	return nil
}

// exclusiveMessage hands a transactional message to OnMessage inside t,
// which from then on runs alone: it waits for every transaction before it
// to commit before the message, and nothing after it is dispatched before
// it commits (Commit waits).
func (a *Applier) exclusiveMessage(t *txn, m stream.Message) error {
	if !t.exclusive {
		t.exclusive = true
		if t.pred != nil && !a.isCommitted(t.pred.seq) {
			if err := a.add(t, op{kind: opWait, t: t, dep: t.pred}); err != nil {
				return err
			}
		}
	}
	return a.add(t, op{kind: opMessage, t: t, m: m})
}

// outsideMessage hands a message sent outside any transaction to OnMessage
// once everything before it has committed, and waits until it has run.
func (a *Applier) outsideMessage(m stream.Message) error {
	if err := a.runAlone(context.Background(), op{kind: opMessage, m: m}); err != nil {
		return err
	}
	a.forgetTables()
	return a.Err()
}

// runAlone hands o to the first worker once every transaction before it has
// committed, makes the worker send what it holds, and waits until o has
// run, the Applier failed, or ctx ended.
func (a *Applier) runAlone(ctx context.Context, o op) error {
	if a.last != nil {
		if err := a.waitCommitted(a.last.seq); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	o.done = done
	if err := a.push(a.workers[0], o); err != nil {
		return err
	}
	a.mu.Lock()
	a.flushGen++
	a.cond.Broadcast()
	a.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-a.failed:
		return a.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// forgetTables makes every worker and the dispatcher look the local tables
// up again: a message may have changed them.
func (a *Applier) forgetTables() {
	clear(a.depRels)
	for _, w := range a.workers {
		if err := a.push(w, op{kind: opForget}); err != nil {
			return
		}
	}
}

// String names a remote transaction in errors and logs: its commit LSN.
func (t *txn) String() string { return t.begin.FinalLSN.String() }
