// Package origin reads how far a downstream has applied a link: the
// progress of the link's replication origins, whether one apply session
// (origin pgmesh_<up>) or several parallel ones (pgmesh_<up>_<k>) apply it.
package origin

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// LinkProgress returns the progress of the link from up on the node q is
// connected to: the largest remote LSN over the origins of the link, with
// flush=true only what is durable; ok is false when no origin of the link
// has progress (nothing applied yet, or no origin). nodes are the cluster's
// node names: the origin of another node whose name reads as up's worker
// (up "a", node "a_1") is not up's.
//
// Taking the largest is right only if every remote transaction that commits
// before that LSN upstream is applied once the origin has moved past it,
// i.e. parallel workers commit in upstream commit order. `pgmesh node add`
// relies on it: it resumes the new node's link from this position.
func LinkProgress(ctx context.Context, q pg.Querier, up string, nodes []string, flush bool) (lsn pglogrepl.LSN, ok bool, err error) {
	own := topology.OriginName(up)
	var others []string
	for _, n := range nodes {
		if n != up {
			others = append(others, topology.OriginName(n))
		}
	}
	if others == nil {
		others = []string{}
	}
	var s *string
	err = q.QueryRow(ctx, `
SELECT max(pg_catalog.pg_replication_origin_progress(o.roname, $3))::text
  FROM pg_catalog.pg_replication_origin o
 WHERE (o.roname = $1
        OR (pg_catalog.starts_with(o.roname, $1 || '_')
            AND pg_catalog.substr(o.roname, pg_catalog.length($1) + 2) ~ '^[0-9]+$'))
   AND o.roname <> ALL ($2::text[])`, own, others, flush).Scan(&s)
	if err != nil {
		return 0, false, fmt.Errorf("read progress of origin %s: %w", own, err)
	}
	if s == nil {
		return 0, false, nil
	}
	lsn, err = pglogrepl.ParseLSN(*s)
	if err != nil {
		return 0, false, fmt.Errorf("progress of origin %s %q: %w", own, *s, err)
	}
	return lsn, true, nil
}
