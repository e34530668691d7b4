package sequence

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
)

// Adopt gives a node that joined the mesh with a copy of source's data its
// own ids: every sequence-fed column follows the strategy it follows on the
// source, with this node's own snowflake node id, step class or range block
// (node.ID, as convert assigns them). Columns that are a plain sequence on
// the source are left alone: they collide on every node already, which
// check reports. What changes is done in one transaction and returned.
func Adopt(ctx context.Context, cfg *config.Config, node config.Node, conn *pgx.Conn, source NodeState) (*NodeReport, error) {
	rep := &NodeReport{Node: node.Name, Changes: []Change{}, Unchanged: []string{}}
	st, err := readNode(ctx, conn, cfg, node.Name)
	if err != nil {
		return nil, err
	}
	cl := &cluster{cfg: cfg, conns: []*pgx.Conn{conn}, states: []NodeState{st}}
	var plans []Change
	snowflake := false
	for _, c := range st.Columns {
		sc, ok := source.column(c.Object())
		if !ok {
			sc = c
		}
		strategy, maxNodes, err := adoptParams(cfg, sc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.Object(), err)
		}
		if strategy == None {
			rep.Unchanged = append(rep.Unchanged, c.Object())
			continue
		}
		snowflake = snowflake || strategy == Snowflake
		ch, err := cl.plan(ctx, node, c, strategy, maxNodes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.Object(), err)
		}
		if ch == nil {
			rep.Unchanged = append(rep.Unchanged, c.Object())
			continue
		}
		plans = append(plans, *ch)
	}
	if snowflake && (st.NodeID == nil || *st.NodeID != node.ID) {
		if node.ID < 0 || node.ID > MaxNodeID {
			return nil, fmt.Errorf("id %d does not fit the 10 node bits of a snowflake id (0..%d): give the node an id in the config", node.ID, MaxNodeID)
		}
		plans = append([]Change{{
			Object: "pgmesh.sequence_config", From: "unset", To: fmt.Sprintf("node id %d", node.ID),
			SQL: []string{fmt.Sprintf("INSERT INTO pgmesh.sequence_config (node_id) VALUES (%d) "+
				"ON CONFLICT (singleton) DO UPDATE SET node_id = excluded.node_id", node.ID)},
		}}, plans...)
	}
	if len(plans) == 0 {
		return rep, nil
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// The node's own sequence settings: DDL capture must not replay
		// them on the peers.
		if _, err := tx.Exec(ctx, `SELECT set_config('pgmesh.in_ddl', 'on', true)`); err != nil {
			return fmt.Errorf("mark per-node DDL: %w", err)
		}
		for _, ch := range plans {
			for _, s := range ch.SQL {
				if _, err := tx.Exec(ctx, s); err != nil {
					return fmt.Errorf("%s: %s: %w", ch.Object, s, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rep.Changes = plans
	return rep, nil
}

// adoptParams tells which strategy a copied column follows and, for step
// and range, into how many slots the id space is divided: the step itself,
// or the number of blocks of the range's size.
func adoptParams(cfg *config.Config, c Column) (Strategy, int, error) {
	switch c.Strategy {
	case Step:
		return Step, int(c.Increment), nil
	case Range:
		for _, m := range []int{cfg.Sequences.MaxNodes, config.DefaultMaxNodes} {
			if m <= 0 {
				continue
			}
			for k := 0; k < m; k++ {
				if lo, hi := rangeBlock(c.Type, k, m); lo == c.Min && hi == c.Max {
					return Range, m, nil
				}
			}
		}
		size := c.Max - c.Min + 1
		if size > 0 {
			m := int(typeMax(c.Type) / size)
			if lo, hi := rangeBlock(c.Type, int((c.Min-1)/size), m); m > 0 && lo == c.Min && hi == c.Max {
				return Range, m, nil
			}
		}
		return None, 0, fmt.Errorf("range %d..%d is not a block pgmesh sequences convert makes: convert the column on every node first", c.Min, c.Max)
	}
	return c.Strategy, 0, nil
}

// JoinFindings proves, before a node joins with a copy of source's schema,
// that the ids it will generate are its own: no other node has its
// snowflake node id, step class or range block. states are the peers'.
func JoinFindings(cfg *config.Config, node config.Node, source NodeState, states []NodeState) []Finding {
	var fs []Finding
	for _, c := range source.Columns {
		strategy, maxNodes, err := adoptParams(cfg, c)
		f := Finding{Status: Pass, Node: node.Name, Check: CheckDisjoint, Object: c.Object()}
		switch {
		case err != nil:
			f.Status, f.Message = Fail, err.Error()
		case strategy == None:
			continue
		case strategy == Snowflake:
			f.Message = fmt.Sprintf("the node will generate snowflake ids with node id %d", node.ID)
			for _, st := range states {
				if st.NodeID != nil && *st.NodeID == node.ID {
					f.Status = Fail
					f.Message = fmt.Sprintf("node %s already generates snowflake ids with node id %d", st.Node, node.ID)
				}
			}
		default:
			mine := slot(node, maxNodes)
			f.Message = fmt.Sprintf("the node will generate %s ids in slot %d of %d", strategy, mine, maxNodes)
			for _, st := range states {
				pc, ok := st.column(c.Object())
				if !ok {
					continue
				}
				if s, ok := slotOf(pc, maxNodes); ok && s == mine {
					f.Status = Fail
					f.Message = fmt.Sprintf("node %s generates %s ids in slot %d of %d already", st.Node, strategy, s, maxNodes)
				}
			}
		}
		if f.Status == Fail {
			f.Fix = fmt.Sprintf("give %s an id in %s that no other node uses (%s: id: N), then run node add again", node.Name, cfgPath(cfg), node.Name)
		}
		fs = append(fs, f)
	}
	return fs
}

// slotOf is the step class or range block a column generates in.
func slotOf(c Column, maxNodes int) (int, bool) {
	switch c.Strategy {
	case Step:
		next, ok := c.Next()
		if !ok || c.Increment <= 0 {
			return 0, false
		}
		return int(next % c.Increment), true
	case Range:
		size := typeMax(c.Type) / int64(maxNodes)
		if size <= 0 {
			return 0, false
		}
		return int((c.Min - 1) / size), true
	}
	return 0, false
}

// ReadNode reads one node's snowflake id and sequence-fed columns.
func ReadNode(ctx context.Context, conn *pgx.Conn, cfg *config.Config, node string) (NodeState, error) {
	return readNode(ctx, conn, cfg, node)
}

func cfgPath(cfg *config.Config) string {
	if cfg.Path == "" {
		return "pgmesh.yaml"
	}
	return cfg.Path
}
