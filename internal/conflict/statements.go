package conflict

import (
	"crypto/sha256"
	"fmt"
	"regexp"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// Parameters of the statements built here. Every value is sent as text with
// an unspecified type; the statement casts each parameter to its column's
// type, always with the same cast, so the server infers one type per
// parameter (text for every parameter of InsertSQL/UpdateSQL/DeleteSQL of
// a table with a key). A NULL value is a NULL parameter.
//
//	$1  remote commit time (timestamptz)
//	$2  remote origin node name (text): "n1", never "pgmesh_n1"
//	$3  remote commit LSN (pg_lsn)
//
//	InsertSQL(t)       $4…  the new row: one value per t.Columns, in order
//	UpdateSQL(t, set)  $4…  the old identity: the t.Key values in order (all
//	                        t.Columns when t.Key is empty); when the key did
//	                        not change (no old tuple in the message), the
//	                        new key values;
//	                   then the new values of set, in order;
//	                   then the old values of the t.DeltaColumns that are
//	                        in set, in t.DeltaColumns order
//	DeleteSQL(t)       $4…  the old identity, as for UpdateSQL
//
// Each statement returns exactly one row (kind text, resolution text): kind
// NULL when the change met no conflict, else one of the kinds above with how
// it was resolved. Under policy error a conflict raises an exception
// (SQLSTATE P0001) naming the table, key and kind instead.
const (
	paramCommitTime = 1
	paramOrigin     = 2
	paramLSN        = 3
	firstValue      = 4
)

// Why two statements per change. The full statement (templates/full.sql.tmpl)
// decides every case in one plan of ~100 nodes with five write nodes, and
// PostgreSQL initialises all of them at every execution, even a cached
// generic plan: that start-up alone cost more than four plain UPDATEs. But
// almost every remote change meets no conflict: the row is there (or, for
// an insert, absent) and was last written by the same node, or by a node the
// remote had seen. So the statement the applier runs is a small one
// (templates/fast.sql.tmpl) that does just that — one write whose WHERE
// clause holds only when the full statement would apply the change without
// a conflict, with no log and no other write — and, only when that write
// matched no row, hands the change to the full statement through
// pgmesh.resolve_change. Whenever the fast path writes, the full statement
// would have written the same row and returned (NULL, NULL); whenever it
// does not, the full statement runs on a fresh snapshot exactly as it would
// have alone, so the decision, the log and the tombstones stay those of the
// full statement.
//
// The fast write evaluates its conditions on the row version it updates:
// if a local transaction changed the row concurrently, the UPDATE/DELETE
// waits for it and re-checks the conditions on the committed version
// (EvalPlanQual), like the full statement's FOR UPDATE does.

// InsertSQL is the statement that applies a remote INSERT to t.
func InsertSQL(t Table) string { return statement(t, opInsert, t.Columns) }

// UpdateSQL is the statement that applies a remote UPDATE to t. set are the
// columns whose new values came with the change (all of t.Columns but the
// unchanged TOAST ones), a subset of t.Columns.
func UpdateSQL(t Table, set []string) string { return statement(t, opUpdate, set) }

// DeleteSQL is the statement that applies a remote DELETE to t.
func DeleteSQL(t Table) string { return statement(t, opDelete, nil) }

// MoveSQL is the statement that applies a remote UPDATE that changed the
// key of a row of t (which must have a key): for conflicts a delete of the
// old key and an insert of the new row (templates/table.sql.tmpl says
// why). Its parameters are UpdateSQL's but the old values of delta
// columns, which it does not take; the new row must carry the key.
func MoveSQL(t Table, set []string) string {
	return newBuilder(t, opMove, set, fast).render(opMove)
}

// DeferredCheckSQL is the statement that checks, at the end of a remote
// transaction that wrote rows of t, t's deferrable unique indexes and
// exclusion constraints (and a deferrable key) for those rows: the apply
// session's replica role keeps PostgreSQL from checking them at all (their
// checks are triggers, which do not fire there). Its parameters are the
// keys of the rows written (or moved to), one text[] per key column in
// t.Key order; t must have a key. It returns one row, or raises (SQLSTATE
// 23505) naming the first row that conflicts with another: the applier
// then applies the transaction again with Table.DeferredNow. The keys are
// its parameters $1, $2… (text[]).
func DeferredCheckSQL(t Table) string {
	return newBuilder(t, opDeferredCheck, nil, direct).render(opDeferredCheck)
}

// TruncateSQL is the statement that applies a remote TRUNCATE to t: it
// removes the rows older than the truncate and records it
// (templates/table.sql.tmpl). Its parameters are $1 to $3; it returns one
// row (rows removed bigint, rows logged bigint). Run TruncateLockSQL(t)
// first, in the same transaction.
func TruncateSQL(t Table) string {
	return newBuilder(t, opTruncate, nil, fast).render(opTruncate)
}

// TruncateLockSQL locks t against every other writer until the transaction
// that applies a TRUNCATE ends. A change of another link applied at the
// same time could otherwise escape it: an insert older than the truncate,
// committed after the truncate's snapshot and checked against a snapshot
// without its tombstone, would survive on this node only. A writer that
// waited for the lock sees the tombstone (its statement's snapshot is
// taken once it holds its locks); one the lock waited for is seen by the
// truncate.
func TruncateLockSQL(t Table) string {
	return "LOCK TABLE " + pg.Ident(t.Schema, t.Name) + " IN SHARE MODE"
}

// statement is the fast statement of a change with the full one as its
// fallback; for updates and deletes of a table without a key, the full
// statement alone.
func statement(t Table, op string, set []string) string {
	if len(t.Key) == 0 && op != opInsert {
		return full(t, op, set, direct)
	}
	b := newBuilder(t, op, set, fast)
	b.Fallback = full(t, op, set, slow)
	if len(b.Unchecked) > 0 {
		return b.render("guarded")
	}
	fallbacks.Store(fallbackName(b.Fallback), b.Fallback)
	return b.render(op + "_fast")
}

// Fallback is a full statement that fast statements call by name
// (pgmesh.resolve_key): a session must prepare it, as Name with parameter
// types ParamOIDs, before it runs a statement that calls it (Fallbacks).
// The fast statement does not carry its text: the server handles the text
// of a prepared statement at every execution — on PostgreSQL 18 that cost
// more than the plain write itself for a full statement of a few kB.
type Fallback struct {
	Name      string
	SQL       string
	ParamOIDs []uint32 // one text[]: every parameter of the change as text
}

// fallbacks maps the name of every fast statement's fallback built in this
// process to its text. A name is a hash of the text, so an entry never
// changes; there is one per statement shape built.
var fallbacks sync.Map

// fallbackRef finds the fallbacks a statement calls by name.
var fallbackRef = regexp.MustCompile(`pgmesh_fallback_[0-9a-f]{24}`)

// Fallbacks are the full statements that sql, a statement built by this
// package, calls by name: prepare them in the session before sql runs.
func Fallbacks(sql string) []Fallback {
	var out []Fallback
	for _, name := range fallbackRef.FindAllString(sql, -1) {
		if text, ok := fallbacks.Load(name); ok && !slices.ContainsFunc(out, func(f Fallback) bool { return f.Name == name }) {
			out = append(out, Fallback{Name: name, SQL: text.(string), ParamOIDs: []uint32{pgtype.TextArrayOID}})
		}
	}
	return out
}

// fallbackName names the prepared statement of a fast statement's
// fallback: the same text always gets the same name, distinct from the
// one resolve_change gives the same text (StatementName) when a move or a
// guarded statement prepares it itself.
func fallbackName(sql string) string {
	sum := sha256.Sum256([]byte(sql))
	return fmt.Sprintf("pgmesh_fallback_%x", sum[:12])
}

func full(t Table, op string, set []string, m mode) string {
	return newBuilder(t, op, set, m).render(op + "_full")
}
