package e2e

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestDiffWhileWriting runs `pgmesh diff` while every node keeps writing:
// rows in flight must not be reported as differences (diff waits for the
// links to reach its start position and re-reads differing keys).
func TestDiffWhileWriting(t *testing.T) {
	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, `CREATE TABLE items (id bigint PRIMARY KEY, node int NOT NULL, val int NOT NULL, note text)`)
	startAgent(t, env.ConfigPath)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for n := 0; n < 3; n++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Keep writing until the diffs are done.
			for i := 0; ctx.Err() == nil; i++ {
				if err := writeItemsFrom(ctx, env.DSNAs(n, sandbox.App), n, i*1000, 20); err != nil && ctx.Err() == nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(time.Second)
	for round := 0; round < 3; round++ {
		out, code := runCLI(t, "diff", "-c", env.ConfigPath)
		if code != 0 {
			cancel()
			wg.Wait()
			t.Fatalf("diff during writes (round %d): exit %d\n%s", round, code, out)
		}
		if !strings.Contains(out, "identical") {
			t.Fatalf("diff output lacks the verdict:\n%s", out)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// And the checker can fail: a row changed under a foreign origin on n2
	// only (not replicated) is reported.
	waitConverged(t, env, conns(t, env, 3), "items", "id")
	c := env.Inspect(t, 1) // only pgmesh's role may set up an origin
	for _, q := range []string{
		`SELECT pg_replication_origin_create('difftest_foreign')`,
		`SELECT pg_replication_origin_session_setup('difftest_foreign')`,
		`UPDATE items SET val = val + 1000 WHERE id = (SELECT min(id) FROM items)`,
		`SELECT pg_replication_origin_session_reset()`,
		`SELECT pg_replication_origin_drop('difftest_foreign')`,
	} {
		if _, err := c.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	out, code := runCLI(t, "diff", "-c", env.ConfigPath, "--wait", "5s")
	if code != 1 || !strings.Contains(out, "1 differing keys") {
		t.Fatalf("diff after a foreign change on n2: exit %d, want 1 and one key\n%s", code, out)
	}
}
