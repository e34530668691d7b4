package check

import (
	"context"
	"fmt"
	"strings"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// privileges is what the configured user of a node may do, as far as
// pgmesh cares.
type privileges struct {
	Role        string
	Superuser   bool
	Replication bool // rolreplication: slots and replication connections
	// OriginFuncs are the pg_replication_origin_* functions the role may
	// not execute (they are revoked from PUBLIC by default).
	OriginFuncs []string
	// SetReplicationRole: may SET session_replication_role (a superuser
	// parameter; PostgreSQL 15+ can GRANT SET ON PARAMETER).
	SetReplicationRole bool
	// CreateOnDB: may create schema pgmesh. Once it exists, SchemaOK says
	// whether the role may use and create in it (migrations, metadata).
	CreateOnDB bool
	Installed  bool
	SchemaOK   bool
	// NotOwned are replicated tables the role does not own (or inherit the
	// owner's privileges of): only an owner may add a table to the
	// publication.
	NotOwned []string
	// NeedEventTriggers: ddl.capture is auto and the capture event triggers
	// do not exist yet; creating them needs a superuser.
	NeedEventTriggers bool
}

func checkPrivileges(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	var p privileges
	var db string
	var triggers int
	// has_parameter_privilege exists since 15; on an older server the
	// version check already FAILs, and only a superuser may set the role.
	srr := "has_parameter_privilege('session_replication_role', 'SET')"
	if n.Version < 150000 {
		srr = "r.rolsuper"
	}
	err := n.Conn.QueryRow(ctx, `
SELECT current_user::text, current_database()::text, r.rolsuper, r.rolreplication, `+srr+`,
       has_database_privilege(current_database(), 'CREATE'),
       to_regnamespace('pgmesh') IS NOT NULL,
       COALESCE(has_schema_privilege(to_regnamespace('pgmesh')::oid, 'USAGE, CREATE'), false),
       COALESCE((SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text)
                   FROM pg_proc p
                  WHERE p.pronamespace = 'pg_catalog'::regnamespace
                    AND p.proname LIKE 'pg\_replication\_origin\_%'
                    AND NOT has_function_privilege(p.oid, 'EXECUTE')), '{}'),
       (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgmesh\_ddl\_capture\_%' AND evtenabled = 'O')
  FROM pg_roles r WHERE r.rolname = current_user`).
		Scan(&p.Role, &db, &p.Superuser, &p.Replication, &p.SetReplicationRole, &p.CreateOnDB, &p.Installed, &p.SchemaOK, &p.OriginFuncs, &triggers)
	if err != nil {
		return nil, fmt.Errorf("read privileges of the current user: %w", err)
	}
	// Both capture triggers (ddl_command_end and sql_drop) must exist.
	capture := r.cfg.DDL.Capture
	p.NeedEventTriggers = (capture == "" || capture == "auto") && triggers < 2
	var nsps, rels []string
	for _, t := range n.Tables {
		nsps, rels = append(nsps, t.Schema), append(rels, t.Name)
	}
	err = n.Conn.QueryRow(ctx, `
SELECT COALESCE(array_agg(r.nsp || '.' || r.rel ORDER BY r.nsp, r.rel), '{}')
  FROM unnest($1::text[], $2::text[]) AS r(nsp, rel)
  JOIN pg_namespace s ON s.nspname = r.nsp
  JOIN pg_class c ON c.relnamespace = s.oid AND c.relname = r.rel
 WHERE NOT pg_has_role(c.relowner, 'USAGE')`, nsps, rels).Scan(&p.NotOwned)
	if err != nil {
		return nil, fmt.Errorf("read owners of the replicated tables: %w", err)
	}
	return privilegeFindings(r.cfg, n.Name, db, p), nil
}

// privilegeFindings says, per capability pgmesh needs, whether the role has
// it, and the GRANT or ALTER ROLE that gives it.
func privilegeFindings(cfg *config.Config, node, db string, p privileges) []Finding {
	if p.Superuser {
		return []Finding{{Status: Pass, Node: node, Check: "privileges", Object: "role " + p.Role,
			Message: p.Role + " is a superuser: it has every privilege pgmesh needs"}}
	}
	role := pg.Ident(p.Role)
	var fs []Finding
	need := func(object string, ok bool, what, fix string) {
		if !ok {
			fs = append(fs, Finding{Status: Fail, Node: node, Check: "privileges", Object: object,
				Message: p.Role + " may not " + what, Fix: fix})
		}
	}
	need("replication", p.Replication, "create replication slots nor stream changes (no REPLICATION attribute)",
		fmt.Sprintf("ALTER ROLE %s REPLICATION;", role))
	need("replication origins", len(p.OriginFuncs) == 0,
		"execute the replication origin functions that make apply exactly-once"+missingList(p.OriginFuncs),
		grantFunctions(p.OriginFuncs, role))
	need("session_replication_role", p.SetReplicationRole,
		"SET session_replication_role = replica (apply sessions must not fire triggers and FK checks)",
		fmt.Sprintf("GRANT SET ON PARAMETER session_replication_role TO %s;", role))
	if p.Installed {
		need("schema pgmesh", p.SchemaOK, "use and create objects in schema pgmesh",
			fmt.Sprintf("GRANT USAGE, CREATE ON SCHEMA pgmesh TO %s;", role))
	} else {
		need("database "+db, p.CreateOnDB, "create schema pgmesh in database "+db,
			fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s;", pg.Ident(db), role))
	}
	alter := make([]string, 0, len(p.NotOwned))
	for _, t := range p.NotOwned {
		s, name, _ := strings.Cut(t, ".")
		alter = append(alter, fmt.Sprintf("ALTER TABLE %s OWNER TO %s;", pg.Ident(s, name), role))
	}
	need("table owner", len(p.NotOwned) == 0,
		"add tables it does not own to the publication"+missingList(p.NotOwned),
		strings.Join(alter, "\n")+"\n(or GRANT the owning role to "+role+")")
	need("event triggers", !p.NeedEventTriggers,
		"create the event triggers of ddl.capture: auto (only a superuser can)",
		fmt.Sprintf("run pgmesh init once as a superuser (it creates them), or ALTER ROLE %s SUPERUSER;, or set ddl.capture: manual in %s and change the schema with pgmesh ddl",
			role, configName(cfg)))
	if len(fs) == 0 {
		fs = append(fs, Finding{Status: Pass, Node: node, Check: "privileges", Object: "role " + p.Role,
			Message: p.Role + " may replicate, use replication origins, set session_replication_role, manage schema pgmesh and publish the replicated tables"})
	}
	return fs
}

// missingList appends ": a, b" for a FAIL message, nothing when empty.
func missingList(items []string) string {
	if len(items) == 0 {
		return ""
	}
	return ": " + strings.Join(items, ", ")
}

func grantFunctions(funcs []string, role string) string {
	lines := make([]string, 0, len(funcs))
	for _, f := range funcs {
		lines = append(lines, fmt.Sprintf("GRANT EXECUTE ON FUNCTION %s TO %s;", f, role))
	}
	return strings.Join(lines, "\n")
}
