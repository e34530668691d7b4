package apply

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// maxInAir is how many flights' worth of rows (Options.MaxFlight)
// may wait for their results: the server executes some while more are
// being built and sent.
const maxInAir = 2

type itemKind byte

const (
	itemPrepare itemKind = iota
	itemBegin
	itemStart
	itemWait
	itemConstraints
	itemXact
	itemCommit
	itemRelease
	itemChange
	itemMany
	itemTruncate
	itemSeen
	itemClaim
	itemPause
	itemSync
)

// item is what the worker remembers of one request in the pipeline, to
// make sense of its result.
type item struct {
	kind    itemKind
	txn     *txn
	rel     *relInfo         // itemPrepare, itemChange, itemMany
	stmt    *stmt            // itemPrepare, itemChange, itemMany
	change  *stream.Change   // itemChange
	changes []*stream.Change // itemMany
	tables  string           // itemTruncate: the truncated tables, for messages
}

// add appends it to the pending flight.
func (w *worker) add(it item) {
	w.pending = append(w.pending, it)
	w.pendingW += it.weight()
}

// weight is what an item counts for in a flight's size: its rows.
func (it *item) weight() int { return max(1, len(it.changes)) }

func flightWeight(flight []item) int {
	n := 0
	for i := range flight {
		n += flight[i].weight()
	}
	return n
}

func (w *worker) ensurePipe() {
	if w.pipe == nil {
		w.pipe = w.conn.StartPipeline(w.a.ctx)
	}
}

// maybeSend sends the flight once it is full. Cutting a flight inside a
// transaction is safe: the Sync does not end an explicit transaction block.
func (w *worker) maybeSend() error {
	if w.pendingW < w.a.o.MaxFlight {
		return nil
	}
	return w.send()
}

// send ends the current flight with a Sync and sends it, then reads the
// results of older flights until at most maxInAir flights' worth of
// statements are unanswered. It never waits for results before sending:
// what it holds may be what another session's statements wait for.
func (w *worker) send() error {
	if len(w.pending) == 0 {
		return nil
	}
	a := w.a
	a.mu.Lock()
	w.flushed = a.flushGen
	a.mu.Unlock()
	w.pipe.SendPipelineSync()
	w.add(item{kind: itemSync})
	if err := w.pipe.Flush(); err != nil {
		return fatal{fmt.Errorf("upstream %s: send %d statements: %w", a.o.Upstream, len(w.pending), err)}
	}
	a.flights.Add(1)
	w.inAir = append(w.inAir, w.pending)
	w.inAirN += w.pendingW
	w.pendingW = 0
	w.commits = 0
	if n := len(w.spare); n > 0 {
		w.pending, w.spare = w.spare[n-1], w.spare[:n-1]
	} else {
		w.pending = make([]item, 0, a.o.MaxFlight+16)
	}
	for w.inAirN > maxInAir*a.o.MaxFlight {
		if err := w.readFlight(); err != nil {
			return err
		}
	}
	return nil
}

// drain sends what is queued, reads every result and leaves pipeline mode,
// so that the connection can be used for ordinary queries.
func (w *worker) drain() error {
	if w.pipe == nil {
		return nil
	}
	if err := w.send(); err != nil {
		return err
	}
	for len(w.inAir) > 0 {
		if err := w.readFlight(); err != nil {
			return err
		}
	}
	err := w.pipe.Close()
	w.pipe = nil
	if err != nil {
		return fatal{fmt.Errorf("upstream %s: leave pipeline mode: %w", w.a.o.Upstream, err)}
	}
	return nil
}

// readFlight reads the results of the oldest flight in the air. The first
// error is wrapped with the remote transaction, table and operation it
// belongs to; the rest of the flight, which the server skipped, is read up
// to its Sync before the error is returned.
func (w *worker) readFlight() error {
	flight := w.inAir[0]
	w.inAir = w.inAir[1:]
	w.inAirN -= flightWeight(flight)
	w.busy.Store(true)
	defer w.busy.Store(false)
	for i := range flight {
		it := &flight[i]
		res, err := w.pipe.GetResults()
		if err == nil {
			err = w.handleResult(it, res)
		}
		if err != nil {
			err = w.describe(it, err)
			if it.kind == itemRelease {
				// Outside a transaction block: the flights after it ran
				// on; only a new session knows what committed.
				err = fatal{err}
			}
			var pe *pgconn.PgError
			if it.kind != itemSync && errors.As(err, &pe) {
				if serr := w.toSync(); serr != nil {
					return fatal{errors.Join(err, serr)}
				}
			} else if !errors.As(err, &pe) {
				err = fatal{err}
			}
			w.recycle(flight)
			return err
		}
	}
	w.recycle(flight)
	return nil
}

// toSync reads the results up to the Sync of a flight whose statement
// failed: the server skipped the statements between.
func (w *worker) toSync() error {
	for {
		res, err := w.pipe.GetResults()
		var pe *pgconn.PgError
		switch {
		case errors.As(err, &pe):
			continue
		case err != nil:
			return err
		}
		switch r := res.(type) {
		case *pgconn.PipelineSync:
			return nil
		case *pgconn.ResultReader:
			if _, err := r.Close(); err != nil && !errors.As(err, &pe) {
				return err
			}
		case nil:
			return errors.New("pipeline: no Sync after a failed statement")
		}
	}
}

// skipFlight reads the oldest flight in the air after a failure. Its
// statements fail (in the aborted transaction block) or are skipped; should
// one succeed all the same, its result counts as usual — a COMMIT that went
// through is a committed transaction, never to run again.
func (w *worker) skipFlight() error {
	flight := w.inAir[0]
	w.inAir = w.inAir[1:]
	w.inAirN -= flightWeight(flight)
	w.busy.Store(true)
	defer w.busy.Store(false)
	defer w.recycle(flight)
	for i := range flight {
		it := &flight[i]
		res, err := w.pipe.GetResults()
		if err == nil {
			err = w.handleResult(it, res)
		}
		var pe *pgconn.PgError
		switch {
		case err == nil:
			if it.kind == itemSync {
				return nil
			}
		case errors.As(err, &pe) && it.kind != itemSync:
			// The rest of the flight was skipped: its Sync is next.
			if serr := w.toSync(); serr != nil {
				return fatal{fmt.Errorf("upstream %s: read results after a failure: %w", w.a.o.Upstream, serr)}
			}
			return nil
		default:
			return fatal{fmt.Errorf("upstream %s: read results after a failure: %w", w.a.o.Upstream, err)}
		}
	}
	return nil
}

func (w *worker) recycle(flight []item) {
	clear(flight)
	w.spare = append(w.spare, flight[:0])
}

func (w *worker) handleResult(it *item, res any) error {
	switch it.kind {
	case itemPrepare:
		if _, ok := res.(*pgconn.StatementDescription); !ok {
			return fmt.Errorf("unexpected pipeline result %T", res)
		}
		it.stmt.ok = true
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
	var conflicts []verdict
	for rr.NextRow() {
		if v, ok := verdictOf(it, rr.Values()); ok {
			conflicts = append(conflicts, v)
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
			return fatal{errors.New("transaction was rolled back")}
		}
		w.committed(it.txn)
	}
	for _, v := range conflicts {
		// Counted when the transaction commits: a transaction rolled back
		// and applied again must not count its conflicts twice.
		if it.txn.conflicts == nil {
			it.txn.conflicts = map[ConflictKey]uint64{}
		}
		it.txn.conflicts[ConflictKey{Table: it.rel.name, Kind: v.kind, Resolution: v.resolution}]++
		w.a.log.Info("conflict", "kind", v.kind, "resolution", v.resolution, "table", it.rel.name,
			"key", it.rel.keyText(v.change), "commit_lsn", it.txn.String())
	}
	return nil
}

// verdict is a conflict met by a change.
type verdict struct {
	kind, resolution string
	change           *stream.Change
}

// verdictOf reads one result row of a change statement: (kind, resolution)
// for a single change, (position, kind, resolution) for several; kind is
// NULL when there was no conflict.
func verdictOf(it *item, v [][]byte) (verdict, bool) {
	switch {
	case it.kind == itemChange && len(v) == 2 && v[0] != nil:
		return verdict{string(v[0]), string(v[1]), it.change}, true
	case it.kind == itemMany && len(v) == 3 && v[1] != nil:
		var i int
		if _, err := fmt.Sscan(string(v[0]), &i); err == nil && i >= 1 && i <= len(it.changes) {
			return verdict{string(v[1]), string(v[2]), it.changes[i-1]}, true
		}
	}
	return verdict{}, false
}

// describe names what a failed request was doing.
func (w *worker) describe(it *item, err error) error {
	var what string
	switch it.kind {
	case itemPrepare:
		what = "prepare " + it.stmt.what + " " + it.rel.name
	case itemBegin:
		what = "BEGIN"
	case itemStart:
		what = "take the ordering lock"
	case itemWait:
		what = "wait for an earlier transaction to commit"
	case itemConstraints:
		what = whatDeferred
	case itemXact:
		what = "origin setup"
	case itemCommit:
		what = "COMMIT"
	case itemRelease:
		what = "release the ordering lock"
	case itemChange, itemMany:
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
	up := w.a.o.Upstream
	if it.txn == nil {
		return wrapKeep(err, fmt.Sprintf("upstream %s: apply: %s", up, what), hint)
	}
	te := &TxnError{Upstream: up, CommitLSN: it.txn.begin.FinalLSN, CommitTime: it.txn.begin.CommitTime,
		XID: it.txn.begin.XID, What: what, Err: err, hint: hint}
	if it.rel != nil {
		te.Table = it.rel.name
	} else if it.kind == itemTruncate {
		te.Table = it.tables
	}
	if it.kind == itemChange && it.change != nil {
		te.Key = it.rel.keyText(it.change)
	}
	// A fatal mark stays outside, where retryable looks for it.
	var f fatal
	if errors.As(err, &f) {
		te.Err = f.error
		return fatal{te}
	}
	return te
}

// wrapKeep wraps err with a prefix (and a suffix), keeping a fatal mark.
func wrapKeep(err error, prefix, suffix string) error {
	var f fatal
	if errors.As(err, &f) {
		return fatal{fmt.Errorf("%s: %w%s", prefix, f.error, suffix)}
	}
	return fmt.Errorf("%s: %w%s", prefix, err, suffix)
}
