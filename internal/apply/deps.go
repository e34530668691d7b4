package apply

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// Which transactions must wait for which. Two remote transactions may run
// at the same time when neither touches what the other touches; the later
// one's change then waits (in the database, order.go) until the earlier
// transaction that last touched the same thing has committed. With commits
// in the upstream's order this makes every statement see what it would see
// in a serial apply:
//
//   - the row: by its replica identity key, old and new. The conflict
//     statements also read the key's tombstone and take an advisory lock on
//     the key, both covered by the same key.
//   - every unique value: a change writing value v of a unique index waits
//     for the last transaction that wrote or freed v. The freed value is
//     known only when the old row came with the change (REPLICA IDENTITY
//     FULL, or a key change); otherwise an update or delete may free any
//     value of the index (a wildcard), and every later write to the index
//     waits for it: a unique value moving from one row to another is
//     applied in order, never reported as a unique conflict that a serial
//     apply would not have met.
//   - foreign keys: a child's insert or update touches its parent's key, and
//     so does its update or delete for the parent it leaves when the old row
//     came whole (REPLICA IDENTITY FULL): it is ordered with the parent's
//     insert and delete. Apply runs in replica role, so no RI trigger fires
//     and no key-share lock is taken; with commits in order a reader never
//     sees a child without its parent anyway. The order keeps what triggers
//     enabled ALWAYS or REPLICA (and deferred constraint triggers) see the
//     same as in a serial apply. Without the old row the parent left is
//     unknown, and guessing it (a wildcard) would serialize every update
//     of every child table: such a change is ordered with its new parent
//     only.
//   - the whole table: TRUNCATE, every change of a table with no usable
//     key (REPLICA IDENTITY FULL without a key), or with a uniqueness the
//     values cannot express (a partial or expression unique index, an
//     exclusion constraint) waits for everything before it on the table,
//     and everything after it on the table waits for it. Inserts into a
//     key-less table wait only for those.
//   - the key gates (sql/0010_key_gates.sql): a fast insert holds its key's
//     gate, one of 64 per table, in share mode until it commits; a delete
//     that falls back and a key move hold the old key's gate exclusively.
//     Keys of a table share gates, so a later transaction's insert of one
//     key holding the gate that an earlier transaction's delete of another
//     key waits for would close a cycle with the commit order (the insert's
//     transaction waits for the delete's to commit): every insert into a
//     table with a key waits for the last transaction that deleted from it
//     or moved a key in it. Inserts alone, and deletes after inserts, need
//     no such wait: the one holding the gate commits first.
//   - everything: TRUNCATE … CASCADE (it reaches tables it does not name)
//     waits for every transaction before it, and every later one for it.
//     Received seen messages (recorded at the start of the next
//     transaction, read by the conflict statements of every later one)
//     and DDL messages make every later transaction wait (dispatch.go).
type tracker struct {
	last     map[string]*txn // key → last transaction that touched it
	idxAny   map[string]*txn // unique index → last transaction that touched any of its values
	idxWild  map[string]*txn // unique index → last transaction that may have freed any value
	tblAny   map[string]*txn // table → last transaction that changed it
	tblWide  map[string]*txn // table → last transaction that changed it as a whole
	tblGate  map[string]*txn // table → last transaction that deleted from it or moved a key in it
	global   *txn            // last transaction that everything after it waits for, change by change
	after    *txn            // last transaction that everything after it waits for, from its start
	inserted int             // keys added since the last pruning
}

func newTracker() *tracker {
	return &tracker{last: map[string]*txn{}, idxAny: map[string]*txn{}, idxWild: map[string]*txn{},
		tblAny: map[string]*txn{}, tblWide: map[string]*txn{}, tblGate: map[string]*txn{}}
}

// pruneEvery is how many keys are added between two prunings of the keys
// whose transaction has committed.
const pruneEvery = 100_000

// maxTxnKeys is how many keys one transaction records; a bigger one makes
// every later change wait for it instead, which keeps the tracker's memory
// flat however big the transaction.
const maxTxnKeys = 20_000

func (tr *tracker) prune(committed uint64) {
	if tr.inserted < pruneEvery {
		return
	}
	tr.inserted = 0
	for _, m := range []map[string]*txn{tr.last, tr.idxAny, tr.idxWild, tr.tblAny, tr.tblWide, tr.tblGate} {
		for k, t := range m {
			if t.seq <= committed {
				delete(m, k)
			}
		}
	}
}

// dep collects the latest transaction a change must wait for (waiting for
// it covers every earlier one: commits are in order).
type dep struct {
	tr  *tracker
	t   *txn // the change's transaction
	max *txn
}

func (d *dep) wait(t *txn) {
	if t != nil && t != d.t && (d.max == nil || t.seq > d.max.seq) {
		d.max = t
	}
}

func (d *dep) set(m map[string]*txn, k string) {
	if d.t.coarse {
		return
	}
	if _, ok := m[k]; !ok {
		d.tr.inserted++
	}
	m[k] = d.t
	d.t.keys++
}

// key touches one value of an index (the key is index id + values).
func (d *dep) key(table, index, k string) {
	d.wait(d.tr.last[k])
	d.wait(d.tr.idxWild[index])
	d.wait(d.tr.tblWide[table])
	d.set(d.tr.last, k)
	d.set(d.tr.idxAny, index)
	d.set(d.tr.tblAny, table)
}

// wildcard touches an unknown value of an index.
func (d *dep) wildcard(table, index string) {
	d.wait(d.tr.idxAny[index])
	d.wait(d.tr.idxWild[index])
	d.wait(d.tr.tblWide[table])
	d.set(d.tr.idxWild, index)
	d.set(d.tr.idxAny, index)
	d.set(d.tr.tblAny, table)
}

// table touches a whole table.
func (d *dep) table(table string) {
	d.wait(d.tr.tblAny[table])
	d.wait(d.tr.tblWide[table])
	d.set(d.tr.tblWide, table)
	d.set(d.tr.tblAny, table)
}

// append touches a table as a key-less insert does.
func (d *dep) append(table string) {
	d.wait(d.tr.tblWide[table])
	d.set(d.tr.tblAny, table)
}

// depRel is what the dependencies of a relation's changes are computed from:
// the local table's unique indexes and foreign keys, by remote column.
type depRel struct {
	table   string
	whole   bool       // every change touches the whole table
	ident   *depIndex  // replica identity key; nil for a key-less table
	uniques []depIndex // the other unique indexes
	fks     []depIndex // foreign keys: index = the parent's, cols = the child's columns
}

// depIndex is a set of columns whose values identify something: cols are
// remote column positions, in the order of the sorted local column names
// that id lists.
type depIndex struct {
	table string // the table the index is on (the parent's, for a foreign key)
	id    string // "schema.table(col,col)", the same for a parent's key and its children's references
	cols  []int
}

// depCatalogSQL describes a table for the dependency tracker: its unique
// indexes (columns, and whether values describe them: no predicate, no
// expression), whether it has an exclusion constraint, and its foreign keys
// (columns, parent and parent columns).
const depCatalogSQL = `
SELECT (SELECT json_agg(json_build_object(
                  'ident', CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END,
                  'plain', i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid,
                  'cols', (SELECT json_agg(a.attname ORDER BY k.ord)
                             FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                            WHERE k.ord <= i.indnkeyatts)))
          FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisunique),
       EXISTS (SELECT FROM pg_catalog.pg_constraint x WHERE x.conrelid = c.oid AND x.contype = 'x'),
       (SELECT json_agg(json_build_object(
                  'parent', (SELECT n.nspname || '.' || p.relname FROM pg_catalog.pg_class p
                               JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace WHERE p.oid = f.confrelid),
                  'cols', (SELECT json_agg(a.attname ORDER BY k.ord) FROM unnest(f.conkey) WITH ORDINALITY k(attnum, ord)
                             JOIN pg_catalog.pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.attnum),
                  'pcols', (SELECT json_agg(a.attname ORDER BY k.ord) FROM unnest(f.confkey) WITH ORDINALITY k(attnum, ord)
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.attnum)))
          FROM pg_catalog.pg_constraint f WHERE f.conrelid = c.oid AND f.contype = 'f')
  FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)`

// depRelFor returns the dependency description of r, reading the catalog
// the first time.
func (a *Applier) depRelFor(ctx context.Context, r *stream.Relation) (*depRel, error) {
	if dr, ok := a.depRels[r]; ok {
		return dr, nil
	}
	dr, err := a.loadDepRel(ctx, r)
	if err != nil {
		return nil, err
	}
	a.depRels[r] = dr
	return dr, nil
}

func (a *Applier) loadDepRel(ctx context.Context, r *stream.Relation) (*depRel, error) {
	name := r.QualifiedName()
	dr := &depRel{table: name}
	res := a.o.Catalog.ExecParams(ctx, depCatalogSQL, [][]byte{[]byte(pg.Ident(r.Schema, r.Name))}, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fmt.Errorf("upstream %s: describe table %s for parallel apply: %w", a.o.Upstream, name, res.Err)
	}
	if len(res.Rows) == 0 {
		// The worker reports the missing table; until then it is ordered
		// with everything on it.
		dr.whole = true
		return dr, nil
	}
	row := res.Rows[0]
	var idxs []struct {
		Ident, Plain bool
		Cols         []string
	}
	var fks []struct {
		Parent      string
		Cols, Pcols []string
	}
	if err := json.Unmarshal(nonNull(row[0]), &idxs); err != nil {
		return nil, fmt.Errorf("upstream %s: describe table %s: indexes: %w", a.o.Upstream, name, err)
	}
	if err := json.Unmarshal(nonNull(row[2]), &fks); err != nil {
		return nil, fmt.Errorf("upstream %s: describe table %s: foreign keys: %w", a.o.Upstream, name, err)
	}
	remote := make(map[string]int, len(r.Columns))
	for i, c := range r.Columns {
		remote[c.Name] = i
	}
	if string(row[1]) == "t" {
		dr.whole = true
	}
	for _, ix := range idxs {
		if !ix.Plain {
			dr.whole = true
			continue
		}
		di, ok := indexOf(name, ix.Cols, ix.Cols, remote)
		if !ok {
			// A unique index on a column the upstream does not send:
			// values cannot say what collides.
			dr.whole = true
			continue
		}
		if ix.Ident && dr.ident == nil {
			dr.ident = &di
		} else {
			dr.uniques = append(dr.uniques, di)
		}
	}
	for _, fk := range fks {
		if di, ok := indexOf(fk.Parent, fk.Pcols, fk.Cols, remote); ok {
			dr.fks = append(dr.fks, di)
		}
	}
	return dr, nil
}

// indexOf describes an index of table whose columns are named idxCols there,
// valued by the remote columns named cols (the same list for a table's own
// index; a foreign key's for a parent's).
func indexOf(table string, idxCols, cols []string, remote map[string]int) (depIndex, bool) {
	if len(idxCols) == 0 || len(idxCols) != len(cols) {
		return depIndex{}, false
	}
	order := make([]int, len(idxCols))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return strings.Compare(idxCols[x], idxCols[y]) })
	di := depIndex{}
	names := make([]string, len(order))
	for i, j := range order {
		names[i] = idxCols[j]
		pos, ok := remote[cols[j]]
		if !ok {
			return depIndex{}, false
		}
		di.cols = append(di.cols, pos)
	}
	di.table = table
	di.id = table + "(" + strings.Join(names, ",") + ")"
	return di, true
}

// value is the key of index di's values in tuple tu; ok is false when one
// of them did not come (unchanged TOAST). NULLs are values: an index with
// NULLS NOT DISTINCT compares them.
func (di *depIndex) value(tu stream.Tuple) (string, bool) {
	var b strings.Builder
	b.WriteString(di.id)
	for _, c := range di.cols {
		if c >= len(tu) {
			return "", false
		}
		v := tu[c]
		switch v.Kind {
		case stream.Unchanged:
			return "", false
		case stream.Null:
			b.WriteString("\x00n")
		default:
			b.WriteString("\x00v")
			b.Write(v.Data)
		}
	}
	return b.String(), true
}

// fkValue is like value for a foreign key, whose reference is not checked
// when one of its columns is NULL.
func (di *depIndex) fkValue(tu stream.Tuple) (string, bool) {
	for _, c := range di.cols {
		if c >= len(tu) || tu[c].Kind != stream.Text {
			return "", false
		}
	}
	return di.value(tu)
}

// changeDeps returns the latest transaction change c of t must wait for
// (nil: none), and records what c touches.
func (a *Applier) changeDeps(ctx context.Context, t *txn, c *stream.Change) (*txn, error) {
	tr := a.deps
	tr.prune(a.committedN.Load())
	if !t.coarse && t.keys >= maxTxnKeys {
		t.coarse = true
		tr.global = t
	}
	d := dep{tr: tr, t: t}
	if c.Op == stream.Truncate {
		if c.Cascade {
			d.wait(t.pred)
			tr.global = t
			return d.max, nil
		}
		for _, r := range c.TruncateRels {
			d.table(r.QualifiedName())
		}
		d.wait(tr.global)
		return d.max, nil
	}
	if c.Rel == nil {
		return nil, nil // the worker reports it
	}
	dr, err := a.depRelFor(ctx, c.Rel)
	if err != nil {
		return nil, err
	}
	d.wait(tr.global)
	if dr.whole || (dr.ident == nil && c.Op != stream.Insert) {
		d.table(dr.table)
		return d.max, nil
	}
	if dr.ident == nil {
		d.append(dr.table)
	}
	// The old row's values: all of them with REPLICA IDENTITY FULL, else
	// only the key (and for an update only when the key changed).
	old := c.Old
	fullOld := old != nil && !c.OldIsKey
	touch := func(di *depIndex, tu stream.Tuple) bool {
		if k, ok := di.value(tu); ok {
			d.key(dr.table, di.id, k)
			return true
		}
		return false
	}
	// The key gates: see tracker.
	switch {
	case dr.ident == nil:
	case c.Op == stream.Insert:
		d.wait(tr.tblGate[dr.table])
	case c.Op == stream.Delete || (c.Op == stream.Update && movesKey(dr.ident, old, c.New)):
		d.set(tr.tblGate, dr.table)
	}
	switch c.Op {
	case stream.Insert:
		if dr.ident != nil && !touch(dr.ident, c.New) {
			d.table(dr.table)
		}
		for i := range dr.uniques {
			if !touch(&dr.uniques[i], c.New) {
				d.wildcard(dr.table, dr.uniques[i].id)
			}
		}
	case stream.Update, stream.Delete:
		keyTuple := c.New
		if old != nil {
			keyTuple = old
		}
		if !touch(dr.ident, keyTuple) {
			d.table(dr.table)
		}
		if c.Op == stream.Update && old != nil {
			touch(dr.ident, c.New)
		}
		for i := range dr.uniques {
			u := &dr.uniques[i]
			if c.Op == stream.Update && !touch(u, c.New) {
				d.wildcard(dr.table, u.id)
			}
			if !fullOld || !touch(u, old) {
				d.wildcard(dr.table, u.id)
			}
		}
	}
	for i := range dr.fks {
		fk := &dr.fks[i]
		if c.Op != stream.Delete {
			if k, ok := fk.fkValue(c.New); ok {
				d.key(fk.table, fk.id, k)
			}
		}
		// The parent an update or delete let go of, known only with the
		// whole old row (REPLICA IDENTITY FULL).
		if c.Op != stream.Insert && fullOld {
			if k, ok := fk.fkValue(old); ok {
				d.key(fk.table, fk.id, k)
			}
		}
	}
	return d.max, nil
}

// movesKey tells whether an update whose old row came (old, nil otherwise)
// changed the key of index di.
func movesKey(di *depIndex, old, tu stream.Tuple) bool {
	if old == nil {
		return false
	}
	o, ok := di.value(old)
	n, ok2 := di.value(tu)
	return ok && ok2 && o != n
}

func nonNull(b []byte) []byte {
	if b == nil {
		return []byte("[]")
	}
	return b
}
