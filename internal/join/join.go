// Package join adds a node to a running mesh: it copies the replicated
// schema and data of a source node into an empty database while every node
// keeps writing, so that no change committed anywhere is missing on the new
// node or applied to it twice. docs/JOIN.md holds the procedure and its
// proof; in short:
//
//  1. every peer U gets the slot U -> new first (it starts at C_U);
//  2. the source S is waited for until it has applied every peer past C_U;
//  3. with apply into S paused (apply.PauseLock), the slot S -> new is
//     created with an exported snapshot (the copy's snapshot, at C_S) and
//     S's progress P_U for every peer is read;
//  4. schema, rows (each with its commit time and origin), tombstones,
//     peer_seen and the DDL log are copied in that snapshot;
//  5. the new node's origin for U is set to P_U (for S: C_S), its own
//     slots are created, it announces what it has seen, and its links may
//     run: changes of U at or before P_U are in the copy and skipped, later
//     ones arrive through the slot U -> new.
//
// The node's state (pgmesh.join_state) is copying until step 5 is done;
// agents run no link of a node in that state, and an interrupted copy is
// started over from step 3 by running `pgmesh node add` again.
package join

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/setup"
)

// Points at which Options.Hold is called, in order.
const (
	HoldSlots    = "slots"    // the peers' slots to the new node exist
	HoldSnapshot = "snapshot" // snapshot taken, positions recorded, nothing copied yet
	HoldCopy     = "copy"     // the first rows are committed on the new node
	HoldCopied   = "copied"   // everything is copied, the node is not switched on yet
)

// Options configure Add.
type Options struct {
	Node   string // the new node; must be in the config
	Source string // the node to copy from; "" picks the first ready peer
	// Jobs is the number of tables copied at once (default 2).
	Jobs int
	// PgBin is a directory holding pg_dump and pg_restore, used when the
	// new node has no replicated tables yet ("" = search PGMESH_PG_BIN,
	// PATH and /usr/lib/postgresql).
	PgBin string
	// Wait makes Add return only when the node has caught up (ready).
	Wait bool
	// Out receives progress lines for a human (nil = none).
	Out io.Writer
	Log *slog.Logger
	// Hold, when set, is called at each Hold* point (tests stop the
	// process there to check that an interrupted join recovers).
	Hold func(point string)
}

// Report is what Add did.
type Report struct {
	Node    string      `json:"node"`
	Source  string      `json:"source"`
	Attempt int         `json:"attempt"`
	State   string      `json:"state"`
	Schema  string      `json:"schema"` // "restored from source", "already present"
	Tables  []TableStat `json:"tables"`
	Rows    int64       `json:"rows"`
	Bytes   int64       `json:"bytes"`
	Seconds float64     `json:"copy_seconds"`
	Resumed bool        `json:"resumed,omitempty"` // the copy was complete already
	// Started: the join changed something (the new node is recorded as
	// joining); a join refused before that left everything as it was.
	Started  bool     `json:"started"`
	Findings []string `json:"findings,omitempty"`
}

// TableStat is the copy of one table.
type TableStat struct {
	Table   string  `json:"table"`
	Rows    int64   `json:"rows"`
	Bytes   int64   `json:"bytes"`
	Txns    int64   `json:"transactions"` // one per run of rows with the same commit time and origin
	Seconds float64 `json:"seconds"`
}

// ErrRefused is returned when a check forbids the join; the error says why
// and how to fix it.
var ErrRefused = errors.New("node add refused")

// joiner holds one run of Add.
type joiner struct {
	cfg    *config.Config
	o      Options
	log    *slog.Logger
	node   config.Node
	peers  []config.Node // every other node, config order
	source config.Node
	names  []string
	conns  map[string]*pgx.Conn
	n      *pgx.Conn // the new node
	rep    *Report
}

// Add joins o.Node to the mesh of cfg (see the package doc). Running it
// again after an interruption resumes: a copy that was under way starts
// over, a complete one goes on to wait for the node to catch up.
func Add(ctx context.Context, cfg *config.Config, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Jobs <= 0 {
		o.Jobs = 2
	}
	if o.Hold == nil {
		o.Hold = func(string) {}
	}
	j := &joiner{cfg: cfg, o: o, log: o.Log, names: cfg.NodeNames(), conns: map[string]*pgx.Conn{},
		rep: &Report{Node: o.Node, Tables: []TableStat{}}}
	defer j.close()
	node, ok := cfg.NodeByName(o.Node)
	if !ok {
		return nil, fmt.Errorf("node %q is not in %s: add it with --dsn", o.Node, configName(cfg))
	}
	j.node = node
	for _, n := range cfg.Nodes {
		if n.Name != node.Name {
			j.peers = append(j.peers, n)
		}
	}
	if len(j.peers) == 0 {
		return nil, fmt.Errorf("%w: %s is the only node of %s: there is nothing to join (run pgmesh init)", ErrRefused, o.Node, configName(cfg))
	}
	if err := j.connect(ctx); err != nil {
		return nil, err
	}
	if _, err := setup.Migrate(ctx, j.n); err != nil {
		return nil, fmt.Errorf("node %s: install the pgmesh schema: %w", node.Name, err)
	}
	st, err := joinstate.Read(ctx, j.n)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node.Name, err)
	}
	attempt := 1
	switch {
	case st == nil:
		if err := j.checkFresh(ctx); err != nil {
			return nil, err
		}
	case st.Node != node.Name:
		return nil, fmt.Errorf("%w: this database is joining as node %s, not %s", ErrRefused, st.Node, node.Name)
	case st.State == joinstate.Copying:
		j.rep.Started = true
		attempt = st.Attempt + 1
		j.printf("an earlier copy into %s was interrupted (attempt %d): starting it over", node.Name, st.Attempt)
	case st.State == joinstate.CatchingUp || st.State == joinstate.Ready:
		j.rep.Source, j.rep.Attempt, j.rep.Resumed, j.rep.Started = st.Source, st.Attempt, true, true
		return j.rep, j.finish(ctx)
	default:
		return nil, fmt.Errorf("%w: node %s is %s: drop its database (or its pgmesh schema) and run node add again", ErrRefused, node.Name, st.State)
	}
	j.rep.Attempt = attempt
	if err := j.chooseSource(ctx); err != nil {
		return nil, err
	}
	if err := j.preflight(ctx, st != nil); err != nil {
		return nil, err
	}
	j.rep.Started = true
	if err := j.begin(ctx, attempt, st != nil); err != nil {
		return j.rep, err
	}
	slots, err := j.peerSlots(ctx)
	if err != nil {
		return j.rep, err
	}
	j.o.Hold(HoldSlots)
	if err := j.waitSourceApplied(ctx, slots); err != nil {
		return j.rep, err
	}
	snap, err := j.snapshot(ctx)
	if err != nil {
		return j.rep, err
	}
	defer snap.close()
	if err := j.recordPositions(ctx, snap, slots); err != nil {
		return j.rep, err
	}
	j.o.Hold(HoldSnapshot)
	if err := j.schema(ctx, snap); err != nil {
		return j.rep, err
	}
	if err := setup.ConvergeNode(ctx, j.cfg, node.Name, j.n, false, func(n, format string, args ...any) {
		j.log.Debug("node add", "node", n, "action", fmt.Sprintf(format, args...))
	}); err != nil {
		return nil, fmt.Errorf("node %s: %w", node.Name, err)
	}
	seen, err := j.copyData(ctx, snap)
	if err != nil {
		return j.rep, err
	}
	peerSeen, err := j.copyMeta(ctx, snap)
	if err != nil {
		return j.rep, err
	}
	snap.close()
	j.o.Hold(HoldCopied)
	if err := j.seal(ctx, snap, mergeSeen(seen, peerSeen, j.source.Name, j.names)); err != nil {
		return j.rep, err
	}
	return j.rep, j.finish(ctx)
}

func (j *joiner) connect(ctx context.Context) error {
	for _, n := range j.cfg.Nodes {
		c, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh node add "+j.node.Name)
		if err != nil {
			if n.Name == j.node.Name {
				return err
			}
			return fmt.Errorf("%w: every node must be reachable to add one (each gets a slot for the new node): %v", ErrRefused, err)
		}
		j.conns[n.Name] = c
	}
	j.n = j.conns[j.node.Name]
	// Two runs for the same node would copy over each other.
	var got bool
	if err := j.n.QueryRow(ctx, "SELECT pg_catalog.pg_try_advisory_lock($1, $2)", lockAdd[0], lockAdd[1]).Scan(&got); err != nil {
		return fmt.Errorf("node %s: lock: %w", j.node.Name, err)
	}
	if !got {
		return fmt.Errorf("%w: another pgmesh node add is running for %s", ErrRefused, j.node.Name)
	}
	return nil
}

// lockAdd is the session advisory lock ('pm', 'add') a node add holds on
// the new node.
var lockAdd = [2]int32{28781, 0x61646400}

func (j *joiner) close() {
	for _, c := range j.conns {
		c.Close(context.Background())
	}
}

// chooseSource picks the node to copy from: --from, or the first peer in
// the config whose data is complete (ready or catching up).
func (j *joiner) chooseSource(ctx context.Context) error {
	if j.o.Source != "" {
		src, ok := j.cfg.NodeByName(j.o.Source)
		if !ok || src.Name == j.node.Name {
			return fmt.Errorf("%w: --from %s: not another node of %s (nodes: %v)", ErrRefused, j.o.Source, configName(j.cfg), j.names)
		}
		j.source = src
	}
	var states []string
	for _, p := range j.peers {
		st, err := joinstate.StateOf(ctx, j.conns[p.Name])
		if err != nil {
			return fmt.Errorf("node %s: %w", p.Name, err)
		}
		states = append(states, p.Name+" "+st)
		if st == joinstate.Copying {
			return fmt.Errorf("%w: node %s is joining (copying): add one node at a time; wait for it, or remove it with pgmesh node remove %s", ErrRefused, p.Name, p.Name)
		}
		if !joinstate.LinksAllowed(st) {
			return fmt.Errorf("%w: node %s is %s: remove it from %s first", ErrRefused, p.Name, st, configName(j.cfg))
		}
		if j.source.Name == "" && st == joinstate.Ready {
			j.source = p
		}
	}
	if j.source.Name == "" {
		return fmt.Errorf("%w: no ready node to copy from (%v)", ErrRefused, states)
	}
	if j.o.Source == "" {
		j.printf("source: %s (the first ready node in %s; --from picks another)", j.source.Name, configName(j.cfg))
	}
	j.rep.Source = j.source.Name
	return nil
}

// begin records the join on the new node and ranks it on every node.
func (j *joiner) begin(ctx context.Context, attempt int, restart bool) error {
	if restart {
		if err := j.cleanup(ctx); err != nil {
			return err
		}
	}
	err := pgx.BeginFunc(ctx, j.n, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
INSERT INTO pgmesh.local_node (cluster, name) VALUES ($1, $2)
ON CONFLICT (singleton) DO UPDATE SET cluster = excluded.cluster, name = excluded.name`, j.cfg.Cluster, j.node.Name); err != nil {
			return fmt.Errorf("set pgmesh.local_node: %w", err)
		}
		_, err := tx.Exec(ctx, `
INSERT INTO pgmesh.join_state (node, source, state, attempt) VALUES ($1, $2, 'copying', $3)
ON CONFLICT (singleton) DO UPDATE SET source = excluded.source, state = 'copying', attempt = excluded.attempt,
  snapshot_lsn = NULL, started_at = now(), copied_at = NULL, ready_at = NULL, updated_at = now(), error = NULL`,
			j.node.Name, j.source.Name, attempt)
		if err != nil {
			return fmt.Errorf("record the join in pgmesh.join_state: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	// The tiebreak of equal commit times and the pruning of tombstones
	// (which waits for every node of pgmesh.node to have seen a delete)
	// must know the new node before its first change exists.
	for _, n := range j.cfg.Nodes {
		if err := syncNodes(ctx, j.conns[n.Name], j.names); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	// The peers' origins for the links from the new node: they resume
	// where its slots start. An origin kept from an earlier node of that
	// name (node remove keeps it, see docs/JOIN.md) holds a position in
	// the old node's WAL, which would skip the new node's first changes.
	// Every apply worker's origin of such a link is reset: the link's
	// progress is the greatest among them.
	for _, p := range j.peers {
		if _, err := origin.Ensure(ctx, j.conns[p.Name], j.node.Name, 1); err != nil {
			return fmt.Errorf("node %s: %w", p.Name, err)
		}
		names, err := origin.List(ctx, j.conns[p.Name], j.node.Name)
		if err != nil {
			return fmt.Errorf("node %s: %w", p.Name, err)
		}
		for _, o := range names {
			if err := origin.Set(ctx, j.conns[p.Name], o, 0); err != nil {
				return fmt.Errorf("node %s: %w (is an agent still applying a link from an earlier %s?)", p.Name, err, j.node.Name)
			}
		}
	}
	return nil
}

// syncNodes ranks names on one node unless it already does.
func syncNodes(ctx context.Context, conn *pgx.Conn, names []string) error {
	var have []string
	if err := conn.QueryRow(ctx, "SELECT coalesce(array_agg(name ORDER BY rank), '{}') FROM pgmesh.node").Scan(&have); err != nil {
		return fmt.Errorf("read pgmesh.node: %w", err)
	}
	if slices.Equal(have, names) {
		return nil
	}
	return setup.SyncNodes(ctx, conn, names)
}

// finish waits for the node to catch up (Options.Wait) and reports its state.
func (j *joiner) finish(ctx context.Context) error {
	if j.o.Wait {
		if err := j.waitReady(ctx); err != nil {
			return err
		}
	}
	st, err := joinstate.StateOf(ctx, j.n)
	if err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	j.rep.State = st
	return nil
}

func (j *joiner) printf(format string, args ...any) {
	if j.o.Out != nil {
		fmt.Fprintf(j.o.Out, format+"\n", args...)
	}
}

func configName(cfg *config.Config) string {
	if cfg.Path == "" {
		return "the config"
	}
	return cfg.Path
}

// lsnOf reads a pg_lsn text; "" is 0.
func lsnOf(s string) (pglogrepl.LSN, error) {
	if s == "" {
		return 0, nil
	}
	return pglogrepl.ParseLSN(s)
}

// poll calls cond every interval until it returns true or an error.
func poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}
