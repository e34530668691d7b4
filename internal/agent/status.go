package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// LinkStatus is the state of one link as seen from both of its ends.
type LinkStatus struct {
	Link       string `json:"link"`
	Upstream   string `json:"upstream"`
	Downstream string `json:"downstream"`
	Slot       string `json:"slot"`
	// State is the agent's last recorded state (streaming, retrying…), or
	// "no agent" when no agent ever ran this link.
	State     string `json:"state"`
	LastError string `json:"last_error,omitempty"`
	// SlotActive tells whether a walsender is reading the slot right now.
	SlotActive bool `json:"slot_active"`
	// LagBytes is WAL written on the upstream that the downstream has not
	// confirmed yet (current WAL position − slot confirmed_flush_lsn).
	LagBytes int64 `json:"lag_bytes"`
	// LagSeconds is how far behind the downstream is in time: 0 when it
	// has confirmed everything, else the age of the last applied commit.
	LagSeconds float64 `json:"lag_seconds"`
	// LastCommitTime is the upstream commit time of the last transaction
	// applied on the downstream.
	LastCommitTime *time.Time `json:"last_commit_time,omitempty"`
	AppliedLSN     string     `json:"applied_lsn,omitempty"`
	// RetainedWALBytes is the WAL the slot keeps on the upstream's disk.
	RetainedWALBytes int64  `json:"retained_wal_bytes"`
	WALStatus        string `json:"wal_status,omitempty"`
	// SafeWALBytes is the WAL that can still be written upstream before
	// the slot is in danger of losing what it needs (max_slot_wal_keep_size);
	// nil when that setting is unlimited.
	SafeWALBytes *int64 `json:"safe_wal_size_bytes,omitempty"`
	// Problem is set when a side could not be read (node down, no slot…).
	Problem string `json:"problem,omitempty"`
	// Blocked is the remote transaction the link fails on, as its agent
	// recorded it (`pgmesh skip` moves it aside).
	Blocked *BlockedTxn `json:"blocked,omitempty"`
}

// IdleLagBytes is the slack under which a link counts as caught up: the
// upstream writes a little WAL of its own (link states, checkpoints) that
// is only confirmed at the next status update.
const IdleLagBytes = 64 << 10

// Status reads every link's status from the nodes (not from an agent, so it
// works whether or not agents run, and from any machine).
func Status(ctx context.Context, cfg *config.Config) ([]LinkStatus, error) {
	links := cfg.Links()
	all, failed := pg.ConnectNodes(ctx, cfg.Nodes, "pgmesh status")
	defer pg.CloseAll(ctx, all)
	conns := map[string]*pgx.Conn{}
	errs := map[string]error{}
	for i, n := range cfg.Nodes {
		conns[n.Name], errs[n.Name] = all[i], failed[i]
	}

	out := make([]LinkStatus, 0, len(links))
	for _, l := range links {
		s := newLinkStatus(l)
		if up := conns[l.Up]; up == nil {
			s.Problem = errs[l.Up].Error()
		} else if err := readSlot(ctx, up, &s); err != nil {
			s.Problem = err.Error()
		}
		if down := conns[l.Down]; down == nil {
			s.Problem = joinProblem(s.Problem, errs[l.Down].Error())
		} else if err := readLinkState(ctx, down, &s); err != nil {
			s.Problem = joinProblem(s.Problem, err.Error())
		}
		s.setLagSeconds(time.Now())
		out = append(out, s)
	}
	return out, nil
}

// StateNoAgent is the state of a link no agent ever ran.
const StateNoAgent = "no agent"

func newLinkStatus(l topology.Link) LinkStatus {
	return LinkStatus{Link: l.Name(), Upstream: l.Up, Downstream: l.Down, Slot: l.Slot(), State: StateNoAgent}
}

// setLagSeconds derives LagSeconds from the lag in bytes and the last
// applied commit.
func (s *LinkStatus) setLagSeconds(now time.Time) {
	s.LagSeconds = 0
	if s.LagBytes > IdleLagBytes && s.LastCommitTime != nil {
		s.LagSeconds = max(0, now.Sub(*s.LastCommitTime).Seconds())
	}
}

func joinProblem(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func readSlot(ctx context.Context, conn *pgx.Conn, s *LinkStatus) error {
	var walStatus *string
	err := conn.QueryRow(ctx, `
SELECT active,
       COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
       COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
       wal_status, safe_wal_size
FROM pg_replication_slots WHERE slot_name = $1`, s.Slot).Scan(&s.SlotActive, &s.LagBytes, &s.RetainedWALBytes, &walStatus, &s.SafeWALBytes)
	if err == pgx.ErrNoRows {
		return fmt.Errorf("slot %s missing on %s (run pgmesh init)", s.Slot, s.Upstream)
	}
	if err != nil {
		return fmt.Errorf("read slot %s on %s: %w", s.Slot, s.Upstream, err)
	}
	if walStatus != nil {
		s.WALStatus = *walStatus
	}
	return nil
}

func readLinkState(ctx context.Context, conn *pgx.Conn, s *LinkStatus) error {
	var state, lastErr *string
	var ts *time.Time
	var blocked []byte
	err := conn.QueryRow(ctx, `
SELECT ls.state, ls.last_error, ls.last_commit_time, ls.blocked
FROM (SELECT 1) one LEFT JOIN pgmesh.link_state ls ON ls.upstream = $1`,
		s.Upstream).Scan(&state, &lastErr, &ts, &blocked)
	if err != nil {
		return fmt.Errorf("read link state on %s: %w", s.Downstream, err)
	}
	progress, err := origin.Progress(ctx, conn, s.Upstream, false)
	if err != nil {
		return fmt.Errorf("read link state on %s: %w", s.Downstream, err)
	}
	if blocked != nil {
		s.Blocked = &BlockedTxn{}
		if err := json.Unmarshal(blocked, s.Blocked); err != nil {
			return fmt.Errorf("read link state on %s: blocked: %w", s.Downstream, err)
		}
	}
	if state != nil {
		s.State = *state
	}
	if lastErr != nil {
		s.LastError = *lastErr
	}
	s.LastCommitTime = ts
	if progress != 0 {
		s.AppliedLSN = progress.String()
	}
	return nil
}
