package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestExactlyOnce increments a counter 500 times in 500 transactions on n1
// while the mesh is disrupted mid-run. Every transaction also appends a row
// to a key-less table, so a transaction applied twice would show as a
// duplicate row and a lost one as a missing row: both are counted exactly.
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
			initMesh(t, env, 3,
				`CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)`,
				`INSERT INTO counter VALUES (1, 0)`,
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
				if _, err := tx.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = 1`); err != nil {
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
					if err := c.QueryRow(ctx, `SELECT (SELECT n FROM counter WHERE id = 1), count(*), count(DISTINCT i) FROM ticks`).Scan(&n, &rows, &distinct); err != nil {
						return false, err.Error()
					}
					if rows > total || rows != distinct {
						t.Fatalf("n%d: %d tick rows, %d distinct: a transaction was applied twice", node+1, rows, distinct)
					}
					return n == total && rows == total, fmt.Sprintf("counter=%d ticks=%d", n, rows)
				})
			}
		})
	}
}
