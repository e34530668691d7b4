package sequence

import (
	"context"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Finding has the fields of check.Finding, Status being "PASS", "WARN" or
// "FAIL". It is its own type because package check (which setup imports)
// calls this package, so this package imports neither.
type Finding struct {
	Status  string `json:"status"`
	Node    string `json:"node"`
	Check   string `json:"check"`
	Object  string `json:"object"`
	Message string `json:"message"`
	Fix     string `json:"fix"`
}

// Finding statuses, as in package check.
const (
	Pass = "PASS"
	Warn = "WARN"
	Fail = "FAIL"
)

// Check names of the findings.
const (
	CheckDisjoint = "sequences"
	CheckHeadroom = "sequence headroom"
)

// Headroom below these is a WARN.
const (
	warnFraction = 0.10
	warnTime     = 30 * 24 * time.Hour
)

// Check connects to every node and returns Prove's findings. A node that
// cannot be read is a FAIL: ids cannot be proven disjoint without it.
func Check(ctx context.Context, cfg *config.Config) ([]Finding, error) {
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	var fs []Finding
	for _, n := range cfg.Nodes {
		conn, err := pg.Connect(ctx, n.Name, n.DSN, appName)
		if err != nil {
			fs = append(fs, Finding{Status: Fail, Node: n.Name, Check: CheckDisjoint,
				Message: "cannot prove ids disjoint without this node: " + err.Error()})
			continue
		}
		conns[n.Name] = conn
	}
	more, err := Prove(ctx, cfg, conns)
	return append(fs, more...), err
}

// Prove reads the sequence-fed columns of the replicated tables through
// conns (node name → connection; nodes without one are left out, their
// unreachability being reported by whoever connected) and returns, per
// column, a finding that proves the ids the nodes can still generate are
// disjoint (FAIL naming two nodes and a value both can generate otherwise),
// and per node and column the headroom: values left, and how long they last
// at the rate measured since the previous check (which it records in
// pgmesh.sequence_sample where that table exists). The error is for a
// cancelled context only; a node that cannot be read is a FAIL finding.
func Prove(ctx context.Context, cfg *config.Config, conns map[string]*pgx.Conn) ([]Finding, error) {
	var fs []Finding
	var states []NodeState
	nodes := map[string]config.Node{}
	for _, n := range cfg.Nodes {
		conn, ok := conns[n.Name]
		if !ok {
			continue
		}
		nodes[n.Name] = n
		st, err := readNode(ctx, conn, cfg, n.Name)
		if err != nil {
			if ctx.Err() != nil {
				return fs, ctx.Err()
			}
			fs = append(fs, Finding{Status: Fail, Node: n.Name, Check: CheckDisjoint,
				Message: "cannot read sequences: " + err.Error()})
			continue
		}
		states = append(states, st)
	}
	now := time.Now()
	for _, object := range columnObjects(states) {
		var gens []generator
		for _, st := range states {
			if c, ok := st.column(object); ok {
				gens = append(gens, generator{node: st.Node, nodeID: st.NodeID, col: c})
			}
		}
		fs = append(fs, disjoint(cfg, object, gens, now))
		for _, g := range gens {
			rate, measured := sampleRate(ctx, conns[g.node], g.col)
			fs = append(fs, headroom(g, now, rate, measured))
		}
	}
	if err := ctx.Err(); err != nil {
		return fs, err
	}
	return fs, nil
}

// columnObjects lists every column that some node has, sorted.
func columnObjects(states []NodeState) []string {
	seen := map[string]bool{}
	for _, st := range states {
		for _, c := range st.Columns {
			seen[c.Object()] = true
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// generator is one node's way of making ids for one column.
type generator struct {
	node   string
	nodeID *int
	col    Column
}

// snowflakeFloor is the smallest id a snowflake generator can still return:
// above its last id and at least the current millisecond.
func (g generator) snowflakeFloor(now time.Time) int64 {
	ms := now.Sub(SnowflakeEpoch).Milliseconds()
	floor := ms<<(nodeBits+counterBits) | int64(*g.nodeID)<<counterBits
	if g.col.IsCalled && g.col.LastValue >= floor {
		return g.col.LastValue + 1
	}
	return floor
}

// clash returns a value both generators can produce, if any.
func clash(a, b generator, now time.Time) (int64, bool) {
	as, bs := a.col.Strategy == Snowflake, b.col.Strategy == Snowflake
	switch {
	case as && bs:
		// The node bits differ or they are the same bits.
		if *a.nodeID == *b.nodeID {
			return max(a.snowflakeFloor(now), b.snowflakeFloor(now)), true
		}
		return 0, false
	case as || bs:
		// A snowflake generator covers (part of) everything above its
		// floor; a sequence reaching that far can meet it.
		s, p := a, b
		if bs {
			s, p = b, a
		}
		floor := s.snowflakeFloor(now)
		for _, pr := range p.col.progressions() {
			if pr.From <= pr.To && pr.To >= floor {
				return max(floor, pr.From), true
			}
		}
		return 0, false
	}
	for _, p := range a.col.progressions() {
		for _, q := range b.col.progressions() {
			if v, ok := common(p, q); ok {
				return v, true
			}
		}
	}
	return 0, false
}

// describeGen says what a node does, for messages.
func describeGen(g generator) string { return Describe(g.col, g.nodeID) }

// disjoint is the finding that proves (or refutes) that no two nodes can
// generate the same id for object.
func disjoint(cfg *config.Config, object string, gens []generator, now time.Time) Finding {
	f := Finding{Check: CheckDisjoint, Object: object}
	for _, g := range gens {
		if g.col.Strategy == Snowflake && g.nodeID == nil {
			f.Status, f.Node = Fail, g.node
			f.Message = "the default calls pgmesh.snowflake_nextval but pgmesh.sequence_config has no node id: inserts fail"
			f.Fix = convertFix(cfg, gens)
			return f
		}
	}
	var clashes []string
	for i := range gens {
		for j := i + 1; j < len(gens); j++ {
			if v, ok := clash(gens[i], gens[j], now); ok {
				clashes = append(clashes, fmt.Sprintf("%s (%s) and %s (%s) can both generate %d",
					gens[i].node, describeGen(gens[i]), gens[j].node, describeGen(gens[j]), v))
			}
		}
	}
	if len(clashes) > 0 {
		f.Status = Fail
		f.Message = strings.Join(clashes, "; ")
		f.Fix = convertFix(cfg, gens)
		return f
	}
	f.Status = Pass
	parts := make([]string, len(gens))
	for i, g := range gens {
		parts[i] = g.node + ": " + describeGen(g)
	}
	if len(gens) < 2 {
		f.Message = "only on " + strings.Join(parts, "") + "; nothing to collide with"
	} else {
		f.Message = "ids disjoint: " + strings.Join(parts, "; ")
	}
	return f
}

// convertFix is the command that makes the column's ids disjoint: the
// configured strategy, or one the column's type allows.
func convertFix(cfg *config.Config, gens []generator) string {
	strategy := Strategy(cfg.Sequences.Strategy)
	if _, err := ParseStrategy(string(strategy)); err != nil {
		strategy = Snowflake
	}
	for _, g := range gens {
		if strategy == Snowflake && g.col.Type != "bigint" {
			// Snowflake needs bigint; step works for every integer type.
			strategy = Step
		}
	}
	path := cfg.Path
	if path == "" {
		path = "pgmesh.yaml"
	}
	return fmt.Sprintf("pgmesh sequences -c %s convert --strategy %s   # with writes stopped", path, strategy)
}

// headroom is the finding on how long a node's ids last.
func headroom(g generator, now time.Time, rate float64, measured bool) Finding {
	f := Finding{Check: CheckHeadroom, Node: g.node, Object: g.col.Object(), Status: Pass}
	c := g.col
	if c.Strategy == Snowflake {
		f.Message = fmt.Sprintf("time-based ids until %s (41-bit milliseconds since 2024-01-01), at most 4096 per millisecond",
			snowflakeEnd.Format("2006-01-02"))
		if c.IsCalled {
			at, _, _ := SnowflakeParts(c.LastValue)
			if ahead := at.Sub(now); ahead > time.Second {
				f.Status = Warn
				f.Message = fmt.Sprintf("the last id is %s ahead of this clock: the node's clock went back, or ids were used faster than 4096 per ms; ids stay unique but are not time-ordered until the clock catches up", ahead.Round(time.Second))
			}
		}
		return f
	}
	if c.Cycle {
		f.Status = Warn
		f.Message = fmt.Sprintf("%s cycles: once at %d it starts again at %d and reuses its own ids", c.seqIdent(), c.Max, c.Min)
		f.Fix = fmt.Sprintf("ALTER SEQUENCE %s NO CYCLE;", c.seqIdent())
		return f
	}
	left := new(big.Int)
	for _, p := range c.progressions() {
		left.Add(left, p.count())
	}
	step := c.Increment
	if step < 0 {
		step = -step
	}
	all := progression{From: c.Min, Step: step, To: c.Max}.count()
	frac, _ := new(big.Rat).SetFrac(left, all).Float64()
	leftF, _ := new(big.Float).SetInt(left).Float64()
	f.Message = fmt.Sprintf("%s ids left (%.1f%% of %s.%s: %s)", left, 100*frac, c.SeqSchema, c.SeqName, describe(c))
	if left.Sign() == 0 {
		f.Status = Fail
		f.Message = fmt.Sprintf("%s is exhausted (%s): inserts that need an id fail", c.seqIdent(), describe(c))
		f.Fix = "pgmesh sequences convert again (step and range restart above the existing ids), or widen the column to bigint"
		return f
	}
	if measured && rate > 0 {
		last := time.Duration(leftF / rate * float64(time.Second))
		if leftF/rate > float64(1<<62)/float64(time.Second) {
			last = 1 << 62
		}
		f.Message += fmt.Sprintf(", about %s at %.3g ids/s measured since the last check", humanDuration(last), rate)
		if last < warnTime {
			f.Status = Warn
		}
	} else if measured {
		f.Message += ", none used since the last check"
	}
	if frac < warnFraction {
		f.Status = Warn
	}
	if f.Status == Warn {
		f.Fix = "widen the column to bigint and run pgmesh sequences convert again, or lower --max-nodes for step/range to give each node more ids"
	}
	return f
}

// humanDuration prints d in the largest sensible unit.
func humanDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d >= 2*365*day:
		return fmt.Sprintf("%.0f years", d.Hours()/24/365)
	case d >= 2*day:
		return fmt.Sprintf("%.0f days", d.Hours()/24)
	case d >= 2*time.Hour:
		return fmt.Sprintf("%.0f hours", d.Hours())
	}
	return d.Round(time.Second).String()
}

// sampleRate records the sequence's last value in pgmesh.sequence_sample
// and returns the ids per second consumed since the previous record;
// measured is false when there was no previous record or the table does not
// exist (pgmesh not installed on that node yet).
func sampleRate(ctx context.Context, conn *pgx.Conn, c Column) (rate float64, measured bool) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgmesh.sequence_sample') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return 0, false
	}
	key := c.SeqSchema + "." + c.SeqName
	var prev int64
	var elapsed float64
	err := conn.QueryRow(ctx, "SELECT value::bigint, extract(epoch FROM now() - sampled_at)::float8 FROM pgmesh.sequence_sample WHERE seq = $1", key).
		Scan(&prev, &elapsed)
	measured = err == nil && elapsed > 0
	if measured {
		step := c.Increment
		if step < 0 {
			step = -step
		}
		used := float64(c.LastValue-prev) / float64(step)
		if used < 0 { // restarted since (convert): no rate to speak of
			measured = false
		} else {
			rate = used / elapsed
		}
	}
	// A check that cannot record (read-only user) still reports the values
	// left; only the rate goes unmeasured next time.
	_, _ = conn.Exec(ctx, `INSERT INTO pgmesh.sequence_sample (seq, value, sampled_at) VALUES ($1, $2, now())
ON CONFLICT (seq) DO UPDATE SET value = excluded.value, sampled_at = excluded.sampled_at`, key, c.LastValue)
	return rate, measured
}
