package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// tableState is a table's row count and an ordered digest of its rows.
type tableState struct {
	Rows   int64
	Digest string
}

func readState(t testing.TB, conn *pgx.Conn, table, orderBy string) tableState {
	t.Helper()
	var s tableState
	q := fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(x::text, '|' ORDER BY %s)), '') FROM %s x`, orderBy, table)
	if err := conn.QueryRow(context.Background(), q).Scan(&s.Rows, &s.Digest); err != nil {
		t.Fatalf("read %s: %v", table, err)
	}
	return s
}

// waitConverged waits until table is identical on every node and returns it.
func waitConverged(t testing.TB, env *sandboxtest.Env, conns []*pgx.Conn, table, orderBy string) tableState {
	t.Helper()
	var st tableState
	eventually(t, 90*time.Second, table+" identical on every node", func() (bool, string) {
		states := make([]tableState, len(conns))
		for i, c := range conns {
			states[i] = readState(t, c, table, orderBy)
		}
		for _, s := range states[1:] {
			if s != states[0] {
				return false, fmt.Sprint(states)
			}
		}
		st = states[0]
		return true, ""
	})
	return st
}

func conns(t testing.TB, env *sandboxtest.Env, n int) []*pgx.Conn {
	cs := make([]*pgx.Conn, n)
	for i := range cs {
		cs[i] = env.Inspect(t, i)
	}
	return cs
}

// initMesh creates the schema on every node and runs `pgmesh init`.
func initMesh(t testing.TB, env *sandboxtest.Env, n int, ddl ...string) {
	t.Helper()
	for i := 0; i < n; i++ {
		for _, q := range ddl {
			env.Exec(t, i, q)
		}
	}
	mustCLI(t, "init", "-c", env.ConfigPath)
}

// TestMeshConverges runs concurrent inserts, updates and deletes with
// disjoint keys on every node of a 2-node and a 3-node mesh; all nodes must
// end identical, equal to what each writer left in its own key range, and
// once converged nothing keeps replicating (no loop).
func TestMeshConverges(t *testing.T) {
	for _, nodes := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d_nodes", nodes), func(t *testing.T) {
			env := sandboxtest.New(t, nodes)
			initMesh(t, env, nodes,
				`CREATE TABLE items (id bigint PRIMARY KEY, node int NOT NULL, val int NOT NULL, note text)`)
			cs := conns(t, env, nodes)
			startAgent(t, env.ConfigPath)

			const txns = 300
			var wg sync.WaitGroup
			errs := make(chan error, nodes)
			for n := 0; n < nodes; n++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- writeItems(env.DSNAs(n, sandbox.App), n, txns)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}

			final := waitConverged(t, env, cs, "items", "id")
			// Each node is the only writer of its own key range, so its
			// own range there is the truth every node must hold.
			var want int64
			for n := 0; n < nodes; n++ {
				var c int64
				if err := cs[n].QueryRow(context.Background(),
					`SELECT count(*) FROM items WHERE node = $1`, n).Scan(&c); err != nil {
					t.Fatal(err)
				}
				want += c
				for m := 0; m < nodes; m++ {
					if a, b := rangeDigest(t, cs[n], n), rangeDigest(t, cs[m], n); a != b {
						t.Fatalf("node %d's rows differ between n%d and n%d", n, n+1, m+1)
					}
				}
			}
			if final.Rows != want || want == 0 {
				t.Fatalf("converged to %d rows, writers left %d", final.Rows, want)
			}
			assertQuiet(t, cs, "items", "id")
		})
	}
}

func rangeDigest(t testing.TB, c *pgx.Conn, node int) string {
	var d string
	if err := c.QueryRow(context.Background(),
		`SELECT coalesce(md5(string_agg(x::text, '|' ORDER BY id)), '') FROM items x WHERE node = $1`, node).Scan(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

// writeItems inserts, updates and deletes rows of node n's key range in
// small transactions.
func writeItems(dsn string, n, txns int) error {
	return writeItemsFrom(context.Background(), dsn, n, 0, txns)
}

// writeItemsFrom is writeItems with the new keys starting at offset within
// node n's range, so that it can be called again.
func writeItemsFrom(ctx context.Context, dsn string, n, offset, txns int) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	rng := rand.New(rand.NewPCG(uint64(n), uint64(42+offset)))
	base := int64(n)*1_000_000 + int64(offset)
	next := base
	for i := 0; i < txns; i++ {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		for k := 0; k < 1+rng.IntN(3); k++ {
			next++
			if _, err := tx.Exec(ctx, `INSERT INTO items VALUES ($1, $2, $3, $4)`, next, n, rng.IntN(1000), fmt.Sprintf("n%d-%d", n, i)); err != nil {
				return err
			}
		}
		if next > base+3 {
			id := base + 1 + rng.Int64N(next-base)
			if _, err := tx.Exec(ctx, `UPDATE items SET val = val + 1, note = 'updated' WHERE id = $1`, id); err != nil {
				return err
			}
			if rng.IntN(4) == 0 {
				id := base + 1 + rng.Int64N(next-base)
				if _, err := tx.Exec(ctx, `DELETE FROM items WHERE id = $1`, id); err != nil {
					return err
				}
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

// assertQuiet checks that, once converged, nothing keeps replicating: the
// table stops changing and no node applies any more remote transactions
// (every origin's progress stands still). A replication loop would move
// both. WAL may still grow a little from the server's own housekeeping
// (page pruning by our reads, autovacuum), so it only has a loose bound.
func assertQuiet(t testing.TB, cs []*pgx.Conn, table, orderBy string) {
	t.Helper()
	time.Sleep(2 * time.Second) // let the last link states be recorded
	before := make([]tableState, len(cs))
	progress := make([]string, len(cs))
	wal := make([]int64, len(cs))
	for i, c := range cs {
		before[i] = readState(t, c, table, orderBy)
		progress[i] = originProgress(t, c)
		wal[i] = walBytes(t, c)
	}
	time.Sleep(3 * time.Second)
	for i, c := range cs {
		if after := readState(t, c, table, orderBy); after != before[i] {
			t.Errorf("n%d: %s kept changing after convergence: %v -> %v", i+1, table, before[i], after)
		}
		if after := originProgress(t, c); after != progress[i] {
			t.Errorf("n%d: still applying remote transactions after convergence: %s -> %s", i+1, progress[i], after)
		}
		if grew := walBytes(t, c) - wal[i]; grew > 1<<20 {
			t.Errorf("n%d: WAL grew by %d bytes in 3s while idle: replication loop?", i+1, grew)
		}
	}
}

// originProgress lists the remote position of every pgmesh origin (as
// pgmesh's role reads it: pg_replication_origin_status is for superusers).
func originProgress(t testing.TB, c *pgx.Conn) string {
	var s string
	if err := c.QueryRow(context.Background(), `SELECT coalesce(string_agg(roname || '=' || pg_replication_origin_progress(roname, false)::text, ',' ORDER BY roname), '')
		FROM pg_replication_origin WHERE roname LIKE 'pgmesh%'`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func walBytes(t testing.TB, c *pgx.Conn) int64 {
	var b int64
	if err := c.QueryRow(context.Background(), `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}
