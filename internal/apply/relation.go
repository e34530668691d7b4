package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// relInfo is an upstream relation mapped onto the local table, with the
// statements prepared for it.
type relInfo struct {
	rel         *stream.Relation // the description this mapping was built for
	name        string           // schema.table, for messages
	ident       string           // quoted
	partitioned bool
	cols        []string // quoted column name per remote column
	textEq      []bool   // per remote column: compare as text (type without '=')
	key         []int    // remote columns of the replica identity
	arbiter     []int    // remote columns of the local unique index for ON CONFLICT; nil = plain INSERT
	full        bool     // REPLICA IDENTITY FULL: rows are found by all their old values
	stmts       map[string]*stmt
}

// stmt is a prepared statement for one shape of change on one table.
type stmt struct {
	name string
	what string // "insert into", "update", "delete from": for messages
}

// localTableSQL describes a local table: its kind, its columns that can be
// written (not dropped, not generated) and its unique indexes usable as an
// ON CONFLICT arbiter (valid, immediate, no predicate or expression).
const localTableSQL = `
SELECT c.relkind,
	(SELECT json_agg(json_build_object('name', a.attname,
		'text_eq', format_type(coalesce(nullif(t.typbasetype, 0), a.atttypid), NULL)
			IN ('json', 'xml', 'point', 'line', 'lseg', 'box', 'path', 'polygon', 'circle'))
		ORDER BY a.attnum)
	 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
	 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
	(SELECT json_agg(json_build_object('primary', i.indisprimary, 'cols',
		(SELECT json_agg(a.attname ORDER BY k.ord)
		 FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
		 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		 WHERE k.ord <= i.indnkeyatts))
		ORDER BY NOT i.indisprimary, i.indexrelid)
	 FROM pg_index i
	 WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate
	   AND i.indpred IS NULL AND i.indexprs IS NULL)
FROM pg_class c WHERE c.oid = to_regclass($1)`

type localColumn struct {
	Name   string `json:"name"`
	TextEq bool   `json:"text_eq"`
}

type localIndex struct {
	Primary bool     `json:"primary"`
	Cols    []string `json:"cols"`
}

// relFor returns the mapping for the relation of a change, looking the local
// table up the first time a relation description is seen.
func (a *Applier) relFor(ctx context.Context, r *stream.Relation) (*relInfo, error) {
	if ri, ok := a.rels[r.ID]; ok && ri.rel == r {
		return ri, nil
	}
	// The catalog query needs the connection out of pipeline mode.
	if err := a.drain(ctx); err != nil {
		return nil, err
	}
	ri, err := a.lookup(ctx, r)
	if err != nil {
		return nil, err
	}
	a.rels[r.ID] = ri
	return ri, nil
}

func (a *Applier) lookup(ctx context.Context, r *stream.Relation) (*relInfo, error) {
	ri := &relInfo{
		rel:    r,
		name:   r.QualifiedName(),
		ident:  pg.Ident(r.Schema, r.Name),
		full:   r.ReplicaIdentity == 'f',
		stmts:  map[string]*stmt{},
		cols:   make([]string, len(r.Columns)),
		textEq: make([]bool, len(r.Columns)),
	}
	res := a.conn.ExecParams(ctx, localTableSQL, [][]byte{[]byte(ri.ident)}, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fmt.Errorf("upstream %s: look up local table %s: %w", a.o.Upstream, ri.name, res.Err)
	}
	if len(res.Rows) == 0 {
		return nil, fmt.Errorf("upstream %s: table %s does not exist on this node", a.o.Upstream, ri.name)
	}
	row := res.Rows[0]
	ri.partitioned = string(row[0]) == "p"
	var cols []localColumn
	var idxs []localIndex
	if row[1] != nil {
		if err := json.Unmarshal(row[1], &cols); err != nil {
			return nil, fmt.Errorf("upstream %s: columns of %s: %w", a.o.Upstream, ri.name, err)
		}
	}
	if row[2] != nil {
		if err := json.Unmarshal(row[2], &idxs); err != nil {
			return nil, fmt.Errorf("upstream %s: indexes of %s: %w", a.o.Upstream, ri.name, err)
		}
	}
	byName := make(map[string]localColumn, len(cols))
	for _, c := range cols {
		byName[c.Name] = c
	}
	remote := make(map[string]int, len(r.Columns))
	var keyNames []string
	for i, c := range r.Columns {
		lc, ok := byName[c.Name]
		if !ok {
			return nil, fmt.Errorf("upstream %s: table %s: column %q sent by the upstream does not exist on this node (or is generated)", a.o.Upstream, ri.name, c.Name)
		}
		ri.cols[i] = pg.Ident(c.Name)
		ri.textEq[i] = lc.TextEq
		remote[c.Name] = i
		if c.Key {
			ri.key = append(ri.key, i)
			keyNames = append(keyNames, c.Name)
		}
	}
	ri.arbiter = chooseArbiter(idxs, keyNames, remote)
	return ri, nil
}

// chooseArbiter picks the local unique index that decides whether a remote
// INSERT meets an existing row: the one on exactly the replica identity
// columns, else the primary key if the upstream sends all its columns (the
// case of REPLICA IDENTITY FULL). It returns the remote column indexes, or
// nil when there is none and inserts are plain.
func chooseArbiter(idxs []localIndex, keyNames []string, remote map[string]int) []int {
	sortedKey := slices.Sorted(slices.Values(keyNames))
	pick := -1
	for i, ix := range idxs {
		if len(keyNames) > 0 && slices.Equal(slices.Sorted(slices.Values(ix.Cols)), sortedKey) {
			pick = i
			break
		}
	}
	if pick < 0 && len(idxs) > 0 && idxs[0].Primary {
		pick = 0
		for _, c := range idxs[0].Cols {
			if _, ok := remote[c]; !ok {
				pick = -1
			}
		}
	}
	if pick < 0 {
		return nil
	}
	out := make([]int, len(idxs[pick].Cols))
	for i, c := range idxs[pick].Cols {
		out[i] = remote[c]
	}
	return out
}

// queueChange queues the statement of one change (preparing it first if
// this shape is new) in the current flight.
func (a *Applier) queueChange(ctx context.Context, c *stream.Change) error {
	if c.Op == stream.Truncate {
		return a.queueTruncate(ctx, c)
	}
	if c.Rel == nil {
		return fmt.Errorf("upstream %s: remote transaction %s: %c change without relation", a.o.Upstream, a.txn.begin.FinalLSN, c.Op)
	}
	ri, err := a.relFor(ctx, c.Rel)
	if err != nil {
		return err
	}
	if err := a.buildShape(ri, c); err != nil {
		return fmt.Errorf("upstream %s: remote transaction %s: table %s: %w", a.o.Upstream, a.txn.begin.FinalLSN, ri.name, err)
	}
	a.startTxn(ctx)
	st, ok := ri.stmts[string(a.shape)]
	if !ok {
		var queued bool
		st, queued = a.prepare(ri, c.Op)
		ri.stmts[string(a.shape)] = st
		if queued {
			a.pending = append(a.pending, item{kind: itemPrepare, txn: a.txn, rel: ri, stmt: st})
		}
	}
	a.pipe.SendQueryPrepared(st.name, a.params, nil, nil)
	a.pending = append(a.pending, item{kind: itemChange, txn: a.txn, rel: ri, stmt: st, change: c})
	return nil
}

// Shape codes: one byte per column of a tuple.
const (
	shapeValue = 'v' // a value (possibly NULL) is written or compared with =
	shapeNull  = 'n' // compared with IS NULL (FULL identity)
	shapeSkip  = 'u' // unchanged TOAST: left alone
)

// buildShape fills a.shape (the statement cache key) and a.params (the
// values, in statement parameter order) for a change.
func (a *Applier) buildShape(ri *relInfo, c *stream.Change) error {
	a.shape = append(a.shape[:0], byte(c.Op))
	a.params = a.params[:0]
	switch c.Op {
	case stream.Insert:
		if err := a.shapeSet(ri, c.New); err != nil {
			return err
		}
	case stream.Update:
		if err := a.shapeSet(ri, c.New); err != nil {
			return err
		}
		if ri.full {
			match := c.Old
			if match == nil {
				match = c.New
			}
			return a.shapeMatch(ri, match)
		}
		return a.shapeKey(ri, updateKeyTuple(c))
	case stream.Delete:
		if c.Old == nil {
			return fmt.Errorf("delete without old row")
		}
		if ri.full {
			return a.shapeMatch(ri, c.Old)
		}
		return a.shapeKey(ri, c.Old)
	default:
		return fmt.Errorf("unknown operation %q", c.Op)
	}
	return nil
}

// updateKeyTuple is the tuple holding the key of the row an UPDATE changes:
// the old key when it was sent (key changed, or FULL), else the new row.
func updateKeyTuple(c *stream.Change) stream.Tuple {
	if c.Old != nil {
		return c.Old
	}
	return c.New
}

func (a *Applier) shapeSet(ri *relInfo, t stream.Tuple) error {
	if len(t) != len(ri.cols) {
		return fmt.Errorf("row has %d columns, relation %d", len(t), len(ri.cols))
	}
	for _, v := range t {
		switch v.Kind {
		case stream.Unchanged:
			a.shape = append(a.shape, shapeSkip)
		case stream.Null:
			a.shape = append(a.shape, shapeValue)
			a.params = append(a.params, nil)
		default:
			a.shape = append(a.shape, shapeValue)
			a.params = append(a.params, v.Data)
		}
	}
	return nil
}

func (a *Applier) shapeKey(ri *relInfo, t stream.Tuple) error {
	if len(ri.key) == 0 {
		return fmt.Errorf("no replica identity columns to find the row by")
	}
	if len(t) != len(ri.cols) {
		return fmt.Errorf("row has %d columns, relation %d", len(t), len(ri.cols))
	}
	a.shape = append(a.shape, 'k')
	for _, k := range ri.key {
		v := t[k]
		switch v.Kind {
		case stream.Unchanged:
			return fmt.Errorf("key column %s was not sent", ri.cols[k])
		case stream.Null:
			a.params = append(a.params, nil)
		default:
			a.params = append(a.params, v.Data)
		}
	}
	return nil
}

func (a *Applier) shapeMatch(ri *relInfo, t stream.Tuple) error {
	if len(t) != len(ri.cols) {
		return fmt.Errorf("row has %d columns, relation %d", len(t), len(ri.cols))
	}
	a.shape = append(a.shape, 'f')
	for _, v := range t {
		switch v.Kind {
		case stream.Unchanged:
			a.shape = append(a.shape, shapeSkip)
		case stream.Null:
			a.shape = append(a.shape, shapeNull)
		default:
			a.shape = append(a.shape, shapeValue)
			a.params = append(a.params, v.Data)
		}
	}
	return nil
}

// prepare queues the preparation of the statement for the current shape,
// unless this session prepared the same SQL before (reported by the second
// result). Parameters are untyped: the server infers each type from its
// column.
func (a *Applier) prepare(ri *relInfo, op stream.Op) (*stmt, bool) {
	st := &stmt{name: "pgmesh_s" + strconv.Itoa(len(a.stmts)+1)}
	var b strings.Builder
	n := 0
	param := func() string { n++; return "$" + strconv.Itoa(n) }
	switch op {
	case stream.Insert:
		st.what = "insert into"
		set := a.shape[1 : 1+len(ri.cols)]
		var cols, vals []string
		sent := map[int]bool{}
		for i, s := range set {
			if s == shapeSkip {
				continue
			}
			cols = append(cols, ri.cols[i])
			vals = append(vals, param())
			sent[i] = true
		}
		fmt.Fprintf(&b, "INSERT INTO %s (%s) VALUES (%s)", ri.ident, strings.Join(cols, ", "), strings.Join(vals, ", "))
		if ri.arbiter != nil && arbiterSent(ri.arbiter, sent) {
			var conflict, upd []string
			inArbiter := map[int]bool{}
			for _, k := range ri.arbiter {
				conflict = append(conflict, ri.cols[k])
				inArbiter[k] = true
			}
			for i := range set {
				if sent[i] && !inArbiter[i] {
					upd = append(upd, ri.cols[i]+" = EXCLUDED."+ri.cols[i])
				}
			}
			if len(upd) == 0 {
				// Nothing but the key: still "update" so that RETURNING
				// reports the existing row.
				for _, k := range ri.arbiter {
					upd = append(upd, ri.cols[k]+" = EXCLUDED."+ri.cols[k])
				}
			}
			fmt.Fprintf(&b, " ON CONFLICT (%s) DO UPDATE SET %s RETURNING (xmax <> 0)", strings.Join(conflict, ", "), strings.Join(upd, ", "))
		}
	case stream.Update:
		st.what = "update"
		set := a.shape[1 : 1+len(ri.cols)]
		var upd []string
		for i, s := range set {
			if s != shapeSkip {
				upd = append(upd, ri.cols[i]+" = "+param())
			}
		}
		if len(upd) == 0 {
			// Every column unchanged: a no-op update that still reports
			// whether the row exists.
			upd = append(upd, ri.cols[0]+" = "+ri.cols[0])
		}
		fmt.Fprintf(&b, "UPDATE %s SET %s WHERE %s", ri.ident, strings.Join(upd, ", "), a.where(ri, 1+len(ri.cols), param))
	case stream.Delete:
		st.what = "delete from"
		fmt.Fprintf(&b, "DELETE FROM %s WHERE %s", ri.ident, a.where(ri, 1, param))
	}
	sql := b.String()
	if name, ok := a.stmts[sql]; ok {
		// Same statement for a newer description of the relation.
		st.name = name
		return st, false
	}
	a.stmts[sql] = st.name
	a.pipe.SendPrepare(st.name, sql, nil)
	return st, true
}

// arbiterSent reports whether every arbiter column has a value to conflict on.
func arbiterSent(arbiter []int, sent map[int]bool) bool {
	for _, k := range arbiter {
		if !sent[k] {
			return false
		}
	}
	return true
}

// where renders the row-finding condition of an UPDATE or DELETE from the
// shape bytes starting at off: by key, or for FULL identity one row whose
// old values all match.
func (a *Applier) where(ri *relInfo, off int, param func() string) string {
	if a.shape[off] == 'k' {
		conds := make([]string, len(ri.key))
		for j, k := range ri.key {
			conds[j] = ri.cols[k] + " = " + param()
		}
		return strings.Join(conds, " AND ")
	}
	var conds []string
	for i, s := range a.shape[off+1:] {
		switch s {
		case shapeNull:
			conds = append(conds, ri.cols[i]+" IS NULL")
		case shapeValue:
			if ri.textEq[i] {
				conds = append(conds, ri.cols[i]+"::text = "+param()+"::text")
			} else {
				conds = append(conds, ri.cols[i]+" = "+param())
			}
		}
	}
	pred := "true"
	if len(conds) > 0 {
		pred = strings.Join(conds, " AND ")
	}
	// ctid is unique only within one partition.
	if ri.partitioned {
		return fmt.Sprintf("(tableoid, ctid) = (SELECT tableoid, ctid FROM %s WHERE %s LIMIT 1)", ri.ident, pred)
	}
	return fmt.Sprintf("ctid = (SELECT ctid FROM %s WHERE %s LIMIT 1)", ri.ident, pred)
}

// queueTruncate queues TRUNCATE of all relations of the change in one
// statement, as the upstream ran it.
func (a *Applier) queueTruncate(ctx context.Context, c *stream.Change) error {
	var idents, names []string
	for _, r := range c.TruncateRels {
		ri, err := a.relFor(ctx, r)
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
	a.startTxn(ctx)
	a.pipe.SendQueryParams(sql, nil, nil, nil, nil)
	a.pending = append(a.pending, item{kind: itemTruncate, txn: a.txn, tables: strings.Join(names, ", ")})
	return nil
}

// keyText renders the key of a row for logs: col=value, values shortened.
func (ri *relInfo) keyText(t stream.Tuple) string {
	cols := ri.key
	if ri.full && ri.arbiter != nil {
		cols = ri.arbiter
	}
	var b strings.Builder
	for j, k := range cols {
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
