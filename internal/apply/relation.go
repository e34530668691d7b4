package apply

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// relInfo is an upstream relation mapped onto the local table, with the
// statements prepared for it.
type relInfo struct {
	rel   *stream.Relation // the description this mapping was built for
	name  string           // schema.table, for messages
	ident string           // quoted
	// table is the local table narrowed to the columns the upstream sends,
	// in the upstream's column order: the INSERT statement's parameter
	// $(4+i) is remote column i.
	table conflict.Table
	// identCols are the remote columns that identify a row, in the order
	// of the statements' identity parameters: the local key, or every
	// column of a key-less table.
	identCols []int
	// identSent is false when the local key is not (all) part of the
	// upstream's replica identity: a key-only old row then lacks it.
	identSent bool
	delta     []int // remote columns of table.DeltaColumns, in that order
	// skip marks remote columns left out because a DDL about them is in
	// flight (Options.IgnoreColumn); table.Columns holds the others.
	skip    []bool
	skips   bool // some column is skipped
	builtIn *txn // the remote transaction the mapping was made in
	stmts   map[string]*stmt
}

// stmt is a prepared statement for one shape of change on one table.
type stmt struct {
	name string
	what string // "insert into", "update", "delete from": for messages
	ok   bool   // its preparation succeeded (a failed flight may skip it)
}

// relFor returns the mapping for the relation of a change, looking the local
// table up the first time a relation description is seen.
func (w *worker) relFor(r *stream.Relation) (*relInfo, error) {
	// A mapping that leaves columns out is only good for the transaction
	// it was made in: the DDL it waits for may arrive over another link
	// at any time, and from then on the column must be applied.
	if ri, ok := w.rels[r.ID]; ok && ri.rel == r && (!ri.skips || ri.builtIn == w.cur) {
		return ri, nil
	}
	// The catalog query needs the connection out of pipeline mode.
	if err := w.drain(); err != nil {
		return nil, err
	}
	w.busy.Store(true)
	ri, err := w.lookup(w.a.ctx, r)
	w.busy.Store(false)
	if err != nil {
		return nil, err
	}
	ri.builtIn = w.cur
	w.rels[r.ID] = ri
	return ri, nil
}

func (w *worker) lookup(ctx context.Context, r *stream.Relation) (*relInfo, error) {
	a := w.a
	ri := &relInfo{
		rel:   r,
		name:  r.QualifiedName(),
		ident: pg.Ident(r.Schema, r.Name),
		stmts: map[string]*stmt{},
	}
	local, err := conflict.LoadTable(ctx, connQuerier{w.conn}, r.Schema, r.Name, a.o.Config)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", a.o.Upstream, err)
	}
	types := make(map[string]string, len(local.Columns))
	for i, c := range local.Columns {
		types[c] = local.Types[i]
	}
	t := local
	t.Columns, t.Types = make([]string, 0, len(r.Columns)), make([]string, 0, len(r.Columns))
	ri.skip = make([]bool, len(r.Columns))
	// The old values of delta columns come with REPLICA IDENTITY FULL of
	// the upstream's table, whatever the local setting.
	t.FullIdentity = r.ReplicaIdentity == 'f'
	remote := make(map[string]int, len(r.Columns))
	for i, c := range r.Columns {
		typ, ok := types[c.Name]
		if !ok {
			ignore, err := w.ignoreColumn(ctx, ri.name, c.Name)
			if err != nil {
				return nil, err
			}
			if !ignore {
				return nil, fmt.Errorf("upstream %s: table %s: column %q sent by the upstream does not exist on this node (or is generated); if a DDL adding it is under way, it must reach this node first (pgmesh ddl list)", a.o.Upstream, ri.name, c.Name)
			}
			a.o.Logger.Info("leaving out a column whose DDL is still in flight", "upstream", a.o.Upstream, "table", ri.name, "column", c.Name)
			ri.skip[i], ri.skips = true, true
			continue
		}
		t.Columns, t.Types = append(t.Columns, c.Name), append(t.Types, typ)
		remote[c.Name] = i
	}
	for _, k := range t.Key {
		if _, ok := remote[k]; !ok {
			return nil, fmt.Errorf("upstream %s: table %s: key column %q is not sent by the upstream", a.o.Upstream, ri.name, k)
		}
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("upstream %s: %w", a.o.Upstream, err)
	}
	ri.table = t
	ri.identSent = true
	if len(t.Key) == 0 {
		for i := range r.Columns {
			if !ri.skip[i] {
				ri.identCols = append(ri.identCols, i)
			}
		}
	}
	for _, k := range t.Key {
		i := remote[k]
		ri.identCols = append(ri.identCols, i)
		if !r.Columns[i].Key && !t.FullIdentity {
			ri.identSent = false
		}
	}
	for _, d := range t.DeltaColumns {
		ri.delta = append(ri.delta, remote[d])
	}
	return ri, nil
}

// queueChange queues the statement of one change of t (preparing it first
// if this shape is new) in the current flight.
func (w *worker) queueChange(t *txn, c *stream.Change) error {
	up := w.a.o.Upstream
	if c.Op == stream.Truncate {
		return w.queueTruncate(t, c)
	}
	if c.Rel == nil {
		return fatal{fmt.Errorf("upstream %s: remote transaction %s: %c change without relation", up, t, c.Op)}
	}
	ri, err := w.relFor(c.Rel)
	if err != nil {
		return err
	}
	if err := w.buildShape(t, ri, c); err != nil {
		return fatal{fmt.Errorf("upstream %s: remote transaction %s: table %s: %w", up, t, ri.name, err)}
	}
	w.ensurePipe()
	st := w.stmtFor(t, ri, c)
	w.pipe.SendQueryPrepared(st.name, w.params, nil, nil)
	w.add(item{kind: itemChange, txn: t, rel: ri, stmt: st, change: c})
	return nil
}

// stmtFor returns the prepared statement for the shape in w.shape,
// queueing its preparation if it is new.
func (w *worker) stmtFor(t *txn, ri *relInfo, c *stream.Change) *stmt {
	st, ok := ri.stmts[string(w.shape)]
	if !ok {
		var queued bool
		st, queued = w.prepare(ri, c)
		ri.stmts[string(w.shape)] = st
		if queued {
			w.add(item{kind: itemPrepare, txn: t, rel: ri, stmt: st})
		}
	}
	return st
}

// Shape codes: one byte per column of an UPDATE's new row.
const (
	shapeValue = 'v' // a value (possibly NULL) is written
	shapeSkip  = 'u' // unchanged TOAST: left alone
)

// buildShape fills w.shape (the statement cache key) and w.params (the
// values, in statement parameter order, see conflict.InsertSQL) for a
// change of t.
func (w *worker) buildShape(t *txn, ri *relInfo, c *stream.Change) error {
	w.shape = append(w.shape[:0], byte(c.Op))
	w.params = append(w.params[:0], t.commitTime, []byte(w.a.o.Upstream), t.commitLSN)
	switch c.Op {
	case stream.Insert:
		if len(c.New) != len(ri.rel.Columns) {
			return fmt.Errorf("row has %d columns, relation %d", len(c.New), len(ri.rel.Columns))
		}
		for i, v := range c.New {
			if ri.skip[i] {
				continue
			}
			if v.Kind == stream.Unchanged {
				return fmt.Errorf("inserted row lacks column %s (unchanged TOAST value)", ri.rel.Columns[i].Name)
			}
			w.params = append(w.params, value(v))
		}
	case stream.Update:
		if len(c.New) != len(ri.rel.Columns) {
			return fmt.Errorf("row has %d columns, relation %d", len(c.New), len(ri.rel.Columns))
		}
		if err := w.identity(ri, c, updateKeyTuple(c)); err != nil {
			return err
		}
		for i, v := range c.New {
			if ri.skip[i] {
				continue
			}
			if v.Kind == stream.Unchanged {
				w.shape = append(w.shape, shapeSkip)
				continue
			}
			w.shape = append(w.shape, shapeValue)
			w.params = append(w.params, value(v))
		}
		for _, d := range ri.delta {
			if c.New[d].Kind == stream.Unchanged {
				continue
			}
			if c.Old == nil {
				return fmt.Errorf("delta column %s: the update came without the old row (REPLICA IDENTITY FULL on the upstream?)", ri.rel.Columns[d].Name)
			}
			w.params = append(w.params, value(c.Old[d]))
		}
	case stream.Delete:
		if c.Old == nil {
			return errors.New("delete without old row")
		}
		return w.identity(ri, c, c.Old)
	default:
		return fmt.Errorf("unknown operation %q", c.Op)
	}
	return nil
}

// ignoreColumn asks Options.IgnoreColumn about a remote column missing here.
func (w *worker) ignoreColumn(ctx context.Context, table, column string) (bool, error) {
	a := w.a
	if a.o.IgnoreColumn == nil {
		return false, nil
	}
	ok, err := a.o.IgnoreColumn(ctx, table, column)
	if err != nil {
		return false, fmt.Errorf("upstream %s: table %s: column %q missing here: is a DDL about it in flight? %w", a.o.Upstream, table, column, err)
	}
	return ok, nil
}

// identity appends the values that identify the changed row.
func (w *worker) identity(ri *relInfo, c *stream.Change, t stream.Tuple) error {
	if len(t) != len(ri.rel.Columns) {
		return fmt.Errorf("old row has %d columns, relation %d", len(t), len(ri.rel.Columns))
	}
	if c.Old != nil && c.OldIsKey && !ri.identSent {
		return fmt.Errorf("the local key (%s) is not the upstream's replica identity: the old row lacks it", strings.Join(ri.table.Key, ", "))
	}
	for _, k := range ri.identCols {
		if t[k].Kind == stream.Unchanged {
			return fmt.Errorf("identity column %s was not sent", ri.rel.Columns[k].Name)
		}
		w.params = append(w.params, value(t[k]))
	}
	return nil
}

func value(v stream.Value) []byte {
	if v.Kind == stream.Null {
		return nil
	}
	return v.Data
}

// updateKeyTuple is the tuple holding the key of the row an UPDATE changes:
// the old key when it was sent (key changed, or FULL), else the new row.
func updateKeyTuple(c *stream.Change) stream.Tuple {
	if c.Old != nil {
		return c.Old
	}
	return c.New
}

// prepare queues the preparation of the conflict-resolving statement for
// the current shape, unless this session prepared the same SQL before
// (reported by the second result). Parameters are untyped: the statement
// casts each one to its column's type.
func (w *worker) prepare(ri *relInfo, c *stream.Change) (*stmt, bool) {
	switch c.Op {
	case stream.Insert:
		return w.prepareSQL("insert into", conflict.InsertSQL(ri.table))
	case stream.Update:
		var set []string
		for i, s := range w.shape[1:] {
			if s == shapeValue {
				set = append(set, ri.table.Columns[i])
			}
		}
		return w.prepareSQL("update", conflict.UpdateSQL(ri.table, set))
	default:
		return w.prepareSQL("delete from", conflict.DeleteSQL(ri.table))
	}
}

// prepareSQL queues the preparation of sql (what names the operation in
// messages), unless this session prepared it before.
func (w *worker) prepareSQL(what, sql string) (*stmt, bool) {
	if prev, ok := w.stmts[sql]; ok {
		// Same statement for a newer description of the relation.
		return prev, false
	}
	w.nstmt++
	st := &stmt{name: "pgmesh_s" + strconv.Itoa(w.nstmt), what: what}
	w.stmts[sql] = st
	w.pipe.SendPrepare(st.name, sql, nil)
	return st, true
}

// queueTruncate queues TRUNCATE of all relations of the change in one
// statement, as the upstream ran it.
func (w *worker) queueTruncate(t *txn, c *stream.Change) error {
	var idents, names []string
	for _, r := range c.TruncateRels {
		ri, err := w.relFor(r)
		if err != nil {
			return err
		}
		idents = append(idents, ri.ident)
		names = append(names, ri.name)
	}
	if len(idents) == 0 {
		return nil
	}
	sql := "TRUNCATE " + strings.Join(idents, ", ")
	if c.RestartIdentity {
		sql += " RESTART IDENTITY"
	}
	if c.Cascade {
		sql += " CASCADE"
	}
	w.ensurePipe()
	w.pipe.SendQueryParams(sql, nil, nil, nil, nil)
	w.add(item{kind: itemTruncate, txn: t, tables: strings.Join(names, ", ")})
	return nil
}

// keyText renders the identity of a changed row for logs: col=value,
// values shortened.
func (ri *relInfo) keyText(c *stream.Change) string {
	t := c.New
	if c.Op == stream.Delete || c.Old != nil {
		t = c.Old
	}
	var b strings.Builder
	for j, k := range ri.identCols {
		if j > 0 {
			b.WriteString(", ")
		}
		b.WriteString(ri.rel.Columns[k].Name)
		b.WriteByte('=')
		if k >= len(t) {
			continue
		}
		switch v := t[k]; v.Kind {
		case stream.Null:
			b.WriteString("NULL")
		case stream.Unchanged:
			b.WriteString("(unchanged)")
		default:
			s := string(v.Data)
			if len(s) > 64 {
				s = s[:64] + "…"
			}
			b.WriteString(s)
		}
	}
	return b.String()
}

// connQuerier lets conflict.LoadTable read the catalog through the apply
// connection (a bare pgconn.PgConn, out of pipeline mode): one-row queries
// with text parameters whose text results scan into *string or *[]byte,
// which is all LoadTable asks for.
type connQuerier struct{ conn *pgconn.PgConn }

func (q connQuerier) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	params := make([][]byte, len(args))
	for i, arg := range args {
		s, ok := arg.(string)
		if !ok {
			return textRow{err: fmt.Errorf("catalog query: parameter %d is a %T, not text", i+1, arg)}
		}
		params[i] = []byte(s)
	}
	res := q.conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		return textRow{err: res.Err}
	}
	if len(res.Rows) == 0 {
		return textRow{err: pgx.ErrNoRows}
	}
	return textRow{vals: res.Rows[0]}
}

func (q connQuerier) Query(context.Context, string, ...any) (pgx.Rows, error) {
	return nil, errors.New("catalog query: multi-row queries are not supported on the apply connection")
}

type textRow struct {
	vals [][]byte
	err  error
}

func (r textRow) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	if len(dest) != len(r.vals) {
		return fmt.Errorf("catalog query: %d columns, scanned into %d", len(r.vals), len(dest))
	}
	for i, d := range dest {
		switch p := d.(type) {
		case *[]byte:
			*p = slices.Clone(r.vals[i])
		case *string:
			if r.vals[i] == nil {
				return fmt.Errorf("catalog query: column %d is NULL", i+1)
			}
			*p = string(r.vals[i])
		default:
			return fmt.Errorf("catalog query: cannot scan column %d into %T", i+1, d)
		}
	}
	return nil
}
