package conflict

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/config"
)

// One case per row of the README's conflict table and per policy rule. The node
// under test is n3; remote changes come from n1 (rank 1) unless said
// otherwise. Local writes (origin 0 = n3) commit at the real time "now";
// remote changes are an hour older or newer. peer_seen is empty unless a
// case fills it, so changes of other nodes are concurrent.
func TestApplyCases(t *testing.T) {
	const hour = time.Hour
	local := func(sql string) func(f *fixture, now time.Time) {
		return func(f *fixture, now time.Time) { f.exec(sql) }
	}
	as := func(node string, off time.Duration, sql string) func(f *fixture, now time.Time) {
		return func(f *fixture, now time.Time) { f.writeAs(node, now.Add(off), sql) }
	}
	// tombOf: node deleted row 1 (a tombstone as its delete leaves here).
	tombOf := func(node string) func(f *fixture, now time.Time) {
		return func(f *fixture, now time.Time) {
			f.exec(`INSERT INTO pgmesh.tombstone (table_name, key, deleted_at, node) VALUES ('public.item', '{"id": 1}', $1, $2)`, now, node)
		}
	}
	seen := func(peer, origin string, off time.Duration) func(f *fixture, now time.Time) {
		return func(f *fixture, now time.Time) {
			f.exec(SeenSQL(), peer, origin, now.Add(off))
		}
	}
	const (
		insL    = "INSERT INTO item VALUES (1, 'a', 'L')"
		delL    = "DELETE FROM item WHERE id = 1"
		insA    = "INSERT INTO item VALUES (1, 'a', 'A')"
		insert  = "insert"
		update  = "update"
		deleteO = "delete"
		move    = "move"
	)
	// tombOfKey: node deleted row id.
	tombOfKey := func(node string, id int) func(f *fixture, now time.Time) {
		return func(f *fixture, now time.Time) {
			f.exec(`INSERT INTO pgmesh.tombstone (table_name, key, deleted_at, node) VALUES ('public.item', jsonb_build_object('id', $1::int), $2, $3)`, id, now, node)
		}
	}
	row := []any{1, "a", "R", 0}
	updRow := []any{1, 1, "a", "R", 0} // old id, then the new row
	cases := []struct {
		name    string
		mod     func(*Table)
		setup   []func(f *fixture, now time.Time)
		node    string        // remote node, default n1
		at      time.Duration // remote commit time relative to now
		op      string
		set     []string // update: columns sent (default all)
		args    []any
		want    verdict
		wantErr string
		rows    string
		log     []string
		tomb    string
	}{
		// INSERT
		{name: "insert absent", op: insert, at: -hour, args: row, rows: "1:a:R:0"},
		{name: "insert_exists remote newer wins", setup: fs(local(insL)), op: insert, at: hour, args: row,
			want: verdict{InsertExists, ApplyRemote}, rows: "1:a:R:0", log: []string{"insert_exists/apply_remote/n3/n1/L/R"}},
		{name: "insert_exists remote older loses", setup: fs(local(insL)), op: insert, at: -hour, args: row,
			want: verdict{InsertExists, KeepLocal}, rows: "1:a:L:0", log: []string{"insert_exists/keep_local/n3/n1/L/R"}},
		{name: "insert after a newer delete is skipped", setup: fs(local(insL), local(delL)), op: insert, at: -hour, args: row,
			want: verdict{InsertDeleted, KeepLocal}, rows: "", log: []string{"insert_deleted/keep_local/n3/n1/-/R"}, tomb: `{"id": 1}@n3`},
		{name: "insert newer than a delete applies", setup: fs(local(insL), local(delL)), op: insert, at: hour, args: row,
			want: verdict{InsertDeleted, ApplyRemote}, rows: "1:a:R:0", log: []string{"insert_deleted/apply_remote/n3/n1/-/R"}},
		// UPDATE
		{name: "update of own older row", setup: fs(as("n1", -hour, insA)), op: update, args: updRow, rows: "1:a:R:0"},
		{name: "update of older row of another origin", setup: fs(as("n2", -hour, insA)), op: update, args: updRow,
			want: verdict{UpdateOriginDiffers, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_origin_differs/apply_remote/n2/n1/A/R"}},
		{name: "update older than local row", setup: fs(local(insL)), op: update, at: -hour, args: updRow,
			want: verdict{UpdateOriginDiffers, KeepLocal}, rows: "1:a:L:0", log: []string{"update_origin_differs/keep_local/n3/n1/L/R"}},
		{name: "update_deleted: newer tombstone skips", setup: fs(local(insL), local(delL)), op: update, at: -hour, args: updRow,
			want: verdict{UpdateDeleted, KeepLocal}, rows: "", log: []string{"update_deleted/keep_local/n3/n1/-/R"}},
		{name: "update_deleted: older tombstone resurrects", setup: fs(local(insL), local(delL)), op: update, at: hour, args: updRow,
			want: verdict{UpdateDeleted, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_deleted/apply_remote/n3/n1/-/R"}},
		{name: "update_missing inserts the row", op: update, args: updRow,
			want: verdict{UpdateMissing, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_missing/apply_remote/-/n1/-/R"}},
		{name: "update_missing with unchanged TOAST is skipped", op: update, set: []string{"id", "email", "name"}, args: []any{1, 1, "a", "R"},
			want: verdict{UpdateMissing, SkipIncomplete}, rows: "", log: []string{"update_missing/skip_incomplete/-/n1/-/R"}},
		{name: "update that changes the key moves the row", setup: fs(as("n1", -hour, insA)), op: update, args: []any{1, 7, "a", "R", 0}, rows: "7:a:R:0"},
		// The update wins its row (its node wrote it) but loses the key to
		// the newer row 7: where it arrived before row 7, row 7 deleted
		// it, so here too its row is gone, with the update's tombstone.
		{name: "update onto an existing key: unique_conflict", setup: fs(as("n1", -hour, insA), local("INSERT INTO item VALUES (7, 'b', 'L')")),
			op: update, at: -2 * hour, args: []any{1, 7, "a", "R", 0},
			want: verdict{UniqueConflict, KeepLocal}, rows: "7:b:L:0", log: []string{"unique_conflict/keep_local/n3/n1/L/R"}, tomb: `{"id": 1}@n1`},
		{name: "update that wins its row and loses a unique value: the row goes, as where it arrived first",
			setup: fs(as("n2", -2*hour, insA), local("INSERT INTO item VALUES (2, 'b', 'L')")),
			op:    update, at: -hour, args: []any{1, 1, "b", "R", 0},
			want: verdict{UniqueConflict, KeepLocal}, rows: "2:b:L:0",
			log: []string{"unique_conflict/keep_local/n3/n1/L/R", "update_origin_differs/apply_remote/n2/n1/A/R"}, tomb: `{"id": 1}@n1`},
		{name: "keep_local: an update that loses a unique value is skipped", mod: policy(config.KeepLocal),
			setup: fs(as("n1", -2*hour, insA), local("INSERT INTO item VALUES (2, 'b', 'L')")),
			op:    update, at: -hour, args: []any{1, 1, "b", "R", 0},
			want: verdict{UniqueConflict, KeepLocal}, rows: "1:a:A:0 2:b:L:0", log: []string{"unique_conflict/keep_local/n3/n1/L/R"}},
		{name: "a newer insert that wins a unique value: the holder's key gets a tombstone of its version",
			setup: fs(local(insL)), op: insert, at: hour, args: []any{2, "a", "R", 0},
			want: verdict{UniqueConflict, ApplyRemote}, rows: "2:a:R:0", log: []string{"unique_conflict/apply_remote/n3/n1/L/R"}, tomb: `{"id": 1}@n3`},
		// UPDATE that moves the row to another key: a delete of the old
		// key and an insert of the new row
		{name: "move of an older row: tombstone of the old key", setup: fs(as("n1", -hour, insA)), op: move, args: []any{1, 7, "a", "R", 0},
			rows: "7:a:R:0", tomb: `{"id": 1}@n1`},
		{name: "move older than a local update of the old key: both halves lose", setup: fs(local(insL)), op: move, at: -hour, args: []any{1, 7, "a", "R", 0},
			want: verdict{UniqueConflict, KeepLocal}, rows: "1:a:L:0",
			log: []string{`delete_origin_differs/keep_local/n3/n1/L/{"id": 1}`, "unique_conflict/keep_local/n3/n1/L/R"}},
		{name: "move newer than a local update of the old key", setup: fs(local(insL)), op: move, at: hour, args: []any{1, 7, "a", "R", 0},
			want: verdict{DeleteOriginDiffers, ApplyRemote}, rows: "7:a:R:0", log: []string{`delete_origin_differs/apply_remote/n3/n1/L/{"id": 1}`},
			tomb: `{"id": 1}@n1`},
		{name: "move onto a key deleted later elsewhere: the insert half loses", setup: fs(as("n1", -2*hour, insA), tombOfKey("n2", 7)),
			op: move, at: -hour, args: []any{1, 7, "a", "R", 0},
			want: verdict{InsertDeleted, KeepLocal}, rows: "", log: []string{"insert_deleted/keep_local/n2/n1/-/R"}, tomb: `{"id": 1}@n1 {"id": 7}@n2`},
		{name: "move onto a local row: insert_exists", setup: fs(as("n1", -2*hour, insA), local("INSERT INTO item VALUES (7, 'b', 'L')")),
			op: move, at: -hour, args: []any{1, 7, "a", "R", 0},
			want: verdict{InsertExists, KeepLocal}, rows: "7:b:L:0", log: []string{"insert_exists/keep_local/n3/n1/L/R"}, tomb: `{"id": 1}@n1`},
		{name: "move with unchanged TOAST takes the values from the old row", setup: fs(as("n1", -hour, insA)),
			op: move, set: []string{"id", "email", "qty"}, args: []any{1, 7, "a", 5}, rows: "7:a:A:5", tomb: `{"id": 1}@n1`},
		{name: "move with unchanged TOAST of a missing row: logged", op: move, set: []string{"id", "email", "qty"}, args: []any{1, 7, "a", 5},
			want: verdict{UpdateMissing, SkipIncomplete}, rows: "",
			log: []string{`delete_missing/skip/-/n1/-/{"id": 1}`, `update_missing/skip_incomplete/-/n1/-/{"id": 7, "qty": 5, "email": "a"}`}, tomb: `{"id": 1}@n1`},
		{name: "error: move with unchanged TOAST of a missing row stops the link", mod: policy(config.PolicyError),
			op: move, set: []string{"id", "email", "qty"}, args: []any{1, 7, "a", 5}, wantErr: "conflict update_missing on table public.item key {\"id\": 7}"},
		// DELETE
		{name: "delete of own older row", setup: fs(as("n1", -hour, insA)), op: deleteO, args: []any{1}, rows: "", tomb: `{"id": 1}@n1`},
		{name: "delete of older row of another origin", setup: fs(as("n2", -hour, insA)), op: deleteO, args: []any{1},
			want: verdict{DeleteOriginDiffers, ApplyRemote}, rows: "", log: []string{`delete_origin_differs/apply_remote/n2/n1/A/{"id": 1}`}, tomb: `{"id": 1}@n1`},
		{name: "delete older than local row", setup: fs(local(insL)), op: deleteO, at: -hour, args: []any{1},
			want: verdict{DeleteOriginDiffers, KeepLocal}, rows: "1:a:L:0", log: []string{`delete_origin_differs/keep_local/n3/n1/L/{"id": 1}`}},
		{name: "delete_missing writes a tombstone", op: deleteO, args: []any{1},
			want: verdict{DeleteMissing, Skip}, rows: "", log: []string{`delete_missing/skip/-/n1/-/{"id": 1}`}, tomb: `{"id": 1}@n1`},
		// secondary unique index
		{name: "unique_conflict: older remote row is skipped", setup: fs(local(insL)), op: insert, at: -hour, args: []any{2, "a", "R", 0},
			want: verdict{UniqueConflict, KeepLocal}, rows: "1:a:L:0", log: []string{"unique_conflict/keep_local/n3/n1/L/R"}},
		{name: "unique_conflict: newer remote row replaces the local one", setup: fs(local(insL)), op: insert, at: hour, args: []any{2, "a", "R", 0},
			want: verdict{UniqueConflict, ApplyRemote}, rows: "2:a:R:0", log: []string{"unique_conflict/apply_remote/n3/n1/L/R"}},
		// ties of commit time go to the node first in the config
		{name: "tie: n1 beats n2", setup: fs(as("n2", -hour, insA)), op: update, at: -hour, args: updRow,
			want: verdict{UpdateOriginDiffers, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_origin_differs/apply_remote/n2/n1/A/R"}},
		{name: "tie: n2 loses to n1", setup: fs(as("n1", -hour, insA)), node: "n2", op: update, at: -hour, args: updRow,
			want: verdict{UpdateOriginDiffers, KeepLocal}, rows: "1:a:A:0", log: []string{"update_origin_differs/keep_local/n1/n2/A/R"}},
		// exact concurrency through peer_seen
		{name: "causal update of a row the peer had seen", setup: fs(as("n2", -hour, insA), seen("n1", "n2", -hour+time.Minute)),
			op: update, args: updRow, rows: "1:a:R:0"},
		{name: "causal update of a local row", setup: fs(local(insL), seen("n1", "n3", time.Minute)), op: update, at: hour, args: updRow, rows: "1:a:R:0"},
		{name: "concurrent: the peer had seen an older version only", setup: fs(local(insL), seen("n1", "n3", -time.Minute)), op: update, at: hour, args: updRow,
			want: verdict{UpdateOriginDiffers, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_origin_differs/apply_remote/n3/n1/L/R"}},
		{name: "causal but older (clock skew) loses and is logged", setup: fs(local(insL), seen("n1", "n3", time.Minute)), op: update, at: -hour, args: updRow,
			want: verdict{UpdateOriginDiffers, KeepLocalClockSkew}, rows: "1:a:L:0", log: []string{"update_origin_differs/keep_local_clock_skew/n3/n1/L/R"}},
		// superseded: the row's (or tombstone's) writer had seen the remote
		// change, which arrives late: no conflict, nothing applied
		{name: "insert superseded by an update of a node that had seen it", setup: fs(as("n2", 0, insA), seen("n2", "n1", -hour)),
			op: insert, at: -hour, args: row, rows: "1:a:A:0"},
		{name: "insert_exists: the row's writer had seen an older version only", setup: fs(as("n2", 0, insA), seen("n2", "n1", -2*hour)),
			op: insert, at: -hour, args: row,
			want: verdict{InsertExists, KeepLocal}, rows: "1:a:A:0", log: []string{"insert_exists/keep_local/n2/n1/A/R"}},
		{name: "update superseded", setup: fs(as("n2", 0, insA), seen("n2", "n1", -hour)), op: update, at: -hour, args: updRow, rows: "1:a:A:0"},
		{name: "delete superseded by a later re-insert", setup: fs(as("n2", 0, insA), seen("n2", "n1", -hour)), op: deleteO, at: -hour, args: []any{1},
			rows: "1:a:A:0"},
		{name: "insert superseded by a delete of a node that had seen it", setup: fs(tombOf("n2"), seen("n2", "n1", -hour)),
			op: insert, at: -hour, args: row, rows: "", tomb: `{"id": 1}@n2`},
		{name: "insert_deleted: the deleting node had not seen the insert", setup: fs(tombOf("n2"), seen("n2", "n1", -2*hour)),
			op: insert, at: -hour, args: row,
			want: verdict{InsertDeleted, KeepLocal}, rows: "", log: []string{"insert_deleted/keep_local/n2/n1/-/R"}, tomb: `{"id": 1}@n2`},
		{name: "update superseded by a delete", setup: fs(tombOf("n2"), seen("n2", "n1", -hour)), op: update, at: -hour, args: updRow, rows: ""},
		{name: "a local row is never superseded", setup: fs(local(insL), seen("n3", "n1", hour)), op: insert, at: -hour, args: row,
			want: verdict{InsertExists, KeepLocal}, rows: "1:a:L:0", log: []string{"insert_exists/keep_local/n3/n1/L/R"}},
		{name: "first_update_wins: superseded older update is skipped", mod: policy(config.FirstUpdateWins),
			setup: fs(as("n2", 0, insA), seen("n2", "n1", -hour)), op: update, at: -hour, args: updRow, rows: "1:a:A:0"},
		{name: "apply_remote: superseded insert is skipped", mod: policy(config.ApplyRemote),
			setup: fs(as("n2", 0, insA), seen("n2", "n1", -hour)), op: insert, at: -hour, args: row, rows: "1:a:A:0"},
		{name: "apply_remote: superseded insert after a delete is skipped", mod: policy(config.ApplyRemote),
			setup: fs(tombOf("n2"), seen("n2", "n1", -hour)), op: insert, at: -hour, args: row, rows: ""},
		{name: "error: superseded insert does not stop the link", mod: policy(config.PolicyError),
			setup: fs(as("n2", 0, insA), seen("n2", "n1", -hour)), op: insert, at: -hour, args: row, rows: "1:a:A:0"},
		// in flight: the remote had applied changes (of n2) that this node
		// (n3) has not: a missing row is most likely on its way
		{name: "update of a row still in flight inserts it", setup: fs(seen("n1", "n2", -hour), seen("n3", "n2", -2*hour)),
			op: update, args: updRow, rows: "1:a:R:0"},
		{name: "update of a row in flight, never applied from n2 here", setup: fs(seen("n1", "n2", -hour)),
			op: update, args: updRow, rows: "1:a:R:0"},
		{name: "update_missing: this node has applied what the remote had", setup: fs(seen("n1", "n2", -hour), seen("n3", "n2", -hour)),
			op: update, args: updRow, want: verdict{UpdateMissing, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_missing/apply_remote/-/n1/-/R"}},
		{name: "update_missing: the remote had seen only this node's changes", setup: fs(seen("n1", "n3", hour)),
			op: update, args: updRow, want: verdict{UpdateMissing, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_missing/apply_remote/-/n1/-/R"}},
		{name: "update_missing in flight with unchanged TOAST is still logged", setup: fs(seen("n1", "n2", -hour)),
			op: update, set: []string{"id", "email", "name"}, args: []any{1, 1, "a", "R"},
			want: verdict{UpdateMissing, SkipIncomplete}, rows: "", log: []string{"update_missing/skip_incomplete/-/n1/-/R"}},
		{name: "delete of a row still in flight writes a tombstone", setup: fs(seen("n1", "n2", -hour), seen("n3", "n2", -2*hour)),
			op: deleteO, args: []any{1}, rows: "", tomb: `{"id": 1}@n1`},
		{name: "delete_missing of a row deleted here too, whatever is in flight", setup: fs(local(insL), local(delL), seen("n1", "n2", -hour), seen("n3", "n2", -2*hour)),
			op: deleteO, at: -hour, args: []any{1},
			want: verdict{DeleteMissing, Skip}, rows: "", log: []string{`delete_missing/skip/n3/n1/-/{"id": 1}`}, tomb: `{"id": 1}@n3`},
		{name: "error: update of a row in flight applies", mod: policy(config.PolicyError), setup: fs(seen("n1", "n2", -hour)),
			op: update, args: updRow, rows: "1:a:R:0"},
		// delete_wins
		{name: "delete_wins: older delete beats a concurrent update", mod: deleteWins, setup: fs(local(insL)), op: deleteO, at: -hour, args: []any{1},
			want: verdict{DeleteOriginDiffers, ApplyRemote}, rows: "", log: []string{`delete_origin_differs/apply_remote/n3/n1/L/{"id": 1}`}},
		{name: "delete_wins: newer update does not resurrect", mod: deleteWins, setup: fs(local(insL), local(delL)), op: update, at: hour, args: updRow,
			want: verdict{UpdateDeleted, KeepLocal}, rows: "", log: []string{"update_deleted/keep_local/n3/n1/-/R"}},
		{name: "delete_wins: causal update still applies", mod: deleteWins, setup: fs(local(insL), seen("n1", "n3", time.Minute)), op: update, at: hour, args: updRow, rows: "1:a:R:0"},
		// other policies
		{name: "first_update_wins: older remote wins", mod: policy(config.FirstUpdateWins), setup: fs(local(insL)), op: update, at: -hour, args: updRow,
			want: verdict{UpdateOriginDiffers, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_origin_differs/apply_remote/n3/n1/L/R"}},
		{name: "first_update_wins: newer remote loses", mod: policy(config.FirstUpdateWins), setup: fs(local(insL)), op: update, at: hour, args: updRow,
			want: verdict{UpdateOriginDiffers, KeepLocal}, rows: "1:a:L:0", log: []string{"update_origin_differs/keep_local/n3/n1/L/R"}},
		{name: "first_update_wins: insert_exists keeps the older", mod: policy(config.FirstUpdateWins), setup: fs(local(insL)), op: insert, at: hour, args: row,
			want: verdict{InsertExists, KeepLocal}, rows: "1:a:L:0", log: []string{"insert_exists/keep_local/n3/n1/L/R"}},
		{name: "first_update_wins: causal newer update applies", mod: policy(config.FirstUpdateWins), setup: fs(local(insL), seen("n1", "n3", time.Minute)), op: update, at: hour, args: updRow, rows: "1:a:R:0"},
		{name: "keep_local: concurrent newer update loses", mod: policy(config.KeepLocal), setup: fs(local(insL)), op: update, at: hour, args: updRow,
			want: verdict{UpdateOriginDiffers, KeepLocal}, rows: "1:a:L:0", log: []string{"update_origin_differs/keep_local/n3/n1/L/R"}},
		{name: "keep_local: causal update applies", mod: policy(config.KeepLocal), setup: fs(local(insL), seen("n1", "n3", time.Minute)), op: update, at: hour, args: updRow, rows: "1:a:R:0"},
		{name: "keep_local: unique_conflict keeps the local row", mod: policy(config.KeepLocal), setup: fs(local(insL)), op: insert, at: hour, args: []any{2, "a", "R", 0},
			want: verdict{UniqueConflict, KeepLocal}, rows: "1:a:L:0", log: []string{"unique_conflict/keep_local/n3/n1/L/R"}},
		{name: "apply_remote: concurrent older update wins", mod: policy(config.ApplyRemote), setup: fs(local(insL)), op: update, at: -hour, args: updRow,
			want: verdict{UpdateOriginDiffers, ApplyRemote}, rows: "1:a:R:0", log: []string{"update_origin_differs/apply_remote/n3/n1/L/R"}},
		{name: "apply_remote: older delete wins", mod: policy(config.ApplyRemote), setup: fs(local(insL)), op: deleteO, at: -hour, args: []any{1},
			want: verdict{DeleteOriginDiffers, ApplyRemote}, rows: "", log: []string{`delete_origin_differs/apply_remote/n3/n1/L/{"id": 1}`}},
		{name: "error: concurrent update stops the link", mod: policy(config.PolicyError), setup: fs(local(insL)), op: update, at: hour, args: updRow,
			wantErr: "conflict update_origin_differs on table public.item key {\"id\": 1}", rows: "1:a:L:0"},
		{name: "error: insert_exists stops the link", mod: policy(config.PolicyError), setup: fs(local(insL)), op: insert, at: hour, args: row,
			wantErr: "conflict insert_exists on table public.item", rows: "1:a:L:0"},
		{name: "error: unique_conflict stops the link", mod: policy(config.PolicyError), setup: fs(local(insL)), op: insert, at: hour, args: []any{2, "a", "R", 0},
			wantErr: "conflict unique_conflict on table public.item", rows: "1:a:L:0"},
		{name: "error: causal update applies", mod: policy(config.PolicyError), setup: fs(local(insL), seen("n1", "n3", time.Minute)), op: update, at: hour, args: updRow, rows: "1:a:R:0"},
		{name: "error: delete_missing only logs", mod: policy(config.PolicyError), op: deleteO, args: []any{1},
			want: verdict{DeleteMissing, Skip}, rows: "", log: []string{`delete_missing/skip/-/n1/-/{"id": 1}`}, tomb: `{"id": 1}@n1`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, itemDDL)
			tbl := f.table("item", tc.mod)
			now := time.Now().Truncate(time.Microsecond)
			for _, s := range tc.setup {
				s(f, now)
			}
			var sql string
			switch tc.op {
			case insert:
				sql = InsertSQL(tbl)
			case update:
				set := tc.set
				if set == nil {
					set = tbl.Columns
				}
				sql = UpdateSQL(tbl, set)
			case deleteO:
				sql = DeleteSQL(tbl)
			case move:
				set := tc.set
				if set == nil {
					set = tbl.Columns
				}
				sql = MoveSQL(tbl, set)
			}
			node := tc.node
			if node == "" {
				node = "n1"
			}
			got, err := f.apply(node, now.Add(tc.at), sql, vals(tc.args...)...)
			switch {
			case tc.wantErr != "" && err == nil:
				t.Fatalf("no error, want one containing %q (verdict %v)", tc.wantErr, got)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("error %q, want one containing %q", err, tc.wantErr)
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("verdict %+v, want %+v", got, tc.want)
			}
			if r := f.rows(); r != tc.rows {
				t.Errorf("rows %q, want %q", r, tc.rows)
			}
			if l := f.logRows(); !slices.Equal(l, tc.log) {
				t.Errorf("conflict log:\n got %s\nwant %s", joinLog(l), joinLog(tc.log))
			}
			if tc.tomb != "" {
				if tb := f.tombstones(); tb != tc.tomb {
					t.Errorf("tombstones %q, want %q", tb, tc.tomb)
				}
			}
		})
	}
}

func fs(steps ...func(f *fixture, now time.Time)) []func(f *fixture, now time.Time) { return steps }

func deleteWins(t *Table) { t.DeleteWins = true }

func policy(p config.Policy) func(*Table) { return func(t *Table) { t.Policy = p } }
