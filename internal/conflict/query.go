package conflict

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Entry is one row of pgmesh.conflict_log of one node.
type Entry struct {
	Node             string          `json:"node"` // where the conflict was detected
	ID               int64           `json:"id"`
	DetectedAt       time.Time       `json:"detected_at"`
	Table            string          `json:"table"`
	Kind             string          `json:"kind"`
	Resolution       string          `json:"resolution"`
	Key              json.RawMessage `json:"key"`
	LocalRow         json.RawMessage `json:"local_row"`
	RemoteRow        json.RawMessage `json:"remote_row"`
	LocalCommitTime  *time.Time      `json:"local_commit_time"`
	RemoteCommitTime *time.Time      `json:"remote_commit_time"`
	LocalOrigin      *string         `json:"local_origin"`
	RemoteOrigin     *string         `json:"remote_origin"`
	RemoteLSN        *string         `json:"remote_lsn"`
}

// Filter selects log entries. Zero values select everything.
type Filter struct {
	Since time.Duration // only entries detected in the last Since
	Table string        // "schema.table", or "table" for any schema
	Limit int           // the most recent Limit entries of the merged log
}

const querySQL = `
SELECT id, detected_at, table_name, kind, resolution, key, local_row, remote_row,
       local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn::text
  FROM pgmesh.conflict_log
 WHERE ($1::interval IS NULL OR detected_at >= now() - $1::interval)
   AND ($2::text = '' OR table_name = $2::text OR split_part(table_name, '.', 2) = $2::text)
 ORDER BY detected_at DESC, id DESC
 LIMIT $3::bigint`

// Query reads the conflict log of every node of cfg in parallel and merges
// it in time order (oldest first). Nodes that cannot be read are reported in
// the error (one per node); the entries of the others are still returned.
func Query(ctx context.Context, cfg *config.Config, f Filter) ([]Entry, error) {
	var since *string
	if f.Since > 0 {
		s := fmt.Sprintf("%d microseconds", f.Since.Microseconds())
		since = &s
	}
	limit := int64(f.Limit)
	if limit <= 0 {
		limit = 1<<63 - 1
	}
	var (
		mu   sync.Mutex
		all  []Entry
		errs = make([]error, len(cfg.Nodes))
		wg   sync.WaitGroup
	)
	for i, n := range cfg.Nodes {
		wg.Go(func() {
			es, err := queryNode(ctx, n, since, f.Table, limit)
			if err != nil {
				errs[i] = err
				return
			}
			mu.Lock()
			all = append(all, es...)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.SortFunc(all, func(a, b Entry) int {
		return cmp.Or(a.DetectedAt.Compare(b.DetectedAt), cmp.Compare(a.Node, b.Node), cmp.Compare(a.ID, b.ID))
	})
	if f.Limit > 0 && len(all) > f.Limit {
		all = all[len(all)-f.Limit:]
	}
	return all, errors.Join(errs...)
}

func queryNode(ctx context.Context, n config.Node, since *string, table string, limit int64) ([]Entry, error) {
	conn, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh conflicts")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, querySQL, since, table, limit)
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.conflict_log: %w", n.Name, err)
	}
	es, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) {
		e := Entry{Node: n.Name}
		err := r.Scan(&e.ID, &e.DetectedAt, &e.Table, &e.Kind, &e.Resolution, &e.Key, &e.LocalRow, &e.RemoteRow,
			&e.LocalCommitTime, &e.RemoteCommitTime, &e.LocalOrigin, &e.RemoteOrigin, &e.RemoteLSN)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.conflict_log: %w", n.Name, err)
	}
	return es, nil
}
