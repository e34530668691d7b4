// Package origin knows the replication origins of a link on its downstream:
// one per apply worker, since an origin can be set up by one session at a
// time. Worker 0 applies under pgmesh_<up> (the link's origin since the
// first release), worker k under pgmesh_<up>_<k>. The workers commit in the
// upstream's commit order, so the transactions committed under all of a
// link's origins together are a prefix of the upstream's stream: the link's
// progress is the greatest progress among them, whatever the number of
// workers was when each advanced. Everything that reads or drops a link's
// origins goes through here.
package origin

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Name is the origin of apply worker k of the link from node up.
func Name(up string, k int) string {
	if k == 0 {
		return topology.OriginName(up)
	}
	return topology.OriginName(up) + "_" + strconv.Itoa(k)
}

// Names are the origins of a link from node up applied by n workers.
func Names(up string, n int) []string {
	names := make([]string, max(n, 1))
	for k := range names {
		names[k] = Name(up, k)
	}
	return names
}

// pattern matches every origin of the link from node up, whatever the number
// of workers. Node names are [a-z][a-z0-9_]*, so they need no escaping, and
// the config refuses node pairs like a and a_1, whose origins would match
// each other's pattern.
func pattern(up string) string { return "^" + topology.OriginName(up) + "(_[0-9]+)?$" }

// List returns the origins of the link from node up that exist on the
// downstream q is connected to, worker 0's first.
func List(ctx context.Context, q pg.Querier, up string) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT roname FROM pg_catalog.pg_replication_origin WHERE roname ~ $1
	                            ORDER BY length(roname), roname`, pattern(up))
	if err != nil {
		return nil, fmt.Errorf("list the replication origins of the link from %s: %w", up, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list the replication origins of the link from %s: %w", up, err)
	}
	return names, nil
}

// Progress is the progress of the link from node up on the downstream q is
// connected to (0: nothing applied yet): the position to resume after, or,
// with flush, the position that is durable there (LinkProgress).
func Progress(ctx context.Context, q pg.Querier, up string, flush bool) (pglogrepl.LSN, error) {
	lsn, _, err := LinkProgress(ctx, q, up, nil, flush)
	return lsn, err
}

func parse(up string, s *string) (pglogrepl.LSN, error) {
	if s == nil {
		return 0, nil
	}
	lsn, err := pglogrepl.ParseLSN(*s)
	if err != nil {
		return 0, fmt.Errorf("progress of the link from %s: %w", up, err)
	}
	return lsn, nil
}

// Ensure creates the origins of the link from node up for n workers that do
// not exist yet, and returns the names it created. Origins of workers beyond
// n are kept: their progress still counts until the link is dropped.
func Ensure(ctx context.Context, conn *pgx.Conn, up string, n int) ([]string, error) {
	var created []string
	for _, name := range Names(up, n) {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_replication_origin_oid($1) IS NOT NULL", name).Scan(&exists); err != nil {
			return created, fmt.Errorf("read origin %s: %w", name, err)
		}
		if exists {
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_create($1)", name); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" { // a concurrent init created it
				continue
			}
			if errors.As(err, &pe) && pe.Code == "53400" {
				return created, fmt.Errorf("create origin %s: %w (each inbound link needs one origin per apply worker: raise max_replication_slots, or max_active_replication_origins on PostgreSQL 18+, or lower agent.apply_workers)", name, err)
			}
			return created, fmt.Errorf("create origin %s: %w", name, err)
		}
		if err := Record(ctx, conn, name, 0); err != nil {
			return created, err
		}
		created = append(created, name)
	}
	return created, nil
}

// Drop drops every origin of the link from node up on the downstream conn is
// connected to.
func Drop(ctx context.Context, conn *pgx.Conn, up string) error {
	names, err := List(ctx, conn, up)
	if err != nil {
		return err
	}
	for _, name := range names {
		if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_drop($1)", name); err != nil {
			return fmt.Errorf("drop origin %s: %w", name, err)
		}
	}
	return nil
}

// linkProgressSQL reads the greatest progress among the origins that match
// $1 but those in $2, through the function named by %s.
const linkProgressSQL = `
SELECT max(%s(o.roname, $3))::text
  FROM pg_catalog.pg_replication_origin o
 WHERE o.roname ~ $1 AND o.roname <> ALL ($2::text[])`

// LinkProgress returns the progress of the link from up on the node q is
// connected to: the largest remote LSN committed over the origins of the
// link (pgmesh.origin_applied: an origin's progress may include a
// transaction that aborted after its origin setup, on PostgreSQL 16+), with
// flush=true only what is durable; ok is false when no origin of the link
// has progress (nothing applied yet, or no origin). nodes are the cluster's
// node names: the origin of another node whose name reads as up's worker
// (up "a", node "a_1") is not up's, even where a config predates the check
// that refuses such pairs.
//
// Taking the largest is right because parallel workers commit in upstream
// commit order. `pgmesh node add` relies on it: it resumes the new node's
// link from this position.
func LinkProgress(ctx context.Context, q pg.Querier, up string, nodes []string, flush bool) (lsn pglogrepl.LSN, ok bool, err error) {
	others := []string{}
	for _, n := range nodes {
		if n != up {
			others = append(others, topology.OriginName(n))
		}
	}
	var s *string
	err = q.QueryRow(ctx, fmt.Sprintf(linkProgressSQL, "pgmesh.origin_applied"), pattern(up), others, flush).Scan(&s)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "3F000" || pe.Code == "42883") {
		// A database without the pgmesh schema (diff and repair also
		// compare plain databases): only the origins say anything.
		err = q.QueryRow(ctx, fmt.Sprintf(linkProgressSQL, "pg_catalog.pg_replication_origin_progress"), pattern(up), others, flush).Scan(&s)
	}
	if err != nil {
		return 0, false, fmt.Errorf("read the progress of the link from %s: %w", up, err)
	}
	if s == nil {
		return 0, false, nil
	}
	lsn, err = parse(up, s)
	return lsn, err == nil, err
}

// Execer runs a statement: a *pgx.Conn or a pgx.Tx.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Record sets the committed progress of origin name (pgmesh.apply_progress,
// which LinkProgress reads before the origin's own progress) to lsn: the
// apply sessions record it with every transaction they commit; whatever
// creates or moves a link origin otherwise records it too, or an origin
// created anew under an old name would be read with an old row.
func Record(ctx context.Context, q Execer, name string, lsn pglogrepl.LSN) error {
	if _, err := q.Exec(ctx, "SELECT pgmesh.note_applied($1, $2::pg_lsn)", name, lsn.String()); err != nil {
		return fmt.Errorf("record the progress of origin %s: %w", name, err)
	}
	return nil
}

// Set moves origin name to lsn (pg_replication_origin_advance) and records
// it (Record).
func Set(ctx context.Context, q Execer, name string, lsn pglogrepl.LSN) error {
	if _, err := q.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_advance($1, $2::pg_lsn)", name, lsn.String()); err != nil {
		return fmt.Errorf("set origin %s to %s: %w", name, lsn, err)
	}
	return Record(ctx, q, name, lsn)
}
