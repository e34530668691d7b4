package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgpassfile"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/apply"
	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// sqlOn runs sql on conn and fails the test on error.
func sqlOn(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// denied runs sql on conn and fails the test unless PostgreSQL refuses it
// for lack of privilege (SQLSTATE 42501) or with an error that contains
// want.
func denied(t testing.TB, conn *pgx.Conn, want, sql string, args ...any) {
	t.Helper()
	_, err := conn.Exec(context.Background(), sql, args...)
	var pe *pgconn.PgError
	switch {
	case err == nil:
		t.Errorf("%s: succeeded, want it refused", sql)
	case want == "" && (!errors.As(err, &pe) || pe.Code != "42501"):
		t.Errorf("%s: %v, want permission denied (42501)", sql, err)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("%s: %v, want an error about %q", sql, err, want)
	}
}

// TestApplicationRoleWrites: an application role with ordinary table
// privileges only (no grant on schema pgmesh) inserts with snowflake, step
// and range ids, updates, deletes and truncates replicated tables, and the
// changes reach the peer; it can write none of pgmesh's own tables.
func TestApplicationRoleWrites(t *testing.T) {
	env := sandboxtest.New(t, 2)
	ctx := context.Background()
	strategies := []string{"snowflake", "step", "range"}
	for i := range 2 {
		for _, s := range strategies {
			env.Exec(t, i, fmt.Sprintf(`CREATE SCHEMA s_%[1]s; CREATE TABLE s_%[1]s.t (id bigserial PRIMARY KEY, v text)`, s))
		}
	}
	// One strategy per schema: convert with a config that replicates that
	// schema only.
	for _, s := range strategies {
		cfg := *env.Config
		cfg.Replicate = config.Replicate{Schemas: []string{"s_" + s}}
		mustCLI(t, "sequences", "-c", writeConfig(t, &cfg), "convert", "--strategy", s)
	}
	all := *env.Config
	all.Replicate = config.Replicate{Schemas: []string{"s_snowflake", "s_step", "s_range"}}
	cfgPath := writeConfig(t, &all)
	mustCLI(t, "init", "-c", cfgPath)
	startAgent(t, cfgPath)

	apps := []*pgx.Conn{env.App(t, 0), env.App(t, 1)}
	for i, app := range apps {
		for _, s := range strategies {
			sqlOn(t, app, fmt.Sprintf(`INSERT INTO s_%s.t (v) SELECT 'n%d-' || g FROM generate_series(1, 5) g`, s, i+1))
		}
	}
	sqlOn(t, apps[0], `UPDATE s_step.t SET v = v || '-updated' WHERE v = 'n1-1'`)
	sqlOn(t, apps[1], `DELETE FROM s_range.t WHERE v = 'n2-1'`)
	inspect := []*pgx.Conn{env.Inspect(t, 0), env.Inspect(t, 1)}
	for _, s := range strategies {
		st := waitConverged(t, env, inspect, "s_"+s+".t", "id")
		if want := map[string]int64{"snowflake": 10, "step": 10, "range": 9}[s]; st.Rows != want {
			t.Errorf("s_%s.t: %d rows on every node, want %d", s, st.Rows, want)
		}
	}
	// The delete left its tombstone, written by the trigger as pgmesh.
	var tombs int
	if err := inspect[1].QueryRow(ctx, `SELECT count(*) FROM pgmesh.tombstone WHERE table_name = 's_range.t'`).Scan(&tombs); err != nil || tombs != 1 {
		t.Errorf("tombstones of the application's delete: %d, %v; want 1", tombs, err)
	}
	sqlOn(t, apps[0], `TRUNCATE s_snowflake.t`)
	eventually(t, time.Minute, "truncate on n2", func() (bool, string) {
		var n int
		err := inspect[1].QueryRow(ctx, `SELECT count(*) FROM s_snowflake.t`).Scan(&n)
		return err == nil && n == 0, fmt.Sprint(n, err)
	})

	// Nothing of pgmesh's is the application's to write, read or call.
	for _, sql := range []string{
		`INSERT INTO pgmesh.tombstone (table_name, key, deleted_at, node) VALUES ('s_step.t', '{"id": 1}', now(), 'n2')`,
		`INSERT INTO pgmesh.peer_seen VALUES ('n2', 'n1', 'infinity')`,
		`INSERT INTO pgmesh.conflict_log (table_name, kind, resolution) VALUES ('x', 'y', 'z')`,
		`UPDATE pgmesh.sequence_config SET node_id = 2`,
		`INSERT INTO pgmesh.ddl_log (id, origin_node, sql, status) VALUES ('x', 'n2', 'DROP TABLE s_step.t', 'applied')`,
		`SELECT count(*) FROM pgmesh.conflict_log`,
		// Nor to order a transaction skipped, or read what was skipped.
		`INSERT INTO pgmesh.skip_request (upstream, commit_lsn) VALUES ('n2', '0/1')`,
		`SELECT changes FROM pgmesh.dead_letter`,
		`UPDATE pgmesh.link_state SET blocked = NULL`,
		`SELECT pgmesh.ddl_run('DROP TABLE s_step.t', '')`,
		`SELECT pgmesh.snowflake_nextval('s_step.t_id_seq')`,
		`SELECT pg_logical_emit_message(false, 'pgmesh.seen', '{"node":"n2","seen":{"n1":"9999-01-01T00:00:00Z"}}')`,
		`SELECT pg_replication_origin_session_setup('pgmesh_n2')`,
		// Nor to move a link's committed progress (a link would skip or
		// apply again what lies between).
		`INSERT INTO pgmesh.apply_progress VALUES ('pgmesh_n2', '0/FFFFFFFF') ON CONFLICT (origin) DO UPDATE SET end_lsn = EXCLUDED.end_lsn`,
		`SELECT pgmesh.note_applied('pgmesh_n2', '0/FFFFFFFF')`,
		`SELECT pgmesh.origin_applied('pgmesh_n2', true)`,
	} {
		denied(t, apps[0], "", sql)
	}
}

// TestTombstonesAndIDsCannotBeForged: the SECURITY DEFINER functions that
// application sessions reach do their one job only. The tombstone trigger
// function cannot be attached to another table by anyone but pgmesh (and
// refuses to write for a table it does not fire on even then), and
// snowflake_nextval moves no sequence that a snowflake default does not feed.
func TestTombstonesAndIDsCannotBeForged(t *testing.T) {
	env := sandboxtest.New(t, 1)
	ctx := context.Background()
	env.Exec(t, 0, `CREATE TABLE victim (id int PRIMARY KEY); CREATE TABLE own (id int PRIMARY KEY);
		CREATE TABLE stepped (id serial PRIMARY KEY)`)
	mustCLI(t, "init", "-c", env.ConfigPath)
	owner := env.Conn(t, 0)
	// The table's owner cannot use pgmesh's trigger function for a forged
	// tombstone of victim.
	denied(t, owner, "", `CREATE TRIGGER forge AFTER DELETE ON own FOR EACH ROW EXECUTE FUNCTION pgmesh.record_delete('public.victim', 'id')`)
	// Not even a trigger a superuser made that way writes one.
	admin := env.Admin(t, 0)
	sqlOn(t, admin, `CREATE TRIGGER forge AFTER DELETE ON public.own FOR EACH ROW EXECUTE FUNCTION pgmesh.record_delete('public.victim', 'id')`)
	sqlOn(t, owner, `INSERT INTO own VALUES (1)`)
	denied(t, owner, "names table public.victim", `DELETE FROM own WHERE id = 1`)
	var n int
	if err := env.Pgmesh(t, 0).QueryRow(ctx, `SELECT count(*) FROM pgmesh.tombstone WHERE table_name = 'public.victim'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("forged tombstones of public.victim: %d, %v", n, err)
	}
	// snowflake_nextval refuses a sequence no snowflake default calls it
	// for, even for pgmesh's role (which may call it by name).
	meta := env.Pgmesh(t, 0)
	denied(t, meta, "no column default calls it", `SELECT pgmesh.snowflake_nextval('public.stepped_id_seq')`)
}

// TestDDLGrantsNothing: a role that may run DDL in a replicated schema (and
// that pgmesh may act as) tries every way to gain, through replicated DDL,
// something on the peers that it does not have there. After all of it, it
// is not a superuser on any node, wrote no table it has no grant on, ran no
// OS command, and the links still run.
func TestDDLGrantsNothing(t *testing.T) {
	env := sandboxtest.New(t, 2)
	ctx := context.Background()
	mallory := "mal_" + strings.TrimPrefix(env.DB, "testddlgrantsnothing_")
	pwned := filepath.Join(t.TempDir(), "pwned")
	admins := []*pgx.Conn{env.Admin(t, 0), env.Admin(t, 1)}
	for i, a := range admins {
		// Roles are per server; the nodes are two servers.
		sqlOn(t, a, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD 'mallory'`, mallory))
		// A secret only app_owner may write.
		env.ExecUncaptured(t, i, `CREATE TABLE secret (id int PRIMARY KEY, v text)`)
	}
	t.Cleanup(func() {
		for _, a := range admins {
			a.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %[1]s; DROP ROLE %[1]s`, mallory)) //nolint:errcheck // best effort
		}
	})
	mustCLI(t, "init", "-c", env.ConfigPath)
	startAgent(t, env.ConfigPath)
	// After init: init with an admin_dsn makes pgmesh a member of every
	// role that may create objects in a replicated schema.
	for _, a := range admins {
		sqlOn(t, a, fmt.Sprintf(`GRANT CREATE ON SCHEMA public TO %s`, mallory))
	}

	malDSN := strings.Replace(env.DSNAs(0, sandbox.App), "user=app", "user="+mallory+" password=mallory", 1)
	mal, err := pgx.Connect(ctx, malDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mal.Close(context.Background()) })

	// Not a role pgmesh may act as: its DDL is refused at once, with the
	// GRANT that would allow it, instead of stopping the peers' links.
	denied(t, mal, "may not act as it", `CREATE TABLE m0 (id int PRIMARY KEY)`)
	for _, a := range admins {
		sqlOn(t, a, fmt.Sprintf(`GRANT %s TO pgmesh`, mallory))
	}

	attacks := []struct{ name, sql, refusal string }{
		{"DO block", fmt.Sprintf(`DO $$ BEGIN EXECUTE 'CREATE TABLE m1 (id int)'; RESET ROLE; ALTER ROLE %s SUPERUSER; END $$`, mallory),
			"run from inside another statement"},
		{"CALL of a procedure that runs DDL", `CREATE TABLE m2 (id int)`, ""}, // set up below
		{"several statements in one string", fmt.Sprintf(`CREATE TABLE m3 (id int); RESET ROLE; ALTER ROLE %s SUPERUSER`, mallory),
			"several statements"},
		{"CREATE TABLE AS", `CREATE TABLE m4 AS SELECT 1 AS x`, "CREATE TABLE AS"},
		{"ADD COLUMN with a volatile default", `ALTER TABLE mt ADD COLUMN r float DEFAULT random()`, "computed on each node"},
		{"ADD COLUMN DEFAULT now()", `ALTER TABLE mt ADD COLUMN c timestamptz DEFAULT now()`, "computed on each node"},
		{"ADD COLUMN serial", `ALTER TABLE mt ADD COLUMN s serial`, "computed on each node"},
		{"trigger that would fire as pgmesh in apply sessions", `ALTER TABLE mt ENABLE ALWAYS TRIGGER mt_trg`,
			"would run with pgmesh's privileges"},
		{"CHECK constraint calling its function as pgmesh", `ALTER TABLE mt ADD CONSTRAINT mt_chk CHECK (public.mal_check(id))`,
			"would run with pgmesh's privileges"},
		{"switching capture off", `SET pgmesh.in_ddl = on`, ""},
	}
	// The attacker's tools: a table and a trigger, replicated (allowed);
	// functions that try, wherever they run, to become pgmesh's session
	// user and from there a superuser, to write the secret, and to run an
	// OS command.
	escalate := fmt.Sprintf(`BEGIN
  BEGIN RESET ROLE; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'ALTER ROLE %[1]s SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'INSERT INTO public.secret VALUES (666, current_user)'; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch %[2]s'''; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'GRANT SELECT ON public.secret TO %[1]s'; EXCEPTION WHEN OTHERS THEN NULL; END;`, mallory, pwned)
	for _, sql := range []string{
		`CREATE TABLE mt (id int PRIMARY KEY)`,
		`CREATE FUNCTION mal_trg() RETURNS trigger LANGUAGE plpgsql AS $f$` + escalate + ` RETURN NEW; END $f$`,
		`CREATE TRIGGER mt_trg BEFORE INSERT ON mt FOR EACH ROW EXECUTE FUNCTION mal_trg()`,
		`CREATE FUNCTION mal_check(int) RETURNS bool LANGUAGE plpgsql AS $f$` + escalate + ` RETURN true; END $f$`,
		// Runs on the peers with the issuer's privileges only: inside a
		// security-definer context, where no role change is possible.
		`CREATE FUNCTION mal_idx(int) RETURNS int LANGUAGE plpgsql IMMUTABLE SECURITY DEFINER AS $f$` + escalate + ` RETURN $1; END $f$`,
		`CREATE INDEX mt_idx ON mt (mal_idx(id))`,
		`CREATE PROCEDURE mal_proc() LANGUAGE plpgsql AS $f$ BEGIN EXECUTE 'CREATE TABLE m2 (id int)'; END $f$`,
	} {
		sqlOn(t, mal, sql)
	}
	attacks[1].sql, attacks[1].refusal = `CALL mal_proc()`, "run from inside another statement"
	for _, a := range attacks {
		_, err := mal.Exec(ctx, a.sql)
		switch {
		case a.refusal == "" && err != nil:
			t.Errorf("%s: %v", a.name, err)
		case a.refusal != "" && (err == nil || !strings.Contains(err.Error(), a.refusal)):
			t.Errorf("%s: %v, want refused with %q", a.name, err, a.refusal)
		}
	}
	// With pgmesh.in_ddl set, DDL is still captured: it replicates.
	sqlOn(t, mal, `CREATE TABLE m5 (id int PRIMARY KEY)`)
	sqlOn(t, mal, `INSERT INTO mt VALUES (1)`)

	inspect := []*pgx.Conn{env.Inspect(t, 0), env.Inspect(t, 1)}
	eventually(t, time.Minute, "m5 and the row of mt on n2", func() (bool, string) {
		var n int
		err := inspect[1].QueryRow(ctx, `SELECT (SELECT count(*) FROM mt) + (SELECT count(*) FROM pg_class WHERE relname = 'm5')`).Scan(&n)
		return err == nil && n == 2, fmt.Sprint(n, err)
	})
	for i, a := range admins {
		var super bool
		var secret, tables int
		if err := a.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, mallory).Scan(&super); err != nil || super {
			t.Errorf("n%d: %s is a superuser (%v)", i+1, mallory, err)
		}
		if err := a.QueryRow(ctx, `SELECT count(*) FROM public.secret`).Scan(&secret); err != nil || secret != 0 {
			t.Errorf("n%d: public.secret has %d rows (%v): written by the attacker", i+1, secret, err)
		}
		if err := a.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname IN ('m1', 'm2', 'm3', 'm4')`).Scan(&tables); err != nil || tables != 0 {
			t.Errorf("n%d: %d of the refused tables exist (%v)", i+1, tables, err)
		}
		var grants bool
		if err := a.QueryRow(ctx, `SELECT has_table_privilege($1, 'public.secret', 'SELECT')`, mallory).Scan(&grants); err != nil || grants {
			t.Errorf("n%d: %s may read public.secret (%v)", i+1, mallory, err)
		}
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("%s exists: an OS command ran", pwned)
	}
	out := mustCLI(t, "status", "-c", env.ConfigPath)
	if strings.Contains(out, "retrying") {
		t.Errorf("a link stopped:\n%s", out)
	}
}

// TestHostileSearchPath: an ordinary role fills a schema with functions and
// operators named like those pgmesh calls (to_jsonb, =, jsonb_object_agg,
// current_setting…), every one of which records that it ran, and puts
// that schema first on the search_path of the database, of the application
// role and of its own sessions. None of them ever runs in a pgmesh session
// or in a pgmesh trigger or function, while application writes, local
// deletes (tombstones), snowflake ids, conflicts and DDL capture all run.
func TestHostileSearchPath(t *testing.T) {
	env := sandboxtest.New(t, 2)
	ctx := context.Background()
	const logTable = `CREATE TABLE IF NOT EXISTS hostile_log (what text, who text, at timestamptz DEFAULT now())`
	traps := []string{
		`CREATE FUNCTION hostile.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('to_jsonb', current_user); RETURN pg_catalog.to_jsonb($1); END $f$`,
		`CREATE FUNCTION hostile.jsonb_object_agg_sf(jsonb, text, jsonb) RETURNS jsonb LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('jsonb_object_agg', current_user); RETURN $1; END $f$`,
		`CREATE AGGREGATE hostile.jsonb_object_agg(text, jsonb) (SFUNC = hostile.jsonb_object_agg_sf, STYPE = jsonb, INITCOND = '{}')`,
		`CREATE FUNCTION hostile.text_eq(text, text) RETURNS bool LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('text =', current_user); RETURN $1 OPERATOR(pg_catalog.=) $2; END $f$`,
		`CREATE OPERATOR hostile.= (LEFTARG = text, RIGHTARG = text, FUNCTION = hostile.text_eq)`,
		`CREATE FUNCTION hostile.int_eq(int, int) RETURNS bool LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('int =', current_user); RETURN $1 OPERATOR(pg_catalog.=) $2; END $f$`,
		`CREATE OPERATOR hostile.= (LEFTARG = int, RIGHTARG = int, FUNCTION = hostile.int_eq)`,
		`CREATE FUNCTION hostile.current_setting(text) RETURNS text LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('current_setting', current_user); RETURN pg_catalog.current_setting($1); END $f$`,
		`CREATE FUNCTION hostile.jsonb_populate_record(anyelement, jsonb) RETURNS anyelement LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('jsonb_populate_record', current_user); RETURN pg_catalog.jsonb_populate_record($1, $2); END $f$`,
		`CREATE FUNCTION hostile.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('now', current_user); RETURN pg_catalog.now(); END $f$`,
		`CREATE FUNCTION hostile.pg_current_xact_id() RETURNS xid8 LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.hostile_log (what, who) VALUES ('pg_current_xact_id', current_user); RETURN pg_catalog.pg_current_xact_id(); END $f$`,
	}
	hostilePath := "hostile, pg_catalog, public"
	for i := range 2 {
		// The hostile schema is not replicated: its objects are this
		// node's, made by its owner.
		env.Exec(t, i, `CREATE SCHEMA hostile`)
		env.Exec(t, i, logTable)
		env.Exec(t, i, `GRANT INSERT ON hostile_log TO PUBLIC; GRANT USAGE ON SCHEMA hostile TO PUBLIC`)
		for _, trap := range traps {
			env.Exec(t, i, trap)
		}
		env.Exec(t, i, `CREATE TABLE item (id int PRIMARY KEY, email text UNIQUE, v text)`)
		env.Exec(t, i, `CREATE TABLE ev (id bigserial PRIMARY KEY, v text)`)
	}
	exclude := *env.Config
	exclude.Replicate = config.Replicate{Schemas: []string{"public"}, Exclude: []string{"public.hostile_log"}}
	cfgPath := writeConfig(t, &exclude)
	mustCLI(t, "sequences", "-c", cfgPath, "convert", "--strategy", "snowflake")
	mustCLI(t, "init", "-c", cfgPath)
	for i := range 2 {
		a := env.Admin(t, i)
		sqlOn(t, a, fmt.Sprintf(`ALTER DATABASE %s SET search_path = %s`, env.DB, hostilePath))
		sqlOn(t, a, fmt.Sprintf(`ALTER ROLE app IN DATABASE %s SET search_path = %s`, env.DB, hostilePath))
	}
	t.Cleanup(func() {
		a := env.Admin(t, 0)
		a.Exec(context.Background(), fmt.Sprintf(`ALTER ROLE app IN DATABASE %s RESET search_path`, env.DB)) //nolint:errcheck // the database is dropped anyway
	})
	// The traps work: a session on the hostile path runs them.
	control := env.App(t, 0)
	sqlOn(t, control, `SELECT 'a'::text = 'b'::text`)
	logged := func(i int) []string {
		rows, err := env.Admin(t, i).Query(ctx, `SELECT what || ' as ' || who FROM public.hostile_log ORDER BY at`)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := logged(0); len(got) != 1 || got[0] != "text = as app" {
		t.Fatalf("the control session's trap log %q, want its own comparison", got)
	}
	env.Exec(t, 0, `TRUNCATE hostile_log`)

	startAgent(t, cfgPath)
	apps := []*pgx.Conn{env.App(t, 0), env.App(t, 1)}
	for i, app := range apps {
		sqlOn(t, app, `INSERT INTO item SELECT g, 'e' || g, $1 FROM generate_series(1, 20) g ON CONFLICT DO NOTHING`, fmt.Sprintf("n%d", i+1))
		sqlOn(t, app, `INSERT INTO ev (v) SELECT 'x' FROM generate_series(1, 5)`)
		sqlOn(t, app, `UPDATE item SET v = v || '!' WHERE id <= 10`)
		sqlOn(t, app, `DELETE FROM item WHERE id > 18`)
	}
	// DDL by the owner in a session on the hostile path: captured by
	// pgmesh's SECURITY DEFINER trigger functions.
	owner := env.Conn(t, 0)
	sqlOn(t, owner, `SET search_path = `+hostilePath)
	sqlOn(t, owner, `ALTER TABLE item ADD COLUMN note text`)
	inspect := []*pgx.Conn{env.Inspect(t, 0), env.Inspect(t, 1)}
	waitConverged(t, env, inspect, "item", "id")
	waitConverged(t, env, inspect, "ev", "id")
	mustCLI(t, "diff", "-c", cfgPath)
	for i := range 2 {
		if got := logged(i); len(got) != 0 {
			t.Errorf("n%d: hostile functions ran: %q", i+1, got)
		}
	}
}

// TestSecretsStayOut: with DSNs that carry a password inline, no output of
// pgmesh shows it: init, check, run (its log, status page, metrics,
// healthz), status, diff, conflicts, ddl list, setup-sql, in text and
// JSON, and the errors of a wrong password and of an unreachable node.
func TestSecretsStayOut(t *testing.T) {
	env := sandboxtest.New(t, 2)
	pf, err := pgpassfile.ReadPassfile(env.Cluster.Passfile())
	if err != nil {
		t.Fatal(err)
	}
	inline := *env.Config
	inline.Nodes = slices.Clone(env.Config.Nodes)
	var secrets []string
	for i, n := range inline.Nodes {
		pc, err := pgconn.ParseConfig(n.DSN)
		if err != nil {
			t.Fatal(err)
		}
		pw := pf.FindPassword(pc.Host, fmt.Sprint(pc.Port), pc.Database, pc.User)
		adminPW := pf.FindPassword(pc.Host, fmt.Sprint(pc.Port), pc.Database, "postgres")
		if pw == "" || adminPW == "" {
			t.Fatalf("no password for %s in the sandbox's passfile", n.Name)
		}
		secrets = append(secrets, pw, adminPW)
		strip := func(dsn, pw string) string {
			return strings.Replace(dsn, "passfile="+env.Cluster.Passfile(), "password="+pw, 1)
		}
		inline.Nodes[i].DSN = strip(n.DSN, pw)
		inline.Nodes[i].AdminDSN = strip(n.AdminDSN, adminPW)
		if inline.Nodes[i].DSN == n.DSN {
			t.Fatalf("DSN %q names no passfile", n.DSN)
		}
	}
	cfgPath := writeConfig(t, &inline)
	for i := range 2 {
		env.Exec(t, i, `CREATE TABLE item (id int PRIMARY KEY, v text)`)
	}
	var outputs []string
	run := func(args ...string) {
		out, _ := runCLI(t, append(args, "--log-level", "debug")...)
		outputs = append(outputs, strings.Join(args, " ")+":\n"+out)
	}
	run("init", "-c", cfgPath)
	run("init", "-c", cfgPath, "--json")
	run("check", "-c", cfgPath)
	run("check", "-c", cfgPath, "--json")
	run("setup-sql", "-c", cfgPath)

	// The agent with its HTTP endpoint.
	cmd := startAgentListening(t, cfgPath)
	sqlOn(t, env.App(t, 0), `INSERT INTO item VALUES (1, 'a')`)
	sqlOn(t, env.App(t, 1), `INSERT INTO item VALUES (1, 'b') ON CONFLICT DO NOTHING`)
	waitConverged(t, env, []*pgx.Conn{env.Inspect(t, 0), env.Inspect(t, 1)}, "item", "id")
	for _, path := range []string{"/", "/metrics", "/healthz"} {
		outputs = append(outputs, path+":\n"+cmd.get(t, path))
	}
	run("status", "-c", cfgPath)
	run("status", "-c", cfgPath, "--json")
	run("diff", "-c", cfgPath)
	run("conflicts", "-c", cfgPath, "--json")
	run("ddl", "list", "-c", cfgPath, "--json")

	// Errors: a wrong password, an unreachable node.
	bad := inline
	bad.Nodes = slices.Clone(inline.Nodes)
	bad.Nodes[1].DSN = strings.Replace(bad.Nodes[1].DSN, "password="+secrets[2], "password="+secrets[2]+"x", 1)
	bad.Nodes[0].DSN = strings.Replace(bad.Nodes[0].DSN, fmt.Sprintf("port=%d", env.Cluster.Nodes[0].Port), fmt.Sprintf("port=%d", closedPort(t)), 1)
	badPath := writeConfig(t, &bad)
	run("check", "-c", badPath)
	run("status", "-c", badPath)
	run("init", "-c", badPath)
	cmd.stop()
	outputs = append(outputs, "agent log:\n"+cmd.out.String())

	all := strings.Join(outputs, "\n")
	if !strings.Contains(all, "password authentication failed") {
		t.Errorf("the wrong password was not reported as such:\n%s", tail(all, 40))
	}
	for _, s := range secrets {
		for _, variant := range []string{s, s + "x"} {
			if i := strings.Index(all, variant); i >= 0 {
				t.Errorf("a password appears in the output: …%s…", all[max(0, i-200):min(len(all), i+40)])
			}
		}
	}
}

// TestSandboxNeedsPasswords: the sandbox's servers trust no local user: a
// connection without the password is refused, the password file is private,
// and nothing the sandbox wrote is writable by others.
func TestSandboxNeedsPasswords(t *testing.T) {
	env := sandboxtest.New(t, 1)
	ctx := context.Background()
	noPass := strings.Replace(env.DSNAs(0, sandbox.Admin), "passfile="+env.Cluster.Passfile(), "passfile=/nonexistent", 1)
	if c, err := pgx.Connect(ctx, noPass); err == nil {
		c.Close(ctx)
		t.Fatal("connected as the superuser without a password")
	} else if !strings.Contains(err.Error(), "password") {
		t.Errorf("connecting without a password: %v, want a password error", err)
	}
	st, err := os.Stat(env.Cluster.Passfile())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", env.Cluster.Passfile(), st.Mode().Perm())
	}
	err = filepath.WalkDir(env.Cluster.Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			// The data directories belong to the server's user.
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if info.Mode().Perm()&0o002 != 0 {
			t.Errorf("%s is writable by others (%v)", path, info.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestAdvisoryLocksOnlyDelay: PostgreSQL lets every role take any advisory
// lock, pgmesh's keys too. An application session that holds the lock every
// apply transaction shares (apply.PauseLock) and all 64 key gates stalls
// the link into its node, visibly (the apply session waits for it in
// pg_locks), and does nothing more: once it lets go, every change arrives,
// none is lost, none is logged as a conflict.
func TestAdvisoryLocksOnlyDelay(t *testing.T) {
	env := sandboxtest.New(t, 2)
	ctx := context.Background()
	initMesh(t, env, 2, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	startAgent(t, env.ConfigPath)
	cs := conns(t, env, 2)
	writer := env.App(t, 0)
	sqlOn(t, writer, `INSERT INTO t SELECT g, 'old' FROM generate_series(1, 5) g`)
	waitConverged(t, env, cs, "t", "id")

	attacker := env.App(t, 1)
	sqlOn(t, attacker, `SELECT pg_catalog.pg_advisory_lock($1, $2)`, apply.PauseLock[0], apply.PauseLock[1])
	// The key gates (sql/0010_key_gates.sql).
	sqlOn(t, attacker, `SELECT pg_catalog.pg_advisory_lock(1885826408, g) FROM generate_series(0, 63) g`)
	sqlOn(t, writer, `INSERT INTO t SELECT g, 'new' FROM generate_series(6, 10) g`)
	sqlOn(t, writer, `UPDATE t SET v = 'updated' WHERE id = 2`)
	sqlOn(t, writer, `DELETE FROM t WHERE id = 1`)
	pid := attacker.PgConn().PID()
	eventually(t, time.Minute, "n2's apply session waits for the application's lock", func() (bool, string) {
		var n int
		err := cs[1].QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_locks l
		  WHERE l.locktype = 'advisory' AND NOT l.granted AND $1::int = ANY (pg_catalog.pg_blocking_pids(l.pid))`, pid).Scan(&n)
		return err == nil && n > 0, fmt.Sprint(n, err)
	})
	var applied int
	if err := cs[1].QueryRow(ctx, `SELECT count(*) FROM t WHERE id > 5 OR v <> 'old'`).Scan(&applied); err != nil || applied != 0 {
		t.Errorf("n2 applied %d changes (%v) while every apply transaction waits for the lock", applied, err)
	}

	sqlOn(t, attacker, `SELECT pg_catalog.pg_advisory_unlock_all()`)
	st := waitConverged(t, env, cs, "t", "id")
	if st.Rows != 9 {
		t.Errorf("%d rows on every node, want 9", st.Rows)
	}
	var v string
	if err := cs[1].QueryRow(ctx, `SELECT v FROM t WHERE id = 2`).Scan(&v); err != nil || v != "updated" {
		t.Errorf("row 2 on n2: %q (%v), want updated", v, err)
	}
	for i, c := range cs {
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pgmesh.conflict_log`).Scan(&n); err != nil || n != 0 {
			t.Errorf("n%d: %d conflicts logged (%v), want none", i+1, n, err)
		}
	}
}
