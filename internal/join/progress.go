package join

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// resetProgress records the tables to copy with their estimated sizes.
func (j *joiner) resetProgress(ctx context.Context, tables []*tableCopy) error {
	return pgx.BeginFunc(ctx, j.n, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM pgmesh.join_table"); err != nil {
			return fmt.Errorf("node %s: reset pgmesh.join_table: %w", j.node.Name, err)
		}
		for _, tc := range tables {
			if _, err := tx.Exec(ctx, `INSERT INTO pgmesh.join_table (table_name, est_rows, est_bytes) VALUES ($1, $2, $3)`,
				tc.t.QualifiedName(), tc.estRows, tc.estBytes); err != nil {
				return fmt.Errorf("node %s: record table %s: %w", j.node.Name, tc.t.QualifiedName(), err)
			}
		}
		return nil
	})
}

// reportProgress writes the tables' progress into pgmesh.join_table (for
// status and metrics) every second and prints it every few seconds, until
// the returned function is called (it writes a last time).
func (j *joiner) reportProgress(ctx context.Context, tables []*tableCopy) func() {
	conn, err := pg.Connect(ctx, j.node.Name, j.node.DSN, "pgmesh node add "+j.node.Name+": progress")
	if err != nil {
		j.log.Warn("copy progress is not recorded", "err", err)
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer conn.Close(context.Background())
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		printed := time.Now()
		for {
			select {
			case <-done:
				j.writeProgress(context.Background(), conn, tables)
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			j.writeProgress(ctx, conn, tables)
			if time.Since(printed) >= 2*time.Second {
				printed = time.Now()
				j.printProgress(tables)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
	}
}

func (j *joiner) writeProgress(ctx context.Context, conn *pgx.Conn, tables []*tableCopy) {
	for _, tc := range tables {
		started := tc.started.Load()
		if started == 0 {
			continue
		}
		var finished any
		if f := tc.finished.Load(); f != 0 {
			finished = time.Unix(0, f)
		}
		if _, err := conn.Exec(ctx, `UPDATE pgmesh.join_table SET rows = $2, bytes = $3, started_at = $4, finished_at = $5, updated_at = now()
		                              WHERE table_name = $1`, tc.t.QualifiedName(), tc.rows.Load(), tc.bytes.Load(), time.Unix(0, started), finished); err != nil {
			j.log.Debug("record copy progress", "err", err)
			return
		}
	}
}

func (j *joiner) printProgress(tables []*tableCopy) {
	for _, tc := range tables {
		started, finished := tc.started.Load(), tc.finished.Load()
		if started == 0 || finished != 0 {
			continue
		}
		t := joinstate.Table{Name: tc.t.QualifiedName(), EstRows: tc.estRows, EstBytes: tc.estBytes,
			Rows: tc.rows.Load(), Bytes: tc.bytes.Load(), UpdatedAt: time.Now()}
		s := time.Unix(0, started)
		t.StartedAt = &s
		j.printf("  %s", joinstate.DescribeTable(t))
	}
}
