package check

import (
	"context"
	"fmt"
	"strings"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/grants"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// privileges is what the configured user of a node may do, as far as
// pgmesh cares (internal/grants says why it needs each).
type privileges struct {
	Role        string
	Major       int
	Superuser   bool
	Replication bool // rolreplication: slots and replication connections
	// OriginFuncs are the pg_replication_origin_* functions the role may
	// not execute (they are revoked from PUBLIC by default).
	OriginFuncs []string
	// EmitFuncs are the pg_logical_emit_message signatures the role may not
	// execute; PublicEmit those that PUBLIC may.
	EmitFuncs, PublicEmit []string
	// SetReplicationRole: may SET session_replication_role (a superuser
	// parameter; PostgreSQL 15+ can GRANT SET ON PARAMETER).
	SetReplicationRole bool
	// CreateOnDB: may create schema pgmesh. Once it exists, SchemaOK says
	// whether the role may use and create in it (migrations, metadata).
	CreateOnDB bool
	Installed  bool
	SchemaOK   bool
	// NotMember are the roles owning replicated tables, or allowed to
	// create objects in a replicated schema, that the role may not act as:
	// it can neither publish their tables nor replay their DDL.
	NotMember []string
	// PublicCreate are replicated schemas in which every role may create
	// objects (PUBLIC has CREATE, as on public before PostgreSQL 15).
	PublicCreate []string
	// NeedEventTriggers: ddl.capture is auto, init has run, and the capture
	// event triggers do not exist (only a superuser can create them).
	NeedEventTriggers bool
	// Untrusted are functions that would run with the role's privileges
	// while it applies changes (pgmesh.untrusted_code).
	Untrusted []untrusted
}

// untrusted is one row of pgmesh.untrusted_code.
type untrusted struct{ Rel, Func, Owner, Via string }

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
	member := "'SET'"
	if n.Version < 160000 {
		member = "'MEMBER'"
	}
	p.Major = n.Version / 10000
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
       COALESCE((SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text)
                   FROM pg_proc p
                  WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = 'pg_logical_emit_message'
                    AND NOT has_function_privilege(p.oid, 'EXECUTE')), '{}'),
       COALESCE((SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid::regprocedure::text)
                   FROM pg_proc p
                  WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = 'pg_logical_emit_message'
                    AND has_function_privilege('public', p.oid, 'EXECUTE')), '{}'),
       (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgmesh\_ddl\_capture\_%' AND evtenabled = 'O')
  FROM pg_roles r WHERE r.rolname = current_user`).
		Scan(&p.Role, &db, &p.Superuser, &p.Replication, &p.SetReplicationRole, &p.CreateOnDB, &p.Installed, &p.SchemaOK,
			&p.OriginFuncs, &p.EmitFuncs, &p.PublicEmit, &triggers)
	if err != nil {
		return nil, fmt.Errorf("read privileges of the current user: %w", err)
	}
	// Both capture triggers (ddl_command_end and sql_drop) must exist once
	// init has run (it creates them itself only as a superuser or with an
	// admin_dsn).
	capture := r.cfg.DDL.Capture
	p.NeedEventTriggers = (capture == "" || capture == "auto") && triggers < len(grants.CaptureTriggers) && n.Initialised
	var nsps, rels []string
	for _, t := range n.Tables {
		nsps, rels = append(nsps, t.Schema), append(rels, t.Name)
	}
	err = n.Conn.QueryRow(ctx, `
SELECT COALESCE(array_agg(DISTINCT o.rolname ORDER BY o.rolname), '{}')
  FROM pg_roles o
 WHERE NOT o.rolsuper AND o.rolname NOT LIKE 'pg\_%' AND o.rolname <> current_user
   AND NOT pg_has_role(current_user, o.oid, `+member+`)
   AND (EXISTS (SELECT FROM unnest($1::text[], $2::text[]) AS r(nsp, rel)
                  JOIN pg_namespace s ON s.nspname = r.nsp
                  JOIN pg_class c ON c.relnamespace = s.oid AND c.relname = r.rel
                 WHERE c.relowner = o.oid)
        OR EXISTS (SELECT FROM pg_namespace s
                    WHERE s.nspname = ANY ($3)
                      AND (s.nspowner = o.oid
                           OR EXISTS (SELECT FROM aclexplode(s.nspacl) a
                                       WHERE a.grantee = o.oid AND a.privilege_type = 'CREATE'))))`,
		nsps, rels, r.cfg.Replicate.Schemas).Scan(&p.NotMember)
	if err != nil {
		return nil, fmt.Errorf("read owners of the replicated tables: %w", err)
	}
	err = n.Conn.QueryRow(ctx, `
SELECT COALESCE(array_agg(s.nspname::text ORDER BY s.nspname), '{}')
  FROM pg_namespace s
 WHERE s.nspname = ANY ($1)
   AND EXISTS (SELECT FROM aclexplode(s.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')`,
		r.cfg.Replicate.Schemas).Scan(&p.PublicCreate)
	if err != nil {
		return nil, fmt.Errorf("read owners of the replicated tables: %w", err)
	}
	if p.Installed && p.SchemaOK {
		// Defined by migration 0006; absent from a schema an older pgmesh
		// installed, which init will migrate.
		var has bool
		if err := n.Conn.QueryRow(ctx, `SELECT to_regprocedure('pgmesh.untrusted_code(oid[])') IS NOT NULL`).Scan(&has); err != nil {
			return nil, fmt.Errorf("look up pgmesh.untrusted_code: %w", err)
		}
		if has {
			rows, err := n.Conn.Query(ctx, `
SELECT u.rel::text, u.func::text, u.owner::text, u.via
  FROM pgmesh.untrusted_code(ARRAY(SELECT to_regclass(pg_catalog.quote_ident(r.nsp) || '.' || pg_catalog.quote_ident(r.rel))::oid
                                     FROM unnest($1::text[], $2::text[]) AS r(nsp, rel))) u`, nsps, rels)
			if err != nil {
				return nil, fmt.Errorf("look for code that would run as pgmesh: %w", err)
			}
			for rows.Next() {
				var u untrusted
				if err := rows.Scan(&u.Rel, &u.Func, &u.Owner, &u.Via); err != nil {
					rows.Close()
					return nil, fmt.Errorf("look for code that would run as pgmesh: %w", err)
				}
				p.Untrusted = append(p.Untrusted, u)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, fmt.Errorf("look for code that would run as pgmesh: %w", err)
			}
		}
	}
	return privilegeFindings(r.cfg, n.Name, db, p), nil
}

// privilegeFindings says, per capability pgmesh needs, whether the role has
// it, and the SQL (for a superuser) that gives it.
func privilegeFindings(cfg *config.Config, node, db string, p privileges) []Finding {
	role := pg.Ident(p.Role)
	var fs []Finding
	need := func(object string, ok bool, what, fix string) {
		if !ok {
			fs = append(fs, Finding{Status: Fail, Node: node, Check: "privileges", Object: object,
				Message: p.Role + " may not " + what, Fix: fix})
		}
	}
	// Untrusted code and emit by PUBLIC matter whatever pgmesh's role is.
	if len(p.PublicEmit) > 0 {
		fs = append(fs, Finding{Status: Fail, Node: node, Check: "privileges", Object: "pg_logical_emit_message",
			Message: "every role may execute" + missingList(p.PublicEmit) +
				": any role could make the peers replay SQL (pgmesh.ddl messages) or believe a node had seen changes it had not (pgmesh.seen)",
			Fix: revokeFunctions(p.PublicEmit)})
	}
	if len(p.Untrusted) > 0 {
		var fix []string
		for _, u := range p.Untrusted {
			fix = append(fix, fmt.Sprintf("ALTER FUNCTION %s SECURITY DEFINER;  -- owner %s, %s of table %s", u.Func, u.Owner, u.Via, u.Rel))
		}
		fs = append(fs, Finding{Status: Fail, Node: node, Check: "privileges", Object: "code run by apply",
			Message: fmt.Sprintf("%d function(s) would run with the privileges of %s while it applies changes: their owners could act as pgmesh", len(p.Untrusted), p.Role),
			Fix:     strings.Join(fix, "\n") + "\n(or have a superuser own them, or remove them from the replicated tables)"})
	}
	if p.Superuser {
		return append(fs, Finding{Status: Warn, Node: node, Check: "privileges", Object: "role " + p.Role,
			Message: p.Role + " is a superuser: pgmesh works, but a role with only the privileges it needs limits what a mistake or a compromised agent can do",
			Fix:     "create a role for pgmesh as the README's Security section shows (pgmesh setup-sql prints the SQL), and use it in the DSN"})
	}
	need("replication", p.Replication, "create replication slots nor stream changes (no REPLICATION attribute)",
		fmt.Sprintf("ALTER ROLE %s REPLICATION;", role))
	need("replication origins", len(p.OriginFuncs) == 0,
		"execute the replication origin functions that make apply exactly-once"+missingList(p.OriginFuncs),
		grantFunctions(p.OriginFuncs, role))
	need("pg_logical_emit_message", len(p.EmitFuncs) == 0,
		"emit the DDL and seen messages"+missingList(p.EmitFuncs),
		grantFunctions(p.EmitFuncs, role))
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
	grantsOf := make([]string, 0, len(p.NotMember))
	for _, o := range p.NotMember {
		grantsOf = append(grantsOf, grants.Member(o, p.Role, p.Major)+";")
	}
	need("table owners", len(p.NotMember) == 0,
		"act as the roles that own replicated tables or create objects in replicated schemas"+missingList(p.NotMember)+
			" (it publishes their tables and replays their DDL as them)",
		strings.Join(grantsOf, "\n"))
	if len(p.PublicCreate) > 0 {
		var fix []string
		for _, sch := range p.PublicCreate {
			fix = append(fix, fmt.Sprintf("REVOKE CREATE ON SCHEMA %s FROM PUBLIC;", pg.Ident(sch)))
		}
		fs = append(fs, Finding{Status: Warn, Node: node, Check: "privileges", Object: "schema " + strings.Join(p.PublicCreate, ", "),
			Message: "every role may create objects here: a DDL is replicated only if " + p.Role + " may act as its role, so most roles' DDL will be refused",
			Fix:     strings.Join(fix, "\n") + "\n(then GRANT CREATE to the roles that change the schema, and those roles to " + role + ")"})
	}
	if p.NeedEventTriggers {
		fs = append(fs, Finding{Status: Warn, Node: node, Check: "privileges", Object: "event triggers",
			Message: "the DDL capture event triggers do not exist: DDL is not replicated until a superuser creates them (ddl.capture: auto)",
			Fix: grants.Script(grants.Capture()) + fmt.Sprintf("(or set admin_dsn for this node and run pgmesh init again; or set ddl.capture: manual in %s and change the schema with pgmesh ddl)",
				configName(cfg))})
	}
	if len(fs) == 0 {
		fs = append(fs, Finding{Status: Pass, Node: node, Check: "privileges", Object: "role " + p.Role,
			Message: p.Role + " is not a superuser and may replicate, use replication origins, emit messages, set session_replication_role, manage schema pgmesh and act as the owners of the replicated tables"})
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

func revokeFunctions(funcs []string) string {
	lines := make([]string, 0, len(funcs))
	for _, f := range funcs {
		lines = append(lines, fmt.Sprintf("REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC;", f))
	}
	return strings.Join(lines, "\n")
}
