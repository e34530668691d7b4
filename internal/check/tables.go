package check

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// checkIdentity makes sure every replicated table can ship UPDATE and
// DELETE: PostgreSQL refuses both on a published table without a replica
// identity, which would break the application, not only replication.
func checkIdentity(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	cfg := r.cfg
	if len(n.Tables) == 0 {
		return []Finding{{Status: Warn, Node: n.Name, Check: "identity",
			Message: fmt.Sprintf("no tables to replicate in schemas %s", strings.Join(cfg.Replicate.Schemas, ", ")),
			Fix:     "create the tables on every node (same definitions) before init, or list the right schemas under replicate.schemas"}}, nil
	}
	var fs []Finding
	for _, t := range n.Tables {
		f, err := identityFinding(ctx, n.Conn, cfg, n.Name, t)
		if err != nil {
			return fs, err
		}
		if f.Status != Pass {
			fs = append(fs, f)
		}
	}
	if len(fs) == 0 {
		fs = append(fs, Finding{Status: Pass, Node: n.Name, Check: "identity",
			Message: fmt.Sprintf("%d replicated tables, all with a usable replica identity", len(n.Tables))})
	}
	return fs, nil
}

func identityFinding(ctx context.Context, q pg.Querier, cfg *config.Config, node string, t pg.Table) (Finding, error) {
	f := Finding{Status: Pass, Node: node, Check: "identity", Object: t.QualifiedName()}
	deltas := len(cfg.Conflicts.Tables[t.QualifiedName()].DeltaColumns) > 0
	switch {
	case !t.HasUsableIdentity():
		fix, err := pg.SuggestIdentity(ctx, q, t)
		if err != nil {
			return f, err
		}
		f.Status = Fail
		f.Message = "no usable replica identity (" + describeIdentity(t) + "): UPDATE and DELETE would fail once the table is published"
		f.Fix = fix
	case deltas && t.ReplicaIdentity != 'f':
		// delta_columns apply local + (new - old): the old row must be shipped.
		f.Status = Fail
		f.Message = "delta_columns need the whole old row: the table must have REPLICA IDENTITY FULL"
		f.Fix = fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", t.Ident())
	case t.ReplicaIdentity == 'f' && !deltas:
		f.Status = Warn
		f.Message = "REPLICA IDENTITY FULL: every UPDATE and DELETE ships the whole old row and is matched on all columns (slow on big tables)"
		if t.HasPrimaryKey {
			f.Fix = fmt.Sprintf("unless the table is insert-only: ALTER TABLE %s REPLICA IDENTITY DEFAULT;", t.Ident())
		} else {
			f.Fix = fmt.Sprintf("unless the table is insert-only: add a primary key, then ALTER TABLE %s REPLICA IDENTITY DEFAULT;", t.Ident())
		}
	}
	return f, nil
}

func describeIdentity(t pg.Table) string {
	switch t.ReplicaIdentity {
	case 'd':
		return "REPLICA IDENTITY DEFAULT and no primary key"
	case 'i':
		return "the REPLICA IDENTITY index no longer exists"
	case 'n':
		return "REPLICA IDENTITY NOTHING"
	}
	return fmt.Sprintf("replica identity %q", t.ReplicaIdentity)
}

// checkPresence fails every replicated table that exists on some nodes only:
// its changes would have nowhere to go. Only reachable nodes are compared.
func checkPresence(_ context.Context, r *run, nodes []*Node) ([]Finding, error) {
	return presenceFindings(r.cfg, nodes), nil
}

func presenceFindings(cfg *config.Config, nodes []*Node) []Finding {
	if len(nodes) < 2 {
		return nil
	}
	where := map[string][]string{} // table → nodes that have it, in config order
	var names []string
	for _, n := range nodes {
		for _, t := range n.Tables {
			q := t.QualifiedName()
			if where[q] == nil {
				names = append(names, q)
			}
			where[q] = append(where[q], n.Name)
		}
	}
	var fs []Finding
	slices.Sort(names)
	for _, name := range names {
		have := where[name]
		if len(have) == len(nodes) {
			continue
		}
		for _, n := range nodes {
			if slices.Contains(have, n.Name) {
				continue
			}
			fs = append(fs, Finding{Status: Fail, Node: n.Name, Check: "tables", Object: name,
				Message: fmt.Sprintf("table missing here; present on %s", strings.Join(have, ", ")),
				Fix: fmt.Sprintf("create it with the same definition as on %s (pg_dump --schema-only -t '%s'), or add %s to replicate.exclude in %s",
					have[0], name, name, configName(cfg))})
		}
	}
	if len(fs) == 0 {
		fs = append(fs, Finding{Status: Pass, Check: "tables",
			Message: fmt.Sprintf("the %d replicated tables exist on all %d reachable nodes", len(names), len(nodes))})
	}
	return fs
}
