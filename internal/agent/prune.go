package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// PruneInterval is how often the agent prunes the conflict log and the
// tombstones of the nodes it applies to.
const PruneInterval = 10 * time.Minute

// prune runs pruneNodes at start and then every PruneInterval until ctx is
// done.
func (a *Agent) prune(ctx context.Context) {
	tick := time.NewTicker(PruneInterval)
	defer tick.Stop()
	for {
		a.pruneNodes(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// pruneNodes deletes, on every downstream node of the agent's links,
// conflict_log rows older than conflicts.log_retention and the tombstones
// that every peer has applied past and that are older than
// conflicts.tombstone_retention (pgmesh.prune_tombstones says why both).
// It runs on a fresh connection without replication origin. Failures are
// logged: the next round tries again.
func (a *Agent) pruneNodes(ctx context.Context) {
	cfg := a.reloadConflicts()
	done := map[string]bool{}
	for _, l := range a.currentLinks() {
		if done[l.Down] {
			continue
		}
		done[l.Down] = true
		logs, tombs, err := pruneNode(ctx, l.down, cfg.Conflicts)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("agent: prune conflict log and tombstones", "node", l.Down, "err", err)
			}
			continue
		}
		a.log.Debug("agent: pruned", "node", l.Down, "conflict_log_rows", logs, "tombstones", tombs)
	}
}

func pruneNode(ctx context.Context, n config.Node, c config.Conflicts) (logs, tombs int64, err error) {
	conn, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh prune")
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.QueryRow(ctx, "SELECT pgmesh.prune_conflict_log($1::interval)", interval(c.LogRetention)).Scan(&logs); err != nil {
		return 0, 0, fmt.Errorf("node %s: prune conflict log: %w", n.Name, err)
	}
	if err := conn.QueryRow(ctx, "SELECT pgmesh.prune_tombstones($1::interval)", interval(c.TombstoneRetention)).Scan(&tombs); err != nil {
		return logs, 0, fmt.Errorf("node %s: prune tombstones: %w", n.Name, err)
	}
	return logs, tombs, nil
}

// interval renders a duration as an interval literal.
func interval(d time.Duration) string {
	return fmt.Sprintf("%d microseconds", d.Microseconds())
}
