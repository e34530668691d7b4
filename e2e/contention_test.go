package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/sandbox"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestHotRowContention has a local writer on n2 lock two hot rows in the
// opposite order to the transactions n1 writes (and n2 applies), holding
// the first lock a moment: deadlocks between apply and local transactions
// are all but certain, on n2 and on n1 (which applies n2's). An applied
// transaction retries at once on its session when it is the victim (a
// local victim retries itself, as a client does): no link ever restarts,
// and the nodes converge.
func TestHotRowContention(t *testing.T) {
	env := sandboxtest.New(t, 2)
	initMesh(t, env, 2, `CREATE TABLE hot (id int PRIMARY KEY, n int NOT NULL)`,
		`INSERT INTO hot VALUES (1, 0), (2, 0)`)
	agent := startAgentListening(t, env.ConfigPath)
	ctx := context.Background()

	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := make(chan error, 2)
	localDeadlocks := 0
	// Deadlocks are likely, not certain: n2's writer goes on until one
	// happened (on either side), and n1's until n2's is done.
	deadlocked := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return localDeadlocks > 0 || strings.Contains(agent.out.String(), "running it again")
	}
	var n2done atomic.Bool
	wg.Go(func() { // n1: row 1, then row 2
		c, err := pgx.Connect(ctx, env.DSNAs(0, sandbox.App))
		if err != nil {
			errs <- err
			return
		}
		defer c.Close(ctx)
		for i := 0; i < 400 || !n2done.Load(); {
			_, err := c.Exec(ctx, `UPDATE hot SET n = n + 1 WHERE id = 1; UPDATE hot SET n = n + 1 WHERE id = 2`)
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "40P01" {
				mu.Lock()
				localDeadlocks++
				mu.Unlock()
				continue
			}
			if err != nil {
				errs <- fmt.Errorf("n1: %w", err)
				return
			}
			i++
		}
	})
	wg.Go(func() { // n2: row 2, a pause, then row 1
		defer n2done.Store(true)
		c, err := pgx.Connect(ctx, env.DSNAs(1, sandbox.App))
		if err != nil {
			errs <- err
			return
		}
		defer c.Close(ctx)
		for i := 0; i < 8 || (i < 400 && !deadlocked()); {
			_, err := c.Exec(ctx, `UPDATE hot SET n = n + 100 WHERE id = 2; SELECT pg_sleep(0.05); UPDATE hot SET n = n + 100 WHERE id = 1`)
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "40P01" {
				mu.Lock()
				localDeadlocks++
				mu.Unlock()
				continue
			}
			if err != nil {
				errs <- fmt.Errorf("n2: %w", err)
				return
			}
			i++
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	cs := conns(t, env, 2)
	eventually(t, 90*time.Second, "n1 and n2 converge", func() (bool, string) {
		var a, b string
		if err := cs[0].QueryRow(ctx, `SELECT string_agg(id || '=' || n, ',' ORDER BY id) FROM hot`).Scan(&a); err != nil {
			return false, err.Error()
		}
		if err := cs[1].QueryRow(ctx, `SELECT string_agg(id || '=' || n, ',' ORDER BY id) FROM hot`).Scan(&b); err != nil {
			return false, err.Error()
		}
		return a == b, "n1 " + a + ", n2 " + b
	})
	log := agent.out.String()
	retries := strings.Count(log, "running it again")
	t.Logf("deadlocks: %d remote transactions retried, %d local transactions retried", retries, localDeadlocks)
	if retries+localDeadlocks == 0 {
		t.Fatal("no deadlock happened: the test did not create contention")
	}
	if n := strings.Count(log, "link failed"); n > 0 {
		t.Errorf("%d link restarts, want none", n)
	}
	// The retries in place are counted, per link.
	counted := 0
	for _, line := range strings.Split(agent.get(t, "/metrics"), "\n") {
		if strings.HasPrefix(line, "pgmesh_link_apply_retries_total{") {
			var n int
			if _, err := fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%d", &n); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			counted += n
		}
	}
	if counted != retries {
		t.Errorf("pgmesh_link_apply_retries_total sums to %d, the log says %d transactions ran again", counted, retries)
	}
}
