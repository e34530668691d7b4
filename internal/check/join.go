package check

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sequence"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Checks of JoinPreflight.
const (
	CheckJoinEmpty    = "join target"
	CheckJoinSchema   = "join schema"
	CheckJoinEncoding = "join encoding"
)

// JoinPreflight returns the findings that decide whether node may join the
// mesh of cfg (which lists it) with a copy of source: every node's version,
// settings, capacity (slots and origins for the new links) and privileges;
// the source's replica identities; the new node empty; its schema, if it
// has one, equal to the source's; the same database encoding; and ids that
// no other node generates. conns holds a session on every node.
func JoinPreflight(ctx context.Context, cfg *config.Config, node, source string, conns map[string]*pgx.Conn) ([]Finding, error) {
	r := &run{cfg: cfg, opts: Options{}.withDefaults()}
	links := cfg.Links()
	checks := []nodeCheck{{"version", checkVersion}, {"settings", checkSettings}, {"capacity", checkCapacity}, {"privileges", checkPrivileges}}
	var fs []Finding
	nodes := map[string]*Node{}
	for _, cn := range cfg.Nodes {
		n := &Node{Name: cn.Name, Address: pg.Address(cn.DSN), Conn: conns[cn.Name],
			Outbound: topology.Outbound(links, cn.Name), Inbound: topology.Inbound(links, cn.Name)}
		if err := n.load(ctx, cfg); err != nil {
			return nil, err
		}
		nodes[cn.Name] = n
		for _, c := range checks {
			more, err := c.run(ctx, r, n)
			if err != nil {
				more = append(more, Finding{Status: Fail, Node: n.Name, Check: c.name, Message: "could not check: " + err.Error()})
			}
			fs = append(fs, more...)
		}
	}
	src, dst := nodes[source], nodes[node]
	more, err := checkIdentity(ctx, r, src)
	if err != nil {
		return nil, err
	}
	fs = append(fs, more...)

	empty := Finding{Status: Pass, Node: node, Check: CheckJoinEmpty, Message: "no replicated table holds rows"}
	var full []string
	for _, t := range dst.Tables {
		var has bool
		if err := dst.Conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+t.Ident()+")").Scan(&has); err != nil {
			return nil, fmt.Errorf("node %s: read %s: %w", node, t.QualifiedName(), err)
		}
		if has {
			full = append(full, t.QualifiedName())
		}
	}
	if len(full) > 0 {
		empty.Status = Fail
		empty.Message = "the new node holds rows in " + strings.Join(full, ", ") + ": the copy would mix with them"
		empty.Fix = "add the node on an empty database, or TRUNCATE these tables there"
	}
	fs = append(fs, empty)

	if len(dst.Tables) == 0 {
		fs = append(fs, Finding{Status: Pass, Node: node, Check: CheckJoinSchema,
			Message: "no replicated table yet: node add creates the schema from " + source + "'s (pg_dump --schema-only)"})
	} else {
		more, err := CompareSchemas(ctx, cfg, source, src.Conn, node, dst.Conn)
		if err != nil {
			return nil, err
		}
		fs = append(fs, more...)
	}

	var encSrc, encDst string
	q := "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
	if err := src.Conn.QueryRow(ctx, q).Scan(&encSrc); err != nil {
		return nil, fmt.Errorf("node %s: read the encoding: %w", source, err)
	}
	if err := dst.Conn.QueryRow(ctx, q).Scan(&encDst); err != nil {
		return nil, fmt.Errorf("node %s: read the encoding: %w", node, err)
	}
	enc := Finding{Status: Pass, Node: node, Check: CheckJoinEncoding, Message: "database encoding " + encDst + " as on " + source}
	if encSrc != encDst {
		enc.Status = Fail
		enc.Message = fmt.Sprintf("database encoding %s, %s has %s: text would not copy unchanged", encDst, source, encSrc)
		enc.Fix = fmt.Sprintf("create the new node's database with ENCODING '%s'", encSrc)
	}
	fs = append(fs, enc)

	var states []sequence.NodeState
	var srcState sequence.NodeState
	for _, cn := range cfg.Nodes {
		if cn.Name == node {
			continue
		}
		st, err := sequence.ReadNode(ctx, conns[cn.Name], cfg, cn.Name)
		if err != nil {
			return nil, err
		}
		states = append(states, st)
		if cn.Name == source {
			srcState = st
		}
	}
	me, _ := cfg.NodeByName(node)
	for _, f := range sequence.JoinFindings(cfg, me, srcState, states) {
		fs = append(fs, fromSequence(f))
	}
	return fs, nil
}

// CompareSchemas compares the replicated tables of two nodes: FAIL
// findings name what is missing or differs in a way that breaks apply or
// makes the nodes diverge.
func CompareSchemas(ctx context.Context, cfg *config.Config, aName string, a *pgx.Conn, bName string, b *pgx.Conn) ([]Finding, error) {
	var nodes []*Node
	var nfs []nodeFingerprints
	for _, x := range []struct {
		name string
		conn *pgx.Conn
	}{{aName, a}, {bName, b}} {
		n := &Node{Name: x.name, Conn: x.conn}
		tables, err := pg.ReplicatedTables(ctx, x.conn, cfg.Replicate.Schemas, cfg.Replicate.Exclude)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", x.name, err)
		}
		n.Tables = tables
		nodes = append(nodes, n)
		m, err := pg.Fingerprints(ctx, x.conn, tables)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", x.name, err)
		}
		nfs = append(nfs, nodeFingerprints{node: x.name, tables: m})
	}
	fs := presenceFindings(cfg, nodes)
	for _, f := range driftFindings(cfg, nfs) {
		if f.Check == "schema" {
			f.Check = CheckJoinSchema
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// checkJoin reports a node that is not simply ready: joining (pgmesh node
// add has not finished: it applies or ships nothing while it copies), or
// leaving or removed but still in the config.
func checkJoin(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	st, err := joinstate.Read(ctx, n.Conn)
	if err != nil || st == nil || st.State == joinstate.Ready {
		return nil, err
	}
	f := Finding{Status: Warn, Node: n.Name, Check: "join", Object: "pgmesh.join_state"}
	switch st.State {
	case joinstate.Copying:
		f.Message = fmt.Sprintf("joining: copying from %s (attempt %d); no link into or out of it runs until the copy is complete", st.Source, st.Attempt)
		f.Fix = fmt.Sprintf("let pgmesh node add %s finish, or run it again if it was interrupted (it starts the copy over); pgmesh status shows the progress", n.Name)
	case joinstate.CatchingUp:
		f.Message = fmt.Sprintf("joining: the copy from %s is complete, the node is applying what the others wrote since", st.Source)
		f.Fix = fmt.Sprintf("run its agent (pgmesh run -c %s --node %s); it becomes ready once caught up", configName(r.cfg), n.Name)
	default:
		f.Status = Fail
		f.Message = "the node is " + st.State + " but still in the config"
		f.Fix = fmt.Sprintf("pgmesh node remove -c %s %s", configName(r.cfg), n.Name)
	}
	return []Finding{f}, nil
}
