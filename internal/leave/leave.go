// Package leave removes a node from the mesh without losing the changes it
// made: before its slots go, every change of the node that reached any
// survivor reaches every survivor.
//
// With the node reachable, its links to the survivors are stopped, and each
// survivor is caught up through its own slot on the node up to the node's
// WAL position at that moment (agent.CatchUp): every survivor then holds
// exactly the node's changes committed before it, whatever each had applied
// before — more than what reached the most advanced one.
//
// With --force (the node is gone), its WAL is gone too. Each survivor has
// applied a prefix of the node's changes (a link applies in commit order);
// the most advanced survivor M holds the longest. The others get from M the
// node's rows and deletes that are newer than what they claim to have seen
// of the node (peer_seen), applied as the node's changes (its commit time
// and origin) through the same conflict resolution as the link would have
// used. What M never received is lost with the node; the report says so.
package leave

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Options configure Remove.
type Options struct {
	Node  string
	Force bool // the node is gone: catch up from the survivors only
	Out   io.Writer
	Log   *slog.Logger
}

// Report is what Remove did.
type Report struct {
	Node       string            `json:"node"`
	Forced     bool              `json:"forced"`
	Cutoff     string            `json:"cutoff,omitempty"` // the node's WAL position its changes were delivered up to
	Source     string            `json:"source,omitempty"` // --force: the most advanced survivor
	Progress   map[string]string `json:"progress"`         // per survivor, what it had applied of the node before
	CaughtUp   map[string]int    `json:"caught_up"`        // --force: rows and deletes applied per survivor
	Unverified []string          `json:"unverified,omitempty"`
}

// ErrRefused is returned when the removal cannot be done safely.
var ErrRefused = errors.New("node remove refused")

type remover struct {
	cfg       *config.Config
	o         Options
	node      config.Node
	survivors []config.Node
	conns     map[string]*pgx.Conn
	rep       *Report
}

// Remove takes o.Node out of the mesh of cfg (which still lists it): its
// changes reach every survivor, then its slots go everywhere, the survivors
// stop ranking it, and the node is marked removed. The config file is the
// caller's to edit.
func Remove(ctx context.Context, cfg *config.Config, o Options) (*Report, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	node, ok := cfg.NodeByName(o.Node)
	if !ok {
		return nil, fmt.Errorf("%w: node %q is not in %s", ErrRefused, o.Node, cfg.Path)
	}
	r := &remover{cfg: cfg, o: o, node: node, conns: map[string]*pgx.Conn{},
		rep: &Report{Node: node.Name, Forced: o.Force, Progress: map[string]string{}, CaughtUp: map[string]int{}}}
	defer r.close()
	for _, n := range cfg.Nodes {
		if n.Name != node.Name {
			r.survivors = append(r.survivors, n)
		}
	}
	if len(r.survivors) == 0 {
		return nil, fmt.Errorf("%w: %s is the last node", ErrRefused, node.Name)
	}
	for _, n := range r.survivors {
		// Exact values: a forced removal passes the rows it reads on one
		// survivor as text to the apply statements of another.
		c, err := pg.ConnectExact(ctx, n.Name, n.DSN, "pgmesh node remove "+node.Name)
		if err != nil {
			return nil, fmt.Errorf("%w: every survivor must be reachable to receive %s's last changes: %v", ErrRefused, node.Name, err)
		}
		r.conns[n.Name] = c
	}
	for _, n := range r.survivors {
		lsn, ok, err := origin.LinkProgress(ctx, r.conns[n.Name], node.Name, cfg.NodeNames(), false)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		r.rep.Progress[n.Name] = "none"
		if ok {
			r.rep.Progress[n.Name] = lsn.String()
		}
	}
	if o.Force {
		if err := r.catchUpFromSurvivors(ctx); err != nil {
			return r.rep, err
		}
	} else {
		c, err := pg.Connect(ctx, node.Name, node.DSN, "pgmesh node remove "+node.Name)
		if err != nil {
			return nil, fmt.Errorf("%w: %v; if %s is gone for good, use --force", ErrRefused, err, node.Name)
		}
		r.conns[node.Name] = c
		if err := r.catchUpFromNode(ctx); err != nil {
			return r.rep, err
		}
	}
	return r.rep, r.detach(ctx)
}

func (r *remover) close() {
	for _, c := range r.conns {
		c.Close(context.Background())
	}
}

func (r *remover) printf(format string, args ...any) {
	if r.o.Out != nil {
		fmt.Fprintf(r.o.Out, format+"\n", args...)
	}
}

// catchUpFromNode stops the node's links and delivers everything it
// committed up to now to every survivor through their own slots.
func (r *remover) catchUpFromNode(ctx context.Context) error {
	n := r.conns[r.node.Name]
	before, err := joinstate.StateOf(ctx, n)
	if err != nil {
		return fmt.Errorf("node %s: %w", r.node.Name, err)
	}
	if _, err := joinstateLeaving(ctx, n, r.node.Name); err != nil {
		return fmt.Errorf("node %s: %w", r.node.Name, err)
	}
	// Agents start no new session of a link of a leaving node; the running
	// ones are ended here, so that CatchUp can take the slots.
	if err := r.stopSessions(ctx); err != nil {
		return err
	}
	if before == joinstate.Copying || before == joinstate.Leaving && !r.hasOutboundSlots(ctx) {
		// A node that never finished joining wrote nothing of its own (all
		// it wrote carries an origin), and has no slot to deliver from.
		r.printf("%s never finished joining: it has no changes of its own to deliver", r.node.Name)
		return nil
	}
	var cutoff string
	if err := n.QueryRow(ctx, "SELECT pg_catalog.pg_current_wal_lsn()::text").Scan(&cutoff); err != nil {
		return fmt.Errorf("node %s: read the WAL position: %w", r.node.Name, err)
	}
	until, err := pglogrepl.ParseLSN(cutoff)
	if err != nil {
		return err
	}
	r.rep.Cutoff = cutoff
	r.printf("delivering %s's changes up to %s to %d survivors (changes committed on %s after this are not: stop writing there first)",
		r.node.Name, cutoff, len(r.survivors), r.node.Name)
	for _, s := range r.survivors {
		var err error
		for attempt := 0; attempt < 5; attempt++ {
			if err = r.stopSessions(ctx); err != nil {
				break
			}
			if err = agent.CatchUp(ctx, r.cfg, r.node.Name, s.Name, until, r.o.Log); err == nil {
				break
			}
			r.o.Log.Debug("catch up", "survivor", s.Name, "err", err)
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("deliver %s's last changes to %s: %w", r.node.Name, s.Name, err)
		}
		r.printf("  %s has every change of %s up to %s", s.Name, r.node.Name, cutoff)
	}
	return nil
}

// hasOutboundSlots tells whether the node has any slot of a link to a
// survivor.
func (r *remover) hasOutboundSlots(ctx context.Context) bool {
	var slots []string
	for _, s := range r.survivors {
		slots = append(slots, topology.Link{Up: r.node.Name, Down: s.Name}.Slot())
	}
	var n int
	if err := r.conns[r.node.Name].QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = ANY($1)", slots).Scan(&n); err != nil {
		return true
	}
	return n > 0
}

// joinstateLeaving marks the node leaving (agents then run none of its links).
func joinstateLeaving(ctx context.Context, conn *pgx.Conn, name string) (bool, error) {
	tag, err := conn.Exec(ctx, `
INSERT INTO pgmesh.join_state (node, source, state) VALUES ($1, '', 'leaving')
ON CONFLICT (singleton) DO UPDATE SET state = 'leaving', updated_at = now(), error = NULL`, name)
	if err != nil {
		return false, fmt.Errorf("mark the node leaving: %w (is its pgmesh schema older than 0009? run pgmesh init first)", err)
	}
	return tag.RowsAffected() > 0, nil
}

// stopSessions ends the walsenders of every slot of a link from or to the
// node, on every reachable node, and waits until none is active.
func (r *remover) stopSessions(ctx context.Context) error {
	for name, c := range r.conns {
		var slots []string
		for _, s := range r.cfg.Nodes {
			if s.Name == name {
				continue
			}
			if name == r.node.Name {
				slots = append(slots, topology.Link{Up: name, Down: s.Name}.Slot())
			} else if s.Name == r.node.Name {
				slots = append(slots, topology.Link{Up: name, Down: s.Name}.Slot())
			}
		}
		err := poll(ctx, func() (bool, error) {
			var active int
			err := c.QueryRow(ctx, `SELECT count(pg_catalog.pg_terminate_backend(active_pid)) FROM pg_catalog.pg_replication_slots
			                         WHERE slot_name = ANY($1) AND active_pid IS NOT NULL`, slots).Scan(&active)
			return active == 0, err
		})
		if err != nil {
			return fmt.Errorf("node %s: stop the sessions of %s's links: %w (the role may only end its own sessions)", name, r.node.Name, err)
		}
	}
	return nil
}

// detach drops the node's slots everywhere, stops ranking it on the
// survivors and marks it removed.
//
// The survivors keep their origin pgmesh_<node>: conflict resolution names
// the writer of a row by the origin id stored with its commit timestamp,
// and an origin id that is dropped is given to the next origin created —
// the rows the removed node wrote would then count as written by whichever
// node joins next, and changes of that node to them would skip conflict
// detection. A later node of the same name starts from that origin again
// (node add resets it).
func (r *remover) detach(ctx context.Context) error {
	if err := r.stopSessions(ctx); err != nil {
		return err
	}
	var names []string
	for _, s := range r.survivors {
		names = append(names, s.Name)
		c := r.conns[s.Name]
		if err := setup.DropSlot(ctx, c, topology.Link{Up: s.Name, Down: r.node.Name}.Slot()); err != nil {
			return fmt.Errorf("node %s: %w", s.Name, err)
		}
	}
	for _, s := range r.survivors {
		if err := setup.SyncNodes(ctx, r.conns[s.Name], names); err != nil {
			return fmt.Errorf("node %s: %w", s.Name, err)
		}
	}
	if n, ok := r.conns[r.node.Name]; ok {
		for _, s := range r.survivors {
			if err := setup.DropSlot(ctx, n, topology.Link{Up: r.node.Name, Down: s.Name}.Slot()); err != nil {
				return fmt.Errorf("node %s: %w", r.node.Name, err)
			}
		}
		if err := joinstate.SetState(ctx, n, joinstate.Removed, ""); err != nil {
			return fmt.Errorf("node %s: %w", r.node.Name, err)
		}
	}
	r.printf("%s is out of the mesh: its slots are dropped, the survivors no longer rank it", r.node.Name)
	return nil
}

func poll(ctx context.Context, cond func() (bool, error)) error {
	for i := 0; ; i++ {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if i > 100 {
			return errors.New("still active after 20s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
