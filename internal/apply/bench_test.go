package apply

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// BenchmarkApply applies a backlog of pgbench TPC-B transactions (3 updates
// and 1 insert each), the workload of pgmesh bench apply: "backlog" as the applier
// runs it (flights of many transactions), and for comparison
// "round-trip-per-txn", which waits for each transaction (what an applier
// without cross-transaction pipelining achieves). Run with e.g.
// -bench Apply -benchtime 5000x.
func BenchmarkApply(b *testing.B) {
	for _, workers := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("backlog/workers=%d", workers), func(b *testing.B) { benchApply(b, workers, false) })
	}
	b.Run("round-trip-per-txn", func(b *testing.B) { benchApply(b, 1, true) })
}

func benchApply(b *testing.B, workers int, waitEach bool) {
	const accounts, tellers, branches = 10000, 10, 1
	e := newEnvN(b, workers)
	e.exec(b, `CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))`)
	e.exec(b, `CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84))`)
	e.exec(b, `CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88))`)
	e.exec(b, `CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))`)
	e.exec(b, `INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, $1) g`, accounts)
	e.exec(b, `INSERT INTO pgbench_tellers SELECT g, 1, 0, '' FROM generate_series(1, $1) g`, tellers)
	e.exec(b, `INSERT INTO pgbench_branches SELECT g, 0, '' FROM generate_series(1, $1) g`, branches)
	e.exec(b, `VACUUM ANALYZE`)
	// The upstream had seen the initial rows (as if they came through the
	// mesh), and its changes are newer: no conflicts, the common case.
	e.exec(b, `INSERT INTO pgmesh.peer_seen VALUES ($1, 'n2', now())`, e.origin)
	acc := rel(1, "pgbench_accounts", 'd', "*aid", "bid", "abalance", "filler")
	tel := rel(2, "pgbench_tellers", 'd', "*tid", "bid", "tbalance", "filler")
	bra := rel(3, "pgbench_branches", 'd', "*bid", "bbalance", "filler")
	his := rel(4, "pgbench_history", 'd', "tid", "bid", "aid", "delta", "mtime", "filler")

	// The backlog is built before the clock starts, as the stream would
	// have decoded it.
	type txn struct {
		b       stream.Begin
		c       stream.Commit
		changes []*stream.Change
	}
	r := newRemote()
	r.ts = time.Now()
	filler := strings.Repeat(" ", 84)
	backlog := make([]txn, b.N)
	for i := range backlog {
		aid, tid, delta := strconv.Itoa(1+rand.IntN(accounts)), strconv.Itoa(1+rand.IntN(tellers)), strconv.Itoa(rand.IntN(10000)-5000)
		bg, c := r.next()
		backlog[i] = txn{bg, c, []*stream.Change{
			upd(acc, nil, aid, "1", delta, filler),
			upd(tel, nil, tid, "1", delta, filler),
			upd(bra, nil, "1", delta, filler),
			ins(his, tid, "1", aid, delta, "2025-03-01 12:00:00", ""),
		}}
	}
	a := e.applier(b, Options{})
	ctx := context.Background()
	b.ResetTimer()
	for _, t := range backlog {
		if err := a.Begin(ctx, t.b); err != nil {
			b.Fatal(err)
		}
		for _, c := range t.changes {
			if err := a.Change(ctx, c); err != nil {
				b.Fatal(err)
			}
		}
		if err := a.Commit(ctx, t.c); err != nil {
			b.Fatal(err)
		}
		if waitEach {
			if err := a.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := a.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txns/s")
	if st := a.Stats(); st.Txns != uint64(b.N) {
		b.Fatalf("applied %d transactions, want %d", st.Txns, b.N)
	}
}

// BenchmarkApplyBigInsert applies one remote transaction that inserts b.N
// rows into one table (bigint key, 96-byte text), as a bulk load or a big
// INSERT … SELECT upstream does. Run with e.g. -benchtime 200000x.
func BenchmarkApplyBigInsert(b *testing.B) {
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			e := newEnvN(b, workers)
			e.exec(b, `CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL)`)
			tr := rel(1, "big", 'd', "*id", "payload")
			changes := make([]*stream.Change, b.N)
			for i := range changes {
				changes[i] = ins(tr, strconv.Itoa(i+1), strings.Repeat(strconv.Itoa(i%10), 96))
			}
			a := e.applier(b, Options{})
			r := newRemote()
			b.ResetTimer()
			r.apply(b, a, changes...)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
