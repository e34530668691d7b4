package check

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
)

func TestPrivilegeFindings(t *testing.T) {
	// able has every privilege without being a superuser.
	able := privileges{Role: "mesh", Replication: true, SetReplicationRole: true, CreateOnDB: true}
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
		{"superuser", privileges{Role: "postgres", Superuser: true, NotOwned: []string{"public.t"}, NeedEventTriggers: true},
			[]string{"PASS role postgres: "}},
		{"everything granted", able, []string{"PASS role mesh: "}},
		{"no replication", with(func(p *privileges) { p.Replication = false }),
			[]string{`FAIL replication: ALTER ROLE "mesh" REPLICATION;`}},
		{"origin functions revoked", with(func(p *privileges) {
			p.OriginFuncs = []string{"pg_replication_origin_create(text)", "pg_replication_origin_session_setup(text)"}
		}), []string{"FAIL replication origins: " +
			`GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text) TO "mesh";` + "\n" +
			`GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO "mesh";`}},
		{"session_replication_role", with(func(p *privileges) { p.SetReplicationRole = false }),
			[]string{`FAIL session_replication_role: GRANT SET ON PARAMETER session_replication_role TO "mesh";`}},
		{"no CREATE before pgmesh is installed", with(func(p *privileges) { p.CreateOnDB = false }),
			[]string{`FAIL database shop: GRANT CREATE ON DATABASE "shop" TO "mesh";`}},
		// Once schema pgmesh exists, CREATE on the database no longer matters.
		{"installed, schema usable", with(func(p *privileges) { p.CreateOnDB, p.Installed, p.SchemaOK = false, true, true }),
			[]string{"PASS role mesh: "}},
		{"installed, schema not usable", with(func(p *privileges) { p.Installed = true }),
			[]string{`FAIL schema pgmesh: GRANT USAGE, CREATE ON SCHEMA pgmesh TO "mesh";`}},
		{"tables of another owner", with(func(p *privileges) { p.NotOwned = []string{"public.a", "sales.b"} }),
			[]string{"FAIL table owner: " + `ALTER TABLE "public"."a" OWNER TO "mesh";` + "\n" +
				`ALTER TABLE "sales"."b" OWNER TO "mesh";` + "\n" + `(or GRANT the owning role to "mesh")`}},
		{"event triggers missing", with(func(p *privileges) { p.NeedEventTriggers = true }),
			[]string{`FAIL event triggers: run pgmesh init once as a superuser (it creates them), or ALTER ROLE "mesh" SUPERUSER;, or set ddl.capture: manual in pgmesh.yaml and change the schema with pgmesh ddl`}},
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
				if f.Status == Fail && !strings.Contains(f.Message, tt.p.Role+" may not") {
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
