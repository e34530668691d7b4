package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/apply"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/stream"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Blocked is the transaction a link fails on, as its agent recorded it in
// pgmesh.link_state.blocked on the downstream.
type Blocked struct {
	CommitLSN  string    `json:"commit_lsn"`
	CommitTime time.Time `json:"commit_time"`
	XID        uint32    `json:"xid"`
	What       string    `json:"what"`
	Table      string    `json:"table"`
	Key        string    `json:"key"`
	Error      string    `json:"error"`
	Since      time.Time `json:"since"`
	Attempts   int       `json:"attempts"`
}

// ReadBlocked returns what the link from upstream into the node of q is
// blocked on, nil when its agent recorded nothing.
func ReadBlocked(ctx context.Context, q pg.Querier, upstream string) (*Blocked, error) {
	var raw []byte
	err := q.QueryRow(ctx, `SELECT blocked FROM pgmesh.link_state WHERE upstream = $1`, upstream).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && raw == nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.link_state: %w", err)
	}
	var b Blocked
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, fmt.Errorf("read pgmesh.link_state.blocked: %w", err)
	}
	return &b, nil
}

// RequestSkip records the operator's order to move the transaction that
// commits at lsn on the link from upstream into the dead letters (it
// replaces an earlier order for that link).
func RequestSkip(ctx context.Context, conn *pgx.Conn, upstream string, lsn stream.LSN, why string) error {
	_, err := conn.Exec(ctx, `
INSERT INTO pgmesh.skip_request (upstream, commit_lsn, error) VALUES ($1, $2::pg_lsn, $3)
ON CONFLICT (upstream) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, error = EXCLUDED.error,
  requested_at = now(), requested_by = current_user`, upstream, lsn.String(), why)
	if err != nil {
		return fmt.Errorf("write pgmesh.skip_request: %w", err)
	}
	return nil
}

// Entry is one row of pgmesh.dead_letter.
type Entry struct {
	ID         int64      `json:"id"`
	Upstream   string     `json:"upstream"`
	CommitLSN  string     `json:"commit_lsn"`
	XID        int64      `json:"xid"`
	CommitTime time.Time  `json:"commit_time"`
	Error      string     `json:"error"`
	Changes    []Change   `json:"changes"`
	SkippedAt  time.Time  `json:"skipped_at"`
	SkippedBy  string     `json:"skipped_by"`
	ReplayedAt *time.Time `json:"replayed_at,omitempty"`
}

// List returns the dead letters of the node of q, oldest first; id > 0
// returns that one only.
func List(ctx context.Context, q pg.Querier, id int64) ([]Entry, error) {
	rows, err := q.Query(ctx, `
SELECT id, upstream, commit_lsn::text, coalesce(xid, 0), commit_time, coalesce(error, ''), changes,
       skipped_at, coalesce(skipped_by, ''), replayed_at
  FROM pgmesh.dead_letter WHERE $1 = 0 OR id = $1 ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.dead_letter: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) {
		var e Entry
		var changes []byte
		if err := r.Scan(&e.ID, &e.Upstream, &e.CommitLSN, &e.XID, &e.CommitTime, &e.Error, &changes,
			&e.SkippedAt, &e.SkippedBy, &e.ReplayedAt); err != nil {
			return e, err
		}
		return e, json.Unmarshal(changes, &e.Changes)
	})
}

// replayedPrefix marks, inside the replayed transaction, the dead letter
// it came from: its handler records the replay, so that it commits with
// the changes or not at all.
const replayedPrefix = "pgmesh.dead_letter.replayed"

// Replay applies dead letter e again on node, through the conflict rules
// as if it had just arrived from its upstream: with its commit time, under
// origin pgmesh_<upstream>_repair (so that it is not sent to the other
// nodes, which have it, and its rows count as the upstream's). It returns
// the conflicts its changes met, which pgmesh.conflict_log holds.
func Replay(ctx context.Context, cfg *config.Config, node config.Node, e Entry, log *slog.Logger) (map[string]uint64, error) {
	if e.ReplayedAt != nil {
		return nil, fmt.Errorf("dead letter %d was replayed at %s already", e.ID, e.ReplayedAt.Format(time.RFC3339))
	}
	lsn, err := pglogrepl.ParseLSN(e.CommitLSN)
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: commit LSN %q: %w", e.ID, e.CommitLSN, err)
	}
	conn, err := pg.ConnectExact(ctx, node.Name, node.DSN, "pgmesh replay")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// The repair origin's progress says nothing (repair keeps it where it
	// is): start it over, so that the apply engine does not take this
	// transaction for one applied before.
	origin := topology.OriginName(e.Upstream) + "_repair"
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1) WHERE pg_catalog.pg_replication_origin_oid($1) IS NULL`, origin); err != nil {
		return nil, fmt.Errorf("node %s: create origin %s: %w", node.Name, origin, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_advance($1, '0/0')`, origin); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "55006" {
			return nil, fmt.Errorf("node %s: origin %s is in use (a pgmesh repair is running): try again when it is done", node.Name, origin)
		}
		return nil, fmt.Errorf("node %s: reset origin %s: %w", node.Name, origin, err)
	}
	ddlExec := &ddl.Executor{Node: node.Name, Logger: log}
	a, err := apply.New(ctx, []apply.Session{{Conn: conn.PgConn(), Origin: origin}}, apply.Options{
		Upstream: e.Upstream, Logger: log, Config: cfg, Node: node.Name,
		OnMessage: func(ctx context.Context, conn *pgconn.PgConn, m stream.Message) error {
			if m.Prefix == replayedPrefix {
				_, err := conn.ExecParams(ctx, `UPDATE pgmesh.dead_letter SET replayed_at = now(), replayed_by = current_user
WHERE id = $1::bigint AND replayed_at IS NULL`, [][]byte{m.Content}, nil, nil, nil).Close()
				return err
			}
			return ddlExec.Handle(ctx, ddl.ConnExecer{Conn: conn}, m)
		},
	})
	if err != nil {
		return nil, err
	}
	run := func() error {
		if err := a.Begin(ctx, stream.Begin{XID: uint32(e.XID), FinalLSN: lsn, CommitTime: e.CommitTime}); err != nil {
			return err
		}
		for i, c := range e.Changes {
			if c.Op == "message" {
				err = a.Message(ctx, stream.Message{Transactional: true, LSN: lsn, Prefix: c.Prefix, Content: []byte(c.Content)})
			} else {
				var sc *stream.Change
				if sc, err = c.streamChange(); err == nil {
					err = a.Change(ctx, sc)
				}
			}
			if err != nil {
				return fmt.Errorf("change %d (%s %s): %w", i+1, c.Op, c.Table, err)
			}
		}
		if err := a.Message(ctx, stream.Message{Transactional: true, LSN: lsn, Prefix: replayedPrefix, Content: fmt.Appendf(nil, "%d", e.ID)}); err != nil {
			return err
		}
		return a.Commit(ctx, stream.Commit{CommitLSN: lsn, EndLSN: lsn, CommitTime: e.CommitTime})
	}
	err = run()
	if cerr := a.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("replay dead letter %d on %s: %w", e.ID, node.Name, err)
	}
	st := a.Stats()
	if st.Txns != 1 {
		return nil, fmt.Errorf("replay dead letter %d on %s: the transaction was not committed", e.ID, node.Name)
	}
	return st.Conflicts, nil
}
