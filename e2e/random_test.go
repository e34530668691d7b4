package e2e

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

var (
	randomSeeds = flag.Int("pgmesh.seeds", 200, "TestRandomHistories: number of randomized histories (seeds) to run")
	randomSeed  = flag.Int("pgmesh.seed", -1, "TestRandomHistories: replay only the round that contains this seed")
)

const (
	// seedsPerRound seeds share each round's link pauses: one mesh and
	// one table serve every seed, each on its own keys, so that 200 seeds
	// cost 20 quiescence waits instead of 200.
	seedsPerRound = 10
	keysPerSeed   = 4
	randomDDL     = `CREATE TABLE rh (k int PRIMARY KEY, v text NOT NULL)`
)

// rop is one planned statement of a seed: an upsert, update or delete of
// one key on one node (0-based).
type rop struct {
	kind string // insert, update, delete
	node int
	key  int
	val  string
}

// rwrite is a statement as it ran. Only a statement that changed a row
// (write) is part of the history the model judges; the others are kept
// for the failure report.
type rwrite struct {
	rop
	seq   int // execution order in the test, a tiebreak only
	phase int
	write bool
	at    time.Time // commit time
}

// newer tells whether a beats b in last-update-wins order: the greater
// commit time, ties to the node first in the config (n1 < n2 < n3), then
// (same node, same microsecond) the later statement.
func newer(a, b rwrite) bool {
	if !a.at.Equal(b.at) {
		return a.at.After(b.at)
	}
	if a.node != b.node {
		return a.node < b.node
	}
	return a.seq > b.seq
}

// expect is the model: the row of the newest insert or update, unless a
// delete newer than all of them removed the key.
func expect(ws []rwrite) (string, bool) {
	var lastW, lastD *rwrite
	for i := range ws {
		w := &ws[i]
		if !w.write {
			continue
		}
		last := &lastW
		if w.kind == "delete" {
			last = &lastD
		}
		if *last == nil || newer(*w, **last) {
			*last = w
		}
	}
	if lastW == nil || (lastD != nil && newer(*lastD, *lastW)) {
		return "", false
	}
	return lastW.val, true
}

// roundPlan is the link pauses of one round: the nodes whose agent
// (inbound links) is stopped, and the order in which they come back. Phase
// 0 runs with all of them stopped, phase i after the i-th restart.
type roundPlan struct {
	down []int
}

func planRound(round int) roundPlan {
	rng := rand.New(rand.NewPCG(uint64(round), 0x7041))
	mask := 1 + rng.IntN(7) // a non-empty subset of the three nodes
	var down []int
	for n := range 3 {
		if mask&(1<<n) != 0 {
			down = append(down, n)
		}
	}
	rng.Shuffle(len(down), func(i, j int) { down[i], down[j] = down[j], down[i] })
	return roundPlan{down: down}
}

func (p roundPlan) String() string {
	names := make([]string, len(p.down))
	for i, n := range p.down {
		names[i] = fmt.Sprintf("n%d", n+1)
	}
	return fmt.Sprintf("inbound links of %s stopped, restarted in that order", strings.Join(names, ", "))
}

// seedKeys are the keys that only seed writes.
func seedKeys(seed int) []int {
	keys := make([]int, keysPerSeed)
	for j := range keys {
		keys[j] = seed*keysPerSeed + j
	}
	return keys
}

// seedInitial is the rows a seed starts with (inserted on random nodes and
// replicated before any pause); seedOps its statements per phase. Both
// depend only on the seed (and the number of phases of its round).
func seedInitial(seed int) []rop {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x1417))
	var ops []rop
	for _, k := range seedKeys(seed) {
		if rng.IntN(4) != 0 {
			n := rng.IntN(3)
			ops = append(ops, rop{kind: "insert", node: n, key: k, val: fmt.Sprintf("s%d/init@n%d", seed, n+1)})
		}
	}
	return ops
}

func seedOps(seed, phases int) [][]rop {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	kinds := []string{"insert", "insert", "insert", "update", "update", "update", "update", "delete", "delete"}
	out := make([][]rop, phases)
	i := 0
	for p := range out {
		n := rng.IntN(3)
		if p == 0 {
			n += 2 // most of the concurrency happens while links are down
		}
		for range n {
			node := rng.IntN(3)
			out[p] = append(out[p], rop{
				kind: kinds[rng.IntN(len(kinds))],
				node: node,
				key:  seed*keysPerSeed + rng.IntN(keysPerSeed),
				val:  fmt.Sprintf("s%d/%d@n%d", seed, i, node+1),
			})
			i++
		}
	}
	return out
}

// TestRandomHistories runs randomized histories of inserts, updates and
// deletes on a 3-node mesh whose links are paused (agents stopped) and
// resumed in random orders, while the nodes keep writing: each seed's
// statements on its own keys, interleaved with the other seeds' of its
// round. After each round, once every link has caught up, every node must
// hold the same rows, and every key the model's value: the write with the
// greatest (commit time, node order) unless a newer delete removed it.
// Replay a failing seed with -pgmesh.seed=S (its whole round runs again,
// with the same pauses and statements; how far replication got while the
// statements ran, hence which of them found a row, may differ).
func TestRandomHistories(t *testing.T) {
	seeds := make([]int, 0, *randomSeeds)
	for s := range *randomSeeds {
		seeds = append(seeds, s)
	}
	if *randomSeed >= 0 {
		first := *randomSeed / seedsPerRound * seedsPerRound
		seeds = seeds[:0]
		for s := first; s < first+seedsPerRound; s++ {
			seeds = append(seeds, s)
		}
	}
	if len(seeds) == 0 {
		t.Fatal("-pgmesh.seeds must be at least 1")
	}

	env := sandboxtest.New(t, 3)
	initMesh(t, env, 3, randomDDL)
	cs := conns(t, env, 3)
	// The histories write as an application role: no grant on schema
	// pgmesh (tombstones go through pgmesh's trigger function).
	ws := make([]*pgx.Conn, 3)
	for i := range ws {
		ws[i] = env.App(t, i)
	}
	var agents [3]*agentProc
	for n := range agents {
		agents[n] = startAgent(t, env.ConfigPath, "--node", fmt.Sprintf("n%d", n+1))
	}

	hist := map[int][]rwrite{} // seed → its statements
	seq := 0
	record := func(seed int, w rwrite) {
		seq++
		w.seq = seq
		hist[seed] = append(hist[seed], w)
	}

	// Initial rows, one transaction per node, so that updates and deletes
	// find rows on every node from the start.
	for n := range 3 {
		var keys []int
		var vals []string
		var owners []int
		for _, s := range seeds {
			for _, o := range seedInitial(s) {
				if o.node == n {
					keys, vals, owners = append(keys, o.key), append(vals, o.val), append(owners, s)
				}
			}
		}
		if len(keys) == 0 {
			continue
		}
		affected, at := runWrite(t, ws[n], `INSERT INTO rh (k, v) SELECT * FROM unnest($1::int[], $2::text[])`, keys, vals)
		if affected != int64(len(keys)) {
			t.Fatalf("n%d: initial insert of %d rows inserted %d", n+1, len(keys), affected)
		}
		for i, k := range keys {
			record(owners[i], rwrite{rop: rop{kind: "insert", node: n, key: k, val: vals[i]}, phase: -1, write: true, at: at})
		}
	}
	waitLinksCaughtUp(t, cs)

	writes := 0
	for r := 0; r*seedsPerRound < len(seeds); r++ {
		round := seeds[r*seedsPerRound : min(len(seeds), (r+1)*seedsPerRound)]
		plan := planRound(round[0] / seedsPerRound)
		ops := map[int][][]rop{}
		for _, s := range round {
			ops[s] = seedOps(s, len(plan.down)+1)
		}

		var wg sync.WaitGroup
		for _, n := range plan.down {
			wg.Go(agents[n].stop)
		}
		wg.Wait()
		for p := 0; p <= len(plan.down); p++ {
			if p > 0 {
				n := plan.down[p-1]
				agents[n] = startAgent(t, env.ConfigPath, "--node", fmt.Sprintf("n%d", n+1))
			}
			// Round-robin over the seeds: each seed's statements in its
			// order, the seeds' mixed in time.
			for i := 0; ; i++ {
				ran := false
				for _, s := range round {
					if i >= len(ops[s][p]) {
						continue
					}
					ran = true
					o := ops[s][p][i]
					w := rwrite{rop: o, phase: p}
					w.write, w.at = runOp(t, ws[o.node], o)
					if w.write {
						writes++
					}
					record(s, w)
				}
				if !ran {
					break
				}
			}
		}
		waitLinksCaughtUp(t, cs)
		checkRound(t, cs, plan, round, hist)
	}

	logged := 0
	for _, c := range cs {
		logged += totalLog(t, c)
	}
	t.Logf("%d seeds in %d rounds: %d writes (%d initial rows), %d conflict_log rows", len(seeds),
		(len(seeds)+seedsPerRound-1)/seedsPerRound, writes+countInitial(hist), countInitial(hist), logged)
	// Concurrent writes to the same keys did happen: the histories tested
	// more than plain replication. (A single replayed round may, rarely,
	// have no conflict.)
	if logged == 0 && *randomSeed < 0 {
		t.Errorf("no conflict_log row on any node after %d seeds: the histories had no conflicts", len(seeds))
	}
}

func countInitial(hist map[int][]rwrite) int {
	n := 0
	for _, ws := range hist {
		for _, w := range ws {
			if w.phase < 0 {
				n++
			}
		}
	}
	return n
}

// runOp runs o in its own transaction and tells whether it changed a row,
// and if so its commit time. An update or delete that finds no row is not
// a write: nothing is replicated.
func runOp(t testing.TB, c *pgx.Conn, o rop) (bool, time.Time) {
	t.Helper()
	var sql string
	args := []any{o.key}
	switch o.kind {
	case "insert":
		// A key present locally is overwritten: the change replicates as
		// an update, a full row image all the same.
		sql = `INSERT INTO rh (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v`
		args = append(args, o.val)
	case "update":
		sql = `UPDATE rh SET v = $2 WHERE k = $1`
		args = append(args, o.val)
	case "delete":
		sql = `DELETE FROM rh WHERE k = $1`
	}
	affected, at := runWrite(t, c, sql, args...)
	return affected > 0, at
}

// runWrite runs sql in a transaction of its own and returns the rows it
// changed and the commit time (zero when it changed none: rolled back).
func runWrite(t testing.TB, c *pgx.Conn, sql string, args ...any) (int64, time.Time) {
	t.Helper()
	ctx := context.Background()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	tag, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", sql, args, err)
	}
	if tag.RowsAffected() == 0 {
		return 0, time.Time{}
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::xid::text`).Scan(&xid); err != nil {
		t.Fatalf("read xid: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("%s %v: commit: %v", sql, args, err)
	}
	var at time.Time
	if err := c.QueryRow(ctx, `SELECT pg_xact_commit_timestamp($1::text::xid)`, xid).Scan(&at); err != nil {
		t.Fatalf("commit time of xid %s: %v", xid, err)
	}
	return tag.RowsAffected(), at
}

// waitLinksCaughtUp waits until every link has applied everything its
// upstream had written when the wait began: each slot confirmed past that
// position (the agent confirms only what it has committed downstream).
func waitLinksCaughtUp(t testing.TB, cs []*pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	start := make([]string, len(cs))
	slots := make([][]string, len(cs))
	for u, c := range cs {
		if err := c.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&start[u]); err != nil {
			t.Fatal(err)
		}
		for d := range cs {
			if d != u {
				slots[u] = append(slots[u], fmt.Sprintf("pgmesh_n%d_n%d", u+1, d+1))
			}
		}
	}
	eventually(t, 90*time.Second, "every link caught up", func() (bool, string) {
		var behind []string
		for u, c := range cs {
			rows, err := c.Query(ctx, `
SELECT s.name, coalesce(r.confirmed_flush_lsn >= $2::pg_lsn, false)
  FROM unnest($1::text[]) s(name)
  LEFT JOIN pg_replication_slots r ON r.slot_name = s.name AND r.database = current_database()`, slots[u], start[u])
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var name string
				var done bool
				if err := rows.Scan(&name, &done); err != nil {
					t.Fatal(err)
				}
				if !done {
					behind = append(behind, name)
				}
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
		}
		return len(behind) == 0, fmt.Sprintf("slots behind: %v", behind)
	})
}

// checkRound waits until every node holds the same rows for the keys of
// the round's seeds, then checks them against the model; either failure
// reports the history of the seeds concerned.
func checkRound(t testing.TB, cs []*pgx.Conn, plan roundPlan, round []int, hist map[int][]rwrite) {
	t.Helper()
	var keys []int
	for _, s := range round {
		keys = append(keys, seedKeys(s)...)
	}
	var states []map[int]string
	// The links have caught up, so the nodes should be identical already;
	// the bound only turns a stuck difference into a report.
	eventually(t, 10*time.Second, "every node identical on the keys of seeds "+fmt.Sprint(round), func() (bool, string) {
		states = make([]map[int]string, len(cs))
		for n, c := range cs {
			states[n] = rhRows(t, c, keys)
		}
		return roundReport(cs, plan, round, hist, states, func(_, k int, _ string, _ bool) bool {
			// Values are never empty: "" is an absent row.
			return states[0][k] == states[1][k] && states[0][k] == states[2][k]
		})
	})
	if ok, report := roundReport(cs, plan, round, hist, states, func(_, k int, want string, present bool) bool {
		for n := range cs {
			if got, ok := states[n][k]; ok != present || got != want {
				return false
			}
		}
		return true
	}); !ok {
		t.Fatalf("nodes disagree with last-update-wins:\n%s", report)
	}
}

// roundReport describes every seed of the round with a key for which good
// does not hold.
func roundReport(cs []*pgx.Conn, plan roundPlan, round []int, hist map[int][]rwrite, states []map[int]string,
	good func(seed, key int, want string, present bool) bool) (bool, string) {
	var report strings.Builder
	for _, s := range round {
		for _, k := range seedKeys(s) {
			want, present := expect(keyHistory(hist[s], k))
			if !good(s, k, want, present) {
				describeSeed(&report, cs, plan, s, hist[s], states)
				break
			}
		}
	}
	return report.Len() == 0, report.String()
}

func keyHistory(ws []rwrite, k int) []rwrite {
	var out []rwrite
	for _, w := range ws {
		if w.key == k {
			out = append(out, w)
		}
	}
	return out
}

// describeSeed writes what a failing seed did and what every node holds:
// the statements in commit-time order (those that changed nothing last),
// the final rows per node, the model's and the conflict_log of the keys.
func describeSeed(b *strings.Builder, cs []*pgx.Conn, plan roundPlan, seed int, ws []rwrite, states []map[int]string) {
	fmt.Fprintf(b, "seed %d (replay: -pgmesh.seed=%d): %s\n", seed, seed, plan)
	sorted := slices.Clone(ws)
	slices.SortStableFunc(sorted, func(a, b rwrite) int {
		switch {
		case a.write != b.write:
			if a.write {
				return -1
			}
			return 1
		case !a.write:
			return a.seq - b.seq
		case newer(b, a):
			return -1
		case newer(a, b):
			return 1
		}
		return 0
	})
	for _, w := range sorted {
		at := "(no row changed: not a write)"
		if w.write {
			at = w.at.UTC().Format("15:04:05.000000")
		}
		v := " v=" + w.val
		if w.kind == "delete" {
			v = ""
		}
		fmt.Fprintf(b, "  %-30s phase %2d  n%d %-6s k=%d%s\n", at, w.phase, w.node+1, w.kind, w.key, v)
	}
	for _, k := range seedKeys(seed) {
		want, present := expect(keyHistory(ws, k))
		if !present {
			want = "(absent)"
		}
		fmt.Fprintf(b, "  key %d: want %s;", k, want)
		for n := range states {
			got, ok := states[n][k]
			if !ok {
				got = "(absent)"
			}
			fmt.Fprintf(b, " n%d=%s", n+1, got)
		}
		b.WriteString("\n")
	}
	for n, c := range cs {
		rows, err := c.Query(context.Background(), `
SELECT format('key %s %s/%s local=%s@%s %s remote=%s@%s %s', key->>'k', kind, resolution,
              local_row->>'v', local_origin, to_char(local_commit_time AT TIME ZONE 'UTC', 'HH24:MI:SS.US'),
              remote_row->>'v', remote_origin, to_char(remote_commit_time AT TIME ZONE 'UTC', 'HH24:MI:SS.US'))
  FROM pgmesh.conflict_log
 WHERE table_name = 'public.rh' AND (key->>'k')::int = ANY($1)
 ORDER BY id`, seedKeys(seed))
		if err != nil {
			fmt.Fprintf(b, "  n%d conflict_log: %v\n", n+1, err)
			continue
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			fmt.Fprintf(b, "  n%d conflict_log: %v\n", n+1, err)
			continue
		}
		for _, l := range lines {
			fmt.Fprintf(b, "  n%d conflict_log: %s\n", n+1, l)
		}
	}
}

func rhRows(t testing.TB, c *pgx.Conn, keys []int) map[int]string {
	t.Helper()
	rows, err := c.Query(context.Background(), `SELECT k, v FROM rh WHERE k = ANY($1)`, keys)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for rows.Next() {
		var k int
		var v string
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
