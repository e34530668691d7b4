// Package deadletter moves a poison transaction — a remote transaction that
// the downstream refuses for a reason retrying does not fix — out of its
// link's way without losing it, and applies it again later.
//
// The operator asks for one transaction by the LSN of its commit record
// upstream (RequestSkip, `pgmesh skip`). The link's next session wraps its
// handler with Divert: that transaction reaches the apply engine as a
// transaction holding one message, which carries every change of it, and
// the message's handler (Store) writes it into pgmesh.dead_letter. So the
// dead letter and the link's progress past the transaction commit together
// in one local transaction: a crash leaves either both or neither, and a
// transaction the upstream sends again after the link applied it is
// skipped by the apply engine as already applied, never diverted twice.
package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// Prefix is the prefix of the message that carries a diverted transaction
// from Divert to Store. It never reaches WAL: Divert makes it up.
const Prefix = "pgmesh.dead_letter"

// Letter is a diverted transaction as stored in pgmesh.dead_letter.changes.
type Letter struct {
	XID        uint32    `json:"xid"`
	CommitTime time.Time `json:"commit_time"`
	CommitLSN  string    `json:"commit_lsn"`
	Changes    []Change  `json:"changes"`
}

// Change is one change of a diverted transaction: a row change, a
// TRUNCATE, or a logical decoding message other than a seen claim.
type Change struct {
	Op       string             `json:"op"` // insert, update, delete, truncate, message
	Table    string             `json:"table,omitempty"`
	Relation *Relation          `json:"relation,omitempty"`
	Old      map[string]*string `json:"old,omitempty"`
	OldIsKey bool               `json:"old_is_key,omitempty"`
	New      map[string]*string `json:"new,omitempty"`
	// Unchanged names the columns whose TOASTed value the upstream did not
	// send (unchanged by the update).
	Unchanged []string `json:"unchanged,omitempty"`
	// Truncate
	Tables          []Relation `json:"tables,omitempty"`
	Cascade         bool       `json:"cascade,omitempty"`
	RestartIdentity bool       `json:"restart_identity,omitempty"`
	// Message
	Prefix  string `json:"prefix,omitempty"`
	Content string `json:"content,omitempty"`
}

// Relation is a table as the upstream described it.
type Relation struct {
	Schema   string   `json:"schema"`
	Name     string   `json:"name"`
	Identity string   `json:"identity"`
	Columns  []Column `json:"columns"`
}

// Column is one column of a Relation.
type Column struct {
	Name    string `json:"name"`
	TypeOID uint32 `json:"type_oid"`
	Key     bool   `json:"key,omitempty"`
}

func relationOf(r *stream.Relation) Relation {
	out := Relation{Schema: r.Schema, Name: r.Name, Identity: string(r.ReplicaIdentity)}
	for _, c := range r.Columns {
		out.Columns = append(out.Columns, Column{Name: c.Name, TypeOID: c.TypeOID, Key: c.Key})
	}
	return out
}

func (r Relation) stream() *stream.Relation {
	out := &stream.Relation{Schema: r.Schema, Name: r.Name}
	if r.Identity != "" {
		out.ReplicaIdentity = r.Identity[0]
	}
	for _, c := range r.Columns {
		out.Columns = append(out.Columns, stream.Column{Name: c.Name, TypeOID: c.TypeOID, Key: c.Key})
	}
	return out
}

var opNames = map[stream.Op]string{stream.Insert: "insert", stream.Update: "update", stream.Delete: "delete", stream.Truncate: "truncate"}

func changeOf(c *stream.Change) Change {
	out := Change{Op: opNames[c.Op]}
	if c.Op == stream.Truncate {
		for _, r := range c.TruncateRels {
			out.Tables = append(out.Tables, relationOf(r))
		}
		out.Cascade, out.RestartIdentity = c.Cascade, c.RestartIdentity
		return out
	}
	rel := relationOf(c.Rel)
	out.Relation, out.Table = &rel, c.Rel.QualifiedName()
	image := func(t stream.Tuple) map[string]*string {
		if t == nil {
			return nil
		}
		m := make(map[string]*string, len(t))
		for i, v := range t {
			name := c.Rel.Columns[i].Name
			switch v.Kind {
			case stream.Text:
				s := string(v.Data)
				m[name] = &s
			case stream.Null:
				m[name] = nil
			case stream.Unchanged:
				out.Unchanged = append(out.Unchanged, name)
			}
		}
		return m
	}
	out.Old, out.OldIsKey = image(c.Old), c.OldIsKey
	out.New = image(c.New)
	return out
}

// streamChange turns a stored row change back into what the stream
// delivered.
func (c Change) streamChange() (*stream.Change, error) {
	var op stream.Op
	for o, n := range opNames {
		if n == c.Op {
			op = o
		}
	}
	if op == 0 {
		return nil, fmt.Errorf("unknown change %q", c.Op)
	}
	out := &stream.Change{Op: op, Cascade: c.Cascade, RestartIdentity: c.RestartIdentity}
	if op == stream.Truncate {
		for _, r := range c.Tables {
			out.TruncateRels = append(out.TruncateRels, r.stream())
		}
		return out, nil
	}
	if c.Relation == nil {
		return nil, fmt.Errorf("%s of %s: no relation", c.Op, c.Table)
	}
	out.Rel = c.Relation.stream()
	unchanged := map[string]bool{}
	for _, n := range c.Unchanged {
		unchanged[n] = true
	}
	tuple := func(m map[string]*string, withUnchanged bool) stream.Tuple {
		if m == nil {
			return nil
		}
		t := make(stream.Tuple, len(out.Rel.Columns))
		for i, col := range out.Rel.Columns {
			v, ok := m[col.Name]
			switch {
			case withUnchanged && unchanged[col.Name]:
				t[i] = stream.Value{Kind: stream.Unchanged}
			case ok && v != nil:
				t[i] = stream.Value{Kind: stream.Text, Data: []byte(*v)}
			default:
				t[i] = stream.Value{Kind: stream.Null}
			}
		}
		return t
	}
	out.Old, out.OldIsKey = tuple(c.Old, false), c.OldIsKey
	out.New = tuple(c.New, true)
	return out, nil
}

// Divert returns h, but the transaction whose commit record is at lsn
// reaches h as a transaction holding only a message with Prefix that
// carries all its changes (and its messages, but the seen claims, which
// say only what the upstream had seen and still reach h). lsn 0 diverts
// nothing.
func Divert(h stream.Handler, lsn stream.LSN) stream.Handler {
	if lsn == 0 {
		return h
	}
	return &diverter{next: h, lsn: lsn}
}

type diverter struct {
	next   stream.Handler
	lsn    stream.LSN
	letter *Letter // while the diverted transaction streams
}

func (d *diverter) Begin(ctx context.Context, b stream.Begin) error {
	if b.FinalLSN == d.lsn {
		d.letter = &Letter{XID: b.XID, CommitTime: b.CommitTime, CommitLSN: b.FinalLSN.String(), Changes: []Change{}}
	}
	return d.next.Begin(ctx, b)
}

func (d *diverter) Change(ctx context.Context, c *stream.Change) error {
	if d.letter == nil {
		return d.next.Change(ctx, c)
	}
	d.letter.Changes = append(d.letter.Changes, changeOf(c))
	return nil
}

func (d *diverter) Message(ctx context.Context, m stream.Message) error {
	if d.letter == nil || !m.Transactional || m.Prefix == conflict.SeenPrefix {
		return d.next.Message(ctx, m)
	}
	d.letter.Changes = append(d.letter.Changes, Change{Op: "message", Prefix: m.Prefix, Content: string(m.Content)})
	return nil
}

func (d *diverter) Commit(ctx context.Context, c stream.Commit) error {
	if d.letter == nil {
		return d.next.Commit(ctx, c)
	}
	content, err := json.Marshal(d.letter)
	d.letter = nil
	if err != nil {
		return fmt.Errorf("divert transaction %s: %w", c.CommitLSN, err)
	}
	if err := d.next.Message(ctx, stream.Message{Transactional: true, LSN: c.CommitLSN, Prefix: Prefix, Content: content}); err != nil {
		return err
	}
	return d.next.Commit(ctx, c)
}

func (d *diverter) Idle(ctx context.Context) error { return d.next.Idle(ctx) }

// Pending returns the commit LSN of the transaction the operator asked to
// skip on the link from upstream into the node of q, 0 when none.
func Pending(ctx context.Context, q pg.Querier, upstream string) (stream.LSN, error) {
	var lsn string
	err := q.QueryRow(ctx, `SELECT commit_lsn::text FROM pgmesh.skip_request WHERE upstream = $1`, upstream).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read pgmesh.skip_request: %w", err)
	}
	return pglogrepl.ParseLSN(lsn)
}

// Store writes the transaction that the message m of Divert carries into
// pgmesh.dead_letter and removes the skip request it answers. It runs
// inside the diverted transaction, on the apply session.
func Store(ctx context.Context, conn *pgconn.PgConn, upstream string, m stream.Message) error {
	var l Letter
	if err := json.Unmarshal(m.Content, &l); err != nil {
		return fmt.Errorf("read diverted transaction %s: %w", m.LSN, err)
	}
	changes, err := json.Marshal(l.Changes)
	if err != nil {
		return err
	}
	params := [][]byte{[]byte(upstream), []byte(l.CommitLSN), []byte(strconv.FormatUint(uint64(l.XID), 10)),
		[]byte(l.CommitTime.UTC().Format(time.RFC3339Nano)), changes}
	_, err = conn.ExecParams(ctx, `
WITH req AS (DELETE FROM pgmesh.skip_request WHERE upstream = $1 AND commit_lsn = $2::pg_lsn
             RETURNING error, requested_by)
INSERT INTO pgmesh.dead_letter (upstream, commit_lsn, xid, commit_time, error, changes, skipped_by)
SELECT $1, $2::pg_lsn, $3::bigint, $4::timestamptz, (SELECT error FROM req), $5::jsonb, (SELECT requested_by FROM req)
ON CONFLICT (upstream, commit_lsn) DO NOTHING`, params, nil, nil, nil).Close()
	if err != nil {
		return fmt.Errorf("write transaction %s of %s into pgmesh.dead_letter: %w", l.CommitLSN, upstream, err)
	}
	return nil
}
