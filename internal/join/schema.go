package join

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/check"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/setup"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// checkFresh refuses a new node that holds data: the copy would mix with
// it. Tables that exist must be empty (their definitions are compared with
// the source's by the preflight).
func (j *joiner) checkFresh(ctx context.Context) error {
	var ln *string
	err := j.n.QueryRow(ctx, "SELECT (SELECT cluster || '/' || name FROM pgmesh.local_node)").Scan(&ln)
	if err != nil {
		return fmt.Errorf("node %s: read pgmesh.local_node: %w", j.node.Name, err)
	}
	if ln != nil {
		if *ln == j.cfg.Cluster+"/"+j.node.Name {
			return fmt.Errorf("%w: node %s is a member of %s already (set up by pgmesh init)", ErrRefused, j.node.Name, j.cfg.Cluster)
		}
		return fmt.Errorf("%w: this database is node %s already: point %s at an empty database", ErrRefused, *ln, j.node.Name)
	}
	tables, err := pg.ReplicatedTables(ctx, j.n, j.cfg.Replicate.Schemas, j.cfg.Replicate.Exclude)
	if err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	var full []string
	for _, t := range tables {
		var has bool
		if err := j.n.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+t.Ident()+")").Scan(&has); err != nil {
			return fmt.Errorf("node %s: read %s: %w", j.node.Name, t.QualifiedName(), err)
		}
		if has {
			full = append(full, t.QualifiedName())
		}
	}
	if len(full) > 0 {
		return fmt.Errorf("%w: node %s is not empty (%s hold rows): node add copies into an empty database; use a new one, or TRUNCATE them",
			ErrRefused, j.node.Name, strings.Join(full, ", "))
	}
	return nil
}

// preflight runs the checks of check.JoinPreflight and refuses on a FAIL.
func (j *joiner) preflight(ctx context.Context, restart bool) error {
	fs, err := check.JoinPreflight(ctx, j.cfg, j.node.Name, j.source.Name, j.conns)
	if err != nil {
		return err
	}
	var fails []string
	for _, f := range fs {
		if f.Status != check.Fail {
			continue
		}
		// A restarted copy finds its own rows and schema from the last
		// attempt; cleanup deals with them.
		if restart && f.Check == check.CheckJoinEmpty {
			continue
		}
		line := fmt.Sprintf("%s %s %s: %s", f.Node, f.Check, f.Object, f.Message)
		if f.Fix != "" {
			line += " (fix: " + f.Fix + ")"
		}
		fails = append(fails, line)
		j.rep.Findings = append(j.rep.Findings, line)
	}
	if len(fails) > 0 {
		return fmt.Errorf("%w:\n  %s", ErrRefused, strings.Join(fails, "\n  "))
	}
	return nil
}

// cleanup undoes what an interrupted copy left on the new node: its own
// slots, the copied rows and metadata. The truncate runs under a
// replication origin, so that no slot of the new node would ship it. The
// schema stays: schema() compares it with the source's.
func (j *joiner) cleanup(ctx context.Context) error {
	for _, p := range j.peers {
		if err := setup.DropSlot(ctx, j.n, topology.Link{Up: j.node.Name, Down: p.Name}.Slot()); err != nil {
			return fmt.Errorf("node %s: %w", j.node.Name, err)
		}
	}
	tables, err := pg.ReplicatedTables(ctx, j.n, j.cfg.Replicate.Schemas, j.cfg.Replicate.Exclude)
	if err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	w, err := newWriter(ctx, j.node, newLeases(), j.log)
	if err != nil {
		return err
	}
	defer w.close()
	if err := w.truncate(ctx, tables); err != nil {
		return err
	}
	for _, q := range []string{"DELETE FROM pgmesh.tombstone", "DELETE FROM pgmesh.peer_seen", "DELETE FROM pgmesh.ddl_log",
		"DELETE FROM pgmesh.join_table", "DELETE FROM pgmesh.join_upstream"} {
		if _, err := j.n.Exec(ctx, q); err != nil {
			return fmt.Errorf("node %s: clean up the interrupted copy: %s: %w", j.node.Name, q, err)
		}
	}
	return nil
}

// schema makes the new node's replicated schema that of the source in the
// snapshot: restored from the source's dump when the node has no
// replicated table, otherwise compared with it.
func (j *joiner) schema(ctx context.Context, s *snapshot) error {
	tables, err := pg.ReplicatedTables(ctx, j.n, j.cfg.Replicate.Schemas, j.cfg.Replicate.Exclude)
	if err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	if len(tables) > 0 {
		fs, err := check.CompareSchemas(ctx, j.cfg, j.source.Name, j.conns[j.source.Name], j.node.Name, j.n)
		if err != nil {
			return err
		}
		var bad []string
		for _, f := range fs {
			if f.Status == check.Fail {
				bad = append(bad, fmt.Sprintf("%s %s: %s", f.Node, f.Object, f.Message))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%w: the schema of %s differs from %s's: %s; make them equal (or drop the tables on %s to have node add create them) and run node add again",
				ErrRefused, j.node.Name, j.source.Name, strings.Join(bad, "; "), j.node.Name)
		}
		j.rep.Schema = "already present"
		return nil
	}
	major, err := pg.ServerVersionNum(ctx, j.conns[j.source.Name])
	if err != nil {
		return fmt.Errorf("node %s: %w", j.source.Name, err)
	}
	dump, restore, err := findDumpTools(j.o.PgBin, major/10000)
	if err != nil {
		return fmt.Errorf("%w: %s has no replicated table, and %v; create the schema on %s yourself (pg_dump --schema-only of %s, restored there), then run node add again",
			ErrRefused, j.node.Name, err, j.node.Name, j.source.Name)
	}
	script, err := dumpSchema(ctx, dump, restore, j.source.DSN, s.name, j.cfg.Replicate.Schemas, j.existingSchemas(ctx))
	if err != nil {
		return fmt.Errorf("node %s: dump the schema: %w", j.source.Name, err)
	}
	conn, err := pg.Connect(ctx, j.node.Name, j.node.DSN, "pgmesh node add "+j.node.Name+": schema")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// The restore is this node's own business: DDL capture must not send
	// it to the peers. Without arguments, pgx sends the script through the
	// simple protocol: one implicit transaction.
	if _, err := conn.Exec(ctx, "SET pgmesh.in_ddl = 'on'"); err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	if _, err := conn.Exec(ctx, script); err != nil {
		return fmt.Errorf("%w: node %s: restoring %s's schema failed: %v (the role needs to be a member of the objects' owners; or create the schema on %s yourself and run node add again)",
			ErrRefused, j.node.Name, j.source.Name, err, j.node.Name)
	}
	if _, err := j.n.Exec(ctx, "UPDATE pgmesh.join_state SET schema_restored = true, updated_at = now()"); err != nil {
		return fmt.Errorf("node %s: %w", j.node.Name, err)
	}
	j.rep.Schema = "restored from " + j.source.Name
	j.printf("schema of %s restored from %s (%s)", strings.Join(j.cfg.Replicate.Schemas, ", "), j.source.Name, dump)
	return nil
}

func (j *joiner) existingSchemas(ctx context.Context) []string {
	rows, err := j.n.Query(ctx, "SELECT nspname::text FROM pg_namespace")
	if err != nil {
		return nil
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	return names
}

// findDumpTools finds pg_dump and pg_restore of at least major: in dir, in
// $PGMESH_PG_BIN, on PATH, then in /usr/lib/postgresql/*/bin.
func findDumpTools(dir string, major int) (dump, restore string, err error) {
	var cands []string
	for _, d := range []string{dir, os.Getenv(sandbox.EnvBinDir)} {
		if d != "" {
			cands = append(cands, filepath.Join(d, "pg_dump"))
		}
	}
	if p, err := exec.LookPath("pg_dump"); err == nil {
		cands = append(cands, p)
	}
	more, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump")
	sort.Sort(sort.Reverse(sort.StringSlice(more)))
	cands = append(cands, more...)
	var seen []string
	for _, c := range cands {
		out, err := exec.Command(c, "--version").Output()
		if err != nil {
			continue
		}
		m := regexp.MustCompile(`(\d+)(\.\d+)?`).FindStringSubmatch(string(out))
		if m == nil {
			continue
		}
		v, _ := strconv.Atoi(m[1])
		seen = append(seen, fmt.Sprintf("%s (%d)", c, v))
		r := filepath.Join(filepath.Dir(c), "pg_restore")
		if v >= major {
			if _, err := os.Stat(r); err == nil {
				return c, r, nil
			}
		}
	}
	if len(seen) == 0 {
		return "", "", fmt.Errorf("no pg_dump found (--pg-bin DIR names one)")
	}
	return "", "", fmt.Errorf("no pg_dump %d or newer with its pg_restore found (found %s; --pg-bin DIR names one)", major, strings.Join(seen, ", "))
}

// dumpSchema dumps the schemas of the source as of the snapshot and
// returns the SQL that creates them, leaving out the schemas themselves
// where they exist on the new node (public does), with their comment and
// privileges.
func dumpSchema(ctx context.Context, dump, restore, dsn, snapshot string, schemas, existing []string) (string, error) {
	dir, err := os.MkdirTemp("", "pgmesh-join-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	archive := filepath.Join(dir, "schema.dump")
	args := []string{"--schema-only", "--format=custom", "--snapshot=" + snapshot, "--file=" + archive, "--dbname=" + dsn}
	for _, s := range schemas {
		args = append(args, "--schema="+pgPattern(s))
	}
	if out, err := exec.CommandContext(ctx, dump, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %v: %s", dump, err, strings.TrimSpace(string(out)))
	}
	list, err := exec.CommandContext(ctx, restore, "--list", archive).Output()
	if err != nil {
		return "", fmt.Errorf("%s --list: %w", restore, err)
	}
	var keep bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(list))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if schema, ok := schemaEntry(sc.Text()); ok && slices.Contains(existing, schema) {
			continue
		}
		keep.WriteString(sc.Text() + "\n")
	}
	listFile := filepath.Join(dir, "list")
	if err := os.WriteFile(listFile, keep.Bytes(), 0o600); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, restore, "--use-list="+listFile, "--file=-", archive).Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", restore, err)
	}
	// pg_dump 17.6+ brackets its scripts with psql meta-commands.
	var sql strings.Builder
	for _, line := range strings.SplitAfter(string(out), "\n") {
		if strings.HasPrefix(line, `\restrict `) || strings.HasPrefix(line, `\unrestrict `) {
			continue
		}
		sql.WriteString(line)
	}
	return sql.String(), nil
}

// schemaEntry recognises the TOC lines of a schema, its comment and its
// privileges: "3; 2615 2200 SCHEMA - public owner",
// "3345; 0 0 COMMENT - SCHEMA public owner", "…; 0 0 ACL - SCHEMA public owner".
func schemaEntry(line string) (string, bool) {
	_, rest, ok := strings.Cut(line, "; ")
	if !ok || strings.HasPrefix(line, ";") {
		return "", false
	}
	f := strings.Fields(rest)
	switch {
	case len(f) >= 5 && f[2] == "SCHEMA" && f[3] == "-":
		return f[4], true
	case len(f) >= 6 && (f[2] == "COMMENT" || f[2] == "ACL") && f[3] == "-" && f[4] == "SCHEMA":
		return f[5], true
	}
	return "", false
}

// pgPattern quotes a name for pg_dump's pattern syntax.
func pgPattern(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
