package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestRepairedRowsCountAsSource: a repair made while the agent runs writes
// on n2 under pgmesh_n1_repair (the link's own origin is busy). The
// repaired rows are n1's versions, so when n3, which had n1's versions,
// updates them, that is no conflict on n2 either: nothing is logged, and
// under keep_local and first_update_wins n2 takes n3's update like every
// other node instead of keeping its row.
func TestRepairedRowsCountAsSource(t *testing.T) {
	env := sandboxtest.New(t, 3)
	ctx := context.Background()
	cfg := *env.Config
	cfg.Conflicts.Tables = map[string]config.TableConfig{
		"public.kl":  {Policy: config.KeepLocal},
		"public.fuw": {Policy: config.FirstUpdateWins},
	}
	path := writeConfig(t, &cfg)
	tables := []string{"kl", "fuw"}
	for i := range 3 {
		for _, tb := range tables {
			env.Exec(t, i, fmt.Sprintf(`CREATE TABLE %s (id int PRIMARY KEY, v text NOT NULL)`, tb))
		}
	}
	mustCLI(t, "init", "-c", path)
	cs := conns(t, env, 3)
	startAgent(t, path)

	value := func(c *pgx.Conn, tb string) string {
		var v string
		err := c.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce((SELECT v FROM %s WHERE id = 1), '-')`, tb)).Scan(&v)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	waitAll := func(want string) {
		t.Helper()
		eventually(t, 60*time.Second, "row 1 = "+want+" on every node", func() (bool, string) {
			var got []string
			for _, tb := range tables {
				for _, c := range cs {
					got = append(got, tb+"="+value(c, tb))
				}
			}
			for _, g := range got {
				if !strings.HasSuffix(g, "="+want) {
					return false, strings.Join(got, " ")
				}
			}
			return true, ""
		})
	}
	for _, tb := range tables {
		env.Exec(t, 0, fmt.Sprintf(`INSERT INTO %s VALUES (1, 'n1')`, tb))
	}
	waitAll("n1")
	for _, tb := range tables {
		hiddenExec(t, env, 1, fmt.Sprintf(`UPDATE %s SET v = 'stray' WHERE id = 1`, tb))
		out := mustCLI(t, "repair", "-c", path, "--table", "public."+tb, "--from", "n1")
		if !strings.Contains(out, "pgmesh_n1_repair") {
			t.Fatalf("repair of %s did not write under pgmesh_n1_repair (the agent runs, pgmesh_n1 is busy): the test proves nothing\n%s", tb, out)
		}
		var origin string
		err := cs[1].QueryRow(ctx, fmt.Sprintf(`SELECT o.roname FROM %s t, pg_xact_commit_timestamp_origin(t.xmin) c
			JOIN pg_replication_origin o ON o.roident = c.roident WHERE t.id = 1`, tb)).Scan(&origin)
		if err != nil || origin != "pgmesh_n1_repair" {
			t.Fatalf("n2: %s row 1 written under %q (%v), want pgmesh_n1_repair", tb, origin, err)
		}
	}
	waitAll("n1")

	for _, tb := range tables {
		env.Exec(t, 2, fmt.Sprintf(`UPDATE %s SET v = 'n3' WHERE id = 1`, tb))
	}
	waitAll("n3")
	// The repair logs what it changed (kind repair); nothing else may be.
	for n, c := range cs {
		rs, err := c.Query(ctx, `SELECT table_name || ' ' || kind || '/' || resolution || ' local ' || coalesce(local_origin, '?')
			FROM pgmesh.conflict_log WHERE kind <> 'repair' ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := pgx.CollectRows(rs, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) > 0 {
			t.Errorf("n%d: conflicts logged for an update of a repaired row: %q", n+1, rows)
		}
	}
}
