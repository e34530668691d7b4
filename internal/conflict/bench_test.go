package conflict

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// BenchmarkUpdate compares, in the same run on the same server, the
// generated UPDATE (lock, last writer, decision, unique pre-check, logs)
// with a plain UPDATE by key, both sent as the applier sends them:
// prepared, text parameters, 100 per pipelined remote transaction under
// the origin of n1. The rows were last written by n1, as in steady-state
// replication. Reported: ns per statement of each and their ratio.
func BenchmarkUpdate(b *testing.B) {
	f := newFixture(b, itemDDL)
	tbl := f.table("item", nil)
	ctx := context.Background()
	const rows, batch = 1000, 100
	f.writeAs("n1", time.Now().Add(-time.Hour), fmt.Sprintf("INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(1, %d) g", rows))
	f.exec("VACUUM ANALYZE item")

	conn, err := pgx.Connect(ctx, f.env.DSNs[0])
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	pc := conn.PgConn()
	for _, s := range []string{"SET session_replication_role = replica", "SET synchronous_commit = off", "SET plan_cache_mode = force_generic_plan", "SELECT pg_replication_origin_session_setup('pgmesh_n1')"} {
		if _, err := pc.Exec(ctx, s).ReadAll(); err != nil {
			b.Fatal(err)
		}
	}
	stmts := map[string]string{
		"plain":     "UPDATE public.item SET id = $5::integer, email = $6::text, name = $7::text, qty = $8::integer WHERE id = $4::integer AND $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		"generated": UpdateSQL(tbl, tbl.Columns),
	}
	for name, sql := range stmts {
		if _, err := pc.Prepare(ctx, name, sql, nil); err != nil {
			b.Fatalf("prepare %s: %v", name, err)
		}
	}
	var version string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		b.Fatal(err)
	}
	b.Logf("PostgreSQL %s", version)

	lsn := 0
	next := 0
	run := func(stmt string) (time.Duration, error) {
		start := time.Now()
		lsn++
		ts := time.Now().Format(time.RFC3339Nano)
		p := pc.StartPipeline(ctx)
		p.SendQueryParams("BEGIN", nil, nil, nil, nil)
		p.SendQueryParams("SELECT pg_replication_origin_xact_setup($1, $2)", [][]byte{[]byte(fmt.Sprintf("0/%X", lsn*16)), []byte(ts)}, nil, nil, nil)
		for range batch {
			next = next%rows + 1
			id := []byte(strconv.Itoa(next))
			p.SendQueryPrepared(stmt, [][]byte{[]byte(ts), []byte("n1"), []byte("0/1"), id, id, []byte("e" + string(id)), []byte("y"), []byte("1")}, nil, nil)
		}
		p.SendQueryParams("COMMIT", nil, nil, nil, nil)
		if err := p.Sync(); err != nil {
			return 0, err
		}
		for {
			r, err := p.GetResults()
			if err != nil {
				return 0, err
			}
			if r == nil {
				break
			}
			if rr, ok := r.(*pgconn.ResultReader); ok {
				if _, err := rr.Close(); err != nil {
					return 0, err
				}
			}
			if _, ok := r.(*pgconn.PipelineSync); ok {
				break
			}
		}
		if err := p.Close(); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	// Warm both up past the switch to a generic plan.
	for range 3 {
		for name := range stmts {
			if _, err := run(name); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
		}
	}
	var plain, generated time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		d, err := run("plain")
		if err != nil {
			b.Fatal(err)
		}
		plain += d
		if d, err = run("generated"); err != nil {
			b.Fatal(err)
		}
		generated += d
	}
	b.StopTimer()
	n := float64((b.N + batch - 1) / batch * batch)
	b.ReportMetric(float64(plain.Nanoseconds())/n, "plain-ns/stmt")
	b.ReportMetric(float64(generated.Nanoseconds())/n, "generated-ns/stmt")
	b.ReportMetric(float64(generated)/float64(plain), "ratio")
	var logged int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgmesh.conflict_log").Scan(&logged); err != nil {
		b.Fatal(err)
	}
	if logged != 0 {
		b.Fatalf("%d conflicts logged in steady-state replication, want none", logged)
	}
}
