package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestNodeRemove removes n3 after its last changes (an insert, an update
// and a delete) reached only n1, n2's agent being down: n2 must get them
// too, from n3's slot while n3 is up, or from n1 when n3 is gone (--force,
// its server stopped). n1 and n2 keep writing throughout; in the end they
// are identical, hold n3's changes, and no longer run links with n3.
func TestNodeRemove(t *testing.T) {
	for _, force := range []bool{false, true} {
		t.Run(fmt.Sprintf("force=%v", force), func(t *testing.T) {
			env := sandboxtest.New(t, 3)
			initMesh(t, env, 3,
				`CREATE TABLE items (id bigint PRIMARY KEY, node int NOT NULL, val int NOT NULL, note text)`)
			ctx := context.Background()
			cs := conns(t, env, 3)
			agents := []*agentProc{
				startAgent(t, env.ConfigPath, "--node", "n1"),
				startAgent(t, env.ConfigPath, "--node", "n2"),
				startAgent(t, env.ConfigPath, "--node", "n3"),
			}
			env.Exec(t, 2, `INSERT INTO items VALUES (31, 2, 0, 'old'), (32, 2, 0, 'old')`)
			waitConverged(t, env, cs, "items", "id")

			agents[1].kill()
			env.Exec(t, 2, `INSERT INTO items VALUES (33, 2, 1, 'last')`)
			env.Exec(t, 2, `UPDATE items SET val = 7, note = 'last' WHERE id = 31`)
			env.Exec(t, 2, `DELETE FROM items WHERE id = 32`)
			eventually(t, 60*time.Second, "n1 has n3's last changes", func() (bool, string) {
				var s string
				err := cs[0].QueryRow(ctx, `SELECT string_agg(id || ':' || val, ',' ORDER BY id) FROM items WHERE node = 2`).Scan(&s)
				return err == nil && s == "31:7,33:1", s
			})
			if force {
				agents[2].kill()
				if err := env.Cluster.Stop(ctx, "n3", "immediate"); err != nil {
					t.Fatal(err)
				}
				// The database must be dropped at cleanup.
				t.Cleanup(func() { _ = env.Cluster.Start(ctx, "n3") })
			}
			// The survivors write all along.
			stop := make(chan struct{})
			done := make(chan error, 2)
			for n := range 2 {
				go func() {
					for i := 0; ; i++ {
						select {
						case <-stop:
							done <- nil
							return
						default:
						}
						if err := writeItemsFrom(ctx, env.DSNs[n], n, i*100, 5); err != nil {
							done <- err
							return
						}
					}
				}()
			}

			args := []string{"node", "remove", "n3", "-c", env.ConfigPath}
			if force {
				args = append(args, "--force")
			}
			out := mustCLI(t, args...)
			if !strings.Contains(out, "removed node n3 from") {
				t.Errorf("node remove output:\n%s", out)
			}
			if force && !strings.Contains(out, "not verified: changes n3 committed after") {
				t.Errorf("node remove --force does not say what it could not verify:\n%s", out)
			}
			agents[1] = startAgent(t, env.ConfigPath, "--node", "n2")
			close(stop)
			for range 2 {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			final := waitConverged(t, env, cs[:2], "items", "id")
			for i, c := range cs[:2] {
				var s string
				if err := c.QueryRow(ctx, `SELECT string_agg(id || ':' || val || ':' || note, ',' ORDER BY id) FROM items WHERE node = 2`).Scan(&s); err != nil {
					t.Fatal(err)
				}
				if s != "31:7:last,33:1:last" {
					t.Errorf("n%d: n3's rows are %s, want its last changes 31:7:last,33:1:last", i+1, s)
				}
			}
			if final.Rows < 5 {
				t.Errorf("only %d rows: the survivors did not write", final.Rows)
			}
			for i, c := range cs[:2] {
				var slots int
				if err := c.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%n3%' AND database = current_database()`).Scan(&slots); err != nil {
					t.Fatal(err)
				}
				var ranked bool
				if err := c.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgmesh.node WHERE name = 'n3')`).Scan(&ranked); err != nil {
					t.Fatal(err)
				}
				if slots != 0 || ranked {
					t.Errorf("n%d: %d slots of n3 left, n3 ranked: %v", i+1, slots, ranked)
				}
			}
			if st := mustCLI(t, "status", "-c", env.ConfigPath); strings.Contains(st, "n3") {
				t.Errorf("status still shows n3:\n%s", st)
			}
			if !force {
				c, err := pgx.Connect(ctx, env.DSNs[2])
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(ctx)
				var state string
				if err := c.QueryRow(ctx, `SELECT state FROM pgmesh.join_state`).Scan(&state); err != nil || state != "removed" {
					t.Errorf("n3's own state: %q %v, want removed", state, err)
				}
			}
		})
	}
}
