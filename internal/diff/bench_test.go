package diff

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

const (
	benchRows  = 1_000_000
	benchBlock = 100_000
)

// BenchmarkDiff compares a 1M-row table on 3 nodes and, in the same run on
// the same data and connections, the two references: an ordered
// sha256(string_agg(row ORDER BY key)) per block of 100k keys (the
// block-hash method), a bare count(*) scan, and a scan that reads every
// column value once (one count(col) per column, the cheapest query that
// looks at all the data a diff must compare). Every method runs on the 3
// nodes at once. Metrics:
//
//	rows/s/node    rows compared per second on each node (identical tables)
//	x_vs_sha256    how many times faster than the block hashes
//	x_of_count     time relative to count(*) (1 = as fast as a bare scan)
//	x_of_columns   time relative to reading every column value
//	diverged_s     seconds for a diff that finds 100 differing keys
//
// count(*) never deforms a tuple, so it is a floor no comparison of the
// values can reach; x_of_columns shows how much of the gap is the hashing
// itself.
//
// Run: go test ./internal/diff -run '^$' -bench Diff -benchtime 3x
func BenchmarkDiff(b *testing.B) {
	e := sandboxtest.New(b, 3)
	ctx := context.Background()
	load := fmt.Sprintf(`CREATE TABLE bench (id bigint PRIMARY KEY, a text, b int, c timestamptz, d numeric);
INSERT INTO bench SELECT i, md5(i::text), i %% 1000, timestamptz '2024-01-01' + i * interval '1 s', i * 1.5
  FROM generate_series(1, %d) i`, benchRows)
	s, err := open(ctx, e.Config, "bench")
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	if err := s.each(ctx, func(ctx context.Context, _ int, c *pgx.Conn) error {
		if _, err := c.Exec(ctx, load); err != nil {
			return err
		}
		_, err := c.Exec(ctx, "VACUUM ANALYZE bench")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	timed := func(fn func(ctx context.Context, c *pgx.Conn) error) time.Duration {
		began := time.Now()
		if err := s.each(ctx, func(ctx context.Context, _ int, c *pgx.Conn) error { return fn(ctx, c) }); err != nil {
			b.Fatal(err)
		}
		return time.Since(began)
	}
	count := func(ctx context.Context, c *pgx.Conn) error {
		var n int64
		return c.QueryRow(ctx, "SELECT count(*) FROM bench").Scan(&n)
	}
	columns := func(ctx context.Context, c *pgx.Conn) error {
		var n [5]int64
		return c.QueryRow(ctx, "SELECT count(id), count(a), count(b), count(c), count(d) FROM bench").
			Scan(&n[0], &n[1], &n[2], &n[3], &n[4])
	}
	sha := func(ctx context.Context, c *pgx.Conn) error {
		for lo := 1; lo <= benchRows; lo += benchBlock {
			var h []byte
			err := c.QueryRow(ctx, `SELECT sha256(convert_to(string_agg(r::text, E'\n' ORDER BY r.id), 'UTF8'))
  FROM bench AS r WHERE r.id BETWEEN $1 AND $2`, lo, lo+benchBlock-1).Scan(&h)
			if err != nil {
				return err
			}
		}
		return nil
	}
	opts := Options{Tables: []string{"bench"}}
	var tDiff, tSHA, tCount, tColumns time.Duration
	b.ResetTimer()
	for range b.N {
		began := time.Now()
		rep, err := Compare(ctx, e.Config, opts)
		if err != nil {
			b.Fatal(err)
		}
		if !rep.Identical() {
			b.Fatalf("bench tables differ: %+v", rep.Tables)
		}
		tDiff += time.Since(began)
		b.StopTimer()
		tSHA += timed(sha)
		tCount += timed(count)
		tColumns += timed(columns)
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(benchRows*n/tDiff.Seconds(), "rows/s/node")
	b.ReportMetric(tSHA.Seconds()/tDiff.Seconds(), "x_vs_sha256")
	b.ReportMetric(tDiff.Seconds()/tCount.Seconds(), "x_of_count")
	b.ReportMetric(tDiff.Seconds()/tColumns.Seconds(), "x_of_columns")
	b.ReportMetric(tSHA.Seconds()/n, "sha256_s")
	b.ReportMetric(tCount.Seconds()/n, "count_s")
	b.ReportMetric(tColumns.Seconds()/n, "columns_s")

	// 100 keys differ on n2: the diff reads buckets, then keys.
	diverge(b, e, 1, "UPDATE bench SET b = -1 WHERE id % 10000 = 0")
	opts.RecheckPause = 10 * time.Millisecond
	began := time.Now()
	rep, err := Compare(ctx, e.Config, opts)
	if err != nil {
		b.Fatal(err)
	}
	if rep.Tables[0].Differences != benchRows/10000 {
		b.Fatalf("differences = %d", rep.Tables[0].Differences)
	}
	b.ReportMetric(time.Since(began).Seconds(), "diverged_s")
}
