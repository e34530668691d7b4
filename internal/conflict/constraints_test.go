package conflict

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
)

// memberDDL has a unique index or exclusion constraint of every kind but
// plain columns (those are item's email): an expression, a partial index,
// NULLS NOT DISTINCT, an exclusion constraint, a deferrable constraint.
var memberDDL = []string{
	`CREATE TABLE member (id int PRIMARY KEY, email text, team int, active bool, nick text, slot int4range, seat int)`,
	"CREATE UNIQUE INDEX member_email ON member (lower(email))",
	"CREATE UNIQUE INDEX member_captain ON member (team) WHERE active",
	"CREATE UNIQUE INDEX member_nick ON member (team, nick) NULLS NOT DISTINCT",
	"ALTER TABLE member ADD CONSTRAINT member_slot EXCLUDE USING gist (slot WITH &&)",
	"ALTER TABLE member ADD CONSTRAINT member_seat UNIQUE (seat) DEFERRABLE INITIALLY DEFERRED",
}

// A remote row that collides with a local one under any kind of unique
// index or exclusion constraint is a unique_conflict, decided like every
// conflict by (commit time, node order) — the newer row wins, the other is
// logged — and one that does not collide is no conflict. Each case: the
// local row 1 (committed now), then a remote insert of row 2 an hour later
// or earlier.
func TestConstraintKinds(t *testing.T) {
	const hour = time.Hour
	// id, email, team, active, nick, slot, seat
	cases := []struct {
		name  string
		local string // the values of local row 1
		at    time.Duration
		row   []any // remote row 2
		want  verdict
		rows  string // ids left
	}{
		{"expression: newer wins", "1, 'Ann@x', NULL, NULL, 'l', NULL, NULL", hour,
			[]any{2, "ann@X", nil, nil, "r", nil, nil}, verdict{UniqueConflict, ApplyRemote}, "2"},
		{"expression: older loses", "1, 'Ann@x', NULL, NULL, 'l', NULL, NULL", -hour,
			[]any{2, "ann@X", nil, nil, "r", nil, nil}, verdict{UniqueConflict, KeepLocal}, "1"},
		{"expression: other value", "1, 'Ann@x', NULL, NULL, 'l', NULL, NULL", hour,
			[]any{2, "bob@x", nil, nil, "r", nil, nil}, verdict{}, "1 2"},
		{"partial: both in the predicate", "1, NULL, 5, true, 'a', NULL, NULL", hour,
			[]any{2, nil, 5, true, "b", nil, nil}, verdict{UniqueConflict, ApplyRemote}, "2"},
		{"partial: the remote row outside it", "1, NULL, 5, true, 'a', NULL, NULL", hour,
			[]any{2, nil, 5, false, "b", nil, nil}, verdict{}, "1 2"},
		{"partial: the local row outside it", "1, NULL, 5, false, 'a', NULL, NULL", hour,
			[]any{2, nil, 5, true, "b", nil, nil}, verdict{}, "1 2"},
		{"nulls not distinct: NULL meets NULL", "1, NULL, 5, false, NULL, NULL, NULL", hour,
			[]any{2, nil, 5, false, nil, nil, nil}, verdict{UniqueConflict, ApplyRemote}, "2"},
		{"nulls not distinct: older NULL loses", "1, NULL, 5, false, NULL, NULL, NULL", -hour,
			[]any{2, nil, 5, false, nil, nil, nil}, verdict{UniqueConflict, KeepLocal}, "1"},
		{"exclusion: overlapping ranges", "1, NULL, NULL, NULL, 'l', '[1,5)', NULL", hour,
			[]any{2, nil, nil, nil, "r", "[3,8)", nil}, verdict{UniqueConflict, ApplyRemote}, "2"},
		{"exclusion: adjacent ranges", "1, NULL, NULL, NULL, 'l', '[1,5)', NULL", hour,
			[]any{2, nil, nil, nil, "r", "[5,8)", nil}, verdict{}, "1 2"},
		{"deferrable: a concurrent row", "1, NULL, NULL, NULL, 'l', NULL, 7", hour,
			[]any{2, nil, nil, nil, "r", nil, 7}, verdict{UniqueConflict, ApplyRemote}, "2"},
		{"deferrable: older loses", "1, NULL, NULL, NULL, 'l', NULL, 7", -hour,
			[]any{2, nil, nil, nil, "r", nil, 7}, verdict{UniqueConflict, KeepLocal}, "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, memberDDL...)
			tbl := f.table("member", nil)
			now := time.Now()
			f.exec("INSERT INTO member VALUES (" + tc.local + ")")
			if v := f.mustApply("n1", now.Add(tc.at), InsertSQL(tbl), vals(tc.row...)...); v != tc.want {
				t.Errorf("verdict %+v, want %+v", v, tc.want)
			}
			if ids := f.ids("member"); ids != tc.rows {
				t.Errorf("rows %q, want %q", ids, tc.rows)
			}
			if tc.want.kind != "" {
				// The loser's image is logged: the local row when the
				// remote one won, else the remote row.
				wantLog := fmt.Sprintf("%s/%s/n3/n1", tc.want.kind, tc.want.resolution)
				if l := f.logRows(); len(l) != 1 || !strings.HasPrefix(l[0], wantLog) {
					t.Errorf("log %v, want one %s row", l, wantLog)
				}
			} else if l := f.logRows(); len(l) != 0 {
				t.Errorf("log %v, want none", l)
			}
		})
	}
}

// An update that changes a value a constraint reads is checked like an
// insert, also when the change left another column the constraint reads
// unchanged (TOAST): the local row's value counts.
func TestConstraintUpdate(t *testing.T) {
	f := newFixture(t, memberDDL...)
	tbl := f.table("member", nil)
	now := time.Now()
	f.writeAs("n1", now.Add(-2*time.Hour), "INSERT INTO member VALUES (1, 'a@x', 5, false, 'x'), (2, 'b@x', 5, true, 'y')")
	// Row 1 joins the captains (active) with the same team as row 2, in an
	// update that did not send team: the local value 5 counts.
	set := []string{"id", "email", "active", "nick", "slot", "seat"}
	upd := UpdateSQL(tbl, set)
	if v := f.mustApply("n2", now.Add(-time.Hour), upd, vals(1, 1, "a@x", true, "x", nil, nil)...); v != (verdict{UniqueConflict, ApplyRemote}) {
		t.Errorf("verdict %+v, want unique_conflict/apply_remote", v)
	}
	if ids := f.ids("member"); ids != "1" {
		t.Errorf("rows %q, want only 1", ids)
	}
	// An update that keeps every value a constraint reads is no conflict
	// and takes the fast path.
	if v := f.mustApply("n2", now.Add(-time.Hour+time.Minute), upd, vals(1, 1, "A@X", true, "z", nil, nil)...); v != (verdict{}) {
		t.Errorf("verdict %+v, want none", v)
	}
}

// Deferrable constraints are checked when the remote transaction ends, as
// on its upstream: a transaction that swaps two rows' values applies
// without a conflict, because the row holding the value meanwhile is one
// the remote node had written (or seen). A row it had not seen is a
// conflict, decided at once. PostgreSQL checks none of this in the replica
// role: the check at the end is pgmesh's (DeferredCheckSQL).
func TestDeferrableSwap(t *testing.T) {
	f := newFixture(t, memberDDL...)
	tbl := f.table("member", nil)
	now := time.Now()
	f.writeAs("n1", now.Add(-2*time.Hour), "INSERT INTO member (id, nick, seat) VALUES (1, 'a', 1), (2, 'b', 2)")
	upd := UpdateSQL(tbl, tbl.Columns)
	got := f.mustApplyTxn("n1", now.Add(-time.Hour),
		change{sql: upd, args: vals(1, 1, nil, nil, nil, "a", nil, 2)},
		change{sql: upd, args: vals(2, 2, nil, nil, nil, "b", nil, 1)},
		deferredCheck(tbl, "1", "2"))
	if !slices.Equal(got, []verdict{{}, {}}) {
		t.Errorf("swap: verdicts %+v, want no conflict", got)
	}
	var seats string
	if err := f.conn.QueryRow(context.Background(), "SELECT string_agg(id || '=' || seat, ' ' ORDER BY id) FROM member").Scan(&seats); err != nil {
		t.Fatal(err)
	}
	if seats != "1=2 2=1" {
		t.Errorf("seats %q, want swapped", seats)
	}
	if l := f.logRows(); len(l) != 0 {
		t.Errorf("log %v, want none", l)
	}
	// n2 never saw row 1's seat 2 (committed just now by n1, applied
	// here): its row with seat 2 is concurrent and newer.
	f.exec(SeenSQL(), "n2", "n1", now.Add(-90*time.Minute))
	got = f.mustApplyTxn("n2", now.Add(-30*time.Minute), change{sql: InsertSQL(tbl), args: vals(3, nil, nil, nil, "c", nil, 2)},
		deferredCheck(tbl, "3"))
	if !slices.Equal(got, []verdict{{UniqueConflict, ApplyRemote}}) {
		t.Errorf("concurrent: verdicts %+v, want unique_conflict/apply_remote", got)
	}
	if ids := f.ids("member"); ids != "2 3" {
		t.Errorf("rows %q, want 2 3", ids)
	}
	// A transaction of n2 that gives row 2 seat 2, which n2 had seen on
	// row 3 (its own), without moving it: the check at its end fails, and
	// decided row by row (DeferredNow) it is a unique_conflict.
	upd2 := UpdateSQL(tbl, tbl.Columns)
	_, err := f.applyTxn("n2", now.Add(-20*time.Minute), change{sql: upd2, args: vals(2, 2, nil, nil, nil, "b", nil, 2)}, deferredCheck(tbl, "2"))
	if err == nil || !strings.Contains(err.Error(), "conflicts with another row under deferrable member_seat") || !strings.Contains(err.Error(), "23505") {
		t.Fatalf("transaction that leaves a seen row holding the value: %v, want the deferred check to fail", err)
	}
	now2 := tbl
	now2.DeferredNow = true
	got = f.mustApplyTxn("n2", now.Add(-20*time.Minute), change{sql: UpdateSQL(now2, tbl.Columns), args: vals(2, 2, nil, nil, nil, "b", nil, 2)})
	if !slices.Equal(got, []verdict{{UniqueConflict, ApplyRemote}}) {
		t.Errorf("applied again: verdicts %+v, want unique_conflict/apply_remote", got)
	}
	if ids := f.ids("member"); ids != "2" {
		t.Errorf("rows %q, want 2", ids)
	}
}

// A constraint that reads a column the upstream does not send cannot be
// checked before the write (the column's default gives the value): its
// violation is caught, the change skipped and logged with both sides, and
// the transaction goes on; under policy error it stops the link.
func TestUncheckedConstraint(t *testing.T) {
	ddl := "CREATE TABLE tagged (id int PRIMARY KEY, v text, site text NOT NULL DEFAULT 'here', UNIQUE (v, site))"
	f := newFixture(t, ddl)
	tbl := f.table("tagged", withoutColumn("site"))
	now := time.Now()
	f.exec("INSERT INTO tagged VALUES (1, 'x')")
	got := f.mustApplyTxn("n1", now.Add(time.Hour),
		change{sql: InsertSQL(tbl), args: vals(2, "x")},
		change{sql: InsertSQL(tbl), args: vals(3, "y")})
	if !slices.Equal(got, []verdict{{UniqueConflict, KeepLocal}, {}}) {
		t.Errorf("verdicts %+v, want unique_conflict/keep_local, then none", got)
	}
	if ids := f.ids("tagged"); ids != "1 3" {
		t.Errorf("rows %q, want 1 3", ids)
	}
	var local, remote string
	if err := f.conn.QueryRow(context.Background(), "SELECT local_row::text, remote_row::text FROM pgmesh.conflict_log").Scan(&local, &remote); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(local, "tagged_v_site_key") || !strings.Contains(local, "(x, here)") || remote != `{"v": "x", "id": 2}` {
		t.Errorf("logged local %s, remote %s: want the constraint and existing key, and the remote row", local, remote)
	}

	f = newFixture(t, ddl)
	tbl = f.table("tagged", func(t *Table) { withoutColumn("site")(t); t.Policy = config.PolicyError })
	f.exec("INSERT INTO tagged VALUES (1, 'x')")
	_, err := f.apply("n1", now.Add(time.Hour), InsertSQL(tbl), vals(2, "x")...)
	if err == nil || !strings.Contains(err.Error(), "conflict unique_conflict on table public.tagged") || !strings.Contains(err.Error(), "tagged_v_site_key") {
		t.Errorf("under policy error: %v, want the conflict error naming the constraint", err)
	}
}

// change is one statement of a remote transaction and its parameters after
// $1..$3.
type change struct {
	sql  string
	args []*string
	// noFixed: the statement takes no commit time, node and LSN first.
	noFixed bool
}

// deferredCheck is the check of the deferrable constraints of t at the end
// of a transaction that wrote the rows with keys ids (a one-column key).
func deferredCheck(t Table, ids ...string) change {
	return change{sql: DeferredCheckSQL(t), args: []*string{str("{" + strings.Join(ids, ",") + "}")}, noFixed: true}
}

// applyTxn runs the statements of one remote transaction of node committed
// at ts, as the applier does, and returns the verdicts of those that
// answer one (a deferred check answers a count).
func (f *fixture) applyTxn(node string, ts time.Time, changes ...change) ([]verdict, error) {
	var out []verdict
	err := f.session(node, ts, func(ctx context.Context, conn *pgx.Conn) error {
		for _, c := range changes {
			params := [][]byte{[]byte(ts.Format(time.RFC3339Nano)), []byte(node), []byte("0/1")}
			if c.noFixed {
				params = nil
			}
			for _, v := range c.args {
				if v == nil {
					params = append(params, nil)
				} else {
					params = append(params, []byte(*v))
				}
			}
			res := execStatement(ctx, conn.PgConn(), c.sql, params)
			if res.Err != nil {
				return res.Err
			}
			if len(res.Rows) == 1 && len(res.Rows[0]) == 2 {
				out = append(out, verdict{string(res.Rows[0][0]), string(res.Rows[0][1])})
			}
		}
		return nil
	})
	return out, err
}

func (f *fixture) mustApplyTxn(node string, ts time.Time, changes ...change) []verdict {
	f.t.Helper()
	out, err := f.applyTxn(node, ts, changes...)
	if err != nil {
		f.t.Fatalf("remote transaction of %s: %v", node, err)
	}
	return out
}

// ids lists the ids of table's rows in order.
func (f *fixture) ids(table string) string {
	f.t.Helper()
	var s string
	if err := f.conn.QueryRow(context.Background(), "SELECT coalesce(string_agg(id::text, ' ' ORDER BY id), '') FROM "+table).Scan(&s); err != nil {
		f.t.Fatal(err)
	}
	return s
}
