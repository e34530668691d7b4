package conflict

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A key is matched with its tombstone as jsonb: the statements must render
// it as the delete trigger does, whatever the time zone and interval style
// of the session that deleted the row and of the apply session. Here a row
// deleted by a local session in Tokyo meets older remote changes of n2,
// applied in New York: the tombstone must be found, so that the insert is
// insert_deleted and the update update_deleted, both losing to the newer
// delete. A key the statements rendered otherwise would find no tombstone
// and resurrect the row on this node only, while the peers apply the delete.
func TestKeyMatchesTombstoneInAnyTimeZone(t *testing.T) {
	tests := []struct {
		name string
		ddl  []string
		key  string
	}{
		{"timestamptz", []string{"CREATE TABLE k (id timestamptz PRIMARY KEY, v text)"}, "2024-01-01 00:00:00+00"},
		{"interval", []string{"CREATE TABLE k (id interval PRIMARY KEY, v text)"}, "1 day 02:00:00"},
		{"tstzrange", []string{"CREATE TABLE k (id tstzrange PRIMARY KEY, v text)"}, "[2024-01-01 00:00:00+00,2024-01-02 00:00:00+00)"},
		{"domain over timestamptz", []string{"CREATE DOMAIN moment AS timestamptz", "CREATE TABLE k (id moment PRIMARY KEY, v text)"}, "2024-01-01 00:00:00+00"},
		{"timestamptz[]", []string{"CREATE TABLE k (id timestamptz[] PRIMARY KEY, v text)"}, "{2024-01-01 00:00:00+00}"},
		{"composite key with a timestamptz", []string{"CREATE TABLE k (a int, b timestamptz, v text, PRIMARY KEY (a, b))"}, "2024-01-01 00:00:00+00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.ddl...)
			tbl := f.table("k", nil)
			now := time.Now()
			// The key values, then the other columns.
			key := []any{tt.key}
			if len(tbl.Key) == 2 {
				key = []any{1, tt.key}
			}
			row := append(key, "old")
			f.writeAs("n1", now.Add(-3*time.Hour), fmt.Sprintf("INSERT INTO k VALUES (%s)", placeholders(len(row))), row...)
			f.exec("SET TimeZone = 'Asia/Tokyo'")
			f.exec("SET IntervalStyle = 'iso_8601'")
			f.exec("DELETE FROM k")
			f.exec("RESET TimeZone")
			f.exec("RESET IntervalStyle")

			applyIn := func(sql string, values ...any) verdict {
				t.Helper()
				var v verdict
				at := now.Add(-time.Hour)
				err := f.session("n2", at, func(ctx context.Context, conn *pgx.Conn) error {
					if _, err := conn.Exec(ctx, "SET TimeZone = 'America/New_York'"); err != nil {
						return err
					}
					params := [][]byte{[]byte(at.Format(time.RFC3339Nano)), []byte("n2"), []byte("0/10")}
					for _, val := range values {
						params = append(params, []byte(fmt.Sprint(val)))
					}
					res := execStatement(ctx, conn.PgConn(), sql, params)
					if res.Err != nil {
						return res.Err
					}
					v = verdict{string(res.Rows[0][0]), string(res.Rows[0][1])}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			newRow := append(key, "new")
			if v := applyIn(InsertSQL(tbl), newRow...); v != (verdict{InsertDeleted, KeepLocal}) {
				t.Errorf("older remote insert: verdict %+v, want insert_deleted/keep_local", v)
			}
			if v := applyIn(UpdateSQL(tbl, tbl.Columns), append(key, newRow...)...); v != (verdict{UpdateDeleted, KeepLocal}) {
				t.Errorf("older remote update: verdict %+v, want update_deleted/keep_local", v)
			}
			var rows int
			if err := f.conn.QueryRow(context.Background(), "SELECT count(*) FROM k").Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if rows != 0 {
				t.Errorf("%d rows: the deleted row came back", rows)
			}
		})
	}
}

func placeholders(n int) string {
	s := "$1"
	for i := 2; i <= n; i++ {
		s += fmt.Sprintf(", $%d", i)
	}
	return s
}

// The common key types keep plain to_jsonb, whose call costs nothing
// measurable; every other type, known to depend on settings or not, is
// rendered by pgmesh.to_jsonb_utc.
func TestKeyTypesRenderedPlain(t *testing.T) {
	for typ, plain := range map[string]bool{
		"integer": true, "bigint": true, "smallint": true, "text": true, "uuid": true, "boolean": true, "date": true,
		"numeric": true, "numeric(12,2)": true, "character varying(20)": true, "character varying": true, "character(3)": true,
		"timestamp without time zone": true, "timestamp(3) without time zone": true, "integer[]": true, "text[][]": true,
		"timestamp with time zone": false, "timestamp(3) with time zone": false, "time with time zone": false,
		"interval": false, "interval day": false, "tstzrange": false, "tstzmultirange": false, "public.moment": false,
		"bytea": false, "double precision": false, "money": false, "json": false, "timestamp with time zone[]": false,
	} {
		tbl := Table{Schema: "public", Name: "k", Columns: []string{"id"}, Types: []string{typ}, Key: []string{"id"}}
		got := strings.Contains(DeleteSQL(tbl), "pgmesh.to_jsonb_utc(")
		if got == plain {
			t.Errorf("key of type %s: rendered by pgmesh.to_jsonb_utc = %t, want %t", typ, got, !plain)
		}
	}
}
