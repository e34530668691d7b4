package apply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// maxInAir is how many flights may wait for their results: the server
// executes one while the next is being built and sent.
const maxInAir = 2

type itemKind byte

const (
	itemPrepare itemKind = iota
	itemBegin
	itemConstraints
	itemXact
	itemCommit
	itemChange
	itemTruncate
	itemSeen
	itemClaim
	itemPause
	itemSync
)

// item is what the applier remembers of one request in the pipeline, to
// make sense of its result.
type item struct {
	kind   itemKind
	txn    *txn
	rel    *relInfo       // itemPrepare, itemChange
	stmt   *stmt          // itemPrepare, itemChange
	change *stream.Change // itemChange
	tables string         // itemTruncate: the truncated tables, for messages
}

func (a *Applier) ensurePipe(ctx context.Context) {
	if a.pipe == nil {
		a.pipe = a.conn.StartPipeline(ctx)
	}
}

// startTxn queues BEGIN for the current remote transaction if not done yet.
// It also makes sure the pipeline is open (a relation lookup closes it).
func (a *Applier) startTxn(ctx context.Context) {
	a.ensurePipe(ctx)
	if a.txn.started {
		return
	}
	a.pipe.SendQueryPrepared(stmtBegin, nil, nil, nil)
	a.pending = append(a.pending, item{kind: itemBegin, txn: a.txn})
	a.pipe.SendQueryPrepared(stmtPause, nil, nil, nil)
	a.pending = append(a.pending, item{kind: itemPause, txn: a.txn})
	a.txn.started = true
	a.txn.queuedAt = time.Now()
	// What the upstream had seen when it committed this transaction,
	// recorded before its changes are judged and committed with them.
	a.queueReceived()
}

// maybeSend sends the flight once it is full. Cutting a flight inside a
// transaction is safe: the Sync does not end an explicit transaction block.
func (a *Applier) maybeSend(ctx context.Context) error {
	if len(a.pending) < a.o.MaxFlight {
		return nil
	}
	return a.send(ctx)
}

// send ends the current flight with a Sync and sends it, first reading the
// results of older flights so that at most maxInAir are unanswered.
func (a *Applier) send(ctx context.Context) error {
	if len(a.pending) == 0 {
		return nil
	}
	for len(a.inAir) >= maxInAir {
		if err := a.readFlight(); err != nil {
			return err
		}
	}
	a.pipe.SendPipelineSync()
	a.pending = append(a.pending, item{kind: itemSync})
	if err := a.pipe.Flush(); err != nil {
		return a.fail(fmt.Errorf("upstream %s: send %d statements: %w", a.o.Upstream, len(a.pending), err))
	}
	a.flights.Add(1)
	a.inAir = append(a.inAir, a.pending)
	if n := len(a.spare); n > 0 {
		a.pending, a.spare = a.spare[n-1], a.spare[:n-1]
	} else {
		a.pending = make([]item, 0, a.o.MaxFlight+8)
	}
	return nil
}

// drain sends what is queued, reads every result and leaves pipeline mode,
// so that the connection can be used for ordinary queries.
func (a *Applier) drain(ctx context.Context) error {
	if a.pipe == nil {
		return nil
	}
	if err := a.send(ctx); err != nil {
		return err
	}
	for len(a.inAir) > 0 {
		if err := a.readFlight(); err != nil {
			return err
		}
	}
	if err := a.closePipe(); err != nil {
		return a.fail(fmt.Errorf("upstream %s: leave pipeline mode: %w", a.o.Upstream, err))
	}
	return nil
}

func (a *Applier) closePipe() error {
	if a.pipe == nil {
		return nil
	}
	err := a.pipe.Close()
	a.pipe = nil
	return err
}

// readFlight reads the results of the oldest flight in the air. The first
// error is wrapped with the remote transaction, table and operation it
// belongs to, and kills the Applier: the server has skipped the rest of the
// flight, and later flights fail in the aborted transaction block.
func (a *Applier) readFlight() error {
	flight := a.inAir[0]
	a.inAir = a.inAir[1:]
	for i := range flight {
		it := &flight[i]
		res, err := a.pipe.GetResults()
		if err == nil {
			err = a.handleResult(it, res)
		}
		if err != nil {
			return a.fail(a.describe(it, err))
		}
	}
	clear(flight)
	a.spare = append(a.spare, flight[:0])
	return nil
}

func (a *Applier) handleResult(it *item, res any) error {
	switch it.kind {
	case itemPrepare:
		if _, ok := res.(*pgconn.StatementDescription); !ok {
			return fmt.Errorf("unexpected pipeline result %T", res)
		}
		return nil
	case itemSync:
		if _, ok := res.(*pgconn.PipelineSync); !ok {
			return fmt.Errorf("unexpected pipeline result %T", res)
		}
		return nil
	}
	rr, ok := res.(*pgconn.ResultReader)
	if !ok {
		return fmt.Errorf("unexpected pipeline result %T", res)
	}
	var kind, resolution string
	for rr.NextRow() {
		// A change's statement answers (kind, resolution); kind is NULL
		// when there was no conflict.
		if v := rr.Values(); it.kind == itemChange && len(v) == 2 && v[0] != nil {
			kind, resolution = string(v[0]), string(v[1])
		}
	}
	tag, err := rr.Close()
	if err != nil {
		return err
	}
	switch it.kind {
	case itemCommit:
		// COMMIT of a transaction that failed earlier answers ROLLBACK;
		// that error was reported already, this is a safety net.
		if tag.String() != "COMMIT" {
			return errors.New("transaction was rolled back")
		}
		t := it.txn
		a.txns.Add(1)
		a.changes.Add(t.changes)
		a.lastEndLSN.Store(uint64(t.end.EndLSN))
		a.lastCommit.Store(t.end.CommitTime.UnixNano())
		if len(t.conflicts) > 0 {
			a.mu.Lock()
			for k, n := range t.conflicts {
				a.conflicts[k] += n
			}
			a.mu.Unlock()
		}
		if a.o.OnApplied != nil {
			a.o.OnApplied(Applied{CommitLSN: t.begin.FinalLSN, Changes: t.changes, Duration: time.Since(t.queuedAt)})
		}
	case itemChange:
		if kind != "" {
			// Counted when the transaction commits: a transaction rolled
			// back and applied again must not count its conflicts twice.
			if it.txn.conflicts == nil {
				it.txn.conflicts = map[ConflictKey]uint64{}
			}
			it.txn.conflicts[ConflictKey{Table: it.rel.name, Kind: kind, Resolution: resolution}]++
			a.log.Info("conflict", "kind", kind, "resolution", resolution, "table", it.rel.name,
				"key", it.rel.keyText(it.change), "commit_lsn", it.txn.begin.FinalLSN.String())
		}
	}
	return nil
}

// describe names what a failed request was doing.
func (a *Applier) describe(it *item, err error) error {
	var what string
	switch it.kind {
	case itemPrepare:
		what = "prepare " + it.stmt.what + " " + it.rel.name
	case itemBegin:
		what = "BEGIN"
	case itemConstraints:
		what = whatDeferred
	case itemXact:
		what = "origin setup"
	case itemCommit:
		what = "COMMIT"
	case itemChange:
		what = it.stmt.what + " " + it.rel.name
	case itemTruncate:
		what = "truncate " + it.tables
	case itemSeen:
		what = "record peer_seen"
	case itemClaim:
		what = "seen message"
	case itemPause:
		what = "wait for a joining node's snapshot (pause lock)"
	case itemSync:
		what = "sync"
	}
	// The hint of a conflict under policy error says what to do.
	hint := ""
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Hint != "" {
		hint = " (hint: " + pe.Hint + ")"
	}
	if it.txn == nil {
		return fmt.Errorf("upstream %s: apply: %s: %w%s", a.o.Upstream, what, err, hint)
	}
	te := &TxnError{Upstream: a.o.Upstream, CommitLSN: it.txn.begin.FinalLSN, CommitTime: it.txn.begin.CommitTime,
		XID: it.txn.begin.XID, What: what, Err: err, hint: hint}
	if it.rel != nil {
		te.Table = it.rel.name
	} else if it.kind == itemTruncate {
		te.Table = it.tables
	}
	if it.kind == itemChange {
		te.Key = it.rel.keyText(it.change)
	}
	return te
}
