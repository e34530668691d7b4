package sequence

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Change is one thing convert changed on a node.
type Change struct {
	Object string   `json:"object"` // schema.table.column, or pgmesh.sequence_config
	From   string   `json:"from"`
	To     string   `json:"to"`
	SQL    []string `json:"sql"`
}

// NodeReport is what convert did on one node.
type NodeReport struct {
	Node string `json:"node"`
	// Migrations are the pgmesh schema migrations convert had to apply first.
	Migrations []string `json:"migrations,omitempty"`
	Changes    []Change `json:"changes"`
	// Unchanged are the columns that already followed the strategy.
	Unchanged []string `json:"unchanged"`
}

// Report is the outcome of Convert.
type Report struct {
	Strategy Strategy     `json:"strategy"`
	MaxNodes int          `json:"max_nodes"`
	Nodes    []NodeReport `json:"nodes"`
}

// Changed reports whether convert changed anything (a migration or a column).
func (r *Report) Changed() bool {
	for _, n := range r.Nodes {
		if len(n.Changes) > 0 || len(n.Migrations) > 0 {
			return true
		}
	}
	return false
}

// Render prints what changed on each node, with the SQL it ran.
func (r *Report) Render(w io.Writer) {
	for _, n := range r.Nodes {
		if len(n.Migrations) > 0 {
			fmt.Fprintf(w, "%s: installed pgmesh schema migrations %s\n", n.Node, strings.Join(n.Migrations, ", "))
		}
		for _, c := range n.Changes {
			fmt.Fprintf(w, "%s: %s: %s -> %s\n", n.Node, c.Object, c.From, c.To)
			for _, s := range c.SQL {
				fmt.Fprintf(w, "    %s;\n", s)
			}
		}
		if len(n.Changes) == 0 {
			fmt.Fprintf(w, "%s: nothing to change (%d columns already %s)\n", n.Node, len(n.Unchanged), r.Strategy)
		}
	}
}

// Migrator brings a node's pgmesh schema up to date and returns the
// migrations it applied: setup.Migrate.
type Migrator func(ctx context.Context, conn *pgx.Conn) ([]string, error)

// Convert makes every sequence-fed column of the replicated tables of every
// node follow strategy, so that no two nodes generate the same id. maxNodes
// (0 = the config's sequences.max_nodes) is the number of slots step and
// range divide the id space into; a node's slot is its id mod maxNodes.
//
// It first installs the pgmesh schema where it is missing, then reads every
// node (step and range start above the values that exist anywhere), then
// changes each node in one transaction. Columns that already follow the
// strategy are left alone, so a second run changes nothing; a node added to
// the config later gets its own slot on the next run.
//
// Writes should be stopped while converting: a node that is still
// generating with its old parameters can hand out an id that a converted
// node also hands out.
//
// migrate installs the pgmesh schema on a node (pass setup.Migrate); it is
// a parameter because package setup imports package check, which imports
// this package.
func Convert(ctx context.Context, cfg *config.Config, strategy Strategy, maxNodes int, migrate Migrator) (*Report, error) {
	if maxNodes == 0 {
		maxNodes = cfg.Sequences.MaxNodes
	}
	if maxNodes == 0 {
		maxNodes = config.DefaultMaxNodes
	}
	if _, err := ParseStrategy(string(strategy)); err != nil {
		return nil, err
	}
	if err := checkSlots(cfg, strategy, maxNodes); err != nil {
		return nil, err
	}
	rep := &Report{Strategy: strategy, MaxNodes: maxNodes}
	conns := make([]*pgx.Conn, len(cfg.Nodes))
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	states := make([]NodeState, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		conn, err := pg.Connect(ctx, n.Name, n.DSN, appName)
		if err != nil {
			return nil, err
		}
		conns[i] = conn
		applied, err := migrate(ctx, conn)
		if err != nil {
			return nil, fmt.Errorf("node %s: install pgmesh schema: %w", n.Name, err)
		}
		rep.Nodes = append(rep.Nodes, NodeReport{Node: n.Name, Migrations: applied, Changes: []Change{}, Unchanged: []string{}})
	}
	for i, n := range cfg.Nodes {
		st, err := readNode(ctx, conns[i], cfg, n.Name)
		if err != nil {
			return nil, err
		}
		states[i] = st
	}
	if err := checkTypes(states, strategy); err != nil {
		return nil, err
	}
	cl := &cluster{cfg: cfg, conns: conns, states: states}
	// Plan everything before changing anything, so that an impossible
	// column leaves every node as it was.
	plans := make([][]Change, len(cfg.Nodes))
	for i, n := range cfg.Nodes {
		for _, c := range states[i].Columns {
			ch, err := cl.plan(ctx, n, c, strategy, maxNodes)
			if err != nil {
				return nil, fmt.Errorf("node %s: %s: %w", n.Name, c.Object(), err)
			}
			if ch == nil {
				rep.Nodes[i].Unchanged = append(rep.Nodes[i].Unchanged, c.Object())
				continue
			}
			plans[i] = append(plans[i], *ch)
		}
		if strategy == Snowflake && (states[i].NodeID == nil || *states[i].NodeID != n.ID) {
			from := "unset"
			if states[i].NodeID != nil {
				from = fmt.Sprintf("node id %d", *states[i].NodeID)
			}
			plans[i] = append([]Change{{
				Object: "pgmesh.sequence_config",
				From:   from,
				To:     fmt.Sprintf("node id %d", n.ID),
				SQL: []string{fmt.Sprintf("INSERT INTO pgmesh.sequence_config (node_id) VALUES (%d) "+
					"ON CONFLICT (singleton) DO UPDATE SET node_id = excluded.node_id", n.ID)},
			}}, plans[i]...)
		}
	}
	for i, n := range cfg.Nodes {
		if len(plans[i]) == 0 {
			continue
		}
		if err := pgx.BeginFunc(ctx, conns[i], func(tx pgx.Tx) error {
			// Each node's sequence settings are its own: DDL capture must
			// not replay them on the peers.
			if _, err := tx.Exec(ctx, `SELECT set_config('pgmesh.in_ddl', 'on', true)`); err != nil {
				return fmt.Errorf("mark per-node DDL: %w", err)
			}
			for _, ch := range plans[i] {
				for _, s := range ch.SQL {
					if _, err := tx.Exec(ctx, s); err != nil {
						return fmt.Errorf("%s: %s: %w", ch.Object, s, err)
					}
				}
			}
			return nil
		}); err != nil {
			return rep, fmt.Errorf("node %s: convert: %w (nodes before it in the config are converted; fix and run again)", n.Name, err)
		}
		rep.Nodes[i].Changes = plans[i]
	}
	return rep, nil
}

// checkSlots refuses node ids that would share a snowflake id or a
// step/range slot.
func checkSlots(cfg *config.Config, strategy Strategy, maxNodes int) error {
	if strategy == Snowflake {
		seen := map[int]string{}
		for _, n := range cfg.Nodes {
			if n.ID < 0 || n.ID > MaxNodeID {
				return fmt.Errorf("node %s: id %d does not fit the 10 node bits of a snowflake id (0..%d)", n.Name, n.ID, MaxNodeID)
			}
			if other, dup := seen[n.ID]; dup {
				return fmt.Errorf("nodes %s and %s have the same id %d", other, n.Name, n.ID)
			}
			seen[n.ID] = n.Name
		}
		return nil
	}
	if maxNodes < 1 || maxNodes > MaxNodeID {
		return fmt.Errorf("--max-nodes %d: want 1..%d", maxNodes, MaxNodeID)
	}
	if len(cfg.Nodes) > maxNodes {
		return fmt.Errorf("%d nodes but max nodes is %d: %s needs a slot per node, raise --max-nodes (or sequences.max_nodes)", len(cfg.Nodes), maxNodes, strategy)
	}
	seen := map[int]string{}
	for _, n := range cfg.Nodes {
		s := slot(n, maxNodes)
		if other, dup := seen[s]; dup {
			return fmt.Errorf("nodes %s and %s share %s slot %d (id mod %d): give them ids that differ mod %d", other, n.Name, strategy, s, maxNodes, maxNodes)
		}
		seen[s] = n.Name
	}
	return nil
}

// slot is the node's residue class (step) or block number (range). Node ids
// are 1-based positions unless set explicitly, so the first 15 of 16 nodes
// take slots 1..15 and the 16th slot 0.
func slot(n config.Node, maxNodes int) int { return n.ID % maxNodes }

// checkTypes refuses columns the strategy cannot serve, before anything
// changes.
func checkTypes(states []NodeState, strategy Strategy) error {
	var bad []string
	for _, st := range states {
		for _, c := range st.Columns {
			switch {
			case typeMax(c.Type) == 0:
				bad = append(bad, fmt.Sprintf("%s %s is %s, not an integer type", st.Node, c.Object(), c.Type))
			case strategy == Snowflake && c.Type != "bigint":
				bad = append(bad, fmt.Sprintf("%s %s is %s", st.Node, c.Object(), c.Type))
			}
		}
	}
	if len(bad) == 0 {
		return nil
	}
	msg := "cannot convert: " + strings.Join(bad, "; ")
	if strategy == Snowflake {
		msg += ". A snowflake id needs 63 bits (41-bit milliseconds + 10-bit node id + 12-bit counter) " +
			"and only fits bigint: use --strategy step or --strategy range, which work for integer and smallint, " +
			"or widen the column first (ALTER TABLE … ALTER COLUMN … TYPE bigint)"
	}
	return errors.New(msg)
}

// cluster is what planning needs to see beyond one node.
type cluster struct {
	cfg    *config.Config
	conns  []*pgx.Conn
	states []NodeState
}

// highest returns the largest id in [lo, hi] that exists in column object
// on any node, or that any node's sequence for it has reached; lo-1 when
// there is none.
func (cl *cluster) highest(ctx context.Context, object string, lo, hi int64) (int64, error) {
	best := lo - 1
	for i, st := range cl.states {
		c, ok := st.column(object)
		if !ok {
			continue
		}
		if c.LastValue >= lo && c.LastValue <= hi && c.LastValue > best {
			best = c.LastValue
		}
		var m *int64
		q := fmt.Sprintf("SELECT max(%s)::bigint FROM %s WHERE %[1]s BETWEEN $1::bigint AND $2::bigint", pg.Ident(c.Column), c.tableIdent())
		if err := cl.conns[i].QueryRow(ctx, q, lo, hi).Scan(&m); err != nil {
			return 0, fmt.Errorf("node %s: read max(%s): %w", st.Node, c.Object(), err)
		}
		if m != nil && *m > best {
			best = *m
		}
	}
	return best, nil
}

// plan returns the change that makes c follow strategy on node n, nil when
// it already does.
func (cl *cluster) plan(ctx context.Context, n config.Node, c Column, strategy Strategy, maxNodes int) (*Change, error) {
	switch strategy {
	case Snowflake:
		return cl.planSnowflake(ctx, n, c)
	case Step:
		return cl.planStep(ctx, n, c, maxNodes)
	case Range:
		return cl.planRange(ctx, n, c, maxNodes)
	}
	return nil, fmt.Errorf("unknown strategy %q", strategy)
}

// Describe says what the column's generator does now, for listings and
// messages; nodeID is the node's snowflake id (nil when unset).
func Describe(c Column, nodeID *int) string {
	if c.Strategy == Snowflake {
		if nodeID == nil {
			return "snowflake without node id"
		}
		return fmt.Sprintf("snowflake node id %d", *nodeID)
	}
	return describe(c)
}

// describe says what c does now, for the report.
func describe(c Column) string {
	next, ok := c.Next()
	nextS := fmt.Sprint(next)
	if !ok {
		nextS = "exhausted"
	}
	id := ""
	if c.Identity != "" {
		id = " (identity)"
	}
	switch c.Strategy {
	case Snowflake:
		return "snowflake" + id
	case Step:
		class := ""
		if ok {
			class = fmt.Sprintf(" class %d", (next%c.Increment+c.Increment)%c.Increment)
		}
		return fmt.Sprintf("step %d%s, next %s%s", c.Increment, class, nextS, id)
	case Range:
		return fmt.Sprintf("range %d..%d, next %s%s", c.Min, c.Max, nextS, id)
	}
	return fmt.Sprintf("plain sequence, next %s%s", nextS, id)
}

// planSnowflake sets the default to pgmesh.snowflake_nextval. An identity
// column cannot have a default, and only a default can call a function, so
// its identity is dropped (which drops its sequence) and a sequence of the
// same name, owned by the column, holds the snowflake state instead. The
// column then behaves like bigserial: GENERATED ALWAYS no longer rejects
// explicit values.
func (cl *cluster) planSnowflake(ctx context.Context, n config.Node, c Column) (*Change, error) {
	if c.Strategy == Snowflake && c.Identity == "" && c.SeqType == "bigint" && c.Increment == 1 &&
		c.Min == 1 && c.Max == math.MaxInt64 && !c.Cycle {
		return nil, nil
	}
	ch := &Change{Object: c.Object(), From: describe(c), To: fmt.Sprintf("snowflake, node id %d", n.ID)}
	seq := c.seqIdent()
	if c.Identity != "" {
		// A sequence OWNED BY a table must have the table's owner, which
		// pgmesh's role is not but may act as.
		ch.SQL = append(ch.SQL,
			fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s DROP IDENTITY", c.tableIdent(), pg.Ident(c.Column)),
			fmt.Sprintf("CREATE SEQUENCE %s AS bigint", seq),
			fmt.Sprintf("ALTER SEQUENCE %s OWNER TO %s", seq, pg.Ident(c.TableOwner)),
			fmt.Sprintf("ALTER SEQUENCE %s OWNED BY %s.%s", seq, c.tableIdent(), pg.Ident(c.Column)))
	} else {
		ch.SQL = append(ch.SQL, fmt.Sprintf("ALTER SEQUENCE %s AS bigint INCREMENT BY 1 NO MINVALUE NO MAXVALUE START WITH 1 NO CYCLE", seq))
	}
	// Ids are time-based and far above what a plain sequence reaches; only
	// if a value of this column already has a millisecond part (an earlier
	// snowflake on another node, or ids from elsewhere) does the state start
	// past its millisecond, so that no new id falls at or below an existing one.
	state := int64(1)
	if c.IsCalled && c.Identity == "" {
		state = c.LastValue
	}
	top, err := cl.highest(ctx, c.Object(), 1<<(nodeBits+counterBits), math.MaxInt64)
	if err != nil {
		return nil, err
	}
	if top >= 1<<(nodeBits+counterBits) {
		seed := top>>(nodeBits+counterBits)<<(nodeBits+counterBits) | int64(n.ID)<<counterBits | (1<<counterBits - 1)
		state = max(state, seed)
	}
	ch.SQL = append(ch.SQL,
		fmt.Sprintf("SELECT setval(%s, %d, true)", c.seqLiteral(), state),
		fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT pgmesh.snowflake_nextval(%s)", c.tableIdent(), pg.Ident(c.Column), c.seqLiteral()))
	return ch, nil
}

// planStep puts the node's sequence in residue class slot mod maxNodes,
// restarting at the first value of that class above every id any node has.
func (cl *cluster) planStep(ctx context.Context, n config.Node, c Column, maxNodes int) (*Change, error) {
	N, r := int64(maxNodes), int64(slot(n, maxNodes))
	limit := typeMax(c.Type)
	next, ok := c.Next()
	if c.Strategy == Step && c.Increment == N && c.Min == 1 && c.Max == limit && !c.Cycle && ok && next%N == r &&
		(c.Identity != "" || c.usesNextval()) {
		return nil, nil
	}
	top, err := cl.highest(ctx, c.Object(), 1, math.MaxInt64)
	if err != nil {
		return nil, err
	}
	// The smallest v > top with v ≡ r (mod N).
	if top > limit-N {
		return nil, fmt.Errorf("step %d: ids reach %d, no room left below %d", N, top, limit)
	}
	v := top + 1 + ((r-(top+1))%N+N)%N
	to := fmt.Sprintf("step %d, class %d mod %d, next %d", N, r, N, v)
	ch := &Change{Object: c.Object(), From: describe(c), To: to}
	ch.SQL = append(ch.SQL, fmt.Sprintf("ALTER SEQUENCE %s%s INCREMENT BY %d MINVALUE 1 MAXVALUE %d START WITH %d RESTART WITH %d NO CYCLE",
		c.seqIdent(), asType(c), N, limit, v, v))
	if c.Identity == "" && !c.usesNextval() {
		ch.SQL = append(ch.SQL, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT nextval(%s)", c.tableIdent(), pg.Ident(c.Column), c.seqLiteral()))
	}
	return ch, nil
}

// rangeBlock is block k of maxNodes equal blocks of 1..typeMax.
func rangeBlock(typ string, k, maxNodes int) (lo, hi int64) {
	size := typeMax(typ) / int64(maxNodes)
	return int64(k)*size + 1, int64(k+1) * size
}

// planRange confines the node's sequence to its block, restarting above
// every id any node has in that block.
func (cl *cluster) planRange(ctx context.Context, n config.Node, c Column, maxNodes int) (*Change, error) {
	lo, hi := rangeBlock(c.Type, slot(n, maxNodes), maxNodes)
	next, ok := c.Next()
	if c.Strategy == Range && c.Increment == 1 && c.Min == lo && c.Max == hi && !c.Cycle && ok && next >= lo && next <= hi &&
		(c.Identity != "" || c.usesNextval()) {
		return nil, nil
	}
	top, err := cl.highest(ctx, c.Object(), lo, hi)
	if err != nil {
		return nil, err
	}
	if top >= hi {
		return nil, fmt.Errorf("range block %d..%d is used up", lo, hi)
	}
	v := top + 1
	to := fmt.Sprintf("range %d..%d (block %d of %d), next %d", lo, hi, slot(n, maxNodes), maxNodes, v)
	ch := &Change{Object: c.Object(), From: describe(c), To: to}
	ch.SQL = append(ch.SQL, fmt.Sprintf("ALTER SEQUENCE %s%s INCREMENT BY 1 MINVALUE %d MAXVALUE %d START WITH %d RESTART WITH %d NO CYCLE",
		c.seqIdent(), asType(c), lo, hi, v, v))
	if c.Identity == "" && !c.usesNextval() {
		ch.SQL = append(ch.SQL, fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT nextval(%s)", c.tableIdent(), pg.Ident(c.Column), c.seqLiteral()))
	}
	return ch, nil
}

// asType makes a serial's sequence the column's type, so that step and
// range are sized for the values the column holds (a serial widened to
// bigint keeps an integer sequence). Identity sequences follow their column.
func asType(c Column) string {
	if c.Identity != "" || c.SeqType == c.Type {
		return ""
	}
	return " AS " + c.Type
}
