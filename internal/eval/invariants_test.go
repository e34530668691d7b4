package eval

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

var nodes3 = []string{"n1", "n2", "n3"}

func at(ms int) time.Time {
	return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(ms) * time.Millisecond)
}
func atp(ms int) *time.Time {
	t := at(ms)
	return &t
}

func up(node string, seq int64, key int64, val string, ms int) Write {
	return Write{Node: node, Seq: seq, Table: accounts, Key: key, Op: OpUpsert, Value: val, At: at(ms)}
}

func del(node string, seq int64, key int64, ms int) Write {
	return Write{Node: node, Seq: seq, Table: accounts, Key: key, Op: OpDelete, At: at(ms)}
}

// same builds the final state where every node holds rows.
func same(rows map[int64]string) map[string]*nodeState {
	st := map[string]*nodeState{}
	for _, n := range nodes3 {
		st[n] = state(rows)
	}
	return st
}

func state(rows map[int64]string) *nodeState {
	s := &nodeState{rows: map[string]map[int64]finalRow{accounts: {}, events: {}}, totals: map[int64]int64{}}
	for k, v := range rows {
		s.rows[accounts][k] = finalRow{val: v}
	}
	return s
}

func TestCheckLWW(t *testing.T) {
	cases := []struct {
		name   string
		writes []Write
		states map[string]*nodeState
		want   int
	}{
		{"latest update holds", []Write{up("n1", 1, 1, "a", 1), up("n2", 1, 1, "b", 2)}, same(map[int64]string{1: "b"}), 0},
		{"one node holds an older value", []Write{up("n1", 1, 1, "a", 1), up("n2", 1, 1, "b", 2)},
			map[string]*nodeState{"n1": state(map[int64]string{1: "b"}), "n2": state(map[int64]string{1: "b"}), "n3": state(map[int64]string{1: "a"})}, 1},
		{"tie goes to the node first in the config", []Write{up("n2", 1, 1, "b", 5), up("n1", 1, 1, "a", 5)}, same(map[int64]string{1: "a"}), 0},
		{"tie won by the wrong node", []Write{up("n2", 1, 1, "b", 5), up("n1", 1, 1, "a", 5)}, same(map[int64]string{1: "b"}), 1},
		{"a later delete wins", []Write{up("n1", 1, 1, "a", 1), del("n2", 1, 1, 2)}, same(map[int64]string{}), 0},
		{"a deleted row came back", []Write{up("n1", 1, 1, "a", 1), del("n2", 1, 1, 2)}, same(map[int64]string{1: "a"}), 1},
		{"an update after a delete wins", []Write{del("n2", 1, 1, 2), up("n3", 1, 1, "c", 3)}, same(map[int64]string{1: "c"}), 0},
		{"a row nobody wrote", nil, same(map[int64]string{7: "x"}), 1},
		{"a written row missing", []Write{up("n1", 1, 1, "a", 1), up("n1", 2, 2, "b", 1)}, same(map[int64]string{1: "a"}), 1},
		{"same node, same time: issue order", []Write{up("n1", 2, 1, "second", 1), up("n1", 1, 1, "first", 1)}, same(map[int64]string{1: "second"}), 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := &Invariants{}
			inv.checkLWW(nodes3, tc.writes, tc.states)
			if inv.LWWViolations != tc.want {
				t.Fatalf("lww_violations = %d, want %d (%v)", inv.LWWViolations, tc.want, inv.Examples)
			}
		})
	}
}

func TestCheckCounters(t *testing.T) {
	incs := []Write{
		{Node: "n1", Table: counters, Op: OpIncrement, Key: 1, Delta: 5},
		{Node: "n2", Table: counters, Op: OpIncrement, Key: 1, Delta: 3},
		{Node: "n3", Table: counters, Op: OpIncrement, Key: 2, Delta: 4},
	}
	cases := []struct {
		name   string
		totals map[string]map[int64]int64
		want   int64
	}{
		{"exact", map[string]map[int64]int64{"n1": {1: 8, 2: 4}, "n2": {1: 8, 2: 4}, "n3": {1: 8, 2: 4}}, 0},
		{"one increment lost on n2", map[string]map[int64]int64{"n1": {1: 8, 2: 4}, "n2": {1: 5, 2: 4}, "n3": {1: 8, 2: 4}}, 3},
		{"a loss and a double count do not cancel", map[string]map[int64]int64{"n1": {1: 9, 2: 3}, "n2": {1: 8, 2: 4}, "n3": {1: 8, 2: 4}}, 2},
		{"an extra row", map[string]map[int64]int64{"n1": {1: 8, 2: 4, 3: 1}, "n2": {1: 8, 2: 4}, "n3": {1: 8, 2: 4}}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			states := map[string]*nodeState{}
			for n, tot := range tc.totals {
				states[n] = state(nil)
				states[n].totals = tot
			}
			inv := &Invariants{}
			inv.checkCounters(nodes3, incs, states)
			if inv.LostIncrements != tc.want {
				t.Fatalf("lost_increments = %d, want %d", inv.LostIncrements, tc.want)
			}
		})
	}
}

func entry(resolution string, key int64, local, remote *time.Time) conflict.Entry {
	k, _ := json.Marshal(map[string]int64{"id": key})
	return conflict.Entry{Node: "n1", Table: "eval.accounts", Kind: "update_origin_differs", Resolution: resolution,
		Key: k, LocalCommitTime: local, RemoteCommitTime: remote}
}

func TestCheckLosses(t *testing.T) {
	// a (n1, t=1) and b (n2, t=2) are concurrent: b wins, a must be logged.
	a, b := up("n1", 1, 1, "a", 1), up("n2", 1, 1, "b", 2)
	after := func(w Write, prev int) Write { w.PrevAt = atp(prev); return w }
	// d1 (n1, t=3) deletes b; d3 (n3, t=4) deletes a, not having b yet;
	// c (n3, t=5) re-inserts over d3's tombstone, which replaced d1's.
	d1, d3, c := after(del("n1", 2, 1, 3), 2), after(del("n3", 1, 1, 4), 1), after(up("n3", 2, 1, "c", 5), 4)
	missing := func(local, remote int) conflict.Entry {
		e := entry(conflict.Skip, 1, atp(local), atp(remote))
		e.Kind = conflict.DeleteMissing
		return e
	}
	cases := []struct {
		name                          string
		writes                        []Write
		log                           []conflict.Entry
		unlogged, overwritten, logged int
	}{
		{"loser logged as the local image", []Write{a, b}, []conflict.Entry{entry(conflict.ApplyRemote, 1, atp(1), atp(2))}, 0, 0, 1},
		{"loser logged as the remote image", []Write{a, b}, []conflict.Entry{entry(conflict.KeepLocal, 1, atp(2), atp(1))}, 0, 0, 1},
		{"no log: a silent loss", []Write{a, b}, nil, 1, 0, 0},
		{"the log names the winner only", []Write{a, b}, []conflict.Entry{entry(conflict.KeepLocal, 1, atp(1), atp(2))}, 1, 0, 0},
		{"a log entry of another key does not count", []Write{a, b}, []conflict.Entry{entry(conflict.ApplyRemote, 2, atp(1), atp(2))}, 1, 0, 0},
		{"overwritten by a write that had seen it", []Write{a, after(b, 1)}, nil, 0, 1, 0},
		{"a delete overwritten by a re-insert", []Write{del("n1", 1, 1, 1), after(b, 1)}, nil, 0, 1, 0},
		{"the final write is never a loss", []Write{b}, nil, 0, 0, 0},
		{"a delete that met another's tombstone names both", []Write{a, after(b, 1), d1, d3, c}, []conflict.Entry{missing(3, 4)}, 0, 3, 1},
		{"two deletes of one key, unlogged", []Write{a, after(b, 1), d1, d3, c}, nil, 1, 3, 0},
		{"only delete_missing names its local image", []Write{a, after(b, 1), d1, d3, c},
			[]conflict.Entry{func() conflict.Entry { e := missing(3, 4); e.Kind = conflict.DeleteOriginDiffers; return e }()}, 1, 3, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			inv := &Invariants{}
			lost, err := inv.checkLosses(nodes3, tc.writes, tc.log)
			if err != nil {
				t.Fatal(err)
			}
			if len(lost) != tc.unlogged {
				t.Errorf("unlogged losses returned = %v, want %d", lost, tc.unlogged)
			}
			if inv.UnloggedLosses != tc.unlogged || inv.LossesOverwritten != tc.overwritten || inv.LossesLogged != tc.logged {
				t.Fatalf("unlogged/overwritten/logged = %d/%d/%d, want %d/%d/%d", inv.UnloggedLosses, inv.LossesOverwritten, inv.LossesLogged,
					tc.unlogged, tc.overwritten, tc.logged)
			}
		})
	}
}

func TestFailures(t *testing.T) {
	ok := Invariants{Converged: true}
	if f := ok.Failures(); len(f) != 0 {
		t.Fatalf("failures of a clean run: %v", f)
	}
	bad := Invariants{Converged: false, LWWViolations: 1, LostIncrements: 2, UnloggedLosses: 3}
	if f := bad.Failures(); len(f) != 4 {
		t.Fatalf("failures = %v, want 4", f)
	}
}

func TestPercentiles(t *testing.T) {
	var s []LagSample
	for i := 1; i <= 100; i++ {
		s = append(s, LagSample{LagMS: float64(i)})
	}
	if got, want := percentiles(s), (Percentiles{P50: 50, P95: 95, P99: 99, Max: 100}); got != want {
		t.Fatalf("percentiles = %+v, want %+v", got, want)
	}
	if got := percentiles(nil); got != (Percentiles{}) {
		t.Fatalf("percentiles of nothing = %+v", got)
	}
}

// The diagnosis of a lost write lists, from a second before it (or the
// version it replaced) to a second after it, the writes of its key in commit order and the conflict
// log rows about them, and nothing of other keys or times.
func TestHistory(t *testing.T) {
	lost := up("n2", 1, 1, "b", 2)
	lost.PrevAt = atp(1)
	writes := []Write{lost, up("n1", 1, 1, "a", 1), up("n3", 1, 2, "other", 3), up("n3", 2, 1, "late", 5000)}
	log := []conflict.Entry{entry(conflict.KeepLocal, 1, atp(2), atp(1)), entry(conflict.KeepLocal, 2, atp(2), atp(3)),
		entry(conflict.KeepLocal, 1, atp(5000), atp(4000))}
	got := history([]Write{lost}, writes, log)
	want := []string{
		`eval.accounts id 1, from 23:59:59.002000 to 00:00:01.002000, around the upsert by n2 at 00:00:00.002000:`,
		`  upsert by n1 (seq 1) "a" at 00:00:00.001000, replacing the version of nothing`,
		`  upsert by n2 (seq 1) "b" at 00:00:00.002000, replacing the version of 00:00:00.001000`,
		`  conflict on n1: update_origin_differs keep_local, local NULL at 00:00:00.002000, remote NULL at 00:00:00.001000`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("history:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
