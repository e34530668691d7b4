package apply

import (
	"encoding/binary"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// Consecutive inserts into one table within a remote transaction go as one
// statement (conflict.InsertManySQL) when they are queued together: a big
// transaction's rows, a bulk load. The statement applies each row as
// InsertSQL would, so the only conditions are the ones it states: no two
// rows of a batch share a key or a unique value (a batch ends before such a
// row), and the table is one it serves (conflict.ManyOK: plain unique
// indexes only, nothing deferrable).

// maxBatch is the most rows in one statement.
const maxBatch = 1000

// textOID is the element type of an InsertManySQL column parameter.
const textOID = 25

// queueInserts queues o's insert with the inserts queued right after it
// into the same table as one statement. It reports false, having taken
// nothing, when o goes alone.
func (w *worker) queueInserts(o op) (bool, error) {
	ri, err := w.relFor(o.c.Rel)
	if err != nil {
		return false, err
	}
	// Skipped columns log each row on its own (queueSkipped).
	if ri.skips || !conflict.ManyOK(ri.table) {
		return false, nil
	}
	uniques, ok := uniquePositions(ri)
	if !ok {
		return false, nil
	}
	batch := w.takeInserts(o, ri, uniques)
	if len(batch) < 2 {
		return false, nil
	}
	t := o.t
	if err := w.buildShape(t, ri, batch[0]); err != nil {
		return false, fatal{err}
	}
	w.ensurePipe()
	st, ok := ri.stmts["M"]
	if !ok {
		var queued bool
		st, queued = w.prepareSQL(t, ri, "insert into", conflict.InsertManySQL(ri.table))
		ri.stmts["M"] = st
		if queued {
			w.add(item{kind: itemPrepare, txn: t, rel: ri, stmt: st})
		}
	}
	params := [][]byte{t.commitTime, []byte(w.a.o.Upstream), t.commitLSN}
	formats := []int16{0, 0, 0}
	for i := range ri.rel.Columns {
		if ri.skip[i] {
			continue
		}
		params = append(params, columnArray(batch, i))
		formats = append(formats, 1)
	}
	w.pipe.SendQueryPrepared(st.name, params, formats, nil)
	w.add(item{kind: itemMany, txn: t, rel: ri, stmt: st, changes: batch})
	t.changes += uint64(len(batch))
	return true, w.maybeSend()
}

// uniquePositions are the remote column positions of each of the table's
// unique indexes (the key first); false when one is not sent.
func uniquePositions(ri *relInfo) ([][]int, bool) {
	pos := make(map[string]int, len(ri.rel.Columns))
	for i, c := range ri.rel.Columns {
		if !ri.skip[i] {
			pos[c.Name] = i
		}
	}
	var out [][]int
	idxs := [][]string{ri.table.Key}
	for _, c := range ri.table.Constraints {
		var cols []string
		for _, e := range c.Elems {
			cols = append(cols, e.Column)
		}
		idxs = append(idxs, cols)
	}
	for _, idx := range idxs {
		if len(idx) == 0 {
			continue
		}
		var ps []int
		for _, c := range idx {
			p, ok := pos[c]
			if !ok {
				return nil, false
			}
			ps = append(ps, p)
		}
		out = append(out, ps)
	}
	return out, true
}

// takeInserts takes, after o, the inserts into o's table of o's transaction
// queued next that need no wait, until one shares a key or a unique value
// with the batch. It returns the batch's changes, o's first.
func (w *worker) takeInserts(o op, ri *relInfo, uniques [][]int) []*stream.Change {
	seen := map[string]bool{}
	fresh := func(c *stream.Change) bool {
		if len(c.New) != len(ri.rel.Columns) {
			return false
		}
		for _, v := range c.New {
			if v.Kind == stream.Unchanged {
				return false
			}
		}
		var keys []string
		for i, ps := range uniques {
			var b strings.Builder
			b.WriteByte(byte('0' + i))
			for _, p := range ps {
				v := c.New[p]
				b.WriteByte(0)
				b.WriteByte(byte(v.Kind))
				b.Write(v.Data)
			}
			if seen[b.String()] {
				return false
			}
			keys = append(keys, b.String())
		}
		for _, k := range keys {
			seen[k] = true
		}
		return true
	}
	batch := []*stream.Change{o.c}
	if !fresh(o.c) {
		return batch
	}
	a := w.a
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, q := range w.q {
		if len(batch) == maxBatch || q.kind != opChange || q.t != o.t || q.c.Op != stream.Insert || q.c.Rel != o.c.Rel ||
			w.mustWait(q.t, q.dep) || !fresh(q.c) {
			break
		}
		batch = append(batch, q.c)
		n++
	}
	if n > 0 {
		clear(w.q[:n])
		w.q = w.q[n:]
		a.cond.Broadcast()
	}
	return batch
}

// mustWait tells whether t must wait for d before its next change (see
// waitFor). Called under Applier.mu.
func (w *worker) mustWait(t, d *txn) bool {
	return d != nil && d != t && d.seq > t.waited && d.w != w && !w.a.isCommitted(d.seq)
}

// columnArray is column i of the batch's rows as a text[] in binary format.
func columnArray(batch []*stream.Change, i int) []byte {
	size := 20
	for _, c := range batch {
		size += 4 + len(c.New[i].Data)
	}
	b := make([]byte, 0, size)
	hasNull := slices.ContainsFunc(batch, func(c *stream.Change) bool { return c.New[i].Kind == stream.Null })
	b = binary.BigEndian.AppendUint32(b, 1) // dimensions
	if hasNull {
		b = binary.BigEndian.AppendUint32(b, 1)
	} else {
		b = binary.BigEndian.AppendUint32(b, 0)
	}
	b = binary.BigEndian.AppendUint32(b, textOID)
	b = binary.BigEndian.AppendUint32(b, uint32(len(batch)))
	b = binary.BigEndian.AppendUint32(b, 1) // lower bound
	for _, c := range batch {
		v := c.New[i]
		if v.Kind == stream.Null {
			b = binary.BigEndian.AppendUint32(b, 0xFFFFFFFF)
			continue
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(v.Data)))
		b = append(b, v.Data...)
	}
	return b
}
