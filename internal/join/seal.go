package join

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sequence"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// seal switches the new node on once its data is complete:
//
//  1. its origin for each peer U is set to P_U (for the source: C_S), the
//     point its link from U resumes after;
//  2. its sequences get their own snowflake id, step class or range;
//  3. its slots to the peers are created (it has written nothing of its
//     own yet: everything so far carries an origin);
//  4. it announces, with a seen message in its WAL ahead of any change of
//     its own, what it has seen of every node, so that the peers take its
//     first updates of copied rows as the causal changes they are;
//  5. it records each peer's WAL position as the target to catch up with
//     and becomes catching_up: from then on agents run its links.
func (j *joiner) seal(ctx context.Context, s *snapshot, seen map[string]time.Time) error {
	positions, err := j.readPositions(ctx)
	if err != nil {
		return err
	}
	for _, p := range j.peers {
		if _, err := origin.Ensure(ctx, j.n, p.Name, 1); err != nil {
			return fmt.Errorf("node %s: %w", j.node.Name, err)
		}
		// 0/0 when the source had applied nothing of the peer: the link
		// then starts where its slot does. An origin advanced by an
		// interrupted attempt is moved back too.
		// Every apply worker's origin of the link, since its progress is
		// the greatest among them.
		lsn := positions[p.Name]
		names, err := origin.List(ctx, j.n, p.Name)
		if err != nil {
			return fmt.Errorf("node %s: %w", j.node.Name, err)
		}
		for _, o := range names {
			if err := origin.Set(ctx, j.n, o, lsn); err != nil {
				return fmt.Errorf("node %s: %w", j.node.Name, err)
			}
		}
	}
	srcSeq, err := sequence.ReadNode(ctx, j.conns[j.source.Name], j.cfg, j.source.Name)
	if err != nil {
		return err
	}
	rep, err := sequence.Adopt(ctx, j.cfg, j.node, j.n, srcSeq)
	if err != nil {
		return fmt.Errorf("node %s: give the node its own ids: %w", j.node.Name, err)
	}
	for _, c := range rep.Changes {
		j.printf("%s: %s: %s -> %s", j.node.Name, c.Object, c.From, c.To)
	}
	for _, p := range j.peers {
		l := topology.Link{Up: j.node.Name, Down: p.Name}
		if _, err := setup.EnsureSlot(ctx, j.n, l.Slot()); err != nil {
			return fmt.Errorf("node %s: link %s: %w", j.node.Name, l.Name(), err)
		}
	}
	delete(seen, j.node.Name)
	if len(seen) > 0 {
		msg, err := conflict.SeenMessage{Node: j.node.Name, Seen: seen}.Marshal()
		if err != nil {
			return fmt.Errorf("node %s: seen message: %w", j.node.Name, err)
		}
		if _, err := j.n.Exec(ctx, "SELECT pg_catalog.pg_logical_emit_message(false, $1, $2)", conflict.SeenPrefix, string(msg)); err != nil {
			return fmt.Errorf("node %s: announce what the copy holds: %w", j.node.Name, err)
		}
	}
	targets := map[string]string{}
	for _, p := range j.peers {
		var lsn string
		if err := j.conns[p.Name].QueryRow(ctx, "SELECT pg_catalog.pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
			return fmt.Errorf("node %s: read the WAL position: %w", p.Name, err)
		}
		targets[p.Name] = lsn
	}
	err = pgx.BeginFunc(ctx, j.n, func(tx pgx.Tx) error {
		// What this node has applied of each origin, for the in-flight
		// rule of its own conflict statements.
		for _, o := range slices.Sorted(maps.Keys(seen)) {
			if _, err := tx.Exec(ctx, conflict.SeenSQL(), j.node.Name, o, seen[o].UTC().Format(time.RFC3339Nano)); err != nil {
				return fmt.Errorf("record what the copy holds: %w", err)
			}
		}
		for up, lsn := range targets {
			if _, err := tx.Exec(ctx, "UPDATE pgmesh.join_upstream SET target = $2::pg_lsn WHERE upstream = $1", up, lsn); err != nil {
				return fmt.Errorf("record the catch-up target: %w", err)
			}
		}
		return joinstate.SetState(ctx, tx, joinstate.CatchingUp, "")
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	j.printf("%s holds the copy; its links resume from %s", j.node.Name, describePositions(positions))
	return nil
}

// readPositions returns, per peer, where the new node's link resumes:
// P_U recorded in the snapshot (for the source, C_S), 0 when none.
func (j *joiner) readPositions(ctx context.Context) (map[string]pglogrepl.LSN, error) {
	rows, err := j.n.Query(ctx, "SELECT upstream, coalesce(progress::text, '') FROM pgmesh.join_upstream")
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.join_upstream: %w", j.node.Name, err)
	}
	out := map[string]pglogrepl.LSN{}
	var up, lsn string
	_, err = pgx.ForEachRow(rows, []any{&up, &lsn}, func() error {
		v, err := lsnOf(lsn)
		out[up] = v
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.join_upstream: %w", j.node.Name, err)
	}
	return out, nil
}

func describePositions(p map[string]pglogrepl.LSN) string {
	var s string
	for _, up := range slices.Sorted(maps.Keys(p)) {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s after %s", up, p[up])
	}
	return s
}

// waitReady waits until every link into the new node has applied past the
// target recorded at the end of the copy, then marks the node ready.
func (j *joiner) waitReady(ctx context.Context) error {
	st, err := joinstate.Read(ctx, j.n)
	if err != nil || st == nil {
		return err
	}
	if st.State == joinstate.Ready {
		return nil
	}
	last := time.Time{}
	return poll(ctx, 500*time.Millisecond, func() (bool, error) {
		behind, err := joinstate.Behind(ctx, j.n, j.node.Name, j.names, st.Upstreams, func(up string) pg.Querier { return j.conns[up] })
		if err != nil {
			return false, err
		}
		if len(behind) == 0 {
			if err := joinstate.SetState(ctx, j.n, joinstate.Ready, ""); err != nil {
				return false, fmt.Errorf("node %s: %w", j.node.Name, err)
			}
			j.printf("%s is ready", j.node.Name)
			return true, nil
		}
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			j.printf("%s catching up: %s (the agent must run its links: pgmesh run -c %s --node %s)",
				j.node.Name, joinList(behind), configName(j.cfg), j.node.Name)
		}
		return false, nil
	})
}

func joinList(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += "; "
		}
		out += x
	}
	return out
}
