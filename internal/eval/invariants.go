package eval

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/conflict"
	"github.com/pgmesh/pgmesh/internal/diff"
)

// Invariants is what must hold once a cluster is quiet, whatever happened
// during the run.
type Invariants struct {
	// Converged: every replicated table of the workload is identical on
	// every node (pgmesh diff).
	Converged bool `json:"converged"`
	// LWWViolations counts keys whose final state on some node is not the
	// latest write by (commit time, node order), deletes included.
	LWWViolations int `json:"lww_violations"`
	// LostIncrements is, on the worst node, the sum over counter rows of
	// |increments issued − final total|: 0 when no increment was lost (or
	// counted twice).
	LostIncrements int64 `json:"lost_increments"`
	// UnloggedLosses counts account writes (upserts and deletes) that are
	// neither in the final state, nor overwritten in the normal course (by
	// a later write made on a node that had that write: its PrevAt), nor a
	// losing image in any node's pgmesh.conflict_log (a delete_missing row
	// names both deletes). (A missing event shows in LWWViolations, a
	// missing increment in LostIncrements.)
	UnloggedLosses int `json:"unlogged_losses"`
	// Conflicts counts pgmesh.conflict_log rows of all nodes by kind.
	Conflicts map[string]int `json:"conflicts"`
	// LossesOverwritten and LossesLogged count the writes that did not make
	// the final state, by how they are accounted for.
	LossesOverwritten int `json:"losses_overwritten"`
	LossesLogged      int `json:"losses_logged"`
	// Examples explains the first violations found.
	Examples []string `json:"examples,omitempty"`
	// Diagnosis shows, for the keys of the first unlogged losses, every
	// write of the key and conflict log row about it, what each node holds
	// of the key once quiet (the row and its last writer, the tombstone)
	// and what its peer_seen says the peers had applied.
	Diagnosis []string `json:"diagnosis,omitempty"`
}

// Failures lists the invariants that do not hold, in words.
func (inv *Invariants) Failures() []string {
	var f []string
	if !inv.Converged {
		f = append(f, "the nodes did not converge (pgmesh diff found differences)")
	}
	if inv.LWWViolations > 0 {
		f = append(f, fmt.Sprintf("%d keys do not hold their latest write", inv.LWWViolations))
	}
	if inv.LostIncrements != 0 {
		f = append(f, fmt.Sprintf("counters are off by %d from the increments issued", inv.LostIncrements))
	}
	if inv.UnloggedLosses > 0 {
		f = append(f, fmt.Sprintf("%d writes were lost without a trace in pgmesh.conflict_log", inv.UnloggedLosses))
	}
	return f
}

const maxExamples = 10

// finalRow is a row as a node holds it after the run.
type finalRow struct {
	val string
	at  time.Time
}

// nodeState is a node's final workload data.
type nodeState struct {
	rows    map[string]map[int64]finalRow // table → key → row (accounts, events)
	totals  map[int64]int64               // counters
	reached bool
}

// Check computes the invariants of a quiet cluster against the writes
// recorded while it ran. cfg names the nodes with direct DSNs.
func Check(ctx context.Context, cfg *config.Config, writes []Write) (*Invariants, error) {
	inv, _, err := check(ctx, cfg, writes)
	return inv, err
}

// check is Check that also returns the conflict logs it read.
func check(ctx context.Context, cfg *config.Config, writes []Write) (*Invariants, []conflict.Entry, error) {
	inv := &Invariants{Conflicts: map[string]int{}}
	// The run waited for every link to catch up: no need for diff to wait.
	rep, err := diff.Compare(ctx, cfg, diff.Options{
		Tables:      []string{evalSchema + "." + accounts, evalSchema + "." + counters, evalSchema + "." + events, evalSchema + ".heartbeat"},
		WaitTimeout: -1, Limit: maxExamples,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("compare nodes: %w", err)
	}
	inv.Converged = rep.Identical()
	for _, t := range rep.Tables {
		for _, k := range t.Keys {
			inv.example(fmt.Sprintf("diff: %s key %v differs: %s", t.Table, k.Key, describeVersions(k.Versions)))
		}
	}

	states := make(map[string]*nodeState, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		st, err := readState(ctx, n)
		if err != nil {
			return nil, nil, err
		}
		states[n.Name] = st
	}
	log, err := conflict.Query(ctx, cfg, conflict.Filter{})
	if err != nil {
		return nil, nil, fmt.Errorf("read conflict logs: %w", err)
	}
	for _, e := range log {
		inv.Conflicts[e.Kind]++
	}
	inv.checkLWW(cfg.NodeNames(), writes, states)
	inv.checkCounters(cfg.NodeNames(), writes, states)
	lost, err := inv.checkLosses(cfg.NodeNames(), writes, log)
	if err != nil {
		return nil, nil, err
	}
	inv.Diagnosis = history(lost, writes, log)
	var keys []int64
	for _, w := range lost {
		if !slices.Contains(keys, w.Key) {
			keys = append(keys, w.Key)
		}
	}
	for _, n := range cfg.Nodes {
		if err := inv.diagnose(ctx, n, keys); err != nil {
			return nil, nil, err
		}
	}
	return inv, log, nil
}

func (inv *Invariants) example(s string) {
	if len(inv.Examples) < maxExamples {
		inv.Examples = append(inv.Examples, s)
	}
}

func describeVersions(vs []diff.Version) string {
	var s string
	for i, v := range vs {
		if i > 0 {
			s += "; "
		}
		if v.Missing {
			s += fmt.Sprintf("missing on %v", v.Nodes)
		} else {
			s += fmt.Sprintf("%v hold version %s", v.Nodes, v.Hash)
		}
	}
	return s
}

func readState(ctx context.Context, n config.Node) (*nodeState, error) {
	conn, err := pgx.Connect(ctx, n.DSN)
	if err != nil {
		return nil, fmt.Errorf("node %s: read final state: %w", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st := &nodeState{rows: map[string]map[int64]finalRow{accounts: {}, events: {}}, totals: map[int64]int64{}}
	for _, q := range []struct{ table, sql string }{
		{accounts, `SELECT id, val, pg_xact_commit_timestamp(xmin) FROM eval.accounts`},
		{events, `SELECT id, payload, pg_xact_commit_timestamp(xmin) FROM eval.events`},
	} {
		rows, err := conn.Query(ctx, q.sql)
		if err != nil {
			return nil, fmt.Errorf("node %s: read eval.%s: %w", n.Name, q.table, err)
		}
		for rows.Next() {
			var id int64
			var r finalRow
			var at *time.Time
			if err := rows.Scan(&id, &r.val, &at); err != nil {
				rows.Close()
				return nil, fmt.Errorf("node %s: read eval.%s: %w", n.Name, q.table, err)
			}
			if at != nil {
				r.at = *at
			}
			st.rows[q.table][id] = r
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("node %s: read eval.%s: %w", n.Name, q.table, err)
		}
	}
	rows, err := conn.Query(ctx, `SELECT id, total FROM eval.counters`)
	if err != nil {
		return nil, fmt.Errorf("node %s: read eval.counters: %w", n.Name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, total int64
		if err := rows.Scan(&id, &total); err != nil {
			return nil, fmt.Errorf("node %s: read eval.counters: %w", n.Name, err)
		}
		st.totals[id] = total
	}
	return st, rows.Err()
}

// later reports whether a orders after b: commit time, then the node first
// in the config (it wins ties), then, on one node, issue order.
func later(a, b *Write, rank map[string]int) bool {
	if c := a.At.Compare(b.At); c != 0 {
		return c > 0
	}
	if a.Node != b.Node {
		return rank[a.Node] < rank[b.Node]
	}
	return a.Seq > b.Seq
}

func ranks(nodes []string) map[string]int {
	r := make(map[string]int, len(nodes))
	for i, n := range nodes {
		r[n] = i
	}
	return r
}

type rowKey struct {
	table string
	key   int64
}

// winners returns the latest write of every (table, key) of the row tables.
func winners(nodes []string, writes []Write) map[rowKey]*Write {
	rank := ranks(nodes)
	win := map[rowKey]*Write{}
	for i := range writes {
		w := &writes[i]
		if w.Table == counters {
			continue
		}
		k := rowKey{w.Table, w.Key}
		if cur := win[k]; cur == nil || later(w, cur, rank) {
			win[k] = w
		}
	}
	return win
}

func (inv *Invariants) checkLWW(nodes []string, writes []Write, states map[string]*nodeState) {
	win := winners(nodes, writes)
	keys := map[rowKey]bool{}
	for k := range win {
		keys[k] = true
	}
	for _, st := range states {
		for table, rows := range st.rows {
			for id := range rows {
				keys[rowKey{table, id}] = true
			}
		}
	}
	sorted := slices.SortedFunc(func(yield func(rowKey) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	}, func(a, b rowKey) int { return cmp.Or(cmp.Compare(a.table, b.table), cmp.Compare(a.key, b.key)) })
	for _, k := range sorted {
		w := win[k]
		bad := ""
		for _, n := range nodes {
			r, present := states[n].rows[k.table][k.key]
			switch {
			case w == nil:
				bad = fmt.Sprintf("no recorded write, but %s holds %q", n, r.val)
			case w.Op == OpDelete && present:
				bad = fmt.Sprintf("latest write is a delete on %s at %s, but %s holds %q", w.Node, stamp(w.At), n, r.val)
			case w.Op != OpDelete && !present:
				bad = fmt.Sprintf("latest write is %q on %s at %s, but %s has no row", w.Value, w.Node, stamp(w.At), n)
			case w.Op != OpDelete && r.val != w.Value:
				bad = fmt.Sprintf("latest write is %q on %s at %s, but %s holds %q", w.Value, w.Node, stamp(w.At), n, r.val)
			}
			if bad != "" {
				break
			}
		}
		if bad != "" {
			inv.LWWViolations++
			inv.example(fmt.Sprintf("last-update-wins: eval.%s id %d: %s", k.table, k.key, bad))
		}
	}
}

func stamp(t time.Time) string { return t.UTC().Format("15:04:05.000000") }

func (inv *Invariants) checkCounters(nodes []string, writes []Write, states map[string]*nodeState) {
	issued := map[int64]int64{}
	for _, w := range writes {
		if w.Op == OpIncrement {
			issued[w.Key] += w.Delta
		}
	}
	for _, n := range nodes {
		var off int64
		ids := map[int64]bool{}
		for id := range issued {
			ids[id] = true
		}
		for id := range states[n].totals {
			ids[id] = true
		}
		for id := range ids {
			d := issued[id] - states[n].totals[id]
			if d != 0 {
				inv.example(fmt.Sprintf("counters: id %d on %s is %d, increments issued add up to %d", id, n, states[n].totals[id], issued[id]))
			}
			off += max(d, -d)
		}
		inv.LostIncrements = max(inv.LostIncrements, off)
	}
}

// logKey is a losing image in the conflict log: the key and the commit
// time of the losing version, which identifies the write that made it.
type logKey struct {
	key int64
	at  int64 // unix microseconds
}

// checkLosses counts the writes lost and how each is accounted for; it
// returns the first unlogged losses.
func (inv *Invariants) checkLosses(nodes []string, writes []Write, log []conflict.Entry) ([]Write, error) {
	win := winners(nodes, writes)
	logged := map[logKey]bool{}
	for _, e := range log {
		if e.Table != evalSchema+"."+accounts {
			continue
		}
		var k struct{ ID int64 }
		if err := json.Unmarshal(e.Key, &k); err != nil {
			return nil, fmt.Errorf("conflict log of %s: key %s: %w", e.Node, e.Key, err)
		}
		// apply_remote: the local image lost; otherwise the remote one did.
		// A delete that met the tombstone of another delete (delete_missing)
		// names both: the later one's tombstone replaced the other's, and
		// the writes that followed name only that one, though either left
		// the same state.
		mark := func(at *time.Time) {
			if at != nil {
				logged[logKey{k.ID, at.UnixMicro()}] = true
			}
		}
		if e.Resolution == conflict.ApplyRemote {
			mark(e.LocalCommitTime)
		} else {
			mark(e.RemoteCommitTime)
		}
		if e.Kind == conflict.DeleteMissing {
			mark(e.LocalCommitTime)
		}
	}
	overwritten := map[logKey]bool{}
	for _, w := range writes {
		if w.Table == accounts && w.PrevAt != nil {
			overwritten[logKey{w.Key, w.PrevAt.UnixMicro()}] = true
		}
	}
	var lost []Write
	for i := range writes {
		w := &writes[i]
		if w.Table != accounts || win[rowKey{w.Table, w.Key}] == w {
			continue
		}
		lk := logKey{w.Key, w.At.UnixMicro()}
		switch {
		case overwritten[lk]:
			inv.LossesOverwritten++
			continue
		case logged[lk]:
			inv.LossesLogged++
			continue
		}
		inv.UnloggedLosses++
		if len(lost) < maxExamples {
			lost = append(lost, *w)
		}
		doubt := ""
		if w.inDoubt {
			doubt = " (its COMMIT got no answer; the server says it committed)"
		}
		inv.example(fmt.Sprintf("unlogged loss: %s of eval.accounts id %d (value %q) on %s at %s%s is not in the final state, was not overwritten by a write that had seen it, and is in no conflict log",
			w.Op, w.Key, w.Value, w.Node, stamp(w.At), doubt))
	}
	return lost, nil
}

// historyWindow is how far before and after a lost write its history goes.
const historyWindow = time.Second

// history describes, around each lost write (historyWindow either side,
// and from the version it replaced), the recorded writes of its key in
// commit order and the conflict log rows about them.
func history(lost []Write, writes []Write, log []conflict.Entry) []string {
	var out []string
	for _, l := range lost {
		from, to := l.At.Add(-historyWindow), l.At.Add(historyWindow)
		if l.PrevAt != nil && l.PrevAt.Before(from) {
			from = *l.PrevAt
		}
		in := func(t *time.Time) bool { return t != nil && !t.Before(from) && !t.After(to) }
		out = append(out, fmt.Sprintf("eval.accounts id %d, from %s to %s, around the %s by %s at %s:",
			l.Key, stamp(from), stamp(to), l.Op, l.Node, stamp(l.At)))
		var ws []Write
		for _, w := range writes {
			if w.Table == accounts && w.Key == l.Key && in(&w.At) {
				ws = append(ws, w)
			}
		}
		slices.SortStableFunc(ws, func(a, b Write) int { return a.At.Compare(b.At) })
		for _, w := range ws {
			out = append(out, fmt.Sprintf("  %s by %s (seq %d) %q at %s, replacing the version of %s",
				w.Op, w.Node, w.Seq, w.Value, stamp(w.At), stampp(w.PrevAt, "nothing")))
		}
		for _, e := range log {
			var key struct{ ID int64 }
			if e.Table != evalSchema+"."+accounts || json.Unmarshal(e.Key, &key) != nil || key.ID != l.Key ||
				!(in(e.LocalCommitTime) || in(e.RemoteCommitTime)) {
				continue
			}
			out = append(out, fmt.Sprintf("  conflict on %s: %s %s, local %s at %s, remote %s at %s",
				e.Node, e.Kind, e.Resolution, deref(e.LocalOrigin), stampp(e.LocalCommitTime, "an unknown time"),
				deref(e.RemoteOrigin), stampp(e.RemoteCommitTime, "an unknown time")))
		}
	}
	return out
}

// diagnose adds to Diagnosis what node n holds of each account key: the
// row and who last wrote it when, the tombstone, and its peer_seen.
func (inv *Invariants) diagnose(ctx context.Context, n config.Node, keys []int64) error {
	if len(keys) == 0 {
		return nil
	}
	conn, err := pgx.Connect(ctx, n.DSN)
	if err != nil {
		return fmt.Errorf("node %s: diagnose lost writes: %w", n.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var seen []string
	rows, err := conn.Query(ctx, `SELECT peer, origin, seen_until FROM pgmesh.peer_seen ORDER BY peer, origin`)
	if err != nil {
		return fmt.Errorf("node %s: read peer_seen: %w", n.Name, err)
	}
	for rows.Next() {
		var peer, origin string
		var until time.Time
		if err := rows.Scan(&peer, &origin, &until); err != nil {
			rows.Close()
			return fmt.Errorf("node %s: read peer_seen: %w", n.Name, err)
		}
		seen = append(seen, fmt.Sprintf("%s had %s until %s", peer, origin, stamp(until)))
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("node %s: read peer_seen: %w", n.Name, err)
	}
	for _, k := range keys {
		var val, rowNode, tombNode *string
		var rowAt, tombAt *time.Time
		err := conn.QueryRow(ctx, `
SELECT (SELECT a.val FROM eval.accounts a WHERE a.id = $1),
       (SELECT pgmesh.origin_node(c.roident) FROM eval.accounts a, pg_xact_commit_timestamp_origin(a.xmin) c WHERE a.id = $1),
       (SELECT c.timestamp FROM eval.accounts a, pg_xact_commit_timestamp_origin(a.xmin) c WHERE a.id = $1),
       (SELECT t.node FROM pgmesh.tombstone t WHERE t.table_name = 'eval.accounts' AND t.key = jsonb_build_object('id', $1::int)),
       (SELECT pgmesh.tombstone_time(t.deleted_at, t.xid) FROM pgmesh.tombstone t
         WHERE t.table_name = 'eval.accounts' AND t.key = jsonb_build_object('id', $1::int))`, k).
			Scan(&val, &rowNode, &rowAt, &tombNode, &tombAt)
		if err != nil {
			return fmt.Errorf("node %s: diagnose eval.accounts id %d: %w", n.Name, k, err)
		}
		row, tomb := "no row", "no tombstone"
		if val != nil {
			row = fmt.Sprintf("row %q written by %s at %s", *val, deref(rowNode), stampp(rowAt, "an unknown time"))
		}
		if tombNode != nil || tombAt != nil {
			tomb = fmt.Sprintf("tombstone of %s at %s", deref(tombNode), stampp(tombAt, "an unknown time"))
		}
		inv.Diagnosis = append(inv.Diagnosis, fmt.Sprintf("eval.accounts id %d on %s: %s; %s; peer_seen: %s",
			k, n.Name, row, tomb, strings.Join(seen, ", ")))
	}
	return nil
}

// stampp is stamp of *t, or none when t is nil.
func stampp(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return stamp(*t)
}
