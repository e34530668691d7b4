package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestSeenClaimSurvivesRestart: n2 applies n1's insert and claims, in its
// WAL, that it has seen n1 up to that insert. n3's link from n2 receives the
// claim while n2 writes nothing of its own, so no transaction of n2 comes
// to carry it; the link confirms it to n2, and n3's agent is killed. After
// the restart n3 must still know the claim: n2's update of the row, made
// after seeing n1's insert, is then no conflict on n3. A claim kept only in
// memory would be lost with the agent (n2 does not send it again) and the
// update would be logged as concurrent with the insert.
func TestSeenClaimSurvivesRestart(t *testing.T) {
	env := sandboxtest.New(t, 3)
	ctx := context.Background()
	initMesh(t, env, 3, itemDDL)
	cs := conns(t, env, 3)
	for _, n := range []string{"n1", "n2"} {
		startAgent(t, env.ConfigPath, "--node", n)
	}
	a3 := startAgent(t, env.ConfigPath, "--node", "n3")

	env.Exec(t, 0, `INSERT INTO item (id, email, v) VALUES (1, 'a', 'n1')`)
	waitValue(t, cs, []int{1, 2}, 1, "n1")
	// n2 claimed n1's insert inside its apply transaction, before its
	// commit: everything up to n2's WAL position now includes the claim.
	var walText string
	if err := cs[1].QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&walText); err != nil {
		t.Fatal(err)
	}
	wal, err := pglogrepl.ParseLSN(walText)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "n2's slot for n3 confirmed past the claim", func() (bool, string) {
		var s string
		if err := cs[1].QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgmesh_n2_n3'`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		got, err := pglogrepl.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return got >= wal, fmt.Sprintf("confirmed %s, claim before %s", got, wal)
	})
	a3.kill()
	startAgent(t, env.ConfigPath, "--node", "n3")

	env.Exec(t, 1, `UPDATE item SET v = 'n2' WHERE id = 1`)
	waitValue(t, cs, []int{0, 2}, 1, "n2")
	for n, c := range cs {
		if got := logRows(t, c, []int{1}); len(got) != 0 {
			t.Errorf("n%d: conflict logged for n2's update of a row it had seen: %q", n+1, got)
		}
	}
}
