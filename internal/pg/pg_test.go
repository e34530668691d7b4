package pg_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 1) }

// otherValues are values, other than the pinned ones, that an operator may
// give each of pg.ValueSettings.
var otherValues = map[string]string{
	"client_encoding":             "LATIN1",
	"DateStyle":                   "SQL, DMY",
	"IntervalStyle":               "sql_standard",
	"TimeZone":                    "Asia/Kolkata",
	"extra_float_digits":          "0",
	"bytea_output":                "escape",
	"lc_monetary":                 "POSIX",
	"standard_conforming_strings": "off",
	"xmloption":                   "document",
	"array_nulls":                 "off",
	"search_path":                 "public",
	"row_security":                "on",
}

// setEverywhere sets name at the database level and for role in this
// database, as ALTER DATABASE / ALTER ROLE … SET do; it needs the rights of
// the database owner and of a role administrator.
func setEverywhere(t *testing.T, env *sandboxtest.Env, role, name, value string) {
	t.Helper()
	env.AdminExec(t, 0, fmt.Sprintf("ALTER DATABASE %s SET %s = %s", pg.Ident(env.DB), name, pg.QuoteLiteral(value)))
	env.AdminExec(t, 0, fmt.Sprintf("ALTER ROLE %s IN DATABASE %s SET %s = %s", pg.Ident(role), pg.Ident(env.DB), name, pg.QuoteLiteral(value)))
}

// TestValueSettingsWin: whatever the database, the role or the DSN say,
// the sessions that move values (ConnectExact, and the walsender of
// ConnectReplication) run with ValueSettings, also after DISCARD ALL; an
// ordinary session (Connect) keeps the operator's values.
func TestValueSettingsWin(t *testing.T) {
	env := sandboxtest.New(t, 1)
	ctx := context.Background()
	cfg, err := pgconn.ParseConfig(env.DSNs[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range pg.ValueSettings {
		other, ok := otherValues[s.Name]
		if !ok {
			t.Fatalf("no other value to try for %s", s.Name)
		}
		setEverywhere(t, env, cfg.User, s.Name, other)
	}
	// The DSN's own spellings lose too.
	dsn := env.DSNs[0] + " datestyle=German options='-c TimeZone=Europe/Berlin -c bytea_output=escape'"

	show := func(t *testing.T, exec func(sql string) (string, error)) map[string]string {
		t.Helper()
		got := map[string]string{}
		for _, s := range pg.ValueSettings {
			v, err := exec("SHOW " + s.Name)
			if err != nil {
				t.Fatalf("SHOW %s: %v", s.Name, err)
			}
			got[s.Name] = v
		}
		return got
	}
	pinned := func(t *testing.T, what string, got map[string]string) {
		t.Helper()
		for _, s := range pg.ValueSettings {
			want := s.Value
			if s.Name == "DateStyle" {
				want = "ISO, YMD"
			}
			if got[s.Name] != want {
				t.Errorf("%s: %s = %q, want %q", what, s.Name, got[s.Name], want)
			}
		}
	}
	text := func(c *pgconn.PgConn) func(string) (string, error) {
		return func(sql string) (string, error) {
			rs, err := c.Exec(ctx, sql).ReadAll()
			if err != nil {
				return "", err
			}
			if len(rs) != 1 || len(rs[0].Rows) != 1 {
				return "", fmt.Errorf("%s: unexpected result", sql)
			}
			return string(rs[0].Rows[0][0]), nil
		}
	}

	plain, err := pg.Connect(ctx, "n1", env.DSNs[0], "test")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close(ctx)
	got := show(t, text(plain.PgConn()))
	if !strings.HasPrefix(got["DateStyle"], "SQL") || got["TimeZone"] != "Asia/Kolkata" || got["extra_float_digits"] != "0" {
		t.Fatalf("an ordinary session does not see the operator's settings, the test proves nothing: %v", got)
	}

	exact, err := pg.ConnectExact(ctx, "n1", dsn, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer exact.Close(ctx)
	pinned(t, "ConnectExact", show(t, text(exact.PgConn())))
	if _, err := exact.Exec(ctx, "DISCARD ALL"); err != nil {
		t.Fatal(err)
	}
	pinned(t, "ConnectExact after DISCARD ALL", show(t, text(exact.PgConn())))

	repl, err := pg.ConnectReplication(ctx, "n1", dsn, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(ctx)
	pinned(t, "ConnectReplication", show(t, text(repl)))
}
