package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestExactlyOnce increments counters 500 times in 500 transactions on n1
// while the mesh is disrupted mid-run, with three apply workers per link:
// the transactions increment four counters in turn, so that consecutive
// ones are independent and run on several workers at once, and every
// fourth one waits for another. Every transaction also appends a row to a
// key-less table, so a transaction applied twice would show as a duplicate
// row and a lost one as a missing row: both are counted exactly.
func TestExactlyOnce(t *testing.T) {
	cases := []struct {
		name    string
		disrupt func(t *testing.T, env *sandboxtest.Env, agent **agentProc)
	}{
		{"agent_sigkill", func(t *testing.T, env *sandboxtest.Env, agent **agentProc) {
			(*agent).kill()
			time.Sleep(500 * time.Millisecond)
			*agent = startAgent(t, env.ConfigPath)
		}},
		{"downstream_immediate_stop", func(t *testing.T, env *sandboxtest.Env, agent **agentProc) {
			ctx := context.Background()
			if err := env.Cluster.Stop(ctx, "n2", "immediate"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			if err := env.Cluster.Start(ctx, "n2"); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := sandboxtest.New(t, 3)
			setApplyWorkers(t, env, 3)
			initMesh(t, env, 3,
				`CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)`,
				`INSERT INTO counter SELECT g, 0 FROM generate_series(0, 3) g`,
				`CREATE TABLE ticks (i int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
				`ALTER TABLE ticks REPLICA IDENTITY FULL`)
			agent := startAgent(t, env.ConfigPath)

			const total = 500
			writer := env.App(t, 0)
			ctx := context.Background()
			for i := 1; i <= total; i++ {
				if i == total/3 {
					// Disrupt while transactions are flowing, not before
					// the first one arrived.
					n2 := env.App(t, 1)
					eventually(t, 60*time.Second, "n2 applying", func() (bool, string) {
						var n int
						err := n2.QueryRow(ctx, `SELECT count(*) FROM ticks`).Scan(&n)
						return err == nil && n > 0, fmt.Sprint(n, err)
					})
					tc.disrupt(t, env, &agent)
				}
				tx, err := writer.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = $1`, i%4); err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO ticks (i) VALUES ($1)`, i); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
			}

			for node := 0; node < 3; node++ {
				eventually(t, 90*time.Second, fmt.Sprintf("n%d has all %d transactions", node+1, total), func() (bool, string) {
					c, err := pgx.Connect(ctx, env.DSNAs(node, sandbox.App))
					if err != nil {
						return false, err.Error()
					}
					defer c.Close(ctx)
					var n, rows, distinct int
					if err := c.QueryRow(ctx, `SELECT (SELECT sum(n) FROM counter), count(*), count(DISTINCT i) FROM ticks`).Scan(&n, &rows, &distinct); err != nil {
						return false, err.Error()
					}
					if rows > total || rows != distinct {
						t.Fatalf("n%d: %d tick rows, %d distinct: a transaction was applied twice", node+1, rows, distinct)
					}
					return n == total && rows == total, fmt.Sprintf("counters=%d ticks=%d", n, rows)
				})
			}
			// The transactions were spread over the workers of n1->n2.
			if used := originsAdvanced(t, env, 1, "n1"); used < 2 {
				t.Errorf("%d origins of link n1->n2 advanced, want the 3 workers' (at least 2)", used)
			}
		})
	}
}

// originsAdvanced counts the origins of the link from up on node (0-based)
// that recorded progress: the apply workers that committed something. It
// reads replication origin progress, which needs EXECUTE on
// pg_replication_origin_progress.
func originsAdvanced(t testing.TB, env *sandboxtest.Env, node int, up string) int {
	t.Helper()
	var used int
	if err := env.Pgmesh(t, node).QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_origin
		WHERE roname ~ ('^pgmesh_' || $1 || '(_[0-9]+)?$') AND pg_replication_origin_progress(roname, false) IS NOT NULL`, up).Scan(&used); err != nil {
		t.Fatal(err)
	}
	return used
}

// setApplyWorkers rewrites env's config with agent.apply_workers = n.
func setApplyWorkers(t testing.TB, env *sandboxtest.Env, n int) {
	t.Helper()
	env.Config.Agent.ApplyWorkers = n
	if err := os.WriteFile(env.ConfigPath, env.Config.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
}
