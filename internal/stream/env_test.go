package stream

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 1) }

// env is a fresh database for one test on the package's server.
type env struct {
	DB    string
	DSN   string
	Major int
	admin *pgx.Conn
}

func newEnv(t testing.TB) *env {
	t.Helper()
	se := sandboxtest.New(t, 1)
	// The tests set up publications FOR ALL TABLES and the like: a
	// superuser's work. Streams run as pgmesh's role (se.DSNs).
	e := &env{DB: se.DB, DSN: se.DSNs[0], Major: se.Major(), admin: se.Admin(t, 0)}
	e.Exec(t, "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO pgmesh")
	return e
}

// Conn opens another connection as pgmesh's role, closed at cleanup.
func (e *env) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), e.DSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Exec runs sql on the test database and fails the test on error.
func (e *env) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.admin.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
