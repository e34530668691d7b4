package conflict

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The benchmarks compare, in the same run on the same server, a generated
// statement with the plain statement by key that does the same write, both
// sent as the applier sends them: prepared, text parameters of unspecified
// type, 100 per pipelined remote transaction under the origin of n1,
// alternating batch by batch. The rows were last written by n1, as in
// steady-state replication, so no change meets a conflict. Reported: ns
// per statement of each and their ratio, and the ratio of the server
// backend's CPU time spent on each (server-cpu-ratio), which the other
// processes of a shared machine disturb much less.

// BenchmarkInsert: remote inserts of new keys. The table is not empty, as
// an empty analyzed table makes the planner scan it sequentially.
func BenchmarkInsert(b *testing.B) {
	benchApply(b, benchCase{
		setup: "INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(1, 1000) g",
		plain: "INSERT INTO public.item (id, email, name, qty) SELECT $4::integer, $5::text, $6::text, $7::integer WHERE $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		sql:   func(t Table) string { return InsertSQL(t) },
		// Each statement inserts a key of its own range.
		params: func(stmt, i int) [][]byte {
			id := []byte(strconv.Itoa((stmt+1)*10_000_000 + i))
			return [][]byte{id, append([]byte("e"), id...), []byte("y"), []byte("1")}
		},
	})
}

// BenchmarkInsertAfterTruncate: BenchmarkInsert on a table whose truncation
// by another node, older than the changes, is recorded: each insert must
// not be older than it.
func BenchmarkInsertAfterTruncate(b *testing.B) {
	benchApply(b, benchCase{
		setup: "INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(1, 1000) g;" +
			" INSERT INTO pgmesh.tombstone VALUES ('public.item', '{}', now() - interval '2 hours', NULL, 'n2')",
		plain: "INSERT INTO public.item (id, email, name, qty) SELECT $4::integer, $5::text, $6::text, $7::integer WHERE $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		sql:   func(t Table) string { return InsertSQL(t) },
		params: func(stmt, i int) [][]byte {
			id := []byte(strconv.Itoa((stmt+1)*10_000_000 + i))
			return [][]byte{id, append([]byte("e"), id...), []byte("y"), []byte("1")}
		},
	})
}

// BenchmarkInsertKeyless: remote inserts into a table without key or
// unique index.
func BenchmarkInsertKeyless(b *testing.B) {
	benchApply(b, benchCase{
		ddl:   "CREATE TABLE item (id int, email text, name text, qty int NOT NULL DEFAULT 0)",
		setup: "INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(1, 1000) g",
		plain: "INSERT INTO public.item (id, email, name, qty) SELECT $4::integer, $5::text, $6::text, $7::integer WHERE $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		sql:   func(t Table) string { return InsertSQL(t) },
		params: func(stmt, i int) [][]byte {
			id := []byte(strconv.Itoa((stmt+1)*10_000_000 + i))
			return [][]byte{id, append([]byte("e"), id...), []byte("y"), []byte("1")}
		},
	})
}

// BenchmarkUpdate: remote updates of every column of existing rows (key and
// unique email unchanged).
func BenchmarkUpdate(b *testing.B) {
	const rows = 1000
	benchApply(b, benchCase{
		setup: fmt.Sprintf("INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(1, %d) g", rows),
		plain: "UPDATE public.item SET id = $5::integer, email = $6::text, name = $7::text, qty = $8::integer WHERE id = $4::integer AND $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		sql:   func(t Table) string { return UpdateSQL(t, t.Columns) },
		params: func(_, i int) [][]byte {
			id := []byte(strconv.Itoa(i%rows + 1))
			return [][]byte{id, id, append([]byte("e"), id...), []byte("y"), []byte("1")}
		},
	})
}

// BenchmarkUpdateConflict: remote updates of rows that another node wrote
// concurrently (no peer_seen), each an update_origin_differs that applies
// and is logged: the fallback to the full statement.
func BenchmarkUpdateConflict(b *testing.B) {
	benchApply(b, benchCase{
		rows: func(stmt, n int) string {
			return fmt.Sprintf("INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(%d, %d) g", (stmt+1)*10_000_000, (stmt+1)*10_000_000+n)
		},
		rowsBy:    "n2",
		conflicts: true,
		plain:     "UPDATE public.item SET id = $5::integer, email = $6::text, name = $7::text, qty = $8::integer WHERE id = $4::integer AND $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		sql:       func(t Table) string { return UpdateSQL(t, t.Columns) },
		params: func(stmt, i int) [][]byte {
			id := []byte(strconv.Itoa((stmt+1)*10_000_000 + i))
			return [][]byte{id, id, append([]byte("e"), id...), []byte("y"), []byte("1")}
		},
	})
}

// BenchmarkDelete: remote deletes of existing rows.
func BenchmarkDelete(b *testing.B) {
	benchApply(b, benchCase{
		plain: "DELETE FROM public.item WHERE id = $4::integer AND $1::timestamptz IS NOT NULL AND $2::text IS NOT NULL AND $3::pg_lsn IS NOT NULL",
		sql:   func(t Table) string { return DeleteSQL(t) },
		// Each statement deletes the keys of its own range, inserted
		// before the timer starts.
		rows: func(stmt, n int) string {
			return fmt.Sprintf("INSERT INTO item SELECT g, 'e' || g, 'x', 0 FROM generate_series(%d, %d) g", (stmt+1)*10_000_000, (stmt+1)*10_000_000+n)
		},
		params: func(stmt, i int) [][]byte { return [][]byte{[]byte(strconv.Itoa((stmt+1)*10_000_000 + i))} },
	})
}

type benchCase struct {
	ddl   string // the table item; itemDDL when ""
	setup string // run as n1 an hour ago, before everything
	// rows is run as rowsBy (default n1) an hour ago, for statement 0
	// (plain) and 1 (generated), n changes each.
	rows      func(stmt, n int) string
	rowsBy    string
	conflicts bool // every generated change is a conflict
	plain     string
	sql       func(Table) string
	// params are the values after $1..$3 of change i (0…) of statement
	// stmt (0 plain, 1 generated).
	params func(stmt, i int) [][]byte
}

func benchApply(b *testing.B, bc benchCase) {
	ddl := bc.ddl
	if ddl == "" {
		ddl = itemDDL
	}
	f := newFixture(b, ddl)
	tbl := f.table("item", nil)
	ctx := context.Background()
	const batch, warmup = 100, 3
	total := (b.N+batch-1)/batch*batch + warmup*batch
	if bc.setup != "" {
		f.writeAs("n1", time.Now().Add(-time.Hour), bc.setup)
	}
	if bc.rows != nil {
		by := bc.rowsBy
		if by == "" {
			by = "n1"
		}
		for stmt := range 2 {
			f.writeAs(by, time.Now().Add(-time.Hour), bc.rows(stmt, total))
		}
	}
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
	names := [2]string{"plain", "generated"}
	for i, sql := range [2]string{bc.plain, bc.sql(tbl)} {
		if err := prepareFallbacks(ctx, pc, sql); err != nil {
			b.Fatal(err)
		}
		if _, err := pc.Prepare(ctx, names[i], sql, nil); err != nil {
			b.Fatalf("prepare %s: %v", names[i], err)
		}
	}
	var version string
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&version); err != nil {
		b.Fatal(err)
	}
	b.Logf("PostgreSQL %s", version)

	// The server backend's CPU time (Linux schedstat), when the server runs
	// on this machine: on a shared machine, wall time mostly measures the
	// other processes.
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		b.Fatal(err)
	}
	serverCPU := func() time.Duration {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			return 0
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			return 0
		}
		ns, _ := strconv.ParseInt(f[0], 10, 64)
		return time.Duration(ns)
	}
	var cpu [2]time.Duration
	lsn := 0
	next := [2]int{}
	run := func(stmt int) (time.Duration, error) {
		start, startCPU := time.Now(), serverCPU()
		defer func() { cpu[stmt] += serverCPU() - startCPU }()
		lsn++
		ts := []byte(time.Now().Format(time.RFC3339Nano))
		p := pc.StartPipeline(ctx)
		p.SendQueryParams("BEGIN", nil, nil, nil, nil)
		p.SendQueryParams("SELECT pg_replication_origin_xact_setup($1, $2)", [][]byte{[]byte(fmt.Sprintf("0/%X", lsn*16)), ts}, nil, nil, nil)
		for range batch {
			params := append([][]byte{ts, []byte("n1"), []byte("0/1")}, bc.params(stmt, next[stmt])...)
			next[stmt]++
			p.SendQueryPrepared(names[stmt], params, nil, nil)
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
	for range warmup {
		for stmt := range 2 {
			if _, err := run(stmt); err != nil {
				b.Fatalf("%s: %v", names[stmt], err)
			}
		}
	}
	var took [2]time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		for stmt := range 2 {
			d, err := run(stmt)
			if err != nil {
				b.Fatalf("%s: %v", names[stmt], err)
			}
			took[stmt] += d
		}
	}
	b.StopTimer()
	n := float64((b.N + batch - 1) / batch * batch)
	b.ReportMetric(float64(took[0].Nanoseconds())/n, "plain-ns/stmt")
	b.ReportMetric(float64(took[1].Nanoseconds())/n, "generated-ns/stmt")
	b.ReportMetric(float64(took[1])/float64(took[0]), "ratio")
	if cpu[0] > 0 {
		b.ReportMetric(float64(cpu[1])/float64(cpu[0]), "server-cpu-ratio")
	}
	var logged int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pgmesh.conflict_log").Scan(&logged); err != nil {
		b.Fatal(err)
	}
	switch {
	case bc.conflicts && logged != total:
		b.Fatalf("%d conflicts logged, want %d", logged, total)
	case !bc.conflicts && logged != 0:
		b.Fatalf("%d conflicts logged in steady-state replication, want none", logged)
	}
}
