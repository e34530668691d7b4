package join

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/apply"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// peerSlots makes sure every peer but the source has its slot to the new
// node and returns where each starts (C_U). Nothing consumes these slots
// while the node copies (agents run no link of a copying node), so a slot
// left by an interrupted attempt still starts where it was created, before
// the snapshot the new attempt will take: it can be kept.
func (j *joiner) peerSlots(ctx context.Context) (map[string]pglogrepl.LSN, error) {
	out := map[string]pglogrepl.LSN{}
	for _, p := range j.peers {
		if p.Name == j.source.Name {
			continue
		}
		l := topology.Link{Up: p.Name, Down: j.node.Name}
		c := j.conns[p.Name]
		if _, err := setup.EnsureSlot(ctx, c, l.Slot()); err != nil {
			return nil, fmt.Errorf("node %s: link %s: %w", p.Name, l.Name(), err)
		}
		var lsn string
		var lost bool
		err := c.QueryRow(ctx, `SELECT confirmed_flush_lsn::text, coalesce(wal_status = 'lost', false)
		                          FROM pg_replication_slots WHERE slot_name = $1`, l.Slot()).Scan(&lsn, &lost)
		if err != nil {
			return nil, fmt.Errorf("node %s: read slot %s: %w", p.Name, l.Slot(), err)
		}
		if lost {
			// Its WAL is gone: a new slot starts now, still before the
			// snapshot.
			if err := setup.DropSlot(ctx, c, l.Slot()); err != nil {
				return nil, fmt.Errorf("node %s: %w", p.Name, err)
			}
			return j.peerSlots(ctx)
		}
		out[p.Name], err = lsnOf(lsn)
		if err != nil {
			return nil, fmt.Errorf("node %s: slot %s: %w", p.Name, l.Slot(), err)
		}
		j.log.Debug("slot ready", "link", l.Name(), "starts_at", lsn)
	}
	return out, nil
}

// waitSourceApplied waits until the source has applied every peer U past
// the start C_U of the slot U -> new: a change of U committed before C_U
// is not in that slot, so it must be in the copy. The source has applied it
// when its origin for U is past C_U, or when its slot on U confirms C_U
// (a link that has nothing to apply confirms what it received).
func (j *joiner) waitSourceApplied(ctx context.Context, slots map[string]pglogrepl.LSN) error {
	src := j.conns[j.source.Name]
	last := time.Now()
	for up, start := range slots {
		l := topology.Link{Up: up, Down: j.source.Name}
		err := poll(ctx, 200*time.Millisecond, func() (bool, error) {
			p, ok, err := origin.LinkProgress(ctx, src, up, j.names, false)
			if err != nil {
				return false, fmt.Errorf("node %s: %w", j.source.Name, err)
			}
			if ok && p >= start {
				return true, nil
			}
			var confirmed *string
			if err := j.conns[up].QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`,
				l.Slot()).Scan(&confirmed); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return false, fmt.Errorf("node %s: read slot %s: %w", up, l.Slot(), err)
			}
			if confirmed != nil {
				if c, err := lsnOf(*confirmed); err == nil && c >= start {
					return true, nil
				}
			}
			if time.Since(last) > 5*time.Second {
				last = time.Now()
				j.printf("waiting for %s to apply %s up to %s (link %s at %s; is the agent of %s running?)",
					j.source.Name, up, start, l.Name(), p, j.source.Name)
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// snapshot is the copy's snapshot on the source: exported by the creation
// of the slot source -> new, valid while repl stays open and idle.
type snapshot struct {
	repl *pgconn.PgConn
	name string
	lsn  pglogrepl.LSN // C_S
	// progress is the source's progress for each other peer (P_U); a
	// peer the source applied nothing of is absent.
	progress map[string]pglogrepl.LSN
}

func (s *snapshot) close() {
	if s.repl != nil {
		s.repl.Close(context.Background())
		s.repl = nil
	}
}

// snapshot pauses apply into the source, creates the slot source -> new
// with an exported snapshot and reads the source's progress for every peer,
// then lets apply go on. Origin progress is not MVCC: read later, it could
// include transactions the snapshot does not see. Every apply transaction
// holds apply.PauseLock in share mode from before its first write until
// after its commit is visible and its origin advanced, so while this holds
// it exclusively no apply transaction commits: the snapshot sees exactly
// the applied transactions the progress counts.
func (j *joiner) snapshot(ctx context.Context) (*snapshot, error) {
	src := j.conns[j.source.Name]
	slot := topology.Link{Up: j.source.Name, Down: j.node.Name}.Slot()
	// A slot of an interrupted attempt has lost its snapshot.
	if err := setup.DropSlot(ctx, src, slot); err != nil {
		return nil, fmt.Errorf("node %s: %w", j.source.Name, err)
	}
	repl, err := pg.ConnectReplication(ctx, j.source.Name, j.source.DSN, "pgmesh node add "+j.node.Name)
	if err != nil {
		return nil, err
	}
	s := &snapshot{repl: repl, progress: map[string]pglogrepl.LSN{}}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	lockConn, err := pg.Connect(ctx, j.source.Name, j.source.DSN, "pgmesh node add "+j.node.Name+": pause")
	if err != nil {
		return nil, err
	}
	defer lockConn.Close(context.WithoutCancel(ctx))
	tx, err := lockConn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", j.source.Name, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	began := time.Now()
	j.printf("pausing apply into %s for the snapshot", j.source.Name)
	if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)", apply.PauseLock[0], apply.PauseLock[1]); err != nil {
		return nil, fmt.Errorf("node %s: pause apply: %w", j.source.Name, err)
	}
	// The slot is created after every transaction running on the source
	// has ended (that is how its snapshot is consistent); apply
	// transactions waiting for the lock have no xid yet, so they are not
	// waited for.
	res, err := pglogrepl.CreateReplicationSlot(ctx, repl, pg.Ident(slot), "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return nil, fmt.Errorf("node %s: create slot %s: %w", j.source.Name, slot, err)
	}
	s.name = res.SnapshotName
	if s.lsn, err = pglogrepl.ParseLSN(res.ConsistentPoint); err != nil {
		return nil, fmt.Errorf("node %s: slot %s: consistent point %q: %w", j.source.Name, slot, res.ConsistentPoint, err)
	}
	for _, p := range j.peers {
		if p.Name == j.source.Name {
			continue
		}
		lsn, has, err := origin.LinkProgress(ctx, tx, p.Name, j.names, false)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", j.source.Name, err)
		}
		if has {
			s.progress[p.Name] = lsn
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("node %s: resume apply: %w", j.source.Name, err)
	}
	j.printf("snapshot %s of %s at %s (apply paused %s)", s.name, j.source.Name, s.lsn, time.Since(began).Round(time.Millisecond))
	ok = true
	return s, nil
}

// recordPositions stores the positions of the proof on the new node, so
// that a crash after the copy still finds them.
func (j *joiner) recordPositions(ctx context.Context, s *snapshot, slots map[string]pglogrepl.LSN) error {
	return pgx.BeginFunc(ctx, j.n, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM pgmesh.join_upstream"); err != nil {
			return fmt.Errorf("node %s: reset pgmesh.join_upstream: %w", j.node.Name, err)
		}
		for _, p := range j.peers {
			var slot, progress any
			if p.Name == j.source.Name {
				slot, progress = s.lsn.String(), s.lsn.String()
			} else {
				slot = slots[p.Name].String()
				if lsn, ok := s.progress[p.Name]; ok {
					progress = lsn.String()
				}
			}
			if _, err := tx.Exec(ctx, `INSERT INTO pgmesh.join_upstream (upstream, slot_lsn, progress) VALUES ($1, $2::pg_lsn, $3::pg_lsn)`,
				p.Name, slot, progress); err != nil {
				return fmt.Errorf("node %s: record positions: %w", j.node.Name, err)
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE pgmesh.join_state SET snapshot_lsn = $1::pg_lsn, updated_at = now()`, s.lsn.String()); err != nil {
			return fmt.Errorf("node %s: record positions: %w", j.node.Name, err)
		}
		return nil
	})
}
