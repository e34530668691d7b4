package check

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// checkDrift compares the definition of every replicated table across the
// nodes that have it (checkPresence reports the nodes that do not) and
// names every difference. Differences that make apply fail or make nodes
// diverge (columns, types, nullability, generated and identity columns,
// primary key, unique constraints and indexes, replica identity) are FAIL;
// the others (defaults, collations, check and foreign key constraints,
// ordinary indexes) are WARN.
func checkDrift(ctx context.Context, r *run, nodes []*Node) ([]Finding, error) {
	var fs []Finding
	var nfs []nodeFingerprints
	for _, n := range nodes {
		m, err := pg.Fingerprints(ctx, n.Conn, n.Tables)
		if err != nil {
			if ctx.Err() != nil {
				return fs, ctx.Err()
			}
			fs = append(fs, Finding{Status: Fail, Node: n.Name, Check: "schema", Message: "could not compare: " + err.Error()})
			continue
		}
		nfs = append(nfs, nodeFingerprints{node: n.Name, tables: m})
	}
	return append(fs, driftFindings(r.cfg, nfs)...), nil
}

// nodeFingerprints are one node's table definitions by "schema.table".
type nodeFingerprints struct {
	node   string
	tables map[string]*pg.Fingerprint
}

// driftFindings names every difference between the nodes' definitions of
// each table; nfs are in config order, which breaks ties of the majority.
func driftFindings(cfg *config.Config, nfs []nodeFingerprints) []Finding {
	if len(nfs) < 2 {
		return nil
	}
	var names []string
	for _, nf := range nfs {
		for name := range nf.tables {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	var fs []Finding
	compared := 0
	for _, name := range names {
		var have []nodeTable
		for _, nf := range nfs {
			if fp := nf.tables[name]; fp != nil {
				have = append(have, nodeTable{nf.node, fp})
			}
		}
		if len(have) < 2 {
			continue
		}
		compared++
		d := &differ{cfg: cfg, table: have[0].fp.Table, nodes: have}
		d.columns()
		d.constraints()
		d.indexes()
		d.replicaIdentity()
		fs = append(fs, d.fs...)
	}
	if len(fs) == 0 {
		fs = append(fs, Finding{Status: Pass, Check: "schema",
			Message: fmt.Sprintf("the %d replicated tables have the same definition on all %d nodes that have them", compared, len(nfs))})
	}
	return fs
}

type nodeTable struct {
	node string
	fp   *pg.Fingerprint
}

// differ collects the findings of one table.
type differ struct {
	cfg   *config.Config
	table string // schema.table
	nodes []nodeTable
	fs    []Finding
}

func (d *differ) ident() string {
	s, t, _ := strings.Cut(d.table, ".")
	return pg.Ident(s, t)
}

// group is the nodes that agree on one value.
type group struct {
	value string
	nodes []string
}

// groupBy groups the nodes by value ("" for presence checks: the node
// lacks the item), in order of first appearance, and returns the index of
// the majority group (ties: the earliest, i.e. the one with the node first
// in the config).
func groupBy(nodes []nodeTable, value func(fp *pg.Fingerprint) string) ([]group, int) {
	var gs []group
	for _, n := range nodes {
		v := value(n.fp)
		i := slices.IndexFunc(gs, func(g group) bool { return g.value == v })
		if i < 0 {
			gs = append(gs, group{value: v})
			i = len(gs) - 1
		}
		gs[i].nodes = append(gs[i].nodes, n.node)
	}
	major := 0
	for i, g := range gs {
		if len(g.nodes) > len(gs[major].nodes) {
			major = i
		}
	}
	return gs, major
}

// odd lists the nodes outside group major.
func odd(gs []group, major int) []string {
	var out []string
	for i, g := range gs {
		if i != major {
			out = append(out, g.nodes...)
		}
	}
	return out
}

// nodeList is "n1", "n1 and n2", "n1, n2 and n3".
func nodeList(nodes []string) string {
	if len(nodes) <= 1 {
		return strings.Join(nodes, "")
	}
	return strings.Join(nodes[:len(nodes)-1], ", ") + " and " + nodes[len(nodes)-1]
}

// describeGroups is "integer on n1 and n2, bigint on n3".
func describeGroups(gs []group, show func(string) string) string {
	parts := make([]string, len(gs))
	for i, g := range gs {
		parts[i] = show(g.value) + " on " + nodeList(g.nodes)
	}
	return strings.Join(parts, ", ")
}

// fix is how to make the odd nodes like the majority: local is SQL for
// each odd node; mesh, when set, is SQL with the same effect on every node
// (idempotent), to run once through pgmesh ddl after init.
type fix struct {
	local, mesh string
	// also is another way (make every node like the odd ones), as SQL for
	// pgmesh ddl; optional.
	also string
}

func (d *differ) add(status Status, oddNodes []string, msg string, fx fix) {
	var b strings.Builder
	cfgPath := configName(d.cfg)
	fmt.Fprintf(&b, "on %s: %s;", nodeList(oddNodes), fx.local)
	if fx.mesh != "" {
		fmt.Fprintf(&b, "\nonce init has run, from any one node instead: pgmesh ddl -c %s --node %s %s", cfgPath, oddNodes[0], shellQuote(fx.mesh))
	} else {
		b.WriteString("\nonce init has run, keep it local to those nodes: run it in a session after SET pgmesh.in_ddl = on")
	}
	if fx.also != "" {
		fmt.Fprintf(&b, "\nor, to make every node like %s: pgmesh ddl -c %s --node %s %s (before init: run it on every node)", nodeList(oddNodes), cfgPath, oddNodes[0], shellQuote(fx.also))
	}
	d.fs = append(d.fs, Finding{Status: status, Node: strings.Join(oddNodes, ","), Check: "schema", Object: d.table, Message: msg, Fix: b.String()})
}

// shellQuote quotes s as one POSIX shell word: in single quotes unless
// it contains one (SQL literals), else in double quotes with what the shell
// expands there escaped.
func shellQuote(s string) string {
	if !strings.Contains(s, "'") {
		return "'" + s + "'"
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", `\$`, "`", "\\`")
	return `"` + r.Replace(s) + `"`
}

// presence reports an item (column, constraint, index) that some nodes
// lack: "column extra exists on n2 only" or "index items_sku_idx missing
// on n3". remove drops it where it exists, create creates it where not.
func (d *differ) presence(status Status, what string, gs []group, major int, remove, create, createMesh string) bool {
	if len(gs) == 1 {
		return false
	}
	// Only two groups are possible: nodes with the item, nodes without.
	oddNodes := odd(gs, major)
	if gs[major].value == "" { // the majority lacks it
		d.add(status, oddNodes, fmt.Sprintf("%s exists on %s only", what, nodeList(oddNodes)),
			fix{local: remove, mesh: remove, also: createMesh})
	} else {
		d.add(status, oddNodes, fmt.Sprintf("%s missing on %s", what, nodeList(oddNodes)),
			fix{local: create, mesh: createMesh, also: remove})
	}
	return true
}

func (d *differ) columns() {
	var names []string
	for _, n := range d.nodes {
		for _, c := range n.fp.Columns {
			if !slices.Contains(names, c.Name) {
				names = append(names, c.Name)
			}
		}
	}
	for _, name := range names {
		col := func(fp *pg.Fingerprint) (pg.ColumnDef, bool) {
			i := slices.IndexFunc(fp.Columns, func(c pg.ColumnDef) bool { return c.Name == name })
			if i < 0 {
				return pg.ColumnDef{}, false
			}
			return fp.Columns[i], true
		}
		gs, major := groupBy(d.nodes, func(fp *pg.Fingerprint) string {
			if _, ok := col(fp); ok {
				return "present"
			}
			return ""
		})
		// The definition to create the column from: the first node's that has it.
		var def pg.ColumnDef
		for _, n := range d.nodes {
			if c, ok := col(n.fp); ok {
				def = c
				break
			}
		}
		colIdent := pg.Ident(name)
		addSQL := fmt.Sprintf("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s", d.ident(), colIdent, columnSpec(def))
		dropSQL := fmt.Sprintf("ALTER TABLE %s DROP COLUMN IF EXISTS %s", d.ident(), colIdent)
		if d.presence(Fail, "column "+name, gs, major, dropSQL, addSQL, addSQL) {
			continue
		}
		d.columnAttrs(name, func(fp *pg.Fingerprint) pg.ColumnDef { c, _ := col(fp); return c })
	}
}

// columnAttrs compares the attributes of a column every node has.
func (d *differ) columnAttrs(name string, col func(fp *pg.Fingerprint) pg.ColumnDef) {
	alter := fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s ", d.ident(), pg.Ident(name))
	// attr reports one attribute that differs: "column qty is integer on
	// n1 and n2, bigint on n3" (verb "is", show the value).
	attr := func(status func(gs []group) Status, get func(c pg.ColumnDef) string, verb string, show func(string) string, sql func(majority pg.ColumnDef) fix) {
		gs, major := groupBy(d.nodes, func(fp *pg.Fingerprint) string { return get(col(fp)) })
		if len(gs) == 1 {
			return
		}
		var majority pg.ColumnDef
		for _, n := range d.nodes {
			if n.node == gs[major].nodes[0] {
				majority = col(n.fp)
			}
		}
		d.add(status(gs), odd(gs, major), "column "+name+" "+verb+" "+describeGroups(gs, show), sql(majority))
	}
	always := func(s Status) func([]group) Status { return func([]group) Status { return s } }
	same := func(v string) string { return v }
	attr(always(Fail), func(c pg.ColumnDef) string { return c.Type }, "is", same, func(m pg.ColumnDef) fix {
		s := alter + "TYPE " + m.Type + " USING " + pg.Ident(name) + "::" + m.Type
		return fix{local: s, mesh: s}
	})
	attr(always(Fail), func(c pg.ColumnDef) string {
		if c.NotNull {
			return "NOT NULL"
		}
		return "nullable"
	}, "is", same, func(m pg.ColumnDef) fix {
		s := alter + "DROP NOT NULL"
		if m.NotNull {
			s = alter + "SET NOT NULL"
		}
		return fix{local: s, mesh: s}
	})
	attr(always(Fail), func(c pg.ColumnDef) string { return c.Generated }, "is", func(v string) string {
		if v == "" {
			return "not generated"
		}
		return "generated (" + v + ")"
	}, func(m pg.ColumnDef) fix {
		if m.Generated == "" {
			s := alter + "DROP EXPRESSION IF EXISTS"
			return fix{local: s, mesh: s}
		}
		// No ALTER turns a plain column into a generated one on every
		// supported version: re-create it (its values are computed).
		return fix{local: fmt.Sprintf("ALTER TABLE %s DROP COLUMN %s, ADD COLUMN %[2]s %s", d.ident(), pg.Ident(name), columnSpec(m))}
	})
	attr(func(gs []group) Status {
		// GENERATED ALWAYS refuses the explicit values apply inserts.
		for _, g := range gs {
			if g.value == "always" {
				return Fail
			}
		}
		return Warn
	}, func(c pg.ColumnDef) string { return c.Identity }, "is", func(v string) string {
		if v == "" {
			return "not an identity column"
		}
		return "GENERATED " + strings.ToUpper(v) + " AS IDENTITY"
	}, func(m pg.ColumnDef) fix {
		if m.Identity == "" {
			s := alter + "DROP IDENTITY IF EXISTS"
			return fix{local: s, mesh: s}
		}
		kind := strings.ToUpper(m.Identity)
		return fix{local: alter + "ADD GENERATED " + kind + " AS IDENTITY (where it is an identity column already: " + alter + "SET GENERATED " + kind + ")"}
	})
	attr(always(Warn), func(c pg.ColumnDef) string { return c.Default }, "has", func(v string) string {
		if v == "" {
			return "no default"
		}
		return "default " + v
	}, func(m pg.ColumnDef) fix {
		s := alter + "DROP DEFAULT"
		if m.Default != "" {
			s = alter + "SET DEFAULT " + m.Default
		}
		return fix{local: s, mesh: s}
	})
	attr(always(Warn), func(c pg.ColumnDef) string { return c.Collation }, "has", func(v string) string {
		if v == "" {
			return "the default collation"
		}
		return "collation " + v
	}, func(m pg.ColumnDef) fix {
		coll := m.Collation
		if coll == "" {
			coll = `"default"`
		}
		s := alter + "TYPE " + m.Type + " COLLATE " + coll
		return fix{local: s, mesh: s}
	})
}

// columnSpec is the column's type and options for ADD COLUMN.
func columnSpec(c pg.ColumnDef) string {
	s := c.Type
	if c.Collation != "" {
		s += " COLLATE " + c.Collation
	}
	switch {
	case strings.HasPrefix(c.Generated, "stored: "):
		s += " GENERATED ALWAYS AS (" + strings.TrimPrefix(c.Generated, "stored: ") + ") STORED"
	case strings.HasPrefix(c.Generated, "virtual: "):
		s += " GENERATED ALWAYS AS (" + strings.TrimPrefix(c.Generated, "virtual: ") + ") VIRTUAL"
	case c.Identity != "":
		s += " GENERATED " + strings.ToUpper(c.Identity) + " AS IDENTITY"
	case c.Default != "":
		s += " DEFAULT " + c.Default
	}
	if c.NotNull {
		s += " NOT NULL"
	}
	return s
}

// constraintKinds names pg_constraint.contype; fail says whether a
// difference breaks apply (keys) or only lets nodes accept different rows.
var constraintKinds = map[byte]struct {
	name string
	fail bool
}{
	'p': {"primary key", true},
	'u': {"unique constraint", true},
	'x': {"exclusion constraint", true},
	'c': {"check constraint", false},
	'f': {"foreign key", false},
}

func (d *differ) constraints() {
	var names []string
	for _, n := range d.nodes {
		for _, c := range n.fp.Constraints {
			if !slices.Contains(names, c.Name) {
				names = append(names, c.Name)
			}
		}
	}
	for _, name := range names {
		// The kind byte, then the definition; "" where it does not exist.
		gs, major := groupBy(d.nodes, func(fp *pg.Fingerprint) string {
			i := slices.IndexFunc(fp.Constraints, func(c pg.ConstraintDef) bool { return c.Name == name })
			if i < 0 {
				return ""
			}
			return string(fp.Constraints[i].Kind) + fp.Constraints[i].Def
		})
		if len(gs) == 1 {
			continue
		}
		def := gs[major].value
		if def == "" { // the majority lacks it: the odd nodes' definition
			def = gs[(major+1)%len(gs)].value
		}
		kind := constraintKinds[def[0]]
		// A key on any node under this name makes the difference a FAIL.
		status := Warn
		for _, g := range gs {
			if g.value != "" && constraintKinds[g.value[0]].fail {
				status = Fail
			}
		}
		def = def[1:]
		cn := pg.Ident(name)
		drop := fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", d.ident(), cn)
		replace := fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s, ADD CONSTRAINT %[2]s %s", d.ident(), cn, def)
		create := fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", d.ident(), cn, def)
		what := kind.name + " " + name
		hasEmpty := slices.ContainsFunc(gs, func(g group) bool { return g.value == "" })
		if hasEmpty && len(gs) == 2 {
			d.presence(status, what, gs, major, drop, create, replace)
			continue
		}
		d.add(status, odd(gs, major), what+" is "+describeGroups(gs, func(v string) string {
			if v == "" {
				return "missing"
			}
			return v[1:]
		}), sameEverywhere(gs[major].value == "", drop, replace))
	}
}

// sameEverywhere is the fix for an item that has several definitions:
// drop it where the majority lacks it, else replace it (both idempotent).
func sameEverywhere(majorityLacks bool, drop, replace string) fix {
	if majorityLacks {
		return fix{local: drop, mesh: drop}
	}
	return fix{local: replace, mesh: replace}
}

func (d *differ) indexes() {
	var names []string
	for _, n := range d.nodes {
		for _, ix := range n.fp.Indexes {
			if !slices.Contains(names, ix.Name) {
				names = append(names, ix.Name)
			}
		}
	}
	schema, _, _ := strings.Cut(d.table, ".")
	for _, name := range names {
		unique := false
		gs, major := groupBy(d.nodes, func(fp *pg.Fingerprint) string {
			i := slices.IndexFunc(fp.Indexes, func(ix pg.IndexDef) bool { return ix.Name == name })
			if i < 0 {
				return ""
			}
			unique = unique || fp.Indexes[i].Unique
			return fp.Indexes[i].Def
		})
		if len(gs) == 1 {
			continue
		}
		status := Warn
		what := "index " + name
		if unique {
			// A row one node accepts and another refuses stops the link.
			status = Fail
			what = "unique index " + name
		}
		def := gs[major].value
		if def == "" {
			def = gs[(major+1)%len(gs)].value
		}
		ix := pg.Ident(schema, name)
		drop := "DROP INDEX IF EXISTS " + ix
		createMesh := strings.Replace(def, " INDEX ", " INDEX IF NOT EXISTS ", 1)
		if slices.ContainsFunc(gs, func(g group) bool { return g.value == "" }) && len(gs) == 2 {
			d.presence(status, what, gs, major, drop, def, createMesh)
			continue
		}
		d.add(status, odd(gs, major), what+" is "+describeGroups(gs, func(v string) string {
			if v == "" {
				return "missing"
			}
			return indexBody(v)
		}), sameEverywhere(gs[major].value == "", drop, drop+"; "+def))
	}
}

// indexBody is the part of an index definition after the table name:
// "btree (sku)", "unique btree (lower(email)) WHERE …".
func indexBody(def string) string {
	_, body, ok := strings.Cut(def, " USING ")
	if !ok {
		return def
	}
	if strings.HasPrefix(def, "CREATE UNIQUE ") {
		return "unique " + body
	}
	return body
}

func (d *differ) replicaIdentity() {
	gs, major := groupBy(d.nodes, func(fp *pg.Fingerprint) string {
		switch fp.ReplicaIdentity {
		case 'd':
			return "DEFAULT"
		case 'f':
			return "FULL"
		case 'n':
			return "NOTHING"
		case 'i':
			return "USING INDEX " + pg.Ident(fp.IdentityIndex)
		}
		return string(fp.ReplicaIdentity)
	})
	if len(gs) == 1 {
		return
	}
	s := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY %s", d.ident(), gs[major].value)
	d.add(Fail, odd(gs, major), "replica identity is "+describeGroups(gs, func(v string) string { return v }),
		fix{local: s, mesh: s})
}
