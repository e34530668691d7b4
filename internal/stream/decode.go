package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// eventKind says what one pgoutput message was.
type eventKind uint8

const (
	evRelation eventKind = iota + 1 // relation state updated, nothing to deliver
	evType                          // TYPE message, ignored
	evBegin
	evOrigin
	evChange
	evMessage
	evCommit
)

// event is one decoded pgoutput message.
type event struct {
	kind   eventKind
	begin  Begin   // evBegin
	origin string  // evOrigin
	change *Change // evChange
	msg    Message // evMessage
	commit Commit  // evCommit
}

// decode turns one pgoutput message (the WALData of an XLogData message)
// into an event, updating rels with RELATION messages (protocol version 1:
// no streamed transactions). lsn (the XLogData start) only names the
// message in errors.
//
// pglogrepl's decoders trust their input (they index and allocate by the
// lengths they read), so decode checks the bounds first and recovers from
// whatever panic remains: a malformed message is an error, never a crash.
func decode(rels map[uint32]*Relation, data []byte, lsn LSN) (ev event, err error) {
	if len(data) == 0 {
		return event{}, fmt.Errorf("empty pgoutput message at %s", lsn)
	}
	typ := pglogrepl.MessageType(data[0])
	defer func() {
		if r := recover(); r != nil {
			ev, err = event{}, fmt.Errorf("malformed %s message at %s: %w: %v", typ, lsn, errDecoderPanic, r)
		}
	}()
	if err := precheck(data); err != nil {
		return event{}, fmt.Errorf("malformed %s message at %s: %w", typ, lsn, err)
	}
	m, err := pglogrepl.ParseV2(data, false)
	if err != nil {
		return event{}, fmt.Errorf("decode %s message at %s: %w", typ, lsn, err)
	}
	ev, err = convert(rels, m)
	if err != nil {
		return event{}, fmt.Errorf("%s message at %s: %w", typ, lsn, err)
	}
	return ev, nil
}

// convert maps a pglogrepl message to an event, resolving relation ids.
func convert(rels map[uint32]*Relation, m pglogrepl.Message) (event, error) {
	switch m := m.(type) {
	case *pglogrepl.BeginMessage:
		return event{kind: evBegin, begin: Begin{XID: m.Xid, FinalLSN: m.FinalLSN, CommitTime: m.CommitTime}}, nil
	case *pglogrepl.CommitMessage:
		return event{kind: evCommit, commit: Commit{CommitLSN: m.CommitLSN, EndLSN: m.TransactionEndLSN, CommitTime: m.CommitTime}}, nil
	case *pglogrepl.OriginMessage:
		return event{kind: evOrigin, origin: m.Name}, nil
	case *pglogrepl.RelationMessageV2:
		rel, err := relationFrom(&m.RelationMessage)
		if err != nil {
			return event{}, err
		}
		rels[rel.ID] = rel
		return event{kind: evRelation}, nil
	case *pglogrepl.TypeMessageV2:
		return event{kind: evType}, nil
	case *pglogrepl.InsertMessageV2:
		rel, err := lookup(rels, m.RelationID)
		if err != nil {
			return event{}, err
		}
		nt, err := tupleFrom(rel, m.Tuple, "new")
		if err != nil {
			return event{}, err
		}
		return event{kind: evChange, change: &Change{Op: Insert, Rel: rel, New: nt}}, nil
	case *pglogrepl.UpdateMessageV2:
		rel, err := lookup(rels, m.RelationID)
		if err != nil {
			return event{}, err
		}
		c := &Change{Op: Update, Rel: rel}
		if c.New, err = tupleFrom(rel, m.NewTuple, "new"); err != nil {
			return event{}, err
		}
		if m.OldTupleType != pglogrepl.UpdateMessageTupleTypeNone {
			if c.Old, err = tupleFrom(rel, m.OldTuple, "old"); err != nil {
				return event{}, err
			}
			c.OldIsKey = m.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey
		}
		return event{kind: evChange, change: c}, nil
	case *pglogrepl.DeleteMessageV2:
		rel, err := lookup(rels, m.RelationID)
		if err != nil {
			return event{}, err
		}
		old, err := tupleFrom(rel, m.OldTuple, "old")
		if err != nil {
			return event{}, err
		}
		c := &Change{Op: Delete, Rel: rel, Old: old, OldIsKey: m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey}
		return event{kind: evChange, change: c}, nil
	case *pglogrepl.TruncateMessageV2:
		c := &Change{
			Op:              Truncate,
			Cascade:         m.Option&pglogrepl.TruncateOptionCascade != 0,
			RestartIdentity: m.Option&pglogrepl.TruncateOptionRestartIdentity != 0,
		}
		for _, id := range m.RelationIDs {
			rel, err := lookup(rels, id)
			if err != nil {
				return event{}, err
			}
			c.TruncateRels = append(c.TruncateRels, rel)
		}
		return event{kind: evChange, change: c}, nil
	case *pglogrepl.LogicalDecodingMessageV2:
		// Content aliases the message buffer, which the caller owns and
		// never reuses.
		msg := Message{Transactional: m.Transactional, LSN: m.LSN, Prefix: m.Prefix, Content: m.Content}
		return event{kind: evMessage, msg: msg}, nil
	}
	return event{}, fmt.Errorf("unexpected message %T", m)
}

func lookup(rels map[uint32]*Relation, id uint32) (*Relation, error) {
	rel, ok := rels[id]
	if !ok {
		return nil, fmt.Errorf("unknown relation id %d (no RELATION message before it)", id)
	}
	return rel, nil
}

func relationFrom(m *pglogrepl.RelationMessage) (*Relation, error) {
	switch m.ReplicaIdentity {
	case 'd', 'f', 'i', 'n':
	default:
		return nil, fmt.Errorf("relation %d: unknown replica identity %q", m.RelationID, m.ReplicaIdentity)
	}
	if m.RelationName == "" {
		return nil, fmt.Errorf("relation %d: empty name", m.RelationID)
	}
	rel := &Relation{ID: m.RelationID, Schema: m.Namespace, Name: m.RelationName, ReplicaIdentity: m.ReplicaIdentity}
	rel.Columns = make([]Column, len(m.Columns))
	for i, c := range m.Columns {
		rel.Columns[i] = Column{Name: c.Name, TypeOID: c.DataType, Key: c.Flags&1 != 0}
	}
	return rel, nil
}

func tupleFrom(rel *Relation, td *pglogrepl.TupleData, which string) (Tuple, error) {
	if td == nil {
		return nil, fmt.Errorf("%s: missing %s tuple", rel.QualifiedName(), which)
	}
	if len(td.Columns) != len(rel.Columns) {
		return nil, fmt.Errorf("%s: %s tuple has %d columns, relation has %d", rel.QualifiedName(), which, len(td.Columns), len(rel.Columns))
	}
	t := make(Tuple, len(td.Columns))
	for i, c := range td.Columns {
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			t[i] = Value{Kind: Null}
		case pglogrepl.TupleDataTypeToast:
			t[i] = Value{Kind: Unchanged}
		case pglogrepl.TupleDataTypeText:
			t[i] = Value{Kind: Text, Data: c.Data}
		default:
			// We never ask for binary, so anything else is corruption.
			return nil, fmt.Errorf("%s: %s tuple column %s has kind %q", rel.QualifiedName(), which, rel.Columns[i].Name, c.DataType)
		}
	}
	return t, nil
}

// errDecoderPanic marks a malformed message that precheck let through and
// pglogrepl panicked on: fuzzing looks for these.
var errDecoderPanic = errors.New("decoder panic")

// errShort reports a message that ends before its declared content.
var errShort = errors.New("message shorter than its content")

// precheck verifies the lengths and counts that pglogrepl trusts, so that
// it never allocates or indexes by a corrupt length. data[0] is the type.
func precheck(data []byte) error {
	typ := pglogrepl.MessageType(data[0])
	b := data[1:]
	switch typ {
	case pglogrepl.MessageTypeInsert:
		if len(b) < 5 || b[4] != 'N' {
			return errors.New("insert without new tuple")
		}
		_, err := checkTuple(b[5:], true)
		return err
	case pglogrepl.MessageTypeUpdate:
		if len(b) < 5 {
			return errShort
		}
		b = b[4:]
		if b[0] == 'K' || b[0] == 'O' {
			n, err := checkTuple(b[1:], false)
			if err != nil {
				return err
			}
			b = b[1+n:]
		}
		if len(b) < 1 || b[0] != 'N' {
			return errors.New("update without new tuple")
		}
		_, err := checkTuple(b[1:], true)
		return err
	case pglogrepl.MessageTypeDelete:
		if len(b) < 5 || (b[4] != 'K' && b[4] != 'O') {
			return errors.New("delete without old tuple")
		}
		_, err := checkTuple(b[5:], true)
		return err
	case pglogrepl.MessageTypeTruncate:
		if len(b) < 5 {
			return errShort
		}
		n := binary.BigEndian.Uint32(b)
		if uint64(len(b)-5) != 4*uint64(n) {
			return fmt.Errorf("truncate of %d relations in %d bytes", n, len(b)-5)
		}
	case pglogrepl.MessageTypeMessage:
		if len(b) < 9 {
			return errShort
		}
		p := bytes.IndexByte(b[9:], 0)
		if p < 0 {
			return errors.New("message prefix not terminated")
		}
		rest := b[9+p+1:]
		if len(rest) < 4 || uint64(len(rest)-4) != uint64(binary.BigEndian.Uint32(rest)) {
			return errors.New("message content length mismatch")
		}
	case pglogrepl.MessageTypeRelation:
		return checkRelation(b)
	case pglogrepl.MessageTypeOrigin:
		if len(b) < 9 || b[len(b)-1] != 0 {
			return errors.New("origin name not terminated")
		}
	}
	return nil
}

// checkTuple verifies a TupleData (count, then per column a kind and for
// 't'/'b' a length and that many bytes) and returns its size. When last is
// true the tuple must end the message.
func checkTuple(b []byte, last bool) (int, error) {
	if len(b) < 2 {
		return 0, errShort
	}
	n := int(binary.BigEndian.Uint16(b))
	off := 2
	for i := 0; i < n; i++ {
		if off >= len(b) {
			return 0, fmt.Errorf("tuple column %d of %d: %w", i, n, errShort)
		}
		kind := b[off]
		off++
		switch kind {
		case 'n', 'u':
		case 't', 'b':
			if len(b)-off < 4 {
				return 0, fmt.Errorf("tuple column %d of %d: %w", i, n, errShort)
			}
			l := uint64(binary.BigEndian.Uint32(b[off:]))
			off += 4
			if uint64(len(b)-off) < l {
				return 0, fmt.Errorf("tuple column %d of %d: value of %d bytes: %w", i, n, l, errShort)
			}
			off += int(l)
		default:
			return 0, fmt.Errorf("tuple column %d of %d: unknown kind %q", i, n, kind)
		}
	}
	if last && off != len(b) {
		return 0, fmt.Errorf("%d bytes after tuple", len(b)-off)
	}
	return off, nil
}

// checkRelation verifies the column list of a RELATION message.
func checkRelation(b []byte) error {
	if len(b) < 4 {
		return errShort
	}
	off := 4
	for _, field := range []string{"namespace", "name"} {
		p := bytes.IndexByte(b[off:], 0)
		if p < 0 {
			return fmt.Errorf("relation %s not terminated", field)
		}
		off += p + 1
	}
	if len(b)-off < 3 {
		return errShort
	}
	n := int(binary.BigEndian.Uint16(b[off+1:]))
	off += 3
	for i := 0; i < n; i++ {
		if off >= len(b) {
			return fmt.Errorf("relation column %d of %d: %w", i, n, errShort)
		}
		p := bytes.IndexByte(b[off+1:], 0)
		if p < 0 {
			return fmt.Errorf("relation column %d name not terminated", i)
		}
		off += 1 + p + 1 + 8
		if off > len(b) {
			return fmt.Errorf("relation column %d of %d: %w", i, n, errShort)
		}
	}
	if off != len(b) {
		return fmt.Errorf("%d bytes after relation columns", len(b)-off)
	}
	return nil
}
