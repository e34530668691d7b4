// Package setup converges the nodes of a cluster to what pgmesh needs: the
// pgmesh schema (embedded migrations), the node's identity, the publication
// and, for every link, the slot on the upstream and the origin on the
// downstream. Every step checks before it acts, so running it again changes
// nothing.
//
// Init does not copy data. A slot ships the changes committed after it was
// created, so init expects the replicated tables to be identical on all
// nodes (typically empty) and no writes to them until it has finished;
// rows written before init stay where they are.
package setup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/check"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Publication is the name of the publication on every node.
const Publication = "pgmesh"

// publishOptions are the publication's WITH options. Publishing through the
// partition root lets nodes partition a table differently.
const publishOptions = "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"

// ErrPreflightFailed is returned by Init when a preflight check FAILs; the
// Report carries the findings.
var ErrPreflightFailed = errors.New("preflight failed")

// DataNote is what an operator must know about data at init time.
const DataNote = "init copies no data: changes committed after the slots were created replicate, rows that existed before stay where they are. " +
	"The replicated tables must be identical on all nodes (typically empty), with no writes until init has finished."

// Action is one change Init made.
type Action struct {
	Node   string `json:"node"`
	Action string `json:"action"` // "created slot pgmesh_n1_n2"
}

func (a Action) String() string { return a.Node + ": " + a.Action }

// Report is what Init did.
type Report struct {
	// Findings are the preflight results (also the WARNs of a successful run).
	Findings []check.Finding `json:"findings"`
	// Actions lists every change, per node in the order made; empty when the
	// cluster was already converged.
	Actions []Action `json:"actions"`
	// Notes are things to tell the operator (DataNote when slots were created).
	Notes []string `json:"notes"`
}

// Init runs the preflight checks and refuses on any FAIL (ErrPreflightFailed,
// the findings are in the Report), then converges every node in three
// phases: (1) migrations, local node identity and publication on every node,
// (2) every link's slot on its upstream, (3) every link's origin on its
// downstream. The publication must exist before a slot is created on the
// same node: pgoutput looks it up as of each decoded change.
func Init(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Report, error) {
	rep := &Report{Findings: []check.Finding{}, Actions: []Action{}, Notes: []string{}}
	act := func(node, format string, args ...any) {
		a := Action{Node: node, Action: fmt.Sprintf(format, args...)}
		log.Debug("init", "node", node, "action", a.Action)
		rep.Actions = append(rep.Actions, a)
	}
	// A node with an admin_dsn gets its grants before the preflight checks
	// them.
	for _, n := range cfg.Nodes {
		if n.AdminDSN == "" {
			continue
		}
		if err := adminGrants(ctx, cfg, n, act); err != nil {
			return rep, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	fs, err := check.Preflight(ctx, cfg)
	rep.Findings = append(rep.Findings, fs...)
	if err != nil {
		return rep, err
	}
	if check.Failed(fs) {
		return rep, fmt.Errorf("%w: %d FAIL findings; fix them and run init again", ErrPreflightFailed, check.Count(fs, check.Fail))
	}

	all, errs := pg.ConnectNodes(ctx, cfg.Nodes, "pgmesh init")
	defer pg.CloseAll(ctx, all)
	if err := errors.Join(errs...); err != nil {
		return rep, err
	}
	conns := map[string]*pgx.Conn{}
	for i, n := range cfg.Nodes {
		conns[n.Name] = all[i]
	}

	// A node that joined with node add has announced what it holds; the
	// initial "every peer has seen these rows" is for nodes set up
	// together. One that is copying or leaving is node add's or node
	// remove's to finish.
	joined := map[string]bool{}
	for _, n := range cfg.Nodes {
		st, err := joinstate.Read(ctx, conns[n.Name])
		if err != nil {
			return rep, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if st != nil && !joinstate.LinksAllowed(st.State) {
			return rep, fmt.Errorf("node %s is %s: let pgmesh node add or node remove finish first", n.Name, st.State)
		}
		joined[n.Name] = st != nil
	}
	for _, n := range cfg.Nodes {
		if err := ConvergeNode(ctx, cfg, n.Name, conns[n.Name], !joined[n.Name], act); err != nil {
			return rep, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	for _, n := range cfg.Nodes {
		script, err := ensureCapture(ctx, cfg, n, conns[n.Name], act)
		if err != nil {
			return rep, fmt.Errorf("node %s: %w", n.Name, err)
		}
		if script != "" {
			rep.Notes = append(rep.Notes, fmt.Sprintf("DDL capture is off on %s until a superuser runs there (ddl.capture: auto; or set ddl.capture: manual and use pgmesh ddl):\n%s", n.Name, script))
		}
	}
	links := cfg.Links()
	slotsCreated := false
	for _, l := range links {
		created, err := EnsureSlot(ctx, conns[l.Up], l.Slot())
		if err != nil {
			return rep, fmt.Errorf("node %s: link %s: %w", l.Up, l.Name(), err)
		}
		if created {
			slotsCreated = true
			act(l.Up, "created slot %s", l.Slot())
		}
	}
	for _, l := range links {
		created, err := origin.Ensure(ctx, conns[l.Down], l.Up, cfg.Agent.Workers())
		if err != nil {
			return rep, fmt.Errorf("node %s: link %s: %w", l.Down, l.Name(), err)
		}
		for _, o := range created {
			act(l.Down, "created origin %s", o)
		}
	}
	if slotsCreated {
		rep.Notes = append(rep.Notes, DataNote)
	}
	return rep, nil
}

// ConvergeNode migrates the pgmesh schema, records the node's identity and
// converges the DDL machinery, conflict setup and publication. seedSeen
// records the node's existing rows as seen by every peer, which is true
// only when all nodes start with identical tables (init); a node that joins
// a running mesh announces what it holds instead.
func ConvergeNode(ctx context.Context, cfg *config.Config, node string, conn *pgx.Conn, seedSeen bool, act func(node, format string, args ...any)) error {
	applied, err := Migrate(ctx, conn)
	if err != nil {
		return err
	}
	for _, m := range applied {
		act(node, "applied migration %s", m)
	}
	tag, err := conn.Exec(ctx, `
INSERT INTO pgmesh.local_node (cluster, name) VALUES ($1, $2)
ON CONFLICT (singleton) DO UPDATE SET cluster = excluded.cluster, name = excluded.name
WHERE (local_node.cluster, local_node.name) IS DISTINCT FROM (excluded.cluster, excluded.name)`, cfg.Cluster, node)
	if err != nil {
		return fmt.Errorf("set pgmesh.local_node: %w", err)
	}
	if tag.RowsAffected() > 0 {
		act(node, "set local node %s of cluster %s", node, cfg.Cluster)
	}
	ddlActions, err := ddl.Install(ctx, conn, cfg)
	if err != nil {
		return err
	}
	for _, a := range ddlActions {
		act(node, "%s", a)
	}
	tables, err := pg.ReplicatedTables(ctx, conn, cfg.Replicate.Schemas, cfg.Replicate.Exclude)
	if err != nil {
		return err
	}
	if err := ensureConflictSetup(ctx, conn, node, cfg.NodeNames(), tables, seedSeen, act); err != nil {
		return err
	}
	return ensurePublication(ctx, conn, node, tables, act)
}

// ensureConflictSetup gives conflict resolution what it needs on a node:
// pgmesh.node ranked in config order (the tiebreak) and the tombstone
// trigger on every replicated table with a key, each only when it differs.
func ensureConflictSetup(ctx context.Context, conn *pgx.Conn, node string, names []string, tables []pg.Table, seedSeen bool, act func(node, format string, args ...any)) error {
	var have []string
	if err := conn.QueryRow(ctx, "SELECT coalesce(array_agg(name ORDER BY rank), '{}') FROM pgmesh.node").Scan(&have); err != nil {
		return fmt.Errorf("read pgmesh.node: %w", err)
	}
	if !slices.Equal(have, names) {
		if err := SyncNodes(ctx, conn, names); err != nil {
			return err
		}
		act(node, "set node ranks %s", strings.Join(names, ", "))
	}
	if seedSeen {
		// Init expects the replicated tables to be identical on every node
		// (DataNote): each peer holds the same rows as this node's, so it
		// has in effect seen them, and its first changes to them are no
		// conflict. Recorded once, at the first init: later the peers'
		// seen messages say what they have applied.
		tag, err := conn.Exec(ctx, `
INSERT INTO pgmesh.peer_seen (peer, origin, seen_until)
SELECT p, $2, now() FROM unnest($1::text[]) p WHERE p <> $2
ON CONFLICT (peer, origin) DO NOTHING`, names, node)
		if err != nil {
			return fmt.Errorf("record the initial rows as seen by the peers: %w", err)
		}
		if tag.RowsAffected() > 0 {
			act(node, "recorded the existing rows as seen by %d peers", tag.RowsAffected())
		}
	}
	// The tombstone triggers are (re)installed where they are missing or
	// have other arguments (the table's name and key columns).
	changed, err := InstallTriggers(ctx, conn, tables)
	if err != nil {
		return err
	}
	for _, t := range tables {
		if names := changed[t.QualifiedName()]; len(names) > 0 {
			act(node, "installed tombstone triggers on %s: %s", t.QualifiedName(), strings.Join(names, ", "))
		}
	}
	return nil
}

// ensurePublication creates the publication or brings its options and table
// list to what they should be, touching it only when something differs.
func ensurePublication(ctx context.Context, conn *pgx.Conn, node string, tables []pg.Table, act func(node, format string, args ...any)) error {
	idents := make([]string, len(tables))
	want := make([]string, len(tables))
	for i, t := range tables {
		idents[i] = t.Ident()
		want[i] = t.QualifiedName()
	}
	pub := pg.Ident(Publication)
	var (
		allTables, optionsOK bool
		have, schemas        []string
		filtered             bool
	)
	err := conn.QueryRow(ctx, `
SELECT p.puballtables,
       p.pubinsert AND p.pubupdate AND p.pubdelete AND p.pubtruncate AND p.pubviaroot,
       coalesce((SELECT array_agg(n.nspname || '.' || c.relname ORDER BY n.nspname, c.relname)
                   FROM pg_publication_rel r
                   JOIN pg_class c ON c.oid = r.prrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE r.prpubid = p.oid), '{}'),
       EXISTS (SELECT 1 FROM pg_publication_rel r
                WHERE r.prpubid = p.oid AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)),
       coalesce((SELECT array_agg(n.nspname ORDER BY n.nspname)
                   FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid
                  WHERE pn.pnpubid = p.oid), '{}')
  FROM pg_publication p WHERE p.pubname = $1`, Publication).Scan(&allTables, &optionsOK, &have, &filtered, &schemas)
	if errors.Is(err, pgx.ErrNoRows) {
		sql := "CREATE PUBLICATION " + pub
		if len(idents) > 0 {
			sql += " FOR TABLE " + strings.Join(idents, ", ")
		}
		if _, err := conn.Exec(ctx, sql+" WITH ("+publishOptions+")"); err != nil {
			return fmt.Errorf("create publication %s: %w", Publication, err)
		}
		act(node, "created publication %s with %d tables", Publication, len(tables))
		return nil
	}
	if err != nil {
		return fmt.Errorf("read publication %s: %w", Publication, err)
	}
	if allTables {
		return fmt.Errorf("publication %s exists FOR ALL TABLES, which would publish schema pgmesh too; pgmesh manages its table list: DROP PUBLICATION %s; then run init again",
			Publication, pub)
	}
	if !optionsOK {
		if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+pub+" SET ("+publishOptions+")"); err != nil {
			return fmt.Errorf("set options of publication %s: %w", Publication, err)
		}
		act(node, "set options of publication %s (%s)", Publication, publishOptions)
	}
	slices.Sort(have)
	sorted := slices.Sorted(slices.Values(want))
	if slices.Equal(have, sorted) && !filtered && len(schemas) == 0 {
		return nil
	}
	var sql string
	switch {
	case len(idents) > 0:
		// SET replaces tables, schemas, row filters and column lists at once.
		sql = "ALTER PUBLICATION " + pub + " SET TABLE " + strings.Join(idents, ", ")
	default:
		var drop []string
		for _, s := range schemas {
			drop = append(drop, "TABLES IN SCHEMA "+pg.Ident(s))
		}
		for _, q := range have {
			schema, name, _ := strings.Cut(q, ".")
			drop = append(drop, "TABLE "+pg.Ident(schema, name))
		}
		sql = "ALTER PUBLICATION " + pub + " DROP " + strings.Join(drop, ", ")
	}
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("set tables of publication %s: %w", Publication, err)
	}
	act(node, "set tables of publication %s: %s", Publication, describeChange(have, sorted))
	return nil
}

// describeChange says which tables a publication gains and loses.
func describeChange(have, want []string) string {
	var added, removed []string
	for _, t := range want {
		if !slices.Contains(have, t) {
			added = append(added, t)
		}
	}
	for _, t := range have {
		if !slices.Contains(want, t) {
			removed = append(removed, t)
		}
	}
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", "))
	}
	if len(parts) == 0 {
		parts = append(parts, "reset schemas, row filters and column lists")
	}
	return fmt.Sprintf("%d tables (%s)", len(want), strings.Join(parts, "; "))
}

// DropSlot drops slot on conn's node if it exists there (in its database).
func DropSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	_, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
	                           WHERE slot_name = $1 AND database = current_database()`, slot)
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", slot, err)
	}
	return nil
}

// EnsureSlot creates the logical slot on conn's node unless it exists; an
// existing slot must be a pgoutput slot of the same database.
func EnsureSlot(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	for attempt := 0; ; attempt++ {
		err := verifySlot(ctx, conn, slot)
		if !errors.Is(err, pgx.ErrNoRows) {
			return false, err
		}
		_, err = conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
		if err == nil {
			return true, nil
		}
		// A concurrent init created it: verify theirs.
		if isCode(err, "42710") && attempt == 0 {
			continue
		}
		return false, fmt.Errorf("create slot %s: %w", slot, err)
	}
}

// verifySlot returns pgx.ErrNoRows when slot does not exist, nil when it is
// a pgoutput slot of the current database, and an error with a fix otherwise.
func verifySlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	var kind string
	var plugin, database *string
	var current string
	err := conn.QueryRow(ctx, `SELECT s.slot_type, s.plugin, s.database, current_database()
	                             FROM pg_replication_slots s WHERE s.slot_name = $1`, slot).Scan(&kind, &plugin, &database, &current)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		return fmt.Errorf("read slot %s: %w", slot, err)
	}
	if kind == "logical" && deref(plugin) == "pgoutput" && deref(database) == current {
		return nil
	}
	return fmt.Errorf("slot %s exists but is a %s slot (plugin %s, database %s), not a pgoutput slot of database %s; "+
		"if nothing uses it, drop it with SELECT pg_drop_replication_slot(%s); and run init again",
		slot, kind, orNone(plugin), orNone(database), current, pg.QuoteLiteral(slot))
}

func isCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func orNone(s *string) string {
	if s == nil {
		return "none"
	}
	return *s
}
