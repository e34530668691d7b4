package conflict

import (
	"fmt"
	"strings"
)

// InsertManySQL is the statement that applies several remote INSERTs into t
// at once, with the semantics of InsertSQL for each row: parameters $1
// commit time, $2 origin and $3 commit LSN as InsertSQL's, then one text[]
// per column of t ($4 for t.Columns[0]…), element i of each being row i's
// value. Every row passes the fast path's test (templates/many.sql.tmpl)
// and is inserted in one INSERT … SELECT; a row that fails it goes, alone,
// through the full statement as InsertSQL's fallback does (the same
// advisory lock first, the same parameters as text): prepare its
// Fallbacks in the session first. The statement answers
// (position, kind, resolution) for each row that met a conflict, position
// counting from 1; nothing for the others.
//
// The rows must not share a key or a unique value: the probes of one
// statement do not see each other's rows, so the second of two rows with
// the same key would be judged against the state before the first. ManyOK
// tells which tables it serves.
func InsertManySQL(t Table) string {
	b := newBuilder(t, opInsert, t.Columns, many)
	b.Fallback = full(t, opInsert, t.Columns, slow)
	fallbacks.Store(fallbackName(b.Fallback), b.Fallback)
	return b.render("insert_many")
}

// ManyOK tells whether InsertManySQL serves t: every unique index is plain
// (InsertManySQL's caller tells from the values alone which rows of a batch
// would collide), none is deferrable, and a table without a key has none.
func ManyOK(t Table) bool {
	if t.KeyDeferrable || t.Deferrable() || (len(t.Key) == 0 && len(t.Constraints) > 0) {
		return false
	}
	for _, c := range t.Constraints {
		if !c.Plain() {
			return false
		}
	}
	return true
}

// Arrays are, in mode many, the statement's array parameters, one per
// column: $4::text[]…
func (b *builder) Arrays() string {
	out := make([]string, len(b.Row))
	for i, c := range b.Row {
		out[i] = fmt.Sprintf("$%d::text[]", c.N)
	}
	return strings.Join(out, ", ")
}

// ArrayColumns name the columns of the unnested arrays.
func (b *builder) ArrayColumns() string {
	out := make([]string, len(b.Row))
	for i, c := range b.Row {
		out[i] = manyColumn(c.N)
	}
	return strings.Join(out, ", ")
}

func manyColumn(n int) string { return fmt.Sprintf("pgmesh_c%d", n) }

// RowTextParams are, in mode many, the parameters of one row of the batch as
// text, in InsertSQL's order: what its full statement takes.
func (b *builder) RowTextParams() string {
	ps := []string{"$1::text", "$2::text", "$3::text"}
	for _, c := range b.Row {
		ps = append(ps, "v."+manyColumn(c.N))
	}
	return strings.Join(ps, ", ")
}
