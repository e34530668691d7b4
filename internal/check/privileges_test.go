package check

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
)

func TestPrivilegeFindings(t *testing.T) {
	// able has every privilege without being a superuser.
	able := privileges{Role: "mesh", Major: 15, Replication: true, SetReplicationRole: true, CreateOnDB: true}
	with := func(change func(p *privileges)) privileges {
		p := able
		change(&p)
		return p
	}
	tests := []struct {
		name string
		p    privileges
		// want are "STATUS object: fix" of every finding.
		want []string
	}{
		{"superuser", privileges{Role: "postgres", Superuser: true, NotMember: []string{"app_owner"}, NeedEventTriggers: true},
			[]string{"WARN role postgres: create a role for pgmesh as the README's Security section shows (pgmesh setup-sql prints the SQL), and use it in the DSN"}},
		{"everything granted", able, []string{"PASS role mesh: "}},
		{"no replication", with(func(p *privileges) { p.Replication = false }),
			[]string{`FAIL replication: ALTER ROLE "mesh" REPLICATION;`}},
		{"origin functions revoked", with(func(p *privileges) {
			p.OriginFuncs = []string{"pg_replication_origin_create(text)", "pg_replication_origin_session_setup(text)"}
		}), []string{"FAIL replication origins: " +
			`GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO "mesh";` + "\n" +
			`GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO "mesh";`}},
		{"emit not granted", with(func(p *privileges) { p.EmitFuncs = []string{"pg_logical_emit_message(boolean,text,text)"} }),
			[]string{`FAIL pg_logical_emit_message: GRANT EXECUTE ON FUNCTION pg_logical_emit_message(boolean,text,text) TO "mesh";`}},
		// PUBLIC may emit: any role could forge DDL and seen messages, even
		// when pgmesh runs as a superuser.
		{"emit open to PUBLIC", with(func(p *privileges) {
			p.Superuser, p.PublicEmit = true, []string{"pg_logical_emit_message(boolean,text,text)"}
		}),
			[]string{`FAIL pg_logical_emit_message: REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean,text,text) FROM PUBLIC;`,
				"WARN role mesh: create a role for pgmesh as the README's Security section shows (pgmesh setup-sql prints the SQL), and use it in the DSN"}},
		{"session_replication_role", with(func(p *privileges) { p.SetReplicationRole = false }),
			[]string{`FAIL session_replication_role: GRANT SET ON PARAMETER session_replication_role TO "mesh";`}},
		{"no CREATE before pgmesh is installed", with(func(p *privileges) { p.CreateOnDB = false }),
			[]string{`FAIL database shop: GRANT CREATE ON DATABASE "shop" TO "mesh";`}},
		// Once schema pgmesh exists, CREATE on the database no longer matters.
		{"installed, schema usable", with(func(p *privileges) { p.CreateOnDB, p.Installed, p.SchemaOK = false, true, true }),
			[]string{"PASS role mesh: "}},
		{"installed, schema not usable", with(func(p *privileges) { p.Installed = true }),
			[]string{`FAIL schema pgmesh: GRANT USAGE, CREATE ON SCHEMA pgmesh TO "mesh";`}},
		{"owners pgmesh may not act as, PostgreSQL 15", with(func(p *privileges) { p.NotMember = []string{"app_owner", "sales"} }),
			[]string{"FAIL table owners: " + `GRANT "app_owner" TO "mesh";` + "\n" + `GRANT "sales" TO "mesh";`}},
		{"owners pgmesh may not act as, PostgreSQL 16+", with(func(p *privileges) { p.Major, p.NotMember = 18, []string{"app_owner"} }),
			[]string{"FAIL table owners: " + `GRANT "app_owner" TO "mesh" WITH INHERIT TRUE, SET TRUE;`}},
		{"event triggers missing", with(func(p *privileges) { p.NeedEventTriggers = true }),
			[]string{"WARN event triggers: " + `CREATE EVENT TRIGGER "pgmesh_ddl_capture_end" ON ddl_command_end EXECUTE FUNCTION pgmesh.ddl_capture_end();` + "\n" +
				`CREATE EVENT TRIGGER "pgmesh_ddl_capture_drop" ON sql_drop EXECUTE FUNCTION pgmesh.ddl_capture_drop();` + "\n" +
				"(or set admin_dsn for this node and run pgmesh init again; or set ddl.capture: manual in pgmesh.yaml and change the schema with pgmesh ddl)"}},
		{"code that would run as pgmesh", with(func(p *privileges) {
			p.Untrusted = []untrusted{{Rel: "public.t", Func: "public.chk(integer)", Owner: "app_owner", Via: "constraint c1 on public.t"}}
		}), []string{"FAIL code run by apply: ALTER FUNCTION public.chk(integer) SECURITY DEFINER;  -- owner app_owner, constraint c1 on public.t of table public.t\n" +
			"(or have a superuser own them, or remove them from the replicated tables)"}},
		{"PUBLIC may create in a replicated schema", with(func(p *privileges) { p.PublicCreate = []string{"public"} }),
			[]string{"WARN schema public: " + `REVOKE CREATE ON SCHEMA "public" FROM PUBLIC;` + "\n" +
				`(then GRANT CREATE to the roles that change the schema, and those roles to "mesh")`}},
		{"several at once", with(func(p *privileges) { p.Replication, p.SetReplicationRole = false, false }),
			[]string{`FAIL replication: ALTER ROLE "mesh" REPLICATION;`,
				`FAIL session_replication_role: GRANT SET ON PARAMETER session_replication_role TO "mesh";`}},
	}
	cfg := &config.Config{Path: "pgmesh.yaml"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, f := range privilegeFindings(cfg, "n2", "shop", tt.p) {
				if f.Node != "n2" || f.Check != "privileges" {
					t.Errorf("node/check: %+v", f)
				}
				if f.Status == Fail && f.Object != "code run by apply" && f.Object != "pg_logical_emit_message" && !strings.Contains(f.Message, tt.p.Role+" may not") {
					t.Errorf("message does not name the role: %q", f.Message)
				}
				got = append(got, fmt.Sprintf("%s %s: %s", f.Status, f.Object, f.Fix))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
