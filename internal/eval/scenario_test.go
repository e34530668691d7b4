package eval

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 3) }

// runScenario runs a short scenario on the package's servers. Scenario
// tests share slot and origin names (per server): they do not run in
// parallel.
func runScenario(t *testing.T, name string, d time.Duration) (*Result, *sandboxtest.Env) {
	t.Helper()
	env := sandboxtest.New(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	out := t.TempDir()
	// 150 transactions per second per node: the rate at which a crash
	// once showed writes in doubt miscounted (40 did not).
	res, err := Run(ctx, Options{Scenario: name, Nodes: 3, Duration: d, Seed: 42, Out: out,
		Workload: WorkloadConfig{Rate: 150}, Cluster: env.Cluster, DB: env.DB, Progress: testWriter{t}})
	if err != nil {
		t.Fatalf("scenario %s: %v", name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logHistory(t, res)
		}
	})
	for _, f := range []string{"report.json", "report.html"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("report file: %v", err)
		}
	}
	return res, env
}

// logHistory prints, for the keys of the failures, every recorded write,
// every conflict log row and what each node holds of the key (the
// report's diagnosis), to tell a harness bug from a pgmesh one.
func logHistory(t *testing.T, res *Result) {
	keys := map[int64]bool{}
	for _, ex := range res.Report.Examples {
		var id int64
		if i := strings.Index(ex, "eval.accounts id "); i >= 0 {
			fmt.Sscanf(ex[i+len("eval.accounts id "):], "%d", &id)
			keys[id] = true
		}
	}
	for _, w := range res.Writes {
		if w.Table == accounts && keys[w.Key] {
			prev := "-"
			if w.PrevAt != nil {
				prev = stamp(*w.PrevAt)
			}
			t.Logf("write id %d: %s seq %d %s %q at %s prev %s", w.Key, w.Node, w.Seq, w.Op, w.Value, stamp(w.At), prev)
		}
	}
	log, err := conflict.Query(context.Background(), res.Config, conflict.Filter{Table: "eval.accounts"})
	if err != nil {
		t.Logf("conflict log: %v", err)
	}
	for _, e := range log {
		var k struct{ ID int64 }
		_ = json.Unmarshal(e.Key, &k)
		if !keys[k.ID] {
			continue
		}
		ts := func(p *time.Time) string {
			if p == nil {
				return "NULL"
			}
			return stamp(*p)
		}
		t.Logf("conflict on %s id %d: %s %s local %s@%s %s remote %s@%s %s", e.Node, k.ID, e.Kind, e.Resolution,
			deref(e.LocalOrigin), ts(e.LocalCommitTime), e.LocalRow, deref(e.RemoteOrigin), ts(e.RemoteCommitTime), e.RemoteRow)
	}
	for _, d := range res.Report.Diagnosis {
		t.Log(d)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// assertInvariants fails unless every invariant holds and the run had
// what makes them meaningful: writes on every node and conflicts.
func assertInvariants(t *testing.T, r *Report) {
	t.Helper()
	if !r.Passed || len(r.Failures) > 0 {
		t.Errorf("invariants failed: %v\nexamples: %v", r.Failures, r.Examples)
	}
	if !r.Converged || r.LWWViolations != 0 || r.LostIncrements != 0 || r.UnloggedLosses != 0 {
		t.Errorf("converged %v, lww_violations %d, lost_increments %d, unlogged_losses %d",
			r.Converged, r.LWWViolations, r.LostIncrements, r.UnloggedLosses)
	}
	for _, n := range r.Nodes {
		if r.Writes[n].Committed == 0 {
			t.Errorf("no write committed on %s", n)
		}
	}
	total := 0
	for _, c := range r.Conflicts {
		total += c
	}
	if total == 0 {
		t.Error("no conflicts: the hot keys did not make nodes write the same rows")
	}
	if len(r.LagSamples) == 0 {
		t.Error("no lag samples")
	}
}

// TestBaseline runs the baseline, then shows that the checker can fail:
// each tampering of the final state (made while no agent runs, so it
// stays local) breaks the invariant it should, and undoing it restores
// the verdict.
func TestBaseline(t *testing.T) {
	res, env := runScenario(t, "baseline", 10*time.Second)
	assertInvariants(t, res.Report)
	if res.Report.LossesLogged == 0 {
		t.Fatal("no write is accounted for by the conflict log alone: the conflict-log check below would prove nothing")
	}
	ctx := context.Background()
	check := func() *Invariants {
		t.Helper()
		inv, err := Check(ctx, res.Config, res.Writes)
		if err != nil {
			t.Fatal(err)
		}
		return inv
	}
	if inv := check(); len(inv.Failures()) > 0 {
		t.Fatalf("checking again without tampering: %v", inv.Failures())
	}
	steps := []struct {
		name         string
		node         int
		tamper, undo string
		broken       func(*Invariants) bool
	}{
		{"a final value flipped on one node (a wrong resolver)", 1,
			`UPDATE eval.accounts SET val = val || '-tampered' WHERE id = (SELECT min(id) FROM eval.accounts)`,
			`UPDATE eval.accounts SET val = left(val, -9) WHERE val LIKE '%-tampered'`,
			func(i *Invariants) bool { return !i.Converged && i.LWWViolations == 1 }},
		{"a row resurrected on one node", 2,
			`INSERT INTO eval.accounts (id, val, node) VALUES (100000, 'ghost', 'n3')`,
			`DELETE FROM eval.accounts WHERE id = 100000`,
			func(i *Invariants) bool { return !i.Converged && i.LWWViolations == 1 }},
		{"an increment applied twice", 2,
			`UPDATE eval.counters SET total = total + 7 WHERE id = 1`,
			`UPDATE eval.counters SET total = total - 7 WHERE id = 1`,
			func(i *Invariants) bool { return !i.Converged && i.LostIncrements == 7 }},
	}
	for _, s := range steps {
		env.Exec(t, s.node, s.tamper)
		if inv := check(); !s.broken(inv) || len(inv.Failures()) == 0 {
			t.Errorf("%s: the invariants did not catch it: %+v", s.name, inv)
		}
		env.Exec(t, s.node, s.undo)
		if inv := check(); len(inv.Failures()) > 0 {
			t.Errorf("%s undone: still failing: %v", s.name, inv.Failures())
		}
	}
	// A disabled conflict log: every loss it accounted for becomes silent.
	for i := range 3 {
		if _, err := env.Pgmesh(t, i).Exec(ctx, `DELETE FROM pgmesh.conflict_log`); err != nil {
			t.Fatal(err)
		}
	}
	inv := check()
	if inv.UnloggedLosses != res.Report.LossesLogged || inv.LossesLogged != 0 || len(inv.Failures()) == 0 {
		t.Errorf("conflict log emptied: unlogged_losses %d (want %d), losses_logged %d, failures %v",
			inv.UnloggedLosses, res.Report.LossesLogged, inv.LossesLogged, inv.Failures())
	}
}

// TestPartition isolates n3 for the middle third of the run while every
// node keeps writing (split brain), heals, and checks every invariant.
func TestPartition(t *testing.T) {
	res, _ := runScenario(t, "partition", 15*time.Second)
	r := res.Report
	assertInvariants(t, r)
	if len(r.Faults) != 1 || r.Faults[0].End <= r.Faults[0].Start {
		t.Fatalf("faults %+v, want one closed partition window", r.Faults)
	}
	// While n3 was cut off its links fell behind, which the lag shows.
	var during float64
	for _, s := range r.LagSamples {
		if s.T > r.Faults[0].Start && s.T < r.Faults[0].End && (s.Link == "n3->n1" || s.Link == "n1->n3") {
			during = max(during, s.LagMS)
		}
	}
	if during == 0 {
		t.Error("no lag measured on n3's links during the partition")
	}
}
