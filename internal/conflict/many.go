package conflict

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// InsertManySQL is the statement that applies several remote INSERTs into t
// at once, with the semantics of InsertSQL for each row: parameters $1
// commit time, $2 origin and $3 commit LSN as InsertSQL's, then one text[]
// per column of t ($4 for t.Columns[0]…), element i of each being row i's
// value. Every row passes the fast path's test (no row with its key, no
// tombstone of its key from another node, none of its unique values held
// by another row) and is inserted in one INSERT … SELECT; a row that fails
// it goes, alone, through the full statement as InsertSQL would send it (the
// same advisory lock first, the same parameters as text). The statement
// answers (position, kind, resolution) for each row that met a conflict,
// position counting from 1; nothing for the others.
//
// The rows must not share a key or a unique value: the probes of one
// statement do not see each other's rows, so the second of two rows with
// the same key would be judged against the state before the first. A table
// without a key must have no other unique index either: nothing then tells
// which rows the fast path inserted.
func InsertManySQL(t Table) string {
	b := newBuilder(t, fast)
	cols := make([]string, len(t.Columns))
	arrays := make([]string, len(t.Columns))
	row := make([]string, len(t.Columns))
	texts := make([]string, 0, firstValue-1+len(t.Columns))
	for i := 1; i < firstValue; i++ {
		texts = append(texts, fmt.Sprintf("$%d::text", i))
	}
	for i, c := range t.Columns {
		cols[i] = fmt.Sprintf("pgmesh_c%d", i+1)
		arrays[i] = fmt.Sprintf("$%d::text[]", firstValue+i)
		row[i] = fmt.Sprintf("(v.%s)::%s", cols[i], b.types[c])
		texts = append(texts, "v."+cols[i])
	}
	ident := b.identOf(t.Columns, row)
	// The probes are InsertSQL's, each kept a subplan (OFFSET 0) that
	// probes the index row by row: joined, the planner would hash the
	// whole table for each batch, and the table it saw empty at the start
	// of a bulk load is a million rows later on.
	var conds []string
	onConflict, returning := "", "1"
	if !b.keyless {
		// The tombstone probe renders each key as jsonb: skipped (the
		// first test, evaluated once) when the table has no tombstone of
		// another node at all, as in a bulk load.
		conds = append(conds, fmt.Sprintf("NOT EXISTS (SELECT FROM %s pgmesh_t WHERE %s OFFSET 0)", b.tbl, b.match("pgmesh_t", ident)),
			fmt.Sprintf(`((SELECT NOT EXISTS (SELECT FROM pgmesh.tombstone z0 WHERE z0.table_name = %[1]s AND z0.node IS DISTINCT FROM %[3]s))
   OR NOT EXISTS (SELECT FROM pgmesh.tombstone z WHERE z.table_name = %[1]s AND z.key = %[2]s AND z.node IS DISTINCT FROM %[3]s OFFSET 0))`,
				b.lit, b.keyJSON(ident), b.origin()))
		onConflict = " ON CONFLICT (" + identList(t.Key) + ") DO NOTHING"
		returning = identList(t.Key)
	}
	for _, idx := range b.checkedUniques(t.Columns, false) {
		probe := make([]string, len(idx))
		for i, c := range idx {
			probe[i] = fmt.Sprintf("pgmesh_u.%s = %s", pg.Ident(c), row[slices.Index(t.Columns, c)])
		}
		if !b.keyless {
			probe = append(probe, "NOT ("+b.match("pgmesh_u", ident)+")")
		}
		conds = append(conds, fmt.Sprintf("NOT EXISTS (SELECT FROM %s pgmesh_u WHERE %s OFFSET 0)", b.tbl, strings.Join(probe, " AND ")))
	}
	where := ""
	if len(conds) > 0 {
		where = " WHERE " + strings.Join(conds, " AND ")
	}
	var s strings.Builder
	fmt.Fprintf(&s, `WITH v AS MATERIALIZED (SELECT * FROM unnest(%s) WITH ORDINALITY AS v(%s, pgmesh_n)),
w AS (INSERT INTO %s (%s) SELECT %s FROM v%s%s RETURNING %s)
`, strings.Join(arrays, ", "), strings.Join(cols, ", "), b.tbl, identList(t.Columns), strings.Join(row, ", "), where, onConflict, returning)
	if b.keyless {
		// Nothing can keep a row out: every row is inserted. The fixed
		// parameters are still the statement's, typed as InsertSQL's.
		fmt.Fprintf(&s, "SELECT NULL::bigint, NULL::text, NULL::text FROM (SELECT %s) p WHERE false", strings.Join(texts[:firstValue-1], ", "))
		return s.String()
	}
	// The rows w did not insert, each decided by the full statement.
	inserted := make([]string, len(t.Key))
	for i, k := range t.Key {
		inserted[i] = fmt.Sprintf("w.%s = %s", pg.Ident(k), ident[i])
	}
	full := insertFull(t, slow)
	sum := sha256.Sum256([]byte(full))
	fmt.Fprintf(&s, `SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               CASE WHEN (SELECT false FROM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s || (%s)::text, 0))) THEN NULL
                    ELSE pgmesh.resolve_change('pgmesh_full_%x', %s, ARRAY[%s]) END AS v
          FROM v WHERE NOT EXISTS (SELECT FROM w WHERE %s) OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL`,
		b.lit, b.keyJSON(ident), sum[:12], dollarQuote(full), strings.Join(texts, ", "), strings.Join(inserted, " AND "))
	return s.String()
}
