// Package joinstate reads and writes where a node stands in joining or
// leaving the mesh (pgmesh.join_state and its per-table copy progress).
// The agent reads it to run no link of a node that is not ready, status and
// metrics to show it, check to warn about it; `pgmesh node add` and
// `pgmesh node remove` write it.
package joinstate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/human"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// States of pgmesh.join_state.state (sql/0009_join.sql says what each
// means). A node without a join_state row is Ready.
const (
	Copying    = "copying"
	CatchingUp = "catching_up"
	Ready      = "ready"
	Leaving    = "leaving"
	Removed    = "removed"
)

// States are every state, for metrics that have one series per state.
var States = []string{Copying, CatchingUp, Ready, Leaving, Removed}

// LinksAllowed tells whether links into and out of a node in state may
// run: not while its data is being copied (the origins do not hold the
// resume points yet) nor once it leaves.
func LinksAllowed(state string) bool {
	return state == CatchingUp || state == Ready
}

// State is one node's join state.
type State struct {
	Node        string     `json:"node"`
	Source      string     `json:"source"`
	State       string     `json:"state"`
	Attempt     int        `json:"attempt"`
	SnapshotLSN string     `json:"snapshot_lsn,omitempty"`
	Restored    bool       `json:"schema_restored"`
	StartedAt   time.Time  `json:"started_at"`
	CopiedAt    *time.Time `json:"copied_at,omitempty"`
	ReadyAt     *time.Time `json:"ready_at,omitempty"`
	UpdatedAt   time.Time  `json:"updated_at"`
	Error       string     `json:"error,omitempty"`
	Tables      []Table    `json:"tables,omitempty"`
	Upstreams   []Upstream `json:"upstreams,omitempty"`
}

// Table is the copy progress of one table.
type Table struct {
	Name       string     `json:"table"`
	EstRows    int64      `json:"est_rows"`
	EstBytes   int64      `json:"est_bytes"`
	Rows       int64      `json:"rows"`
	Bytes      int64      `json:"bytes"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	UpdatedAt  time.Time  `json:"updated_at"`
}

// Rate is the table's copy rate in bytes per second (0 before it started).
func (t Table) Rate() float64 {
	if t.StartedAt == nil {
		return 0
	}
	end := t.UpdatedAt
	if t.FinishedAt != nil {
		end = *t.FinishedAt
	}
	secs := end.Sub(*t.StartedAt).Seconds()
	if secs <= 0 {
		return 0
	}
	return float64(t.Bytes) / secs
}

// ETA estimates the time left for the table from its rate and its size on
// the source (estimates from the source's statistics: it can be off, and is
// 0 once the copy passed the estimate or finished).
func (t Table) ETA() time.Duration {
	rate := t.Rate()
	if t.FinishedAt != nil || rate <= 0 || t.Bytes >= t.EstBytes {
		return 0
	}
	return time.Duration(float64(t.EstBytes-t.Bytes) / rate * float64(time.Second))
}

// Upstream is the resume point of one link into the joining node.
type Upstream struct {
	Upstream string `json:"upstream"`
	SlotLSN  string `json:"slot_lsn,omitempty"`
	Progress string `json:"progress,omitempty"`
	Target   string `json:"target,omitempty"`
}

// Read returns the node's join state, nil when it has none (a node set up
// by init, or a database without pgmesh 0009): that node is ready.
func Read(ctx context.Context, q pg.Querier) (*State, error) {
	var exists bool
	if err := q.QueryRow(ctx, "SELECT to_regclass('pgmesh.join_state') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for pgmesh.join_state: %w", err)
	}
	if !exists {
		return nil, nil
	}
	s := &State{}
	var snap, errText *string
	err := q.QueryRow(ctx, `
SELECT node, source, state, attempt, snapshot_lsn::text, schema_restored, started_at, copied_at, ready_at, updated_at, error
  FROM pgmesh.join_state`).Scan(&s.Node, &s.Source, &s.State, &s.Attempt, &snap, &s.Restored,
		&s.StartedAt, &s.CopiedAt, &s.ReadyAt, &s.UpdatedAt, &errText)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.join_state: %w", err)
	}
	if snap != nil {
		s.SnapshotLSN = *snap
	}
	if errText != nil {
		s.Error = *errText
	}
	rows, err := q.Query(ctx, `
SELECT table_name, est_rows, est_bytes, rows, bytes, started_at, finished_at, updated_at
  FROM pgmesh.join_table ORDER BY table_name`)
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.join_table: %w", err)
	}
	s.Tables, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Table, error) {
		var t Table
		err := r.Scan(&t.Name, &t.EstRows, &t.EstBytes, &t.Rows, &t.Bytes, &t.StartedAt, &t.FinishedAt, &t.UpdatedAt)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.join_table: %w", err)
	}
	rows, err = q.Query(ctx, `
SELECT upstream, coalesce(slot_lsn::text, ''), coalesce(progress::text, ''), coalesce(target::text, '')
  FROM pgmesh.join_upstream ORDER BY upstream`)
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.join_upstream: %w", err)
	}
	s.Upstreams, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Upstream, error) {
		var u Upstream
		err := r.Scan(&u.Upstream, &u.SlotLSN, &u.Progress, &u.Target)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.join_upstream: %w", err)
	}
	return s, nil
}

// StateOf returns the node's state name: Ready when it has no join state.
func StateOf(ctx context.Context, q pg.Querier) (string, error) {
	s, err := Read(ctx, q)
	if err != nil || s == nil {
		return Ready, err
	}
	return s.State, nil
}

// SetState moves the node to state (with an error text for the operator,
// or "").
func SetState(ctx context.Context, q Execer, state, errText string) error {
	_, err := q.Exec(ctx, `
UPDATE pgmesh.join_state SET state = $1, error = NULLIF($2, ''), updated_at = now(),
       copied_at = CASE WHEN $1 = 'catching_up' THEN now() ELSE copied_at END,
       ready_at = CASE WHEN $1 = 'ready' THEN now() ELSE ready_at END`, state, errText)
	if err != nil {
		return fmt.Errorf("set pgmesh.join_state to %s: %w", state, err)
	}
	return nil
}

// Execer is what SetState needs of a pgx.Conn or pgx.Tx.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Behind lists the links into a catching-up node that have not applied
// their upstream past the target yet ("n1 at 0/1A2B, target 0/1C00"): a
// link has when the node's origin for it is past the target, or when the
// upstream's slot confirms it (a link with nothing to apply confirms what
// it received). upstream returns a session on a peer (nil: none).
func Behind(ctx context.Context, node pg.Querier, name string, nodes []string, ups []Upstream, upstream func(string) pg.Querier) ([]string, error) {
	var out []string
	for _, u := range ups {
		target, err := lsnOf(u.Target)
		if err != nil {
			return nil, fmt.Errorf("node %s: target of %s: %w", name, u.Upstream, err)
		}
		if target == 0 {
			continue
		}
		p, ok, err := origin.LinkProgress(ctx, node, u.Upstream, nodes, false)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		if ok && p >= target {
			continue
		}
		if q := upstream(u.Upstream); q != nil {
			slot := topology.Link{Up: u.Upstream, Down: name}.Slot()
			var confirmed *string
			err := q.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1", slot).Scan(&confirmed)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return nil, fmt.Errorf("node %s: read slot %s: %w", u.Upstream, slot, err)
			}
			if confirmed != nil {
				if c, err := lsnOf(*confirmed); err == nil && c >= target {
					continue
				}
			}
		}
		out = append(out, fmt.Sprintf("%s applied up to %s, target %s", u.Upstream, p, target))
	}
	return out, nil
}

// DescribeTable is one line of copy progress: rows, bytes, rate and ETA.
func DescribeTable(t Table) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d rows", t.Name, t.Rows)
	if t.EstRows > 0 && t.FinishedAt == nil {
		fmt.Fprintf(&b, " of ~%d", t.EstRows)
	}
	fmt.Fprintf(&b, ", %s", human.Bytes(t.Bytes))
	switch {
	case t.FinishedAt != nil:
		fmt.Fprintf(&b, ", done at %s/s", human.Bytes(int64(t.Rate())))
	case t.StartedAt == nil:
		b.WriteString(", waiting")
	default:
		fmt.Fprintf(&b, ", %s/s", human.Bytes(int64(t.Rate())))
		if eta := t.ETA(); eta > 0 {
			fmt.Fprintf(&b, ", ETA %s", eta.Round(time.Second))
		}
	}
	return b.String()
}

// lsnOf reads a pg_lsn text; "" is 0.
func lsnOf(s string) (pglogrepl.LSN, error) {
	if s == "" {
		return 0, nil
	}
	return pglogrepl.ParseLSN(s)
}
