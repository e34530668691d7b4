// Package conflict resolves conflicts between remote changes and the local
// state of a node (docs/ARCHITECTURE.md, "Conflict statements"). Resolution happens inside the
// database: every remote row change is applied by ONE SQL statement built
// here, which returns one row (kind text, resolution text). No round trip
// waits for a decision, so the applier can pipeline any number of these
// statements. The statement first tries the common case in a small plan:
// write the row if it was last written by the remote node (or by one the
// remote had seen) and nothing else is in the way; otherwise it runs the
// full statement, which locks the local row by key, reads its last writer
// with pg_xact_commit_timestamp_origin(xmin), decides, applies, writes
// tombstones and the conflict log (statements.go says why and how). The
// statements are templates (templates/*.sql.tmpl) that read as the SQL they
// produce; testdata/ holds the SQL for representative tables.
//
// Order of writes is (commit time, node rank): the later commit wins, ties go
// to the node that comes first in the config (lower rank); an unknown local
// commit time (frozen row, commit timestamp no longer kept, or a row written
// earlier in the same remote transaction) is the oldest. The order is one
// SQL function, pgmesh.orders_after, and so is "P had seen L up to T",
// pgmesh.had_seen: both statements decide with them.
//
// Exact concurrency: a remote change from peer P on a row last written by
// node L ≠ P is concurrent only if the row's commit time is later than what P
// had seen of L (pgmesh.peer_seen, fed by P's "pgmesh.seen" messages). We
// chose this over comparing old row images (REPLICA IDENTITY FULL) because it
// works for every table, costs one index probe instead of shipping whole old
// rows, and tells "P overwrote a version it had seen" (normal replication)
// from "P wrote without knowing" even when both versions hold equal values.
// peer_seen is a lower bound of what P had seen, so an error can only make a
// causal change look concurrent (a harmless extra log row), never hide a
// conflict.
//
// Links are independent, so causally related changes may arrive out of
// order: P's update of a row that P received from L can arrive before L's
// insert. Two more rules keep that from being logged (the causality CTEs of
// templates/full.sql.tmpl): a change that the local version's writer
// (another node W) had seen — peer_seen(W, P) at or after its commit time —
// is superseded and not logged (under last_update_wins the outcome is still decided by commit time
// and rank; under the other policies it is skipped without asking the
// policy); and an update or delete of a row that is missing without a
// tombstone is no conflict when P had applied changes of some node that
// this node has not applied yet (its own peer_seen rows, which the applier
// records with each seen message it emits): the row's insert is on its way.
// A tombstone says the row was here and was deleted: a delete_missing or
// update_deleted conflict, logged.
package conflict

import (
	"fmt"
	"slices"

	"github.com/pgmesh/pgmesh/internal/config"
)

// Conflict kinds, as returned by the statements and stored in
// pgmesh.conflict_log.kind.
const (
	InsertExists        = "insert_exists"
	InsertDeleted       = "insert_deleted" // remote insert older than a delete of the same key
	UpdateOriginDiffers = "update_origin_differs"
	UpdateMissing       = "update_missing"
	UpdateDeleted       = "update_deleted"
	DeleteOriginDiffers = "delete_origin_differs"
	DeleteMissing       = "delete_missing"
	UniqueConflict      = "unique_conflict"
	// MissingColumn: a remote change carried a column that a DDL applied
	// here has dropped or renamed and its upstream has not yet: the rest
	// of the row was applied, the whole remote row is logged.
	MissingColumn = "missing_column"
	// TruncateOriginDiffers: a remote TRUNCATE removed a row that the
	// truncating node had not seen (written concurrently).
	TruncateOriginDiffers = "truncate_origin_differs"
)

// Resolutions, as returned by the statements and stored in
// pgmesh.conflict_log.resolution.
const (
	ApplyRemote = "apply_remote" // the remote change was applied; the local image lost
	KeepLocal   = "keep_local"   // the local state was kept; the remote image lost
	// KeepLocalClockSkew: a causal change (its node had seen the local
	// version) lost because its commit time is older than the local one,
	// which only clock skew between nodes explains.
	KeepLocalClockSkew = "keep_local_clock_skew"
	// SkipIncomplete: an update of a missing row could not insert it because
	// unchanged TOAST columns did not come with the change.
	SkipIncomplete = "skip_incomplete"
	Skip           = "skip" // delete of a missing row: a tombstone is written
	// SkipColumn: the values of columns missing here were not applied
	// (MissingColumn).
	SkipColumn = "skip_column"
)

// Table describes a replicated table on the applying node.
type Table struct {
	Schema, Name string
	// Columns are the local columns the statements set: the remote row's
	// columns that exist locally, in the order of the parameters.
	Columns []string
	// Types are the types of Columns as format_type prints them
	// ("integer", "character varying(20)", "public.mood"); parameters are
	// cast to them.
	Types []string
	// Key are the replica identity columns (primary key or USING INDEX); a
	// subset of Columns. Empty for tables identified only by REPLICA
	// IDENTITY FULL: then all of Columns identify a row.
	Key []string
	// Constraints are the other unique indexes and the exclusion
	// constraints, checked before a row image is written.
	Constraints []Constraint
	// KeyDeferrable: the key's index is DEFERRABLE.
	KeyDeferrable bool
	// DeferredNow decides deferrable constraints as immediate ones: a row
	// that holds a value the change writes is a conflict even when the
	// remote node had seen it. The applier sets it for the one remote
	// transaction whose deferred check failed at its end, applied again:
	// a row the remote had seen still held the value when it committed.
	DeferredNow bool
	// FullIdentity is REPLICA IDENTITY FULL: updates and deletes come with
	// the old values of every column.
	FullIdentity bool
	Policy       config.Policy // "" = last_update_wins
	// DeltaColumns are numeric columns merged as local + (new − old) on
	// every update, whoever wins the rest of the row. They need
	// FullIdentity (the old values).
	DeltaColumns []string
	// DeleteWins makes a delete beat every concurrent insert or update,
	// whatever the commit times.
	DeleteWins bool
}

// Deferrable tells whether the table has a deferrable constraint (its key
// or another): the applier then defers the constraints of a remote
// transaction that writes it until its end, as its upstream did.
func (t Table) Deferrable() bool {
	return t.KeyDeferrable || slices.ContainsFunc(t.Constraints, func(c Constraint) bool { return c.Deferrable })
}

// QualifiedName is "schema.table", as in the config and the conflict log.
func (t Table) QualifiedName() string { return t.Schema + "." + t.Name }

// Validate checks what the statement builders rely on. Builders must only be
// given tables that pass it.
func (t Table) Validate() error {
	name := t.QualifiedName()
	if t.Schema == "" || t.Name == "" {
		return fmt.Errorf("conflict table %q: schema and name are required", name)
	}
	if len(t.Columns) == 0 || len(t.Columns) != len(t.Types) {
		return fmt.Errorf("table %s: %d columns and %d types: need one type per column", name, len(t.Columns), len(t.Types))
	}
	seen := map[string]bool{}
	for i, c := range t.Columns {
		if seen[c] {
			return fmt.Errorf("table %s: column %s listed twice", name, c)
		}
		seen[c] = true
		if t.Types[i] == "" {
			return fmt.Errorf("table %s: column %s has no type", name, c)
		}
	}
	for _, k := range t.Key {
		if !seen[k] {
			return fmt.Errorf("table %s: key column %s is not among the applied columns", name, k)
		}
	}
	switch t.Policy {
	case "", config.LastUpdateWins, config.FirstUpdateWins, config.KeepLocal, config.ApplyRemote, config.PolicyError:
	default:
		return fmt.Errorf("table %s: unknown conflict policy %q", name, t.Policy)
	}
	if len(t.DeltaColumns) > 0 && !t.FullIdentity {
		return fmt.Errorf("table %s: delta_columns %v need REPLICA IDENTITY FULL (the old values come with each update): run ALTER TABLE %s REPLICA IDENTITY FULL on every node",
			name, t.DeltaColumns, name)
	}
	for _, d := range t.DeltaColumns {
		if !seen[d] {
			return fmt.Errorf("table %s: delta column %s is not among the applied columns", name, d)
		}
		if slices.Contains(t.Key, d) {
			return fmt.Errorf("table %s: delta column %s is part of the key", name, d)
		}
	}
	return nil
}

// policy is t.Policy with the default filled in.
func (t Table) policy() config.Policy {
	if t.Policy == "" {
		return config.LastUpdateWins
	}
	return t.Policy
}
