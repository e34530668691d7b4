package apply

import (
	"bytes"
	"context"
	"encoding/json"
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
	// skip marks remote columns that a DDL applied here dropped or renamed
	// (ColumnGone): their values are logged (queueSkipped), not applied;
	// table.Columns holds the others.
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
	if err := w.checkTrusted(ctx, ri); err != nil {
		return nil, err
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
			fate, err := w.missingColumn(ctx, ri.name, c.Name)
			if err != nil {
				return nil, err
			}
			switch fate {
			case ColumnComing:
				return nil, &HeldError{Upstream: a.o.Upstream, Table: ri.name, Column: c.Name}
			case ColumnGone:
				a.o.Logger.Info("a DDL applied here dropped or renamed a column the upstream still sends: its values are logged in pgmesh.conflict_log",
					"upstream", a.o.Upstream, "table", ri.name, "column", c.Name)
				ri.skip[i], ri.skips = true, true
				continue
			}
			return nil, fmt.Errorf("upstream %s: table %s: column %q sent by the upstream does not exist on this node (or is generated), and no DDL on its way explains it: add it here (pgmesh check shows the drift)", a.o.Upstream, ri.name, c.Name)
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

// checkTrusted refuses to apply to a table whose triggers (those that fire
// in apply sessions), constraints, defaults, index expressions… call a
// function that would run with the apply session's privileges while its
// owner is another role: that role could act as pgmesh. The capture event
// trigger refuses DDL that adds such a function; this catches the rest
// (ddl.capture: manual, a superuser demoted since). Every replicated table
// is checked in one query, once per session and again after a DDL message
// (which clears the mappings, see Message).
func (w *worker) checkTrusted(ctx context.Context, ri *relInfo) error {
	a := w.a
	if _, ok := w.checked[ri.name]; !ok {
		var bad, checked []byte
		err := connQuerier{w.conn}.QueryRow(ctx, `
WITH t AS MATERIALIZED (SELECT pg_catalog.array_append(pgmesh.replicated_tables(), $1::regclass::oid) AS rels)
SELECT (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
                 pg_catalog.format('function %s (owner %s) would run with pgmesh''s privileges when pgmesh applies changes to it (%s): make it run as its owner: ALTER FUNCTION %s SECURITY DEFINER; (or have a superuser own it)',
                                   u.func, u.owner, u.via, u.func)), '{}')::text
          FROM t, pgmesh.untrusted_code(t.rels) u
          JOIN pg_catalog.pg_class c ON c.oid = u.rel JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace),
       (SELECT coalesce(json_agg(n.nspname || '.' || c.relname), '[]')::text
          FROM t, unnest(t.rels) r
          JOIN pg_catalog.pg_class c ON c.oid = r JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace)`, ri.ident).Scan(&bad, &checked)
		if err != nil {
			return fmt.Errorf("upstream %s: table %s: look for code that would run as pgmesh: %w", a.o.Upstream, ri.name, err)
		}
		var msgs map[string]string
		var names []string
		if err := json.Unmarshal(bad, &msgs); err != nil {
			return fmt.Errorf("upstream %s: table %s: look for code that would run as pgmesh: %w", a.o.Upstream, ri.name, err)
		}
		if err := json.Unmarshal(checked, &names); err != nil {
			return fmt.Errorf("upstream %s: table %s: look for code that would run as pgmesh: %w", a.o.Upstream, ri.name, err)
		}
		for _, n := range names {
			w.checked[n] = msgs[n]
		}
		// A table the catalog query could not see (dropped meanwhile) is
		// looked up again next time.
		if _, ok := w.checked[ri.name]; !ok {
			return nil
		}
	}
	if msg := w.checked[ri.name]; msg != "" {
		return fmt.Errorf("upstream %s: table %s: %s", a.o.Upstream, ri.name, msg)
	}
	return nil
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
	if ri.table.Deferrable() && len(ri.table.Key) > 0 && !t.recheck && c.Op != stream.Delete {
		t.noteWritten(ri, c)
	}
	st := w.stmtFor(t, ri, c)
	w.pipe.SendQueryPrepared(st.name, w.params, nil, nil)
	w.add(item{kind: itemChange, txn: t, rel: ri, stmt: st, change: c})
	if ri.skips && c.Op != stream.Delete {
		return w.queueSkipped(t, ri, c)
	}
	return nil
}

// stmtFor returns the prepared statement for the shape in w.shape,
// queueing its preparation if it is new.
func (w *worker) stmtFor(t *txn, ri *relInfo, c *stream.Change) *stmt {
	key := string(w.shape)
	if t.recheck && ri.table.Deferrable() && len(ri.table.Key) > 0 {
		key += "!"
	}
	st, ok := ri.stmts[key]
	if !ok {
		var queued bool
		st, queued = w.prepare(t, ri, c)
		ri.stmts[key] = st
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

// whatDeferred names the check of the deferred constraints at the end of a
// remote transaction (and their deferral) in errors.
const whatDeferred = "deferred constraints"

// DeferredCheckFailed tells whether err is the failure of a remote
// transaction at its end on a deferrable unique or exclusion constraint,
// and which: apply it again with Options.RecheckDeferred.
func DeferredCheckFailed(err error) (stream.LSN, bool) {
	var te *TxnError
	var pe *pgconn.PgError
	if !errors.As(err, &te) || te.What != whatDeferred || !errors.As(err, &pe) {
		return 0, false
	}
	return te.CommitLSN, pe.Code == "23505" || pe.Code == "23P01"
}

// writtenKeys are the keys of the rows a remote transaction wrote in one
// table with deferrable constraints, one list of values per key column.
type writtenKeys struct {
	ri   *relInfo
	keys [][][]byte
}

// noteWritten remembers the key of the row an insert or update writes. A
// deferrable constraint of the upstream held when its transaction
// committed, not row by row: moving a value from one row to another goes
// through a moment where two rows hold it. So the statements let a row
// the remote had seen hold a value its change writes (the transaction
// moves it), and the rows written are checked when the transaction ends
// (queueDeferredChecks), as PostgreSQL does not in the replica role.
func (t *txn) noteWritten(ri *relInfo, c *stream.Change) {
	var w *writtenKeys
	for _, x := range t.written {
		if x.ri.name == ri.name {
			w = x
		}
	}
	if w == nil || w.ri != ri {
		// A new description of the relation may order its columns
		// otherwise: the keys already noted stay with the old one.
		w = &writtenKeys{ri: ri, keys: make([][][]byte, len(ri.identCols))}
		t.written = append(t.written, w)
	}
	for i, k := range ri.identCols {
		v := c.New[k]
		if v.Kind == stream.Unchanged && c.Old != nil {
			v = c.Old[k]
		}
		w.keys[i] = append(w.keys[i], v.Data)
	}
}

// queueDeferredChecks queues, at the end of remote transaction t, the check
// of the deferrable constraints of each table it wrote
// (conflict.DeferredCheckSQL). One that fails stops the transaction with
// a unique violation: DeferredCheckFailed.
func (w *worker) queueDeferredChecks(t *txn) {
	for _, wk := range t.written {
		params := make([][]byte, len(wk.keys))
		for i, vals := range wk.keys {
			params[i] = textArray(vals)
		}
		w.pipe.SendQueryParams(conflict.DeferredCheckSQL(wk.ri.table), params, nil, nil, nil)
		w.add(item{kind: itemConstraints, txn: t, rel: wk.ri})
	}
	t.written = nil
}

// textArray is the text form of a text[] holding vals (none NULL).
func textArray(vals [][]byte) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, c := range v {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.Bytes()
}

// shapeMove replaces the operation byte of an UPDATE that moves its row to
// another key: it is applied as a delete and an insert (conflict.MoveSQL).
const shapeMove = 'M'

// movesKey tells whether an UPDATE changed the row's key: the old key came
// with it (it does when the key changed, and always under REPLICA IDENTITY
// FULL) and differs from the new one. The text of a value is what the
// upstream's type prints, so equal text is the same key.
func (ri *relInfo) movesKey(c *stream.Change) bool {
	if len(ri.table.Key) == 0 || c.Old == nil {
		return false
	}
	moved := false
	for _, k := range ri.identCols {
		o, n := c.Old[k], c.New[k]
		if n.Kind == stream.Unchanged {
			// A key column must come with a new row that moves; an
			// unchanged one (TOAST) did not move.
			return false
		}
		if o.Kind != n.Kind || !bytes.Equal(o.Data, n.Data) {
			moved = true
		}
	}
	return moved
}

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
		move := ri.movesKey(c)
		if move {
			w.shape[0] = shapeMove
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
			if move {
				// A move inserts the new row: nothing to merge.
				break
			}
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

// missingColumn asks Options.MissingColumn about a remote column missing
// here.
func (w *worker) missingColumn(ctx context.Context, table, column string) (ColumnFate, error) {
	a := w.a
	if a.o.MissingColumn == nil {
		return ColumnUnknown, nil
	}
	fate, err := a.o.MissingColumn(ctx, table, column)
	if err != nil {
		return ColumnUnknown, fmt.Errorf("upstream %s: table %s: column %q missing here: is a DDL about it in flight? %w", a.o.Upstream, table, column, err)
	}
	return fate, nil
}

// skippedSQL logs the row of a change that carries columns a DDL applied
// here has dropped or renamed (ColumnGone): the values are not lost. It
// answers like a change's statement, so that the log row is counted.
var skippedSQL = `
WITH logged AS (
 INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, remote_row, remote_commit_time, remote_origin, remote_lsn)
 VALUES ($1, ` + pg.QuoteLiteral(conflict.MissingColumn) + `, ` + pg.QuoteLiteral(conflict.SkipColumn) + `, $2::text::jsonb, $3::text::jsonb, $4::text::timestamptz, $5, $6::text::pg_lsn)
 RETURNING kind, resolution)
SELECT kind, resolution FROM logged`

// queueSkipped queues the log row of a change whose new row carries values
// of skipped columns: the key and the whole row the upstream sent, as
// text.
func (w *worker) queueSkipped(t *txn, ri *relInfo, c *stream.Change) error {
	key, row := map[string]*string{}, map[string]*string{}
	keyTuple := c.New
	if c.Old != nil {
		keyTuple = c.Old
	}
	for i, col := range ri.rel.Columns {
		row[col.Name] = textOf(c.New[i])
		if slices.Contains(ri.identCols, i) {
			key[col.Name] = textOf(keyTuple[i])
		}
	}
	keyJSON, err := json.Marshal(key)
	if err != nil {
		return err
	}
	rowJSON, err := json.Marshal(row)
	if err != nil {
		return err
	}
	w.pipe.SendQueryParams(skippedSQL, [][]byte{[]byte(ri.name), keyJSON, rowJSON, t.commitTime, []byte(w.a.o.Upstream), t.commitLSN}, nil, nil, nil)
	w.add(item{kind: itemChange, txn: t, rel: ri, change: c,
		stmt: &stmt{what: "log the values of columns dropped here of"}})
	return nil
}

// textOf is a value as JSON sees it: its text, null, or for an unchanged
// TOAST value (not sent) null too.
func textOf(v stream.Value) *string {
	if v.Kind != stream.Text {
		return nil
	}
	s := string(v.Data)
	return &s
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
// (reported by the second result), after the full statements it falls back
// to that the session has not prepared (queued here). Parameters are
// untyped: the statement casts each one to its column's type.
func (w *worker) prepare(tx *txn, ri *relInfo, c *stream.Change) (*stmt, bool) {
	t := ri.table
	// Without a key the rows written cannot be found again at the end
	// (noteWritten): a table without key decides them row by row.
	t.DeferredNow = tx.recheck || len(t.Key) == 0
	var set []string
	for i, s := range w.shape[1:] {
		if s == shapeValue {
			set = append(set, ri.table.Columns[i])
		}
	}
	switch {
	case c.Op == stream.Insert:
		return w.prepareSQL(tx, ri, "insert into", conflict.InsertSQL(t))
	case w.shape[0] == shapeMove:
		return w.prepareSQL(tx, ri, "update moving the key of", conflict.MoveSQL(t, set))
	case c.Op == stream.Update:
		return w.prepareSQL(tx, ri, "update", conflict.UpdateSQL(t, set))
	default:
		return w.prepareSQL(tx, ri, "delete from", conflict.DeleteSQL(t))
	}
}

// prepareSQL queues the preparation of sql (what names the operation in
// messages), unless this session prepared it before, after the full
// statements it falls back to by name that the session has not prepared:
// their results come back before the statement's own, which the caller
// queues.
func (w *worker) prepareSQL(t *txn, ri *relInfo, what, sql string) (*stmt, bool) {
	if prev, ok := w.stmts[sql]; ok {
		// Same statement for a newer description of the relation.
		return prev, false
	}
	for _, fb := range conflict.Fallbacks(sql) {
		if _, ok := w.stmts[fb.SQL]; ok {
			continue
		}
		w.stmts[fb.SQL] = &stmt{name: fb.Name, what: "fallback of " + what}
		w.pipe.SendPrepare(fb.Name, fb.SQL, fb.ParamOIDs)
		w.add(item{kind: itemPrepare, txn: t, rel: ri, stmt: w.stmts[fb.SQL]})
	}
	w.nstmt++
	st := &stmt{name: "pgmesh_s" + strconv.Itoa(w.nstmt), what: what}
	w.stmts[sql] = st
	w.pipe.SendPrepare(st.name, sql, nil)
	return st, true
}

// queueTruncate queues, for each relation of a remote TRUNCATE, the
// statement that removes the rows older than it and records it
// (conflict.TruncateSQL): a TRUNCATE in a mesh removes what was written
// before it, on every node, and nothing written after it anywhere. It
// never cascades: the upstream's message lists every replicated table it
// emptied, cascaded ones included, and a table of this node that the
// upstream did not replicate is this node's own. RESTART IDENTITY is not
// replayed either: each node's sequences hand out ids of their own range,
// and the rows newer than the truncate keep theirs.
func (w *worker) queueTruncate(t *txn, c *stream.Change) error {
	var ris []*relInfo
	for _, r := range c.TruncateRels {
		ri, err := w.relFor(r)
		if err != nil {
			return err
		}
		ris = append(ris, ri)
	}
	if len(ris) == 0 {
		return nil
	}
	w.ensurePipe()
	for _, ri := range ris {
		w.pipe.SendQueryParams(conflict.TruncateLockSQL(ri.table), nil, nil, nil, nil)
		w.add(item{kind: itemTruncate, txn: t, tables: ri.name})
		w.pipe.SendQueryParams(conflict.TruncateSQL(ri.table), [][]byte{t.commitTime, []byte(w.a.o.Upstream), t.commitLSN}, nil, nil, nil)
		w.add(item{kind: itemTruncate, txn: t, tables: ri.name})
	}
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
