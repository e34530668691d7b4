package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// NodeStatus is where one node stands in the mesh: ready, or joining
// (copying, catching_up) or leaving, with the copy's progress per table.
type NodeStatus struct {
	Node    string            `json:"node"`
	State   string            `json:"state"`
	Source  string            `json:"source,omitempty"`
	Attempt int               `json:"attempt,omitempty"`
	Tables  []joinstate.Table `json:"tables,omitempty"`
	Error   string            `json:"error,omitempty"`
	Problem string            `json:"problem,omitempty"` // the node could not be read
}

// Detail says in one line what the node is doing.
func (s NodeStatus) Detail() string {
	switch s.State {
	case joinstate.Copying:
		var parts []string
		for _, t := range s.Tables {
			if t.FinishedAt == nil && t.StartedAt != nil {
				parts = append(parts, joinstate.DescribeTable(t))
			}
		}
		done := 0
		for _, t := range s.Tables {
			if t.FinishedAt != nil {
				done++
			}
		}
		head := fmt.Sprintf("copying from %s (attempt %d), %d of %d tables done", s.Source, s.Attempt, done, len(s.Tables))
		if len(parts) > 0 {
			head += ": " + strings.Join(parts, "; ")
		}
		return head
	case joinstate.CatchingUp:
		return "copy from " + s.Source + " complete, applying what the peers wrote since (see the links into it)"
	case joinstate.Leaving:
		return "being removed: its last changes are delivered to the others"
	}
	return ""
}

// NodeStatuses reads every node's join state.
func NodeStatuses(ctx context.Context, cfg *config.Config) []NodeStatus {
	out := make([]NodeStatus, len(cfg.Nodes))
	var wg sync.WaitGroup
	for i, n := range cfg.Nodes {
		wg.Go(func() {
			out[i] = nodeStatus(ctx, n)
		})
	}
	wg.Wait()
	return out
}

func nodeStatus(ctx context.Context, n config.Node) NodeStatus {
	s := NodeStatus{Node: n.Name}
	c, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh status")
	if err != nil {
		s.Problem = err.Error()
		return s
	}
	defer c.Close(context.WithoutCancel(ctx))
	st, err := joinstate.Read(ctx, c)
	if err != nil {
		s.Problem = err.Error()
		return s
	}
	return *joinStatus(n.Name, st)
}

// joinStatus is the status of a node whose join state (nil: none) was read.
func joinStatus(node string, st *joinstate.State) *NodeStatus {
	s := &NodeStatus{Node: node, State: joinstate.Ready}
	if st != nil {
		s.State, s.Source, s.Attempt, s.Tables, s.Error = st.State, st.Source, st.Attempt, st.Tables, st.Error
	}
	return s
}

// PromoteInterval is how often the agent looks whether a catching-up node
// it applies to has caught up.
const PromoteInterval = 5 * time.Second

// promote marks the catching-up downstream nodes of the agent's links
// ready once every link into them has applied past its target, so that a
// node joined with `node add --no-wait` becomes ready without the CLI.
func (a *Agent) promote(ctx context.Context) {
	cfg := a.config()
	downs := map[string]bool{}
	for _, l := range a.currentLinks() {
		downs[l.Down] = true
	}
	for _, n := range cfg.Nodes {
		if !downs[n.Name] {
			continue
		}
		if err := promoteNode(ctx, cfg, n); err != nil && ctx.Err() == nil {
			a.log.Debug("promote", "node", n.Name, "err", err)
		}
	}
}

func promoteNode(ctx context.Context, cfg *config.Config, n config.Node) error {
	c, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh agent")
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	st, err := joinstate.Read(ctx, c)
	if err != nil || st == nil || st.State != joinstate.CatchingUp {
		return err
	}
	ups := map[string]*pgx.Conn{}
	defer func() {
		for _, u := range ups {
			u.Close(context.WithoutCancel(ctx))
		}
	}()
	behind, err := joinstate.Behind(ctx, c, n.Name, cfg.NodeNames(), st.Upstreams, func(up string) pg.Querier {
		if u, ok := ups[up]; ok {
			return u
		}
		un, ok := cfg.NodeByName(up)
		if !ok {
			return nil
		}
		u, err := pg.Connect(ctx, un.Name, un.DSN, "pgmesh agent")
		if err != nil {
			return nil
		}
		ups[up] = u
		return u
	})
	if err != nil || len(behind) > 0 {
		return err
	}
	return joinstate.SetState(ctx, c, joinstate.Ready, "")
}
