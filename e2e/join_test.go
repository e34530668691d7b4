package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// The join tests' schema: money moves between accounts (balance is a delta
// column, so concurrent transfers on different nodes all count and the
// total stays 50000), every transfer appends a ledger row (a key-less
// table: a transfer applied twice shows as a duplicate row, a lost one as a
// missing row), and history holds rows written in many transactions of
// different sizes before the join, whose commit times the copy must keep.
var joinSchema = []string{
	`CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)`,
	`ALTER TABLE accounts REPLICA IDENTITY FULL`,
	`CREATE TABLE ledger (node int NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
	`ALTER TABLE ledger REPLICA IDENTITY FULL`,
	`CREATE TABLE history (id int PRIMARY KEY, note text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`,
}

const (
	joinAccounts = 50
	joinTotal    = joinAccounts * 1000
)

// joinEnv is a running 3-node mesh (n1..n3) and an empty fourth database
// to add as n4.
type joinEnv struct {
	*sandboxtest.Env
	path  string // the config file: n1..n3, n4 once added
	cs    []*pgx.Conn
	agent *agentProc
}

// newJoinEnv initialises n1..n3 with the join schema and the seed rows,
// replicated by a running agent. On PostgreSQL 16+ the sandbox has no
// pg_dump of that version, so n4 gets the schema from the test (node add
// then compares it with the source's); on 15, node add restores it.
func newJoinEnv(t *testing.T) *joinEnv {
	t.Helper()
	env := sandboxtest.New(t, 4)
	cfg := *env.Config
	cfg.Nodes = cfg.Nodes[:3]
	cfg.Conflicts.Tables = map[string]config.TableConfig{"public.accounts": {DeltaColumns: []string{"balance"}}}
	path := writeConfig(t, &cfg)
	for i := range 3 {
		for _, q := range joinSchema {
			env.Exec(t, i, q)
		}
	}
	if env.Major() > 15 {
		for _, q := range joinSchema {
			env.Exec(t, 3, q)
		}
	}
	mustCLI(t, "init", "-c", path)
	je := &joinEnv{Env: env, path: path, cs: conns(t, env, 4)}
	je.agent = startAgentListening(t, path)
	env.Exec(t, 0, `INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, $1::int) g`, joinAccounts)
	// history: one big transaction, runs of 25, and single rows, on two
	// nodes, so that the copy meets long and short runs of commit times
	// and several origins.
	env.Exec(t, 0, `INSERT INTO history (id, note) SELECT g, 'bulk' FROM generate_series(1, 3000) g`)
	for k := range 40 {
		env.Exec(t, 1, `INSERT INTO history (id, note) SELECT g, 'run' FROM generate_series($1::int, $1::int + 24) g`, 10000+k*25)
	}
	for k := range 150 {
		env.Exec(t, 2, `INSERT INTO history (id, note) VALUES ($1, 'single')`, 20000+k)
	}
	waitConverged(t, env, je.cs[:3], "history", "id")
	waitConverged(t, env, je.cs[:3], "accounts", "id")
	return je
}

// transfers runs the transfer workload on some nodes until stopped.
type transfers struct {
	committed [4]atomic.Int64
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	mu        sync.Mutex
	errs      []error
}

// startTransfers starts a writer on each of nodes (0-based).
func (je *joinEnv) startTransfers(tr *transfers, nodes ...int) {
	ctx, cancel := context.WithCancel(context.Background())
	prev := tr.cancel
	tr.cancel = func() {
		cancel()
		if prev != nil {
			prev()
		}
	}
	for _, n := range nodes {
		tr.wg.Go(func() {
			if err := transferLoop(ctx, je.DSNs[n], n, &tr.committed[n]); err != nil && ctx.Err() == nil {
				tr.mu.Lock()
				tr.errs = append(tr.errs, fmt.Errorf("n%d: %w", n+1, err))
				tr.mu.Unlock()
			}
		})
	}
}

func (tr *transfers) stop(t *testing.T) {
	t.Helper()
	tr.cancel()
	tr.wg.Wait()
	for _, err := range tr.errs {
		t.Error(err)
	}
}

// transferLoop moves money between random accounts, one transfer per
// transaction, and counts the committed ones. A connection lost to a server
// restart is opened again.
func transferLoop(ctx context.Context, dsn string, node int, committed *atomic.Int64) error {
	rng := rand.New(rand.NewPCG(uint64(node), uint64(time.Now().UnixNano())))
	var c *pgx.Conn
	defer func() {
		if c != nil {
			c.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if c == nil || c.IsClosed() {
			var err error
			if c, err = pgx.Connect(ctx, dsn); err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
		}
		// Accounts are updated in id order on every node, so that a
		// transfer and an applied one do not deadlock.
		a, b := 1+rng.IntN(joinAccounts), 1+rng.IntN(joinAccounts)
		a, b = min(a, b), max(a, b)
		amt := rng.IntN(101) - 50
		seq := committed.Load() + 1
		// Not cancelled midway: a commit that reached the server is counted.
		tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := pgx.BeginFunc(tctx, c, func(tx pgx.Tx) error {
			ctx := tctx
			if _, err := tx.Exec(ctx, `UPDATE accounts SET balance = balance - $1 WHERE id = $2`, amt, a); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE accounts SET balance = balance + $1 WHERE id = $2`, amt, b); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO ledger (node, seq) VALUES ($1, $2)`, node, seq)
			return err
		})
		cancel()
		if err != nil {
			if ctx.Err() != nil || c.IsClosed() {
				continue
			}
			return err
		}
		committed.Add(1)
		time.Sleep(3 * time.Millisecond)
	}
	return nil
}

// verify waits until the nodes are identical and checks the invariants:
// the total, and every committed transfer in the ledger exactly once.
func (je *joinEnv) verify(t *testing.T, tr *transfers, nodes int) {
	t.Helper()
	cs := je.cs[:nodes]
	waitConverged(t, je.Env, cs, "ledger", "node, seq")
	waitConverged(t, je.Env, cs, "accounts", "id")
	waitConverged(t, je.Env, cs, "history", "id")
	ctx := context.Background()
	for i, c := range cs {
		var total int64
		if err := c.QueryRow(ctx, `SELECT sum(balance) FROM accounts`).Scan(&total); err != nil {
			t.Fatal(err)
		}
		if total != joinTotal {
			t.Errorf("n%d: total %d, want %d", i+1, total, joinTotal)
		}
		for n := range 4 {
			var rows, distinct, maxSeq int64
			if err := c.QueryRow(ctx, `SELECT count(*), count(DISTINCT seq), coalesce(max(seq), 0) FROM ledger WHERE node = $1`, n).
				Scan(&rows, &distinct, &maxSeq); err != nil {
				t.Fatal(err)
			}
			want := tr.committed[n].Load()
			if rows != want || distinct != want || maxSeq != want {
				t.Errorf("n%d: transfers of n%d: %d ledger rows, %d distinct, last %d; %d committed (missing or doubled)",
					i+1, n+1, rows, distinct, maxSeq, want)
			}
		}
	}
	if out, code := runCLI(t, "diff", "-c", je.path); code != 0 || !strings.Contains(out, "identical") {
		t.Errorf("pgmesh diff after the join: exit %d\n%s", code, out)
	}
}

// commitStamps returns, per history row, its commit time and origin node.
func commitStamps(t *testing.T, c *pgx.Conn) map[int]string {
	t.Helper()
	rows, err := c.Query(context.Background(), `
SELECT h.id, coalesce(x."timestamp"::text, '?') || ' ' || coalesce(pgmesh.origin_node(x.roident), '?')
  FROM history h, pg_xact_commit_timestamp_origin(h.xmin) x`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	var id int
	var s string
	if _, err := pgx.ForEachRow(rows, []any{&id, &s}, func() error { out[id] = s; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestJoinUnderLoad adds n4 while n1..n3 run transfers for the whole join,
// then lets n4 write too: the four nodes end identical (pgmesh diff), the
// total holds everywhere, every committed transfer is in every ledger once,
// and every copied row kept the commit time and origin it has on the
// source (so that later conflicts resolve on n4 as on the others).
func TestJoinUnderLoad(t *testing.T) {
	je := newJoinEnv(t)
	tr := &transfers{}
	je.startTransfers(tr, 0, 1, 2)
	time.Sleep(time.Second)

	out := mustCLI(t, "node", "add", "n4", "--dsn", je.DSNs[3], "-c", je.path)
	for _, want := range []string{"added node n4 to", "source: n1", "pausing apply into n1", "n4 is ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("node add output lacks %q:\n%s", want, out)
		}
	}
	st := mustCLI(t, "status", "-c", je.path)
	if !strings.Contains(st, "n4") || !strings.Contains(st, "ready") {
		t.Errorf("status after the join:\n%s", st)
	}
	je.startTransfers(tr, 3)
	// The first updates of copied rows on n4 are causal (n4 announced what
	// the copy holds): no node may log them as conflicts.
	for _, id := range []int{1, 10000, 20000} {
		je.Exec(t, 3, `UPDATE history SET note = 'updated on n4' WHERE id = $1`, id)
	}
	time.Sleep(time.Second)
	tr.stop(t)
	if tr.committed[3].Load() == 0 {
		t.Fatal("n4 committed no transfer")
	}
	je.verify(t, tr, 4)

	for i, c := range je.cs {
		var n int
		if err := c.QueryRow(context.Background(), `SELECT count(*) FROM pgmesh.conflict_log WHERE table_name <> 'public.accounts'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("n%d logged %d conflicts on tables no two nodes write concurrently", i+1, n)
		}
	}
	// The rows n4 did not touch kept the commit time and origin they have
	// on the source.
	je.Exec(t, 0, `DELETE FROM history WHERE note = 'updated on n4'`)
	waitConverged(t, je.Env, je.cs, "history", "id")
	src, dst := commitStamps(t, je.cs[0]), commitStamps(t, je.cs[3])
	if len(src) != 3000+1000+150-3 {
		t.Fatalf("history has %d rows on n1", len(src))
	}
	for id, s := range src {
		if dst[id] != s {
			t.Fatalf("history %d: commit time and origin %q on n1, %q on n4", id, s, dst[id])
		}
	}
}

// TestJoinWritesAroundSnapshot writes on a third node (n3, not the source)
// at the two moments that decide exactly-once: a transaction committed after
// the slot n3 -> n4 exists and applied by the source before the snapshot is
// both in the copy and in the slot (it must be applied once: skipped by the
// link); one committed after the snapshot is in the slot only (it must not
// be lost), as is one on the source itself.
func TestJoinWritesAroundSnapshot(t *testing.T) {
	je := newJoinEnv(t)
	ctx := context.Background()
	dir := t.TempDir()
	tags := map[string]int{"duplicate": 1, "gap": 2, "gapsource": 3}
	mark := func(node int, tag string) string {
		je.Exec(t, node, `INSERT INTO ledger (node, seq) VALUES ($1, $2)`, 100, tags[tag])
		je.Exec(t, node, `INSERT INTO history (id, note) VALUES ($1, $2)`, 50000+tags[tag], tag)
		var lsn string
		if err := je.cs[node].QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		return lsn
	}
	// At the slots: the "duplicate" write, then wait until the source has
	// applied it (the join would wait for less).
	add := startNodeAdd(t, je, "slots,snapshot", dir)
	add.waitHold(t, "slots")
	dupLSN := mark(2, "duplicate")
	eventually(t, 60*time.Second, "n1 has the duplicate write", func() (bool, string) {
		var n int
		err := je.cs[0].QueryRow(ctx, `SELECT count(*) FROM history WHERE note = 'duplicate'`).Scan(&n)
		return err == nil && n == 1, fmt.Sprint(n, err)
	})
	add.release(t, "slots")
	// At the snapshot: the "gap" writes, on n3 and on the source.
	add.waitHold(t, "snapshot")
	gapLSN := mark(2, "gap")
	mark(0, "gapsource")
	add.release(t, "snapshot")
	add.wait(t)

	// The positions prove which case each write was.
	var slot3, prog3 string
	if err := je.cs[3].QueryRow(ctx, `SELECT slot_lsn::text, progress::text FROM pgmesh.join_upstream WHERE upstream = 'n3'`).Scan(&slot3, &prog3); err != nil {
		t.Fatal(err)
	}
	lsnLE := func(a, b string) bool {
		var le bool
		if err := je.cs[0].QueryRow(ctx, `SELECT $1::pg_lsn <= $2::pg_lsn`, a, b).Scan(&le); err != nil {
			t.Fatal(err)
		}
		return le
	}
	if !lsnLE(slot3, dupLSN) || !lsnLE(dupLSN, prog3) {
		t.Errorf("the duplicate write (%s) is not both after the slot's start (%s) and within the source's progress (%s)", dupLSN, slot3, prog3)
	}
	if lsnLE(gapLSN, prog3) {
		t.Errorf("the gap write (%s) is within the source's progress (%s): it was in the copy", gapLSN, prog3)
	}
	for _, tag := range []string{"duplicate", "gap", "gapsource"} {
		eventually(t, 60*time.Second, "n4 has the "+tag+" write", func() (bool, string) {
			var n int
			err := je.cs[3].QueryRow(ctx, `SELECT count(*) FROM ledger WHERE node = 100 AND seq = $1`, tags[tag]).Scan(&n)
			return err == nil && n >= 1, fmt.Sprint(n, err)
		})
	}
	// n4 has applied nothing of n2 since the copy: only what it announced
	// after the copy tells the others that its update of a row n2 wrote is
	// causal, not a conflict.
	je.Exec(t, 3, `UPDATE history SET note = 'updated on n4' WHERE id = 10000`)
	je.verify(t, &transfers{}, 4)
	for i, c := range je.cs {
		var n int
		if err := c.QueryRow(ctx, `SELECT count(*) FROM pgmesh.conflict_log`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("n%d logged %d conflicts: the first update on n4 of a copied row looked concurrent", i+1, n)
		}
	}
	for _, tag := range []string{"duplicate", "gap", "gapsource"} {
		var n int
		if err := je.cs[3].QueryRow(ctx, `SELECT count(*) FROM ledger WHERE node = 100 AND seq = $1`, tags[tag]).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("n4 has the %s write %d times", tag, n)
		}
	}
}

// nodeAdd is a `pgmesh node add n4` process.
type nodeAdd struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	dir  string
	done chan error
}

// startNodeAdd starts node add n4, holding at points (comma separated)
// until release is called (dir "": until killed).
func startNodeAdd(t *testing.T, je *joinEnv, points, dir string) *nodeAdd {
	t.Helper()
	return startNodeAddOf(t, je.path, "n4", je.DSNs[3], points, dir)
}

// startNodeAddOf starts node add name of the cluster in path.
func startNodeAddOf(t *testing.T, path, name, dsn, points, dir string) *nodeAdd {
	t.Helper()
	cmd := exec.Command(pgmeshBin(t), "node", "add", name, "--dsn", dsn, "-c", path)
	cmd.Env = append(os.Environ(), "PGMESH_JOIN_HOLD="+points)
	if dir != "" {
		cmd.Env = append(cmd.Env, "PGMESH_JOIN_RELEASE="+dir)
	}
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &nodeAdd{cmd: cmd, out: buf, dir: dir, done: make(chan error, 1)}
	go func() { a.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-a.done
		a.done <- nil
		if t.Failed() {
			t.Logf("node add output:\n%s", buf.String())
		}
	})
	return a
}

func (a *nodeAdd) waitHold(t *testing.T, point string) {
	t.Helper()
	eventually(t, 2*time.Minute, "node add reaches "+point, func() (bool, string) {
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("node add ended before its hold point: %v\n%s", err, a.out.String())
		default:
		}
		return strings.Contains(a.out.String(), "holding at "+point), ""
	})
}

func (a *nodeAdd) release(t *testing.T, point string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(a.dir, point), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (a *nodeAdd) kill() {
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	err := <-a.done
	a.done <- err
}

func (a *nodeAdd) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-a.done:
		a.done <- err
		if err != nil {
			t.Fatalf("node add: %v\n%s", err, a.out.String())
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("node add did not finish\n%s", a.out.String())
	}
}

// TestJoinInterrupted interrupts one join at several points while n1..n3
// run transfers: the CLI killed (-9) after the snapshot, n4's server shut
// down immediately in the middle of the copy (and the agent killed -9
// there), the CLI killed once everything is copied, and the agent killed
// while n4 catches up. Each time n4 is shown copying, its links wait, and
// running node add again starts the copy over (or, once complete, goes on
// waiting). In the end the four nodes are identical and every transfer is
// in every ledger exactly once.
func TestJoinInterrupted(t *testing.T) {
	je := newJoinEnv(t)
	ctx := context.Background()
	tr := &transfers{}
	je.startTransfers(tr, 0, 1, 2)

	stateOf := func() (state string, attempt int) {
		c, err := pgx.Connect(ctx, je.DSNs[3])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, `SELECT state, attempt FROM pgmesh.join_state`).Scan(&state, &attempt); err != nil {
			t.Fatal(err)
		}
		return state, attempt
	}
	// A half-joined node never looks healthy: it is copying, and no link
	// into or out of it runs.
	assertHeld := func(when string) {
		t.Helper()
		if st, _ := stateOf(); st != "copying" {
			t.Fatalf("%s: n4 is %s, want copying", when, st)
		}
		eventually(t, 30*time.Second, when+": links of n4 waiting", func() (bool, string) {
			out, _ := runCLI(t, "status", "-c", je.path)
			for _, l := range []string{"n1->n4", "n4->n1"} {
				if !regexp.MustCompile(l + `\s+(waiting|no agent)`).MatchString(out) {
					return false, out
				}
			}
			return strings.Contains(out, "copying from n1"), out
		})
	}

	add := startNodeAdd(t, je, "snapshot", "")
	add.waitHold(t, "snapshot")
	add.kill()
	assertHeld("CLI killed after the snapshot")
	if out, _ := runCLI(t, "check", "-c", je.path); !regexp.MustCompile(`WARN\s+n4\s+join .*joining: copying from n1`).MatchString(out) {
		t.Errorf("check does not warn that n4 is copying:\n%s", out)
	}

	add = startNodeAdd(t, je, "copy", t.TempDir())
	add.waitHold(t, "copy")
	// The copy's progress is in the agent's metrics, and the links into
	// n4 show as waiting.
	eventually(t, 30*time.Second, "the agent's metrics show n4 copying", func() (bool, string) {
		m := je.agent.get(t, "/metrics")
		return strings.Contains(m, `pgmesh_node_state{node="n4",state="copying"} 1`) &&
			regexp.MustCompile(`pgmesh_join_estimated_rows\{node="n4",table="public\.\w+"\} \d`).MatchString(m) &&
			strings.Contains(m, `pgmesh_join_copied_rows{node="n4"`) &&
			strings.Contains(m, `pgmesh_link_state{downstream="n4",link="n1->n4",state="waiting",upstream="n1"} 1`), m
	})
	je.agent.kill()
	if err := je.Cluster.Stop(ctx, "n4", "immediate"); err != nil {
		t.Fatal(err)
	}
	add.release(t, "copy")
	select {
	case err := <-add.done:
		add.done <- err
		if err == nil {
			t.Fatal("node add went on with its server down")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("node add did not notice its server went down")
	}
	if err := je.Cluster.Start(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	je.agent = startAgent(t, je.path)
	je.cs[3] = je.Conn(t, 3)
	assertHeld("server of n4 shut down during the copy")

	add = startNodeAdd(t, je, "copied", "")
	add.waitHold(t, "copied")
	add.kill()
	assertHeld("CLI killed after the copy")

	out := mustCLI(t, "node", "add", "n4", "-c", je.path, "--no-wait")
	if !strings.Contains(out, "starting it over") {
		t.Errorf("the rerun does not say it starts over:\n%s", out)
	}
	if st, attempt := stateOf(); st == "copying" || attempt != 4 {
		t.Fatalf("after the last run n4 is %s at attempt %d, want catching_up or ready at attempt 4", st, attempt)
	}
	je.agent.kill()
	time.Sleep(500 * time.Millisecond)
	je.agent = startAgent(t, je.path)
	out = mustCLI(t, "node", "add", "n4", "-c", je.path)
	if !strings.Contains(out, "state ready") {
		t.Errorf("node add after the catch-up:\n%s", out)
	}
	tr.stop(t)
	je.verify(t, tr, 4)
}

// TestJoinRefusals: node add refuses, with the reason and the fix, what
// would make a join unsafe, and changes nothing then.
func TestJoinRefusals(t *testing.T) {
	env := sandboxtest.New(t, 3)
	cfg := *env.Config
	cfg.Nodes = cfg.Nodes[:2]
	path := writeConfig(t, &cfg)
	for i := range 2 {
		env.Exec(t, i, `CREATE TABLE items (id int PRIMARY KEY, v text)`)
	}
	mustCLI(t, "init", "-c", path)
	env.Exec(t, 0, `INSERT INTO items VALUES (1, 'a')`)

	refuse := func(code int, want string, args ...string) {
		t.Helper()
		out, got := runCLI(t, append([]string{"node", "add"}, append(args, "-c", path)...)...)
		if got != code || !strings.Contains(out, want) {
			t.Errorf("node add %v: exit %d, want %d with %q:\n%s", args, got, code, want, out)
		}
	}
	refuse(2, "give its --dsn", "n3")
	refuse(3, "is a member of test already", "n1")
	env.Exec(t, 2, `CREATE TABLE items (id int PRIMARY KEY, v text)`)
	env.Exec(t, 2, `INSERT INTO items VALUES (7, 'mine')`)
	refuse(3, "n3 is not empty (public.items hold rows)", "n3", "--dsn", env.DSNs[2])
	// Refused before anything changed: n3 is not left in the file.
	if data, err := os.ReadFile(path); err != nil || strings.Contains(string(data), "n3") {
		t.Errorf("the refused node stays in the config (%v):\n%s", err, data)
	}
	refuse(2, "give its --dsn", "n3")
	env.Exec(t, 2, `TRUNCATE items`)
	env.Exec(t, 2, `ALTER TABLE items ALTER COLUMN v TYPE int USING 0`)
	refuse(3, "--from n9: not another node", "n3", "--dsn", env.DSNs[2], "--from", "n9")
	out, _ := runCLI(t, "node", "add", "n3", "--dsn", env.DSNs[2], "-c", path)
	if !strings.Contains(out, "join schema") || !strings.Contains(out, "public.items") {
		t.Errorf("node add onto a different schema:\n%s", out)
	}
	// Nothing was changed on the mesh: no slot for n3.
	var slots int
	if err := env.Conn(t, 0).QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%n3%'`).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Errorf("a refused join left %d slots on n1", slots)
	}

	// A join abandoned in the middle of the copy is removed like any node:
	// it has no change of its own to deliver.
	env.Exec(t, 2, `DROP TABLE items`)
	env.Exec(t, 2, `CREATE TABLE items (id int PRIMARY KEY, v text)`)
	startAgent(t, path) // the source must apply n2 up to n2's slot for n3
	add := startNodeAddOf(t, path, "n3", env.DSNs[2], "copy", "")
	add.waitHold(t, "copy")
	add.kill()
	out = mustCLI(t, "node", "remove", "n3", "-c", path)
	if !strings.Contains(out, "never finished joining") || !strings.Contains(out, "removed node n3") {
		t.Errorf("node remove of an abandoned join:\n%s", out)
	}
	for i := range 2 {
		if err := env.Conn(t, i).QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE '%n3%'`).Scan(&slots); err != nil {
			t.Fatal(err)
		}
		if slots != 0 {
			t.Errorf("n%d: %d slots of the removed n3 left", i+1, slots)
		}
	}
}
