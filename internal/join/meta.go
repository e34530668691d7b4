package join

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

// metaCopies are the source's causal state the new node needs, copied in
// the snapshot:
//   - tombstones: a delete of a copied row's key, so that an older update
//     still on its way is not applied to the missing row as an insert (the
//     delete is resurrected) and a delete that crosses is logged. A local
//     delete's time is known only on the source (its xid there): it is
//     copied as a time;
//   - the DDL log: the DDLs already in the copied schema, so that the check
//     for a DDL in flight does not wait for them.
var metaCopies = []struct{ what, from, to string }{
	{"tombstones",
		"SELECT t.table_name, t.key, pgmesh.tombstone_time(t.deleted_at, t.xid), t.node FROM pgmesh.tombstone t",
		"pgmesh.tombstone (table_name, key, deleted_at, node)"},
	{"DDL log",
		"SELECT id, origin_node, sql, search_path, role, emitted_at, applied_at, status, error FROM pgmesh.ddl_log",
		"pgmesh.ddl_log (id, origin_node, sql, search_path, role, emitted_at, applied_at, status, error)"},
}

// copyMeta copies the tombstones, the DDL log and peer_seen of the source
// in the snapshot, and returns the source's peer_seen rows (peer → origin →
// seen until).
//
// peer_seen(P, O) on the source says that P had applied O's changes up to a
// time when it committed each change the source applied after that claim.
// The new node receives P's changes that follow P's progress in the
// snapshot, all later than the claims in it, so the same rows are true
// lower bounds there too.
func (j *joiner) copyMeta(ctx context.Context, s *snapshot) (map[string]map[string]time.Time, error) {
	src, err := j.openSource(ctx, s)
	if err != nil {
		return nil, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	for _, m := range metaCopies {
		n, err := pipeCopy(ctx, src, "COPY ("+m.from+") TO STDOUT", j.n, "COPY "+m.to+" FROM STDIN")
		if err != nil {
			return nil, fmt.Errorf("copy the %s of %s to %s: %w", m.what, j.source.Name, j.node.Name, err)
		}
		j.log.Debug("copied", "what", m.what, "rows", n)
	}
	rows, err := src.Query(ctx, "SELECT peer, origin, seen_until FROM pgmesh.peer_seen")
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.peer_seen: %w", j.source.Name, err)
	}
	seen := map[string]map[string]time.Time{}
	var peer, origin string
	var until time.Time
	if _, err := pgx.ForEachRow(rows, []any{&peer, &origin, &until}, func() error {
		if seen[peer] == nil {
			seen[peer] = map[string]time.Time{}
		}
		seen[peer][origin] = until
		return nil
	}); err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.peer_seen: %w", j.source.Name, err)
	}
	err = pgx.BeginFunc(ctx, j.n, func(tx pgx.Tx) error {
		for peer, m := range seen {
			if peer == j.node.Name {
				continue // a claim about this node from an earlier life
			}
			for origin, until := range m {
				if _, err := tx.Exec(ctx, conflict.SeenSQL(), peer, origin, until.UTC().Format(time.RFC3339Nano)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: write pgmesh.peer_seen: %w", j.node.Name, err)
	}
	return seen, nil
}

// pipeCopy streams COPY TO output of one session into COPY FROM of another.
func pipeCopy(ctx context.Context, from *pgx.Conn, out string, to *pgx.Conn, in string) (int64, error) {
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := from.PgConn().CopyTo(ctx, w, out)
		w.CloseWithError(err)
		done <- err
	}()
	tag, err := to.PgConn().CopyFrom(ctx, r, in)
	r.CloseWithError(io.ErrClosedPipe)
	if serr := <-done; serr != nil {
		return 0, serr
	}
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// mergeSeen is what the new node has seen of each node after the copy:
// of a peer O, what the source had applied of it (the source's own claim
// peer_seen(source, O)) or the newest copied row of O, whichever is later;
// of the source itself, its newest copied row. Only nodes of the mesh are
// kept.
func mergeSeen(rows map[string]time.Time, peerSeen map[string]map[string]time.Time, source string, nodes []string) map[string]time.Time {
	out := map[string]time.Time{}
	for o, t := range rows {
		if slices.Contains(nodes, o) {
			out[o] = t
		}
	}
	for o, t := range peerSeen[source] {
		if slices.Contains(nodes, o) && o != source && t.After(out[o]) {
			out[o] = t
		}
	}
	return out
}
