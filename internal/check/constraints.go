package check

import (
	"context"
	"fmt"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/conflict"
)

// checkConstraints lists every unique index and exclusion constraint of a
// replicated table, other than its key and plain unique columns, and says
// what pgmesh does when a remote row collides with a local row under it:
// expressions, partial indexes, NULLS NOT DISTINCT, index collations,
// exclusion constraints and deferrable constraints each need more than an
// equality of columns, and an operator should know they are handled, and
// how.
func checkConstraints(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	var fs []Finding
	for _, t := range n.Tables {
		tbl, err := conflict.LoadTable(ctx, n.Conn, t.Schema, t.Name, r.cfg)
		if err != nil {
			return fs, err
		}
		fs = append(fs, constraintFindings(n.Name, tbl)...)
	}
	return fs, nil
}

// constraintFindings are the findings of checkConstraints for one table.
func constraintFindings(node string, t conflict.Table) []Finding {
	var fs []Finding
	outcome := uniqueOutcome(t.Policy)
	for _, c := range t.Constraints {
		if c.Plain() {
			continue
		}
		f := Finding{Status: Pass, Node: node, Check: "constraints", Object: t.QualifiedName()}
		switch {
		case c.Deferrable && len(t.Key) == 0:
			f.Message = fmt.Sprintf("%s: checked for each remote row before it is written (the table has no key to find the rows of a transaction again at its end); a local row that holds a value it writes is a unique_conflict: %s", c.Describe(), outcome)
		case c.Deferrable:
			f.Message = fmt.Sprintf("%s: checked for the rows of each remote transaction when it ends, as on its upstream (PostgreSQL does not check deferrable constraints while pgmesh applies); a local row the remote node had not seen that holds a value it writes is a unique_conflict at once: %s; a transaction that still breaks it at its end is applied again with it decided row by row", c.Describe(), outcome)
		default:
			f.Message = fmt.Sprintf("%s: a remote row that collides with a local row under it is a unique_conflict: %s", c.Describe(), outcome)
		}
		fs = append(fs, f)
	}
	if t.KeyDeferrable {
		fs = append(fs, Finding{Status: Pass, Node: node, Check: "constraints", Object: t.QualifiedName(),
			Message: "the key is DEFERRABLE: its uniqueness is checked by pgmesh for the rows of each remote transaction when it ends (PostgreSQL does not while pgmesh applies)"})
	}
	return fs
}

// uniqueOutcome says how a unique_conflict ends under policy p.
func uniqueOutcome(p config.Policy) string {
	switch p {
	case config.FirstUpdateWins:
		return "the older row wins (first_update_wins), the other's image is logged"
	case config.KeepLocal:
		return "the local row stays (keep_local), the remote row's image is logged"
	case config.ApplyRemote:
		return "the remote row wins (apply_remote), the local row's image is logged"
	case config.PolicyError:
		return "the link stops until the row is fixed (policy error)"
	}
	return "the newer row wins (last_update_wins, by commit time and node order), the other's image is logged"
}
