package e2e

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
)

// randomDDL is the table of the histories. Besides the key, each row may
// hold values that collide with another row of its seed under a unique
// index or exclusion constraint of every kind: an expression (u), a
// partial index (p, only when positive), an exclusion constraint (e), a
// deferrable constraint (d) and NULLS NOT DISTINCT (nn, per seed s). The
// timestamptz and the float8 are there for the nodes' different settings.
var randomDDL = []string{
	`CREATE TABLE rh (k int PRIMARY KEY, v text NOT NULL, s int NOT NULL, u text, p int, e int4range, d int, nn text,
	                  at timestamptz NOT NULL, f float8 NOT NULL)`,
	`CREATE UNIQUE INDEX rh_u ON rh (lower(u))`,
	`CREATE UNIQUE INDEX rh_p ON rh (p) WHERE p > 0`,
	`ALTER TABLE rh ADD CONSTRAINT rh_e EXCLUDE USING gist (e WITH &&)`,
	`ALTER TABLE rh ADD CONSTRAINT rh_d UNIQUE (d) DEFERRABLE INITIALLY DEFERRED`,
	`CREATE UNIQUE INDEX rh_nn ON rh (s, nn) NULLS NOT DISTINCT`,
}

// nodeSessionSettings make each node's application sessions render and
// read values differently (README: no setting changes a value).
var nodeSessionSettings = []map[string]string{
	{},
	{"DateStyle": "SQL, DMY", "TimeZone": "Asia/Kolkata", "extra_float_digits": "0"},
	{"DateStyle": "German", "TimeZone": "America/St_Johns", "IntervalStyle": "sql_standard"},
}

// rop is one planned statement: an upsert, update, key move (to another
// key of the seed) or delete of one key on one node (0-based), or a
// truncate of the whole table. The row it writes gets its seed's colliding
// value ucol/uval, if any, and at and f from n.
type rop struct {
	kind string // insert, update, move, delete, truncate
	node int
	key  int
	to   int // move: the new key
	val  string
	seed int
	ucol string // "", "u", "p", "e", "d", "nn"
	uval int
	n    int // the op's number: at and f
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

// event is what a write means for one key: its value, or a delete.
type event struct {
	w      *rwrite
	delete bool
}

// newer tells whether a beats b in last-update-wins order: the greater
// commit time, ties to the node first in the config (n1 < n2 < n3), then
// (same node, same microsecond) the later statement.
func newer(a, b *rwrite) bool {
	if !a.at.Equal(b.at) {
		return a.at.After(b.at)
	}
	if a.node != b.node {
		return a.node < b.node
	}
	return a.seq > b.seq
}

// keyEvents are the events of key k: a write of it, a delete of it, a
// move away from it (a delete) or onto it (a write), a truncate (a delete
// of every key).
func keyEvents(ws []*rwrite, k int) []event {
	var out []event
	for _, w := range ws {
		if !w.write {
			continue
		}
		switch {
		case w.kind == "truncate":
			out = append(out, event{w: w, delete: true})
		case w.kind == "move" && w.key == k:
			out = append(out, event{w: w, delete: true})
		case w.kind == "move" && w.to == k:
			out = append(out, event{w: w})
		case w.key == k && w.kind == "delete":
			out = append(out, event{w: w, delete: true})
		case w.key == k:
			out = append(out, event{w: w})
		}
	}
	return out
}

// expect is the model: the row of the newest write of the key, unless a
// delete newer than all of them removed it.
func expect(evs []event) (*rwrite, bool) {
	var lastW, lastD *rwrite
	for _, e := range evs {
		last := &lastW
		if e.delete {
			last = &lastD
		}
		if *last == nil || newer(e.w, *last) {
			*last = e.w
		}
	}
	if lastW == nil || (lastD != nil && newer(lastD, lastW)) {
		return nil, false
	}
	return lastW, true
}

// roundPlan is the link pauses of one round: the nodes whose agent
// (inbound links) is stopped, and the order in which they come back. Phase
// 0 runs with all of them stopped, phase i after the i-th restart. A round
// may also truncate the table, from node truncNode, in phase truncPhase
// after truncAfter steps of its statements.
type roundPlan struct {
	down                              []int
	truncate                          bool
	truncNode, truncPhase, truncAfter int
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
	p := roundPlan{down: down}
	if rng.IntN(4) == 0 {
		p.truncate, p.truncNode, p.truncPhase, p.truncAfter = true, rng.IntN(3), rng.IntN(len(down)+1), rng.IntN(3)
	}
	return p
}

func (p roundPlan) String() string {
	names := make([]string, len(p.down))
	for i, n := range p.down {
		names[i] = fmt.Sprintf("n%d", n+1)
	}
	s := fmt.Sprintf("inbound links of %s stopped, restarted in that order", strings.Join(names, ", "))
	if p.truncate {
		s += fmt.Sprintf("; n%d truncates in phase %d", p.truncNode+1, p.truncPhase)
	}
	return s
}

// seedKeys are the keys that only seed writes.
func seedKeys(seed int) []int {
	keys := make([]int, keysPerSeed)
	for j := range keys {
		keys[j] = seed*keysPerSeed + j
	}
	return keys
}

// seedInitial is the rows a seed starts with (inserted on random nodes as
// its round begins); seedOps its statements per phase. Both depend only on
// the seed (and the number of phases of its round).
func seedInitial(seed int) []rop {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x1417))
	var ops []rop
	for i, k := range seedKeys(seed) {
		if rng.IntN(4) != 0 {
			n := rng.IntN(3)
			ops = append(ops, rop{kind: "insert", node: n, key: k, seed: seed, n: 900 + i, val: fmt.Sprintf("s%d/init%d@n%d", seed, i, n+1)})
		}
	}
	return ops
}

func seedOps(seed, phases int) [][]rop {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5eed))
	kinds := []string{"insert", "insert", "insert", "update", "update", "update", "move", "delete", "delete"}
	ucols := []string{"u", "p", "e", "d", "nn"}
	out := make([][]rop, phases)
	i := 0
	for p := range out {
		n := rng.IntN(3)
		if p == 0 {
			n += 2 // most of the concurrency happens while links are down
		}
		for range n {
			node := rng.IntN(3)
			o := rop{
				kind: kinds[rng.IntN(len(kinds))],
				node: node,
				key:  seed*keysPerSeed + rng.IntN(keysPerSeed),
				seed: seed,
				n:    i,
				val:  fmt.Sprintf("s%d/%d@n%d", seed, i, node+1),
			}
			if o.kind == "move" {
				o.to = seed*keysPerSeed + (o.key-seed*keysPerSeed+1+rng.IntN(keysPerSeed-1))%keysPerSeed
			}
			// Each seed collides under one kind of constraint (the seeds of
			// a round cover them all), often enough to meet concurrently.
			if o.kind != "delete" && rng.IntN(2) == 0 {
				o.ucol, o.uval = ucols[seed%len(ucols)], rng.IntN(2)
			}
			out[p] = append(out[p], o)
			i++
		}
	}
	return out
}

// rowArgs are the values of the columns after k and v that the row of o
// gets: s, u, p, e, d, nn, at, f. Only o.ucol may collide with another row
// of the seed; nn is otherwise the row's own value.
func rowArgs(o rop) []any {
	var u, e, nn *string
	var p, d *int
	str := func(s string) *string { return &s }
	num := func(n int) *int { return &n }
	nn = str(o.val)
	switch o.ucol {
	case "u":
		u = str([]string{fmt.Sprintf("s%d-a", o.seed), fmt.Sprintf("S%d-A", o.seed)}[o.uval])
	case "p": // only a positive p is in the partial index
		p = num([]int{o.seed*10 + 1, -(o.seed*10 + 1)}[o.uval])
	case "e":
		e = str([]string{fmt.Sprintf("[%d,%d)", o.seed*100, o.seed*100+5), fmt.Sprintf("[%d,%d)", o.seed*100+3, o.seed*100+8)}[o.uval])
	case "d":
		d = num(o.seed*10 + o.uval)
	case "nn":
		nn = []*string{nil, str("x")}[o.uval]
	}
	// A time and a float whose text depends on the session's settings.
	at := fmt.Sprintf("2024-02-29 23:59:%02d.%06d+00", o.n%60, o.seed%1000000)
	f := float64(o.seed*1000+o.n) / 3
	return []any{o.seed, u, p, e, d, nn, at, f}
}

// TestRandomHistories runs randomized histories of inserts, updates, key
// moves and deletes, and now and then a TRUNCATE of the whole table, on a
// 3-node mesh whose nodes render values under different settings and
// whose links are paused (agents stopped) and resumed in random orders,
// while the nodes keep writing: each seed's statements on its own keys,
// interleaved with the other seeds' of its round. Rows collide now and
// then under the table's unique indexes and exclusion constraints.
//
// After each round, once every link has caught up, every node must hold the
// same rows, and every key the model's value — the write with the greatest
// (commit time, node order) unless a newer delete (a move away, a
// truncate) removed it — or else, for a key a unique_conflict concerned,
// a value written to it, with the model's row in some conflict_log. No
// write may be lost unlogged: every write is in the final state, or older
// than another write or delete of its key, or in a conflict_log.
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
	for n, set := range nodeSessionSettings {
		nodeSettings(t, env, n, set, nil)
	}
	initMesh(t, env, 3, randomDDL...)
	// Parallel apply gives the same verdicts as serial apply: the agents
	// restart during the histories, and each link catches up on two
	// sessions.
	setApplyWorkers(t, env, 2)
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

	var all []*rwrite // every statement, in execution order
	seq := 0
	run := func(o rop, phase int) *rwrite {
		seq++
		w := &rwrite{rop: o, seq: seq, phase: phase}
		w.write, w.at = runOp(t, ws[o.node], o)
		all = append(all, w)
		return w
	}
	initial := func(round []int) {
		for _, s := range round {
			for _, o := range seedInitial(s) {
				run(o, -1)
			}
		}
	}

	stats := randomStats{}
	rounds := (len(seeds) + seedsPerRound - 1) / seedsPerRound
	initial(seeds[:min(len(seeds), seedsPerRound)])
	waitLinksCaughtUp(t, cs)
	for r := range rounds {
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
				if plan.truncate && p == plan.truncPhase && i == plan.truncAfter {
					if w := run(rop{kind: "truncate", node: plan.truncNode, seed: -1}, p); w.write {
						stats.truncates++
					}
				}
				ran := false
				for _, s := range round {
					if i >= len(ops[s][p]) {
						continue
					}
					ran = true
					if w := run(ops[s][p][i], p); w.write {
						stats.writes++
						if w.kind == "move" {
							stats.moves++
						}
					}
				}
				if !ran {
					break
				}
			}
		}
		// The next round's rows, replicated with the rest.
		if r+1 < rounds {
			initial(seeds[(r+1)*seedsPerRound : min(len(seeds), (r+2)*seedsPerRound)])
		}
		waitLinksCaughtUp(t, cs)
		checkRound(t, cs, plan, round, all, &stats)
	}

	logged, kinds := 0, map[string]int{}
	for _, c := range cs {
		logged += totalLog(t, c)
		rows, err := c.Query(context.Background(), `SELECT kind, count(*) FROM pgmesh.conflict_log GROUP BY kind`)
		if err != nil {
			t.Fatal(err)
		}
		var kind string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&kind, &n}, func() error { kinds[kind] += n; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d seeds in %d rounds: %d writes (%d key moves, %d truncates), %d conflict_log rows %v; on the nodes, %d keys decided by a unique conflict and %d writes lost to one (logged), %d keys left different after one; %d unlogged losses",
		len(seeds), rounds, stats.writes, stats.moves, stats.truncates, logged, kinds, stats.uniqueKeys, stats.uniqueLosses, stats.uniqueDiverged, stats.unlogged)
	// Concurrent writes to the same keys did happen: the histories tested
	// more than plain replication. (A single replayed round may, rarely,
	// have no conflict.)
	if logged == 0 && *randomSeed < 0 {
		t.Errorf("no conflict_log row on any node after %d seeds: the histories had no conflicts", len(seeds))
	}
}

// randomStats counts what the histories did.
type randomStats struct {
	writes, moves, truncates int
	// uniqueKeys count (key, node) whose final state a unique conflict
	// decided (not the key's last write); uniqueLosses (write, node) lost
	// to one (logged); uniqueDiverged keys left different on the nodes
	// after one.
	uniqueKeys, uniqueLosses, uniqueDiverged int
	unlogged                                 int
}

// runOp runs o in its own transaction and tells whether it changed a row,
// and if so its commit time. An update, move or delete that finds no row
// is not a write: nothing is replicated; nor is a statement this node's
// own constraints refuse (a key or value another row holds here).
func runOp(t testing.TB, c *pgx.Conn, o rop) (bool, time.Time) {
	t.Helper()
	var sql string
	var args []any
	switch o.kind {
	case "insert":
		// A key present locally is overwritten: the change replicates as
		// an update, a full row image all the same.
		sql = `INSERT INTO rh (k, v, s, u, p, e, d, nn, at, f) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		       ON CONFLICT (k) DO UPDATE SET v = excluded.v, s = excluded.s, u = excluded.u, p = excluded.p, e = excluded.e,
		                                     d = excluded.d, nn = excluded.nn, at = excluded.at, f = excluded.f`
		args = append([]any{o.key, o.val}, rowArgs(o)...)
	case "update":
		sql = `UPDATE rh SET v = $2, s = $3, u = $4, p = $5, e = $6, d = $7, nn = $8, at = $9, f = $10 WHERE k = $1`
		args = append([]any{o.key, o.val}, rowArgs(o)...)
	case "move":
		sql = `UPDATE rh SET k = $11, v = $2, s = $3, u = $4, p = $5, e = $6, d = $7, nn = $8, at = $9, f = $10 WHERE k = $1`
		args = append(append([]any{o.key, o.val}, rowArgs(o)...), o.to)
	case "delete":
		sql, args = `DELETE FROM rh WHERE k = $1`, []any{o.key}
	case "truncate":
		sql = `TRUNCATE rh`
	}
	affected, at, err := runWrite(c, o.kind == "truncate", sql, args...)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "23505" || pe.Code == "23P01") {
		return false, time.Time{}
	}
	if err != nil {
		t.Fatalf("n%d %s %v: %v", o.node+1, sql, args, err)
	}
	return affected > 0 || o.kind == "truncate", at
}

// runWrite runs sql in a transaction of its own and returns the rows it
// changed and the commit time (zero when it changed none: rolled back,
// unless always: a TRUNCATE reports no rows).
func runWrite(c *pgx.Conn, always bool, sql string, args ...any) (int64, time.Time, error) {
	ctx := context.Background()
	tx, err := c.Begin(ctx)
	if err != nil {
		return 0, time.Time{}, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after Commit
	tag, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		return 0, time.Time{}, err
	}
	if tag.RowsAffected() == 0 && !always {
		return 0, time.Time{}, nil
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::xid::text`).Scan(&xid); err != nil {
		return 0, time.Time{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, time.Time{}, err
	}
	var at time.Time
	if err := c.QueryRow(ctx, `SELECT pg_xact_commit_timestamp($1::text::xid)`, xid).Scan(&at); err != nil {
		return 0, time.Time{}, fmt.Errorf("commit time of xid %s: %w", xid, err)
	}
	return tag.RowsAffected(), at, nil
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

// rhRow is a row of rh as every node must hold it: every column in a form
// that no session setting changes.
type rhRow struct {
	v, rest string
}

// logImage is what the conflict logs say about the round's keys.
type logImage struct {
	unique map[int]bool    // keys a unique_conflict concerned
	images map[string]bool // values v of every logged row image
}

// checkRound waits until every node holds the same rows for the keys of
// the round's seeds, then checks them against the model; either failure
// reports the history of the seeds concerned.
func checkRound(t testing.TB, cs []*pgx.Conn, plan roundPlan, round []int, all []*rwrite, stats *randomStats) {
	t.Helper()
	var keys []int
	for _, s := range round {
		keys = append(keys, seedKeys(s)...)
	}
	hist := map[int][]*rwrite{} // seed → its statements and the truncates
	for _, w := range all {
		if w.kind == "truncate" && w.phase >= 0 && w.seq > roundStart(all, round) {
			for _, s := range round {
				hist[s] = append(hist[s], w)
			}
		} else if slices.Contains(round, w.seed) {
			hist[w.seed] = append(hist[w.seed], w)
		}
	}
	var states []map[int]rhRow
	var logs logImage
	// The links have caught up, so the nodes should be identical already;
	// the bound only turns a stuck difference into a report. A key a
	// unique conflict concerned may stay different (see below).
	eventually(t, 10*time.Second, "every node identical on the keys of seeds "+fmt.Sprint(round), func() (bool, string) {
		states = make([]map[int]rhRow, len(cs))
		for n, c := range cs {
			states[n] = rhRows(t, c, keys)
		}
		logs = readLogs(t, cs)
		var report strings.Builder
		for _, s := range round {
			for _, k := range seedKeys(s) {
				if !logs.unique[k] && !sameOnAll(states, k) {
					describeSeed(&report, cs, plan, s, hist[s], states, logs)
					break
				}
			}
		}
		return report.Len() == 0, report.String()
	})
	var report, diverged strings.Builder
	for _, s := range round {
		bad, differ := false, false
		for _, k := range seedKeys(s) {
			evs := keyEvents(hist[s], k)
			win, present := expect(evs)
			if !logs.unique[k] {
				// Exactly last-update-wins.
				if got, ok := states[0][k]; present != ok || ok && got != rowOf(win) {
					bad = true
				}
				continue
			}
			// A unique conflict concerned the key: on each node its value
			// is one written to it, and the model's row, if not there, is
			// logged. A row that lost on one node may remain on another
			// that received it after the winning row was gone (README,
			// Conflicts): counted, not failed, as the loss is logged.
			if !sameOnAll(states, k) {
				stats.uniqueDiverged++
				differ = true
			}
			for n := range states {
				got, ok := states[n][k]
				if ok && !slices.ContainsFunc(evs, func(e event) bool { return !e.delete && rowOf(e.w) == got }) {
					bad = true
				}
				if present && (!ok || got != rowOf(win)) {
					stats.uniqueKeys++
					if !logs.images[win.val] {
						bad = true
					}
				}
			}
		}
		// Every write is, on every node, in the final state, older than
		// another event of its key, or logged.
		for _, w := range hist[s] {
			if !w.write || w.kind == "delete" || w.kind == "truncate" {
				continue
			}
			k := w.key
			if w.kind == "move" {
				k = w.to
			}
			if slices.ContainsFunc(keyEvents(hist[s], k), func(e event) bool { return e.w != w && newer(e.w, w) }) {
				continue
			}
			for n := range states {
				if got, ok := states[n][k]; ok && got == rowOf(w) {
					continue
				}
				if logs.images[w.val] {
					if logs.unique[k] {
						stats.uniqueLosses++
					}
					continue
				}
				stats.unlogged++
				bad = true
			}
		}
		if bad {
			describeSeed(&report, cs, plan, s, hist[s], states, logs)
		} else if differ {
			describeSeed(&diverged, cs, plan, s, hist[s], states, logs)
		}
	}
	if diverged.Len() > 0 {
		t.Logf("keys left different after a unique conflict, every loss logged:\n%s", diverged.String())
	}
	if report.Len() > 0 {
		t.Fatalf("nodes disagree with last-update-wins, or lost a write unlogged:\n%s", report.String())
	}
}

// roundStart is the sequence number before the round's first statement
// (its seeds' initial rows): earlier truncates are older than every write
// of the round.
func roundStart(all []*rwrite, round []int) int {
	for _, w := range all {
		if slices.Contains(round, w.seed) {
			return w.seq - 1
		}
	}
	return 0
}

func sameOnAll(states []map[int]rhRow, k int) bool {
	for _, st := range states[1:] {
		a, okA := states[0][k]
		b, okB := st[k]
		if okA != okB || a != b {
			return false
		}
	}
	return true
}

// rowOf is the row write w leaves, as rhRows reads it.
func rowOf(w *rwrite) rhRow {
	a := rowArgs(w.rop)
	s := func(v any) string {
		switch x := v.(type) {
		case *string:
			if x == nil {
				return "∅"
			}
			return *x
		case *int:
			if x == nil {
				return "∅"
			}
			return fmt.Sprint(*x)
		}
		return fmt.Sprint(v)
	}
	at, err := time.Parse("2006-01-02 15:04:05.999999-07", a[6].(string))
	if err != nil {
		panic(err)
	}
	return rhRow{v: w.val, rest: strings.Join([]string{s(a[0]), s(a[1]), s(a[2]), s(a[3]), s(a[4]), s(a[5]),
		fmt.Sprint(at.UnixMicro()), fmt.Sprintf("%016x", math.Float64bits(a[7].(float64)))}, "|")}
}

// readLogs reads every node's conflict_log of rh.
func readLogs(t testing.TB, cs []*pgx.Conn) logImage {
	t.Helper()
	l := logImage{unique: map[int]bool{}, images: map[string]bool{}}
	for _, c := range cs {
		rows, err := c.Query(context.Background(), `
SELECT kind = 'unique_conflict', (key->>'k')::int, (local_row->>'k')::int, (remote_row->>'k')::int, local_row->>'v', remote_row->>'v'
  FROM pgmesh.conflict_log WHERE table_name = 'public.rh'`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var unique bool
			var ks [3]*int
			var vs [2]*string
			if err := rows.Scan(&unique, &ks[0], &ks[1], &ks[2], &vs[0], &vs[1]); err != nil {
				t.Fatal(err)
			}
			for _, k := range ks {
				if unique && k != nil {
					l.unique[*k] = true
				}
			}
			for _, v := range vs {
				if v != nil {
					l.images[*v] = true
				}
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// describeSeed writes what a failing seed did and what every node holds:
// the statements in commit-time order (those that changed nothing last),
// the final rows per node, the model's and the conflict_log of the keys.
func describeSeed(b *strings.Builder, cs []*pgx.Conn, plan roundPlan, seed int, ws []*rwrite, states []map[int]rhRow, logs logImage) {
	fmt.Fprintf(b, "seed %d (replay: -pgmesh.seed=%d): %s\n", seed, seed, plan)
	sorted := slices.Clone(ws)
	slices.SortStableFunc(sorted, func(a, b *rwrite) int {
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
		what := fmt.Sprintf("k=%d v=%s", w.key, w.val)
		switch w.kind {
		case "delete":
			what = fmt.Sprintf("k=%d", w.key)
		case "move":
			what = fmt.Sprintf("k=%d→%d v=%s", w.key, w.to, w.val)
		case "truncate":
			what = "(every key)"
		}
		if w.ucol != "" {
			what += fmt.Sprintf(" %s#%d", w.ucol, w.uval)
		}
		fmt.Fprintf(b, "  %-30s phase %2d  n%d %-8s %s\n", at, w.phase, w.node+1, w.kind, what)
	}
	for _, k := range seedKeys(seed) {
		want := "(absent)"
		if w, ok := expect(keyEvents(ws, k)); ok {
			want = w.val
		}
		fmt.Fprintf(b, "  key %d: want %s (unique conflict: %v);", k, want, logs.unique[k])
		for n := range states {
			got, ok := states[n][k]
			if !ok {
				got.v = "(absent)"
			}
			fmt.Fprintf(b, " n%d=%s", n+1, got.v)
		}
		b.WriteString("\n")
	}
	for n, c := range cs {
		rows, err := c.Query(context.Background(), `
SELECT format('key %s %s/%s local=%s@%s %s remote=%s@%s %s', key->>'k', kind, resolution,
              coalesce(local_row->>'k', '') || ':' || coalesce(local_row->>'v', ''), local_origin, to_char(local_commit_time AT TIME ZONE 'UTC', 'HH24:MI:SS.US'),
              coalesce(remote_row->>'k', '') || ':' || coalesce(remote_row->>'v', ''), remote_origin, to_char(remote_commit_time AT TIME ZONE 'UTC', 'HH24:MI:SS.US'))
  FROM pgmesh.conflict_log
 WHERE table_name = 'public.rh' AND ((key->>'k')::int = ANY($1) OR (local_row->>'k')::int = ANY($1) OR (remote_row->>'k')::int = ANY($1))
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

// rhRows reads the rows of keys, each column in a form no session setting
// changes (the time in microseconds, the float's bits).
func rhRows(t testing.TB, c *pgx.Conn, keys []int) map[int]rhRow {
	t.Helper()
	rows, err := c.Query(context.Background(), `
SELECT k, v, concat_ws('|', s, coalesce(u, '∅'), coalesce(p::text, '∅'), coalesce(e::text, '∅'), coalesce(d::text, '∅'), coalesce(nn, '∅'),
                       (extract(epoch FROM at) * 1000000)::bigint, encode(float8send(f), 'hex'))
  FROM rh WHERE k = ANY($1)`, keys)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]rhRow{}
	for rows.Next() {
		var k int
		var r rhRow
		if err := rows.Scan(&k, &r.v, &r.rest); err != nil {
			t.Fatal(err)
		}
		out[k] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
