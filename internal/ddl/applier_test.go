package ddl_test

import (
	"context"
	"fmt"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/apply"
	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/stream"
)

// link runs one link n1 → n2 the way the agent does (stream → applier on
// an apply session), with the DDL executor as the applier's OnMessage.
// It returns a channel that receives the link's error when it ends.
func link(t *testing.T, m *mesh) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	slot := m.slot(t, 0)
	origin := fmt.Sprintf("pgmesh_dt_%08x", crc32.ChecksumIEEE([]byte(m.env.DB)))
	m.exec(t, 1, "SELECT pg_replication_origin_create($1)", origin)
	applyConn := m.env.Pgmesh(t, 1)
	mon := m.env.Pgmesh(t, 1)
	exec := &ddl.Executor{Node: "n2"}
	applier, err := apply.New(ctx, []apply.Session{{Conn: applyConn.PgConn(), Origin: origin}}, apply.Options{
		Upstream: "n1",
		OnMessage: func(ctx context.Context, conn *pgconn.PgConn, msg stream.Message) error {
			return exec.Handle(ctx, ddl.ConnExecer{Conn: conn}, msg)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	repl, err := pg.ConnectReplication(ctx, "n1", m.env.DSNs[0], "ddl test")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	ended := make(chan struct{}) // done's value may be taken by the test
	go func() {
		defer close(ended)
		done <- stream.Run(ctx, repl, stream.Options{Node: "n1", Slot: slot, Publication: "pgmesh"}, applier,
			func(ctx context.Context) (stream.LSN, error) {
				var s *string
				if err := mon.QueryRow(ctx, "SELECT pg_replication_origin_progress($1, true)::text", origin).Scan(&s); err != nil || s == nil {
					return 0, err
				}
				return pglogrepl.ParseLSN(*s)
			})
	}()
	t.Cleanup(func() {
		cancel()
		<-ended
		repl.Close(context.Background())
		applier.Close(context.Background())
		m.exec(t, 1, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1", applyConn.PgConn().PID())
		m.exec(t, 1, "SELECT pg_replication_origin_drop($1)", origin)
	})
	return done
}

// TestThroughApplier replicates DDL, and rows written with the new schema
// in the same and in later transactions, through a real stream and applier.
func TestThroughApplier(t *testing.T) {
	m := newMesh(t, 2)
	ctx := testCtx(t)
	cfg := m.env.Config
	done := link(t, m)

	// pgmesh ddl, with rows in the same transaction's table afterwards.
	id, err := ddl.Emit(ctx, cfg, "n1", "CREATE TABLE public.items (id int PRIMARY KEY, name text)", ddl.EmitOptions{Role: string(sandbox.Owner)})
	if err != nil {
		t.Fatal(err)
	}
	m.env.Exec(t, 0, "INSERT INTO public.items VALUES (1, 'a'), (2, 'b')")
	// Typed DDL (event trigger) and rows using the new column, in one
	// transaction and after it.
	err = pgx.BeginFunc(ctx, m.env.Conn(t, 0), func(tx pgx.Tx) error {
		for _, q := range []string{
			"ALTER TABLE public.items ADD COLUMN qty int NOT NULL DEFAULT 5",
			"INSERT INTO public.items VALUES (3, 'c', 7)",
		} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m.env.Exec(t, 0, "UPDATE public.items SET qty = 9 WHERE id = 1")
	m.env.Exec(t, 0, "CREATE TABLE public.orders (id int PRIMARY KEY)")
	m.env.Exec(t, 0, "INSERT INTO public.orders VALUES (10)")

	want := "1 a 9|2 b 5|3 c 7|orders 10"
	var got string
	for deadline := time.Now().Add(time.Minute); ; {
		got = itemsState(t, m.conns[1])
		if got == want {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("link ended: %v (n2 has %q)", err, got)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("n2 has %q, want %q", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := ddl.Wait(ctx, cfg, id, time.Minute); err != nil {
		t.Error(err)
	}
	if log := ddl.Collect(ctx, cfg); len(log.Pending()) != 0 || len(log.Entries) != 3 {
		t.Errorf("ddl log: %d entries, pending %+v; want 3 applied everywhere", len(log.Entries), log.Pending())
	}

	// A DDL that fails on n2 stops the link with the DDL's id.
	m.env.ExecUncaptured(t, 1, "CREATE TABLE public.dup (id int)")
	id, err = ddl.Emit(ctx, cfg, "n1", "CREATE TABLE public.dup (id int)", ddl.EmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if ae, ok := ddl.AsApplyError(err); !ok || ae.Payload.ID != id || !strings.Contains(err.Error(), id) {
			t.Errorf("link error %v, want the DDL %s failure", err, id)
		}
	case <-time.After(time.Minute):
		t.Fatal("the link did not stop on the failing DDL")
	}
}

func itemsState(t *testing.T, c *pgx.Conn) string {
	t.Helper()
	var s string
	err := c.QueryRow(testCtx(t), `SELECT coalesce((SELECT string_agg(concat_ws(' ', id, name, qty), '|' ORDER BY id) FROM public.items), '')
		|| coalesce((SELECT '|orders ' || string_agg(id::text, ',') FROM public.orders), '')`).Scan(&s)
	if err != nil {
		// The tables do not exist yet.
		return err.Error()
	}
	return s
}
