package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

const ordersDDL = `CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL, total numeric(10,2) NOT NULL, note text)`

// TestFromOneDatabase is the README's path from one PostgreSQL with data to
// a 3-node mesh while the application writes throughout: init on the one
// node, its ids converted to snowflake, then node add twice. The three
// nodes end identical, every order written anywhere is there once, and
// check proves that the three nodes' ids are disjoint.
func TestFromOneDatabase(t *testing.T) {
	env := sandboxtest.New(t, 3)
	env.Exec(t, 0, ordersDDL)
	env.Exec(t, 0, `INSERT INTO orders (customer, total, note) SELECT g % 100, g * 1.5, 'before pgmesh' FROM generate_series(1, 5000) g`)
	if env.Major() > 15 {
		// No pg_dump of this version in the sandbox: the schema is made
		// by hand on the new nodes, as the README says.
		env.Exec(t, 1, ordersDDL)
		env.Exec(t, 2, ordersDDL)
	}
	cfg := *env.Config
	cfg.Nodes = cfg.Nodes[:1]
	path := writeConfig(t, &cfg)

	var inserted [3]atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	app := func(n int) {
		wg.Go(func() {
			if err := orderLoop(ctx, env.DSNs[n], n, &inserted[n]); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("n%d: %w", n+1, err)
			}
		})
	}
	app(0)
	mustCLI(t, "init", "-c", path)
	mustCLI(t, "sequences", "-c", path, "convert", "--strategy", "snowflake")
	startAgent(t, path)
	for i, n := range []string{"n2", "n3"} {
		out := mustCLI(t, "node", "add", n, "--dsn", env.DSNs[i+1], "-c", path)
		if !strings.Contains(out, n+" is ready") || !strings.Contains(out, fmt.Sprintf("pgmesh.sequence_config: unset -> node id %d", i+2)) {
			t.Errorf("node add %s:\n%s", n, out)
		}
	}
	app(1)
	app(2)
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cs := conns(t, env, 3)
	st := waitConverged(t, env, cs, "orders", "id")
	want := 5000 + inserted[0].Load() + inserted[1].Load() + inserted[2].Load()
	if st.Rows != want || inserted[1].Load() == 0 || inserted[2].Load() == 0 {
		t.Errorf("%d orders on every node, %d written (%d, %d, %d by the nodes)", st.Rows, want, inserted[0].Load(), inserted[1].Load(), inserted[2].Load())
	}
	if out, code := runCLI(t, "diff", "-c", path); code != 0 || !strings.Contains(out, "identical") {
		t.Errorf("diff: exit %d\n%s", code, out)
	}
	out, _ := runCLI(t, "check", "-c", path)
	var proof string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "public.orders.id") && strings.HasPrefix(l, "PASS") && strings.Contains(l, "ids disjoint") {
			proof = l
		}
	}
	for _, want := range []string{"n1: snowflake node id 1", "n2: snowflake node id 2", "n3: snowflake node id 3"} {
		if !strings.Contains(proof, want) {
			t.Errorf("check does not prove the ids of the three nodes disjoint (%q):\n%s", want, out)
		}
	}
}

// orderLoop inserts and updates orders, as an application would, counting
// the inserts that committed.
func orderLoop(ctx context.Context, dsn string, n int, inserted *atomic.Int64) error {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	for ctx.Err() == nil {
		tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		_, err := c.Exec(tctx, `INSERT INTO orders (customer, total, note) VALUES ($1, $2, $3)`, rng.IntN(100), rng.IntN(10000), fmt.Sprintf("n%d", n+1))
		if err == nil {
			inserted.Add(1)
			_, err = c.Exec(tctx, `UPDATE orders SET note = note || '+' WHERE id = (SELECT max(id) FROM orders WHERE customer = $1)`, rng.IntN(100))
		}
		cancel()
		// Like any application, retry a deadlock with a concurrent apply.
		var pe *pgconn.PgError
		if err != nil && !(errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
