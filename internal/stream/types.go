// Package stream runs one logical replication connection to an upstream
// node's slot with the pgoutput plugin and turns what it receives into typed
// transactions for a Handler (normally the apply engine).
package stream

import (
	"context"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a WAL position.
type LSN = pglogrepl.LSN

// Column is one column of a Relation as the upstream describes it.
type Column struct {
	Name    string
	TypeOID uint32
	Key     bool // part of the upstream's replica identity
}

// Relation is a table as described by the upstream's RELATION message.
// Relations are per upstream connection: the stream resolves relation ids,
// so a Change always carries the right description.
type Relation struct {
	ID              uint32
	Schema, Name    string
	ReplicaIdentity byte // 'd' default (primary key), 'f' full, 'i' index, 'n' nothing
	Columns         []Column
}

// QualifiedName is "schema.table" (unquoted), the name used in the config and logs.
func (r *Relation) QualifiedName() string { return r.Schema + "." + r.Name }

// ValueKind says what a tuple column holds.
type ValueKind byte

const (
	Null      ValueKind = 'n'
	Unchanged ValueKind = 'u' // unchanged TOASTed value: not sent, keep the local one
	Text      ValueKind = 't'
)

// Value is one column value in text format.
type Value struct {
	Kind ValueKind
	Data []byte // only for Text
}

// Tuple holds one value per Relation column, in the relation's column order.
type Tuple []Value

// Op is the kind of a row change.
type Op byte

const (
	Insert   Op = 'I'
	Update   Op = 'U'
	Delete   Op = 'D'
	Truncate Op = 'T'
)

// Change is one row change (or a TRUNCATE) inside a transaction.
type Change struct {
	Op  Op
	Rel *Relation // Insert, Update, Delete
	// Old is the old row: for Update only when the key changed or the
	// identity is FULL; for Delete always (key columns only unless FULL,
	// other columns Null).
	Old Tuple
	// OldIsKey is true when Old carries only the replica identity columns.
	OldIsKey bool
	New      Tuple // Insert, Update

	TruncateRels    []*Relation // Truncate
	Cascade         bool
	RestartIdentity bool
}

// Begin starts a remote transaction.
type Begin struct {
	XID        uint32
	FinalLSN   LSN // LSN of the commit record
	CommitTime time.Time
}

// Commit ends a remote transaction.
type Commit struct {
	CommitLSN  LSN // LSN of the commit record
	EndLSN     LSN // end of the commit record: the position to record in the origin and to resume after
	CommitTime time.Time
}

// Message is a logical decoding message (pg_logical_emit_message).
type Message struct {
	Transactional bool
	// LSN is the end of the message's WAL record: a stream resumed at it
	// does not send the message again.
	LSN     LSN
	Prefix  string
	Content []byte
}

// Handler consumes a stream. Calls come from one goroutine, in stream order:
// Begin, then Change/Message*, then Commit. Non-transactional messages may
// arrive between transactions. Any error ends Run with that error.
//
// The upstream is told it may forget a transaction once Flushed has reached
// its EndLSN, and a non-transactional message once Flushed has reached the
// message's LSN; until then nothing received after them is confirmed
// either. A Handler that keeps what a message says makes it durable before
// its flushed position passes the message (the Applier saves both with the
// next transaction, or in one of their own when the link stays idle): a
// restart then resumes after the message, or else receives it again.
type Handler interface {
	Begin(ctx context.Context, b Begin) error
	Change(ctx context.Context, c *Change) error
	Message(ctx context.Context, m Message) error
	Commit(ctx context.Context, c Commit) error
	// Idle is called when no message is waiting to be processed, so that a
	// pipelining handler can send what it has queued instead of waiting for
	// more, and again every StatusInterval while none arrives.
	Idle(ctx context.Context) error
}
