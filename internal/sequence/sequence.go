// Package sequence keeps ids generated on different nodes from colliding
// (README, "Sequences"). It finds the sequences that feed replicated tables (serial
// defaults and identity columns), converts them to one of three strategies,
// and proves for `pgmesh check` that no two nodes can generate the same id:
//
//   - snowflake: pgmesh.snowflake_nextval(seq) as the column default; ids are
//     41-bit milliseconds since 2024-01-01 | 10-bit node id | 12-bit counter,
//     so they need bigint and a sane clock;
//   - step: INCREMENT BY max_nodes, each node in its own residue class
//     (slot = node id mod max_nodes); works for integer;
//   - range: each node its own MINVALUE..MAXVALUE block of the type's range.
package sequence

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Strategy is how a node generates the ids of a column.
type Strategy string

const (
	Snowflake Strategy = "snowflake"
	Step      Strategy = "step"
	Range     Strategy = "range"
	// None is a sequence as PostgreSQL creates it: every node generates
	// 1, 2, 3…, so two nodes collide at once.
	None Strategy = "none"
)

// ParseStrategy accepts the strategies convert can apply.
func ParseStrategy(s string) (Strategy, error) {
	switch st := Strategy(s); st {
	case Snowflake, Step, Range:
		return st, nil
	}
	return "", fmt.Errorf("strategy %q: want snowflake, step or range", s)
}

// Snowflake layout.
const (
	counterBits = 12
	nodeBits    = 10
	msBits      = 41
	// MaxNodeID is the largest snowflake node id.
	MaxNodeID = 1<<nodeBits - 1
)

// SnowflakeEpoch is the zero of the snowflake millisecond field.
var SnowflakeEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// SnowflakeParts splits a snowflake id into its fields.
func SnowflakeParts(id int64) (at time.Time, node, counter int) {
	ms := id >> (nodeBits + counterBits)
	return SnowflakeEpoch.Add(time.Duration(ms) * time.Millisecond),
		int(id>>counterBits) & MaxNodeID,
		int(id & (1<<counterBits - 1))
}

// snowflakeEnd is when the 41-bit millisecond field runs out (2093).
var snowflakeEnd = SnowflakeEpoch.Add(time.Duration(1<<msBits) * time.Millisecond)

// Column is one column of a replicated table whose default or identity
// draws from a sequence, as one node has it.
type Column struct {
	Schema string `json:"schema"`
	Table  string `json:"table"`
	Column string `json:"column"`
	// Type is the column's (base) type: smallint, integer, bigint, or
	// another type that no strategy converts.
	Type string `json:"type"`
	// Identity is "always", "by default", or "" for a default.
	Identity string `json:"identity,omitempty"`
	Default  string `json:"default,omitempty"`

	// TableOwner owns the table, and must own a sequence OWNED BY it.
	TableOwner string `json:"table_owner"`

	SeqSchema string `json:"sequence_schema"`
	SeqName   string `json:"sequence"`
	SeqType   string `json:"sequence_type"`
	Increment int64  `json:"increment"`
	Min       int64  `json:"min"`
	Max       int64  `json:"max"`
	Cycle     bool   `json:"cycle"`
	// LastValue and IsCalled are the sequence's own fields: nextval returns
	// LastValue+Increment when IsCalled, else LastValue.
	LastValue int64 `json:"last_value"`
	IsCalled  bool  `json:"is_called"`

	Strategy Strategy `json:"strategy"`
}

// Object names the column in messages: schema.table.column.
func (c Column) Object() string { return c.Schema + "." + c.Table + "." + c.Column }

func (c Column) tableIdent() string { return pg.Ident(c.Schema, c.Table) }
func (c Column) seqIdent() string   { return pg.Ident(c.SeqSchema, c.SeqName) }

// seqLiteral is the sequence as a regclass literal for defaults and setval.
func (c Column) seqLiteral() string { return pg.QuoteLiteral(c.seqIdent()) + "::regclass" }

// Next is the value nextval would return; ok is false when the sequence is
// exhausted (it would fail, or wrap around if it cycles).
func (c Column) Next() (next int64, ok bool) {
	if !c.IsCalled {
		return c.LastValue, true
	}
	if c.Increment > 0 && c.LastValue > c.Max-c.Increment || c.Increment < 0 && c.LastValue < c.Min-c.Increment {
		return 0, false
	}
	return c.LastValue + c.Increment, true
}

// usesNextval reports whether the column's default is the plain nextval of
// its sequence (identity columns have no default).
func (c Column) usesNextval() bool { return strings.HasPrefix(c.Default, "nextval(") }

// typeMax is the largest value of an integer type, 0 for other types.
func typeMax(typ string) int64 {
	switch typ {
	case "smallint":
		return math.MaxInt16
	case "integer":
		return math.MaxInt32
	case "bigint":
		return math.MaxInt64
	}
	return 0
}

// classify tells which strategy the column's generator follows now.
func (c Column) classify() Strategy {
	switch {
	case strings.Contains(c.Default, "snowflake_nextval("):
		return Snowflake
	case c.Increment > 1:
		return Step
	case c.Increment == 1 && (c.Min != 1 || c.Max != typeMax(c.SeqType)):
		return Range
	}
	return None
}

// NodeState is what one node has: its snowflake node id and its columns.
type NodeState struct {
	Node string `json:"node"`
	// NodeID is pgmesh.sequence_config.node_id, nil when not set (convert
	// to snowflake has not run there).
	NodeID  *int     `json:"snowflake_node_id"`
	Columns []Column `json:"columns"`
}

// column returns the node's column object ("schema.table.column").
func (s NodeState) column(object string) (Column, bool) {
	for _, c := range s.Columns {
		if c.Object() == object {
			return c, true
		}
	}
	return Column{}, false
}

// List reads the sequence-fed columns of every node's replicated tables.
func List(ctx context.Context, cfg *config.Config) ([]NodeState, error) {
	states := make([]NodeState, 0, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		st, err := readNodeDSN(ctx, cfg, n)
		if err != nil {
			return nil, err
		}
		states = append(states, st)
	}
	return states, nil
}

const appName = "pgmesh-sequences"

func readNodeDSN(ctx context.Context, cfg *config.Config, n config.Node) (NodeState, error) {
	conn, err := pg.Connect(ctx, n.Name, n.DSN, appName)
	if err != nil {
		return NodeState{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return readNode(ctx, conn, cfg, n.Name)
}

// columnsQuery finds, among the given tables, the columns fed by a sequence:
// through the default (pg_attrdef depends on the sequence, which also covers
// pgmesh.snowflake_nextval('seq'::regclass)) or as an identity column (the
// sequence depends internally on the column).
const columnsQuery = `
SELECT n.nspname, c.relname, a.attname,
       format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, NULL),
       CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' ELSE '' END,
       coalesce(pg_get_expr(ad.adbin, ad.adrelid), ''), pg_get_userbyid(c.relowner)::text,
       sn.nspname, s.relname, format_type(ps.seqtypid, NULL),
       ps.seqincrement, ps.seqmin, ps.seqmax, ps.seqcycle
  FROM unnest($1::text[], $2::text[]) AS r(nsp, rel)
  JOIN pg_namespace n ON n.nspname = r.nsp
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = r.rel
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
  JOIN LATERAL (
        SELECT d.refobjid AS seq FROM pg_depend d
         WHERE d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
           AND d.refclassid = 'pg_class'::regclass
        UNION
        SELECT d.objid FROM pg_depend d
         WHERE a.attidentity <> '' AND d.classid = 'pg_class'::regclass
           AND d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid
           AND d.refobjsubid = a.attnum AND d.deptype = 'i') dep ON true
  JOIN pg_class s ON s.oid = dep.seq AND s.relkind = 'S'
  JOIN pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_sequence ps ON ps.seqrelid = s.oid
 ORDER BY 1, 2, a.attnum, 8, 9`

// readNode reads the node's snowflake id and sequence-fed columns.
func readNode(ctx context.Context, conn *pgx.Conn, cfg *config.Config, node string) (NodeState, error) {
	st := NodeState{Node: node}
	tables, err := pg.ReplicatedTables(ctx, conn, cfg.Replicate.Schemas, cfg.Replicate.Exclude)
	if err != nil {
		return st, fmt.Errorf("node %s: %w", node, err)
	}
	var nsps, rels []string
	for _, t := range tables {
		nsps = append(nsps, t.Schema)
		rels = append(rels, t.Name)
	}
	rows, err := conn.Query(ctx, columnsQuery, nsps, rels)
	if err != nil {
		return st, fmt.Errorf("node %s: list sequence-fed columns: %w", node, err)
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Column, error) {
		var c Column
		err := r.Scan(&c.Schema, &c.Table, &c.Column, &c.Type, &c.Identity, &c.Default, &c.TableOwner,
			&c.SeqSchema, &c.SeqName, &c.SeqType, &c.Increment, &c.Min, &c.Max, &c.Cycle)
		return c, err
	})
	if err != nil {
		return st, fmt.Errorf("node %s: list sequence-fed columns: %w", node, err)
	}
	for i := range cols {
		c := &cols[i]
		// The sequence relation is the only place is_called shows:
		// pg_sequence_last_value hides a RESTART value.
		q := "SELECT last_value, is_called FROM " + c.seqIdent()
		if err := conn.QueryRow(ctx, q).Scan(&c.LastValue, &c.IsCalled); err != nil {
			return st, fmt.Errorf("node %s: read sequence %s: %w", node, c.seqIdent(), err)
		}
		c.Strategy = c.classify()
	}
	st.Columns = cols
	id, err := readNodeID(ctx, conn)
	if err != nil {
		return st, fmt.Errorf("node %s: %w", node, err)
	}
	st.NodeID = id
	return st, nil
}

// readNodeID returns pgmesh.sequence_config.node_id, nil when the table or
// its row does not exist.
func readNodeID(ctx context.Context, conn *pgx.Conn) (*int, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('pgmesh.sequence_config') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for pgmesh.sequence_config: %w", err)
	}
	if !exists {
		return nil, nil
	}
	var id int
	err := conn.QueryRow(ctx, "SELECT node_id FROM pgmesh.sequence_config").Scan(&id)
	if err == pgx.ErrNoRows {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.sequence_config: %w", err)
	}
	return &id, nil
}
