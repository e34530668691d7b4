package conflict

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Why two statements per change. The full statement (insertFull…) decides
// every case of DESIGN §5 in one plan of ~100 nodes with five write nodes,
// and PostgreSQL initialises all of them at every execution, even a cached
// generic plan: that start-up alone cost more than four plain UPDATEs. But
// almost every remote change meets no conflict: the row is there (or, for
// an insert, absent) and was last written by the same node, or by a node the
// remote had seen. So the statement the applier runs is a small one that
// does just that — one write whose WHERE clause holds only when the full
// statement would apply the change without a conflict, with no log and no
// other write — and, only when that write matched no row, hands the change
// to the full statement through pgmesh.resolve_change. Whenever the fast
// path writes, the full statement would have written the same row and
// returned (NULL, NULL); whenever it does not, the full statement runs on a
// fresh snapshot exactly as it would have alone, so the decision, the log
// and the tombstones stay those of the full statement.
//
// The fast write evaluates its conditions on the row version it updates:
// if a local transaction changed the row concurrently, the UPDATE/DELETE
// waits for it and re-checks the conditions on the committed version
// (EvalPlanQual), like the full statement's FOR UPDATE does.

// mode is how a statement refers to its parameters.
type mode int

const (
	// direct: $n::type, the full statement run on its own: updates and
	// deletes of tables without a key (rare, and scanned anyway), whose
	// duplicate rows the full statement handles one at a time.
	direct mode = iota
	// fast: $n::text::type. Every parameter is text, so that the fast
	// statement can pass the values to the full one exactly as received.
	fast
	// slow: ($1[n])::type, the full statement as pgmesh.resolve_change runs
	// it, with every parameter in one text[].
	slow
)

// arg is parameter n as a value of type typ.
func (b *builder) arg(n int, typ string) string {
	switch {
	case b.mode == slow && typ == "text":
		return fmt.Sprintf("($1[%d])", n)
	case b.mode == slow:
		return fmt.Sprintf("($1[%d])::%s", n, typ)
	case b.mode == fast && typ != "text":
		return fmt.Sprintf("$%d::text::%s", n, typ)
	default:
		return fmt.Sprintf("$%d::%s", n, typ)
	}
}

func (b *builder) commitTime() string { return b.arg(paramCommitTime, "timestamptz") }
func (b *builder) origin() string     { return b.arg(paramOrigin, "text") }
func (b *builder) lsn() string        { return b.arg(paramLSN, "pg_lsn") }

// InsertSQL is the statement that applies a remote INSERT to t.
func InsertSQL(t Table) string {
	b := newBuilder(t, fast)
	row := b.params(t.Columns)
	ident := b.identOf(t.Columns, row)
	var conds []string
	onConflict := ""
	if !b.keyless {
		// No row with the key (else insert_exists), and no tombstone of the
		// key that another node wrote (else the full statement decides
		// between the delete and this insert). A row inserted concurrently
		// by a local transaction makes the INSERT wait and then do nothing:
		// the full statement then finds the row. The row is probed here and
		// not left to ON CONFLICT alone: a row being deleted concurrently
		// makes ON CONFLICT wait and then insert, while the tombstone the
		// delete wrote is invisible to this statement's snapshot.
		conds = append(conds, fmt.Sprintf("NOT EXISTS (SELECT FROM %s pgmesh_t WHERE %s)", b.tbl, b.match("pgmesh_t", ident)),
			fmt.Sprintf("NOT EXISTS (SELECT FROM pgmesh.tombstone z WHERE z.table_name = %s AND z.key = %s AND z.node IS DISTINCT FROM %s)",
				b.lit, b.keyJSON(ident), b.origin()))
		onConflict = " ON CONFLICT (" + identList(t.Key) + ") DO NOTHING"
	}
	conds = append(conds, b.uniqueFree(t.Columns, row, ident)...)
	where := ""
	if len(conds) > 0 {
		where = " WHERE " + strings.Join(conds, " AND ")
	}
	w := fmt.Sprintf("w AS (INSERT INTO %s (%s) SELECT %s%s%s RETURNING 1)", b.tbl, identList(t.Columns), strings.Join(row, ", "), where, onConflict)
	return b.withFallback(w, insertFull(t, slow), ident)
}

// UpdateSQL is the statement that applies a remote UPDATE to t. set are the
// columns whose new values came with the change (all of t.Columns but the
// unchanged TOAST ones), a subset of t.Columns.
func UpdateSQL(t Table, set []string) string {
	if len(t.Key) == 0 {
		return updateFull(t, set, direct)
	}
	b := newBuilder(t, fast)
	old := b.params(b.ident)
	ident := b.identOf(b.ident, old)
	newv := b.params(set)
	deltaOld := map[string]string{}
	for _, d := range t.DeltaColumns {
		if slices.Contains(set, d) {
			deltaOld[d] = b.params([]string{d})[0]
		}
	}
	// For delta tables a change that leaves the other columns as they are
	// locally is no conflict whoever wrote the row (see updateFull).
	noConflict := b.causal("pgmesh_t")
	if len(t.DeltaColumns) > 0 {
		var same []string
		for i, c := range set {
			if !slices.Contains(t.DeltaColumns, c) && !slices.Contains(t.Key, c) {
				same = append(same, fmt.Sprintf("%s IS NOT DISTINCT FROM %s", asText("pgmesh_t."+pg.Ident(c), b.types[c]), asText(newv[i], b.types[c])))
			}
		}
		if len(same) == 0 {
			noConflict = "true"
		} else {
			noConflict = "(" + strings.Join(same, " AND ") + " OR " + noConflict + ")"
		}
	}
	conds := append([]string{b.match("pgmesh_t", ident), noConflict}, b.uniqueKept(set, newv, "pgmesh_t")...)
	assign := make([]string, len(set))
	for i, c := range set {
		col := pg.Ident(c)
		if p := deltaOld[c]; p != "" {
			assign[i] = fmt.Sprintf("%s = pgmesh_t.%s + (%s - %s)", col, col, newv[i], p)
		} else {
			assign[i] = col + " = " + newv[i]
		}
	}
	w := fmt.Sprintf("w AS (UPDATE %s pgmesh_t SET %s WHERE %s RETURNING 1)", b.tbl, strings.Join(assign, ", "), strings.Join(conds, " AND "))
	return b.withFallback(w, updateFull(t, set, slow), ident)
}

// DeleteSQL is the statement that applies a remote DELETE to t.
func DeleteSQL(t Table) string {
	if len(t.Key) == 0 {
		return deleteFull(t, direct)
	}
	b := newBuilder(t, fast)
	old := b.params(b.ident)
	ident := b.identOf(b.ident, old)
	// The tombstone, as the full statement writes it when the delete
	// applies.
	w := fmt.Sprintf(`w AS (DELETE FROM %[1]s pgmesh_t WHERE %[2]s AND %[3]s RETURNING 1),
tomb AS (INSERT INTO pgmesh.tombstone AS z (table_name, key, deleted_at, xid, node)
 SELECT %[4]s, %[5]s, %[6]s, NULL, %[7]s FROM w
 ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = excluded.deleted_at, xid = NULL, node = excluded.node
 WHERE coalesce(pgmesh.tombstone_time(z.deleted_at, z.xid), '-infinity') < excluded.deleted_at)`,
		b.tbl, b.match("pgmesh_t", ident), b.causal("pgmesh_t"), b.lit, b.keyJSON(ident), b.commitTime(), b.origin())
	return b.withFallback(w, deleteFull(t, slow), ident)
}

// causal is "the remote change meets the row alias without a conflict and
// applies" (kind NULL in the full statement): the row's commit time is
// unknown, or it was written under the origin of the remote node, or else
// pgmesh.change_applies says so. The first two, the steady state of
// replication, are decided without a call of ours and without a plan node
// (an unknown commit time has no origin either: roident NULL).
func (b *builder) causal(alias string) string {
	return fmt.Sprintf(`(coalesce((pg_catalog.pg_xact_commit_timestamp_origin(%[1]s.xmin)).roident, %[2]s) = %[2]s
     OR pgmesh.change_applies(%[1]s.xmin, %[3]s, %[4]s, %[5]t))`,
		alias, "pg_catalog.pg_replication_origin_oid('pgmesh_' || "+b.origin()+")",
		b.commitTime(), b.origin(), b.pol == config.LastUpdateWins)
}

// keyJSON is the identity as jsonb (see keyCTE).
func (b *builder) keyJSON(ident []string) string {
	fn := "to_jsonb"
	for _, c := range b.ident {
		if t := b.types[c]; strings.Contains(t, "with time zone") || strings.HasPrefix(t, "interval") {
			fn = "pgmesh.to_jsonb_utc"
		}
	}
	return fmt.Sprintf("(SELECT %s(x) FROM (SELECT %s) x)", fn, aliased(b.ident, ident))
}

// checkedUniques are the unique indexes the full statement checks before it
// writes cols: the secondary ones fully covered by cols, and with key the
// key too (an update that sets it may move the row onto another one).
func (b *builder) checkedUniques(cols []string, key bool) [][]string {
	var idxs [][]string
	for _, idx := range b.t.Uniques {
		if len(idx) > 0 && containsAll(cols, idx) && !(len(idx) == len(b.t.Key) && containsAll(b.t.Key, idx)) {
			idxs = append(idxs, idx)
		}
	}
	if key && !b.keyless && containsAll(cols, b.t.Key) {
		idxs = append(idxs, b.t.Key)
	}
	return idxs
}

// uniqueFree are the conditions "no other row holds a unique value of the
// new row", one probe per checked unique index: a row the full statement
// would lock as a unique conflict makes the insert fall back to it.
func (b *builder) uniqueFree(cols, exprs, ident []string) []string {
	var out []string
	for _, idx := range b.checkedUniques(cols, false) {
		probe := make([]string, len(idx))
		for i, c := range idx {
			probe[i] = fmt.Sprintf("pgmesh_u.%s = %s", pg.Ident(c), exprs[slices.Index(cols, c)])
		}
		cond := fmt.Sprintf("NOT EXISTS (SELECT FROM %s pgmesh_u WHERE %s", b.tbl, strings.Join(probe, " AND "))
		if !b.keyless {
			cond += " AND NOT (" + b.match("pgmesh_u", ident) + ")"
		}
		out = append(out, cond+")")
	}
	return out
}

// uniqueKept are the conditions "the update writes no unique value that the
// row does not hold already", one per checked unique index: then no other
// row can hold it and the full statement would find no unique conflict. A
// NULL never conflicts. An update that writes a new unique value (or moves
// the row to another key) falls back to the full statement, which checks.
// No probe of other rows here, whose plan nodes would cost at every
// execution.
func (b *builder) uniqueKept(cols, exprs []string, alias string) []string {
	var out []string
	for _, idx := range b.checkedUniques(cols, true) {
		var null, held []string
		for _, c := range idx {
			v := exprs[slices.Index(cols, c)]
			if !slices.Contains(b.t.Key, c) {
				null = append(null, v+" IS NULL")
			}
			held = append(held, fmt.Sprintf("%s.%s = %s", alias, pg.Ident(c), v))
		}
		out = append(out, "("+strings.Join(append(null, "("+strings.Join(held, " AND ")+")"), " OR ")+")")
	}
	return out
}

// withFallback is the fast statement: CTE w (plus any CTE after it) writes
// and returns a row when the fast path applied the change; otherwise the
// full statement runs, through pgmesh.resolve_change with every parameter
// as text. The call is a branch of a CASE, evaluated only when w wrote
// nothing; OFFSET 0 keeps the verdict from being computed once per column.
// The full statement is prepared once per session under a name derived
// from its text.
//
// Before the full statement runs, the fallback takes a transaction-level
// advisory lock on a 64-bit hash of (table, key) (ident; none for a table
// without a key): nothing else serializes two links that apply changes to
// the same absent key at once — there is no row to lock — so, say, an
// older update could insert the row after a newer delete had left only its
// tombstone. The lock is taken here, in the statement that calls
// resolve_change, and not in the full statement itself: that statement's
// snapshot is taken before any of its parts runs, so it would not see what
// the lock holder committed; resolve_change (VOLATILE) runs it on a fresh
// snapshot taken after the lock is held. Only the fallback locks: the fast
// path of a large transaction would exhaust the lock table.
func (b *builder) withFallback(ctes, full string, ident []string) string {
	params := make([]string, b.next-1)
	for i := range params {
		params[i] = fmt.Sprintf("$%d::text", i+1)
	}
	lock := ""
	if !b.keyless {
		lock = fmt.Sprintf("\n                    WHEN (SELECT false FROM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(%s || (%s)::text, 0))) THEN NULL",
			b.lit, b.keyJSON(ident))
	}
	sum := sha256.Sum256([]byte(full))
	return fmt.Sprintf(`WITH %s
SELECT (v.v).kind, (v.v).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM w) THEN NULL%s
                    ELSE pgmesh.resolve_change('pgmesh_full_%x', %s, ARRAY[%s]) END AS v OFFSET 0) v`,
		ctes, lock, sum[:12], dollarQuote(full), strings.Join(params, ", "))
}

// dollarQuote quotes s as a dollar-quoted literal whose tag s does not
// contain, so that s appears verbatim in the statement.
func dollarQuote(s string) string {
	tag := "$pgmesh$"
	for i := 1; strings.Contains(s, tag); i++ {
		tag = "$pgmesh" + strconv.Itoa(i) + "$"
	}
	return tag + s + tag
}
