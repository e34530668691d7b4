package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// Options configure one replication stream.
type Options struct {
	Node        string // upstream node name, for errors and logs
	Slot        string
	Publication string // normally "pgmesh"
	// StartLSN is the resume point: transactions whose commit ends at or
	// before it are already applied and are skipped, also client-side.
	StartLSN LSN
	// OriginNone asks pgoutput (PG16+) not to send changes applied under a
	// replication origin. Such transactions are dropped client-side anyway.
	OriginNone bool
	// StatusInterval is how often the flushed position is reported to the
	// upstream (default 1s).
	StatusInterval time.Duration
	// MaxInFlight bounds the bytes of received messages waiting for the
	// Handler (default 8 MiB).
	MaxInFlight int
	Logger      *slog.Logger
}

// DefaultMaxInFlight is the default Options.MaxInFlight.
const DefaultMaxInFlight = 8 << 20

// Flushed returns the upstream LSN up to which changes are durably applied
// downstream (the agent implements it with
// pg_replication_origin_progress(origin, true)). It is the only position
// the upstream is told it may forget.
type Flushed func(ctx context.Context) (LSN, error)

func (o Options) withDefaults() Options {
	if o.StatusInterval <= 0 {
		o.StatusInterval = time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// pluginArgs are the pgoutput options. Text format only: apply binds text.
// Protocol version 1: a transaction arrives whole at its commit. Version 2
// would stream big transactions while they run; applying those chunks only
// at the commit (spooled) gains nothing over version 1, and applying them
// as they come saves at most the upstream's decoding time, which is the
// smaller part of a big transaction's apply (README, Benchmarks).
func (o Options) pluginArgs() []string {
	args := []string{
		"proto_version '1'",
		// publication_names is a list of identifiers inside a literal.
		"publication_names " + pg.QuoteLiteral(pg.Ident(o.Publication)),
		"messages 'true'",
	}
	if o.OriginNone {
		args = append(args, "origin 'none'")
	}
	return args
}

// Run streams from the slot until ctx is done or an error occurs, calling h
// for each transaction, change and message. conn is a replication=database
// connection (pg.ConnectReplication); Run leaves it in COPY mode or broken,
// so the caller closes it afterwards. Every error names the node and slot;
// when ctx ends, the error wraps ctx's error.
//
// One goroutine owns conn: it receives, reports positions every
// StatusInterval (and when the upstream asks), and hands raw messages
// through a pipe bounded by bytes to the goroutine that decodes them and
// calls h, so receiving and applying overlap while memory stays bounded.
func Run(ctx context.Context, conn *pgconn.PgConn, o Options, h Handler, flushed Flushed) error {
	o = o.withDefaults()
	if err := run(ctx, conn, o, h, flushed); err != nil {
		return fmt.Errorf("stream from %s slot %s: %w", o.Node, o.Slot, err)
	}
	return nil
}

func run(ctx context.Context, conn *pgconn.PgConn, o Options, h Handler, flushed Flushed) error {
	err := pglogrepl.StartReplication(ctx, conn, pg.Ident(o.Slot), o.StartLSN,
		pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: o.pluginArgs()})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("start replication at %s: %w", o.StartLSN, err)
	}
	c := &consumer{o: o, h: h, log: o.Logger, rels: map[uint32]*Relation{}}
	o.Logger.Debug("replication started", "node", o.Node, "slot", o.Slot, "start_lsn", o.StartLSN)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	p := newPipe(o.MaxInFlight)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cancel(c.run(ctx, p))
	}()
	r := &receiver{conn: conn, o: o, flushed: flushed, consumer: &c.progress}
	cancel(r.run(ctx, p))
	<-done
	return context.Cause(ctx)
}

// receiver is the goroutine that owns the connection.
type receiver struct {
	conn     *pgconn.PgConn
	o        Options
	flushed  Flushed
	received LSN // last position received, reported as "write"
	next     time.Time
	pushed   uint64 // items handed to the consumer
	consumer *consumerProgress
}

func (r *receiver) run(ctx context.Context, p *pipe) error {
	r.next = time.Now().Add(r.o.StatusInterval)
	for {
		if !time.Now().Before(r.next) {
			if err := r.status(ctx); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithDeadline(ctx, r.next)
		msg, err := r.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := r.copyData(ctx, p, m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		case *pgproto3.CopyDone:
			return errors.New("upstream ended the replication stream")
		}
	}
}

func (r *receiver) copyData(ctx context.Context, p *pipe, data []byte) error {
	if len(data) == 0 {
		return errors.New("empty CopyData message")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("keepalive: %w", err)
		}
		r.received = max(r.received, k.ServerWALEnd)
		if k.ReplyRequested {
			return r.status(ctx)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("XLogData: %w", err)
		}
		if len(x.WALData) == 0 {
			return fmt.Errorf("empty XLogData at %s", x.WALStart)
		}
		// pgconn reuses its buffer on the next receive: the item needs its own copy.
		if err := r.push(ctx, p, item{lsn: x.WALStart, data: bytes.Clone(x.WALData)}); err != nil {
			return err
		}
		r.pushed++
		r.received = max(r.received, x.WALStart)
		return nil
	}
	return fmt.Errorf("unknown CopyData message type %q", data[0])
}

// push waits for room in the pipe, still reporting status meanwhile so that
// a slow apply does not make the upstream's wal_sender_timeout fire.
func (r *receiver) push(ctx context.Context, p *pipe, it item) error {
	for !p.tryPush(it) {
		t := time.NewTimer(time.Until(r.next))
		select {
		case <-p.space:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
			if err := r.status(ctx); err != nil {
				return err
			}
		}
		t.Stop()
	}
	return nil
}

// status sends a standby status update: write = last received, flush =
// apply = what Flushed reports as durable downstream, never more.
func (r *receiver) status(ctx context.Context) error {
	r.next = time.Now().Add(r.o.StatusInterval)
	flush, err := r.flushed(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("read flushed position: %w", err)
	}
	if r.caughtUp(flush) {
		flush = max(flush, r.received)
	}
	// pglogrepl.SendStandbyStatusUpdate would turn a zero flush position
	// (nothing applied yet) into the write position: encode it ourselves.
	buf := make([]byte, 0, 34)
	buf = append(buf, pglogrepl.StandbyStatusUpdateByteID)
	buf = binary.BigEndian.AppendUint64(buf, uint64(max(r.received, flush)))
	buf = binary.BigEndian.AppendUint64(buf, uint64(flush))
	buf = binary.BigEndian.AppendUint64(buf, uint64(flush))
	buf = binary.BigEndian.AppendUint64(buf, uint64(pgTime(time.Now())))
	buf = append(buf, 0)
	msg, err := (&pgproto3.CopyData{Data: buf}).Encode(nil)
	if err != nil {
		return fmt.Errorf("encode status update: %w", err)
	}
	if err := r.conn.Frontend().SendUnbufferedEncodedCopyData(msg); err != nil {
		return fmt.Errorf("send status update: %w", err)
	}
	return nil
}

// caughtUp tells whether every transaction and message received so far has
// been handled and its effect is durable downstream (flush is the durable
// position). Then, as the native apply worker does, the last received
// position may be confirmed: without it a link whose upstream writes only
// WAL that is not replicated (other databases, transactions dropped by
// origin, pgmesh's own bookkeeping) would never advance its slot, and the
// upstream would keep that WAL forever. It is safe because a transaction
// not yet received commits after the received position, so the upstream
// sends it again after a restart.
func (r *receiver) caughtUp(flush LSN) bool {
	return r.consumer.processed.Load() == r.pushed &&
		!r.consumer.busy.Load() &&
		uint64(flush) >= r.consumer.needFlush.Load()
}

// pgTime is t in microseconds since 2000-01-01 UTC, PostgreSQL's epoch.
func pgTime(t time.Time) int64 {
	return t.UnixMicro() - 946684800_000_000
}

// txnState is where the consumer is in the message sequence.
type txnState uint8

const (
	idle     txnState = iota
	pending           // BEGIN received but held back: an ORIGIN may follow
	open              // Begin delivered to the Handler
	dropping          // applied under an origin, or already applied: skip to COMMIT
)

// consumer decodes messages and drives the Handler. It alone owns the
// relation map.
type consumer struct {
	o     Options
	h     Handler
	log   *slog.Logger
	rels  map[uint32]*Relation
	state txnState
	begin Begin

	progress consumerProgress
}

// consumerProgress is what the receiver needs to know of the consumer to
// decide whether everything received has been handled (see caughtUp).
type consumerProgress struct {
	processed atomic.Uint64 // items fully handled
	busy      atomic.Bool   // inside a transaction
	// needFlush is the EndLSN of the last transaction, or the LSN of the
	// last non-transactional message, handed to the Handler: the position
	// Flushed must reach before anything received may be confirmed.
	needFlush atomic.Uint64
}

func (c *consumer) run(ctx context.Context, p *pipe) error {
	for {
		it, ok := p.pop()
		if !ok {
			if err := c.h.Idle(ctx); err != nil {
				return fmt.Errorf("handler idle: %w", err)
			}
			// Idle again every StatusInterval while nothing arrives: the
			// Handler may save late what it kept (see Handler).
			t := time.NewTimer(c.o.StatusInterval)
			select {
			case <-p.ready:
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			t.Stop()
			continue
		}
		if err := c.process(ctx, it); err != nil {
			return err
		}
		c.progress.busy.Store(c.state != idle)
		c.progress.processed.Add(1)
	}
}

func (c *consumer) process(ctx context.Context, it item) error {
	if c.state == dropping {
		switch it.data[0] {
		case 'I', 'U', 'D', 'T', 'Y', 'M':
			return nil // nothing to decode: the transaction is skipped
		}
	}
	ev, err := decode(c.rels, it.data, it.lsn)
	if err != nil {
		return err
	}
	switch ev.kind {
	case evRelation, evType:
		return nil
	case evBegin:
		if c.state != idle {
			return fmt.Errorf("BEGIN of xid %d at %s inside transaction %d", ev.begin.XID, it.lsn, c.begin.XID)
		}
		c.begin = ev.begin
		// The commit record starts before StartLSN, so it also ends at or
		// before it: the transaction is applied already.
		if ev.begin.FinalLSN < c.o.StartLSN {
			c.log.Debug("skip transaction applied before start position", "node", c.o.Node, "xid", ev.begin.XID, "commit_lsn", ev.begin.FinalLSN, "start_lsn", c.o.StartLSN)
			c.state = dropping
			return nil
		}
		c.state = pending
		return nil
	case evOrigin:
		switch c.state {
		case pending:
			c.log.Debug("drop transaction applied under a replication origin", "node", c.o.Node, "xid", c.begin.XID, "origin", ev.origin)
			c.state = dropping
			return nil
		case dropping:
			return nil
		}
		return fmt.Errorf("ORIGIN %q at %s not right after BEGIN", ev.origin, it.lsn)
	case evChange:
		return c.change(ctx, ev.change)
	case evMessage:
		return c.message(ctx, ev.msg)
	case evCommit:
		return c.commit(ctx, ev.commit)
	}
	return fmt.Errorf("unexpected message %q at %s", it.data[0], it.lsn)
}

// deliverBegin passes a held-back BEGIN once something of the transaction
// must be delivered.
func (c *consumer) deliverBegin(ctx context.Context) error {
	if c.state != pending {
		return nil
	}
	c.state = open
	if err := c.h.Begin(ctx, c.begin); err != nil {
		return fmt.Errorf("handler begin of xid %d (commit %s): %w", c.begin.XID, c.begin.FinalLSN, err)
	}
	return nil
}

func (c *consumer) change(ctx context.Context, ch *Change) error {
	switch c.state {
	case dropping:
		return nil
	case idle:
		return fmt.Errorf("%c change outside a transaction", ch.Op)
	}
	if err := c.deliverBegin(ctx); err != nil {
		return err
	}
	if err := c.h.Change(ctx, ch); err != nil {
		return fmt.Errorf("handler change in xid %d (commit %s): %w", c.begin.XID, c.begin.FinalLSN, err)
	}
	return nil
}

func (c *consumer) message(ctx context.Context, m Message) error {
	if !m.Transactional {
		if c.state != idle {
			return fmt.Errorf("non-transactional message %q at %s inside transaction %d", m.Prefix, m.LSN, c.begin.XID)
		}
		if err := c.h.Message(ctx, m); err != nil {
			return fmt.Errorf("handler message %q at %s: %w", m.Prefix, m.LSN, err)
		}
		// Confirming the message before the Handler has made what it says
		// durable would lose it in a restart: the upstream does not send
		// it again.
		c.progress.needFlush.Store(max(c.progress.needFlush.Load(), uint64(m.LSN)))
		return nil
	}
	switch c.state {
	case dropping:
		return nil
	case idle:
		return fmt.Errorf("transactional message %q at %s outside a transaction", m.Prefix, m.LSN)
	}
	if err := c.deliverBegin(ctx); err != nil {
		return err
	}
	if err := c.h.Message(ctx, m); err != nil {
		return fmt.Errorf("handler message %q in xid %d (commit %s): %w", m.Prefix, c.begin.XID, c.begin.FinalLSN, err)
	}
	return nil
}

func (c *consumer) commit(ctx context.Context, cm Commit) error {
	state := c.state
	c.state = idle
	switch state {
	case idle:
		return fmt.Errorf("COMMIT at %s outside a transaction", cm.CommitLSN)
	case dropping:
		return nil
	}
	if cm.CommitLSN != c.begin.FinalLSN {
		return fmt.Errorf("COMMIT at %s of xid %d whose BEGIN announced %s", cm.CommitLSN, c.begin.XID, c.begin.FinalLSN)
	}
	if state == pending {
		// An empty transaction is still delivered: committing it records
		// the origin's progress downstream.
		c.state = pending
		if err := c.deliverBegin(ctx); err != nil {
			return err
		}
		c.state = idle
	}
	c.progress.needFlush.Store(uint64(cm.EndLSN))
	if err := c.h.Commit(ctx, cm); err != nil {
		return fmt.Errorf("handler commit of xid %d (commit %s): %w", c.begin.XID, cm.CommitLSN, err)
	}
	return nil
}
