// Package grants says what pgmesh's own role needs on a node that it must
// not have by default, as the SQL a superuser runs once to give it: printed
// by `pgmesh setup-sql` and in the fixes of `pgmesh check`, run by `pgmesh
// init` when a node has an admin_dsn, and by the sandbox. pgmesh's role is
// never a superuser: it needs
//
//   - REPLICATION: logical slots and replication connections;
//   - SET on session_replication_role: apply sessions fire no ordinary
//     triggers and no foreign-key checks, as the native apply worker;
//   - membership in the roles that own the replicated tables and run
//     replicated DDL: only an owner may add a table to a publication or
//     give it the tombstone trigger, and a peer's DDL is replayed as the
//     role that ran it;
//   - CREATE on the database: the pgmesh schema;
//   - EXECUTE on the replication origin functions (exactly-once apply) and
//     on pg_logical_emit_message (DDL and seen messages), which is revoked
//     from PUBLIC: any role that could emit a message could make the peers
//     replay SQL or believe a node had seen changes it had not;
//   - the DDL capture event triggers, which only a superuser can create (on
//     pgmesh's SECURITY DEFINER functions, after init).
package grants

import (
	"fmt"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// Node is what the SQL for one node depends on.
type Node struct {
	Role   string   // pgmesh's login role: the user of the node's DSN
	DB     string   // the node's database
	Owners []string // roles that own replicated tables or run replicated DDL
	Major  int      // server major version (15…)
}

// OriginFunctions are the replication origin functions pgmesh calls (those
// of PostgreSQL 15 to 18).
var OriginFunctions = []string{
	"pg_replication_origin_create(text)",
	"pg_replication_origin_drop(text)",
	"pg_replication_origin_oid(text)",
	"pg_replication_origin_session_setup(text)",
	"pg_replication_origin_session_reset()",
	"pg_replication_origin_session_is_setup()",
	"pg_replication_origin_session_progress(boolean)",
	"pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)",
	"pg_replication_origin_xact_reset()",
	"pg_replication_origin_advance(text, pg_lsn)",
	"pg_replication_origin_progress(text, boolean)",
}

// EmitFunctions are the signatures of pg_logical_emit_message of a major
// version (17 added the flush argument).
func EmitFunctions(major int) []string {
	if major >= 17 {
		return []string{"pg_logical_emit_message(boolean, text, text, boolean)", "pg_logical_emit_message(boolean, text, bytea, boolean)"}
	}
	return []string{"pg_logical_emit_message(boolean, text, text)", "pg_logical_emit_message(boolean, text, bytea)"}
}

// Grant is one statement a superuser runs, with the condition (an SQL
// boolean expression, evaluated on the node) under which it is in place
// already, so that running the setup again changes nothing.
type Grant struct {
	SQL  string
	Held string
}

// Server is the role's attributes and memberships, which hold for every
// database of the server.
func Server(n Node) []Grant {
	role := pg.QuoteLiteral(n.Role)
	out := []Grant{
		{fmt.Sprintf("ALTER ROLE %s REPLICATION", pg.Ident(n.Role)),
			fmt.Sprintf("(SELECT rolreplication FROM pg_catalog.pg_roles WHERE rolname = %s)", role)},
		{fmt.Sprintf("GRANT SET ON PARAMETER session_replication_role TO %s", pg.Ident(n.Role)),
			fmt.Sprintf("pg_catalog.has_parameter_privilege(%s, 'session_replication_role', 'SET')", role)},
	}
	for _, o := range n.Owners {
		if o == n.Role {
			continue
		}
		set := "SET"
		if n.Major < 16 {
			set = "MEMBER"
		}
		out = append(out, Grant{Member(o, n.Role, n.Major),
			fmt.Sprintf("pg_catalog.pg_has_role(%s, %s, 'USAGE') AND pg_catalog.pg_has_role(%s, %s, '%s')",
				role, pg.QuoteLiteral(o), role, pg.QuoteLiteral(o), set)})
	}
	return out
}

// Member is the GRANT that lets role act as owner: with its privileges
// (publish and trigger its tables) and SET ROLE to it (replay its DDL).
func Member(owner, role string, major int) string {
	if major >= 16 {
		return fmt.Sprintf("GRANT %s TO %s WITH INHERIT TRUE, SET TRUE", pg.Ident(owner), pg.Ident(role))
	}
	return fmt.Sprintf("GRANT %s TO %s", pg.Ident(owner), pg.Ident(role))
}

// Database is what to run in the node's database.
func Database(n Node) []Grant {
	role := pg.QuoteLiteral(n.Role)
	out := []Grant{{fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s", pg.Ident(n.DB), pg.Ident(n.Role)),
		fmt.Sprintf("pg_catalog.has_database_privilege(%s, %s, 'CREATE')", role, pg.QuoteLiteral(n.DB))}}
	execute := func(who, f string) string {
		return fmt.Sprintf("pg_catalog.has_function_privilege(%s, %s, 'EXECUTE')", who, pg.QuoteLiteral("pg_catalog."+f))
	}
	for _, f := range OriginFunctions {
		out = append(out, Grant{fmt.Sprintf("GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s", f, pg.Ident(n.Role)), execute(role, f)})
	}
	for _, f := range EmitFunctions(n.Major) {
		out = append(out,
			Grant{fmt.Sprintf("REVOKE EXECUTE ON FUNCTION pg_catalog.%s FROM PUBLIC", f), "NOT " + execute("'public'", f)},
			Grant{fmt.Sprintf("GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s", f, pg.Ident(n.Role)), execute(role, f)})
	}
	return out
}

// Statements are the SQL of grants.
func Statements(gs []Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.SQL
	}
	return out
}

// CaptureTrigger is one DDL capture event trigger.
type CaptureTrigger struct{ Name, Event, Function string }

// CaptureTriggers are the event triggers of ddl.capture: auto.
var CaptureTriggers = []CaptureTrigger{
	{"pgmesh_ddl_capture_end", "ddl_command_end", "pgmesh.ddl_capture_end()"},
	{"pgmesh_ddl_capture_drop", "sql_drop", "pgmesh.ddl_capture_drop()"},
}

// Capture is the SQL that creates the capture event triggers; it needs the
// pgmesh schema, i.e. runs after init.
func Capture() []string {
	out := make([]string, len(CaptureTriggers))
	for i, t := range CaptureTriggers {
		out[i] = fmt.Sprintf("CREATE EVENT TRIGGER %s ON %s EXECUTE FUNCTION %s", pg.Ident(t.Name), t.Event, t.Function)
	}
	return out
}

// Script renders statements as a psql script, one per line.
func Script(stmts []string) string {
	var b strings.Builder
	for _, s := range stmts {
		b.WriteString(s)
		b.WriteString(";\n")
	}
	return b.String()
}
