package ddl

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// InFlight tells the applier of link upstream → here whether a remote
// column that does not exist here (column of table, "schema.table") may be
// the work of a DDL that is on its way: the upstream has applied a DDL that
// this node has neither applied nor skipped, and whose text mentions the
// table and the column. With column "" it asks the same about the table
// itself (rows of a table created by a DDL that has not arrived here yet).
//
// What is knowable, and why this needs the upstream: a DDL reaches this
// node only through the stream of its origin, and each origin's stream is
// ordered, so rows from the origin itself never carry a column before its
// DDL has run here. An unknown column therefore comes from a third node
// that applied the origin's DDL before this node did (its rows travel on a
// different link), and nothing about that DDL exists here yet: the message
// sits unread in the origin's slot, and the third node's apply transaction,
// made under the origin's replication origin, is never forwarded. The one
// node that certainly knows the DDL is the upstream that sent the row: it
// applied the DDL before writing the row. So the question is put to the
// upstream's ddl_log (local: a connection here; upstream: an ordinary
// connection to the upstream node).
//
// The match is a heuristic (PostgreSQL gives no parsed form of a DDL
// without a C extension): the DDL's words (pgmesh.sql_tokens, the lexer's
// view: an unquoted name lowercased, a quoted one as written) must include
// the table's name and the column's, so that a DDL that merely mentions a
// longer name ("notes" for "note") does not count. A DDL that names both
// without adding or dropping the column still counts; the applier then
// holds the change until that DDL has arrived, or logs the values: nothing
// is lost either way. A column added on one node only (no DDL in any
// ddl_log) is never in flight and stays an apply error.
func InFlight(ctx context.Context, local, upstream pg.Querier, table, column string) (bool, error) {
	name := table
	if _, t, ok := strings.Cut(table, "."); ok {
		name = t
	}
	// With column "" only the table must be named.
	rows, err := upstream.Query(ctx, `SELECT l.id FROM pgmesh.ddl_log l, LATERAL pgmesh.sql_tokens(l.sql) t
	  WHERE l.status = 'applied'
	    AND (pg_catalog.lower($1) = $1 AND $1 = ANY (t) OR '"' || $1 = ANY (t))
	    AND ($2 = '' OR pg_catalog.lower($2) = $2 AND $2 = ANY (t) OR '"' || $2 = ANY (t))`, name, column)
	if err != nil {
		return false, fmt.Errorf("read the upstream's pgmesh.ddl_log: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return false, fmt.Errorf("read the upstream's pgmesh.ddl_log: %w", err)
	}
	if len(ids) == 0 {
		return false, nil
	}
	var missing bool
	err = local.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM unnest($1::text[]) AS u(id)
	  WHERE NOT EXISTS (SELECT 1 FROM pgmesh.ddl_log l WHERE l.id = u.id AND l.status IN ('applied', 'skipped')))`, ids).Scan(&missing)
	if err != nil {
		return false, fmt.Errorf("read pgmesh.ddl_log: %w", err)
	}
	return missing, nil
}
