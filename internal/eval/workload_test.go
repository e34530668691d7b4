package eval

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sandbox"
)

// TestResolveInDoubtAfterCrash: a server that crashes hands out again the
// xids of transactions that left nothing in its WAL. A write whose COMMIT
// was in doubt and that never committed must not be taken for the later
// transaction that reuses its xid (the crash scenario counted such phantom
// deletes as losses that no conflict log explained); a write in doubt that
// did commit, and an acknowledged write, are kept with their commit times.
func TestResolveInDoubtAfterCrash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The server is crashed: a sandbox of its own, not the shared servers.
	dir, err := os.MkdirTemp("", "pgmesh-eval-resolve-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // the servers run as postgres when we are root
		t.Fatal(err)
	}
	cl, err := sandbox.Up(ctx, sandbox.Options{Dir: filepath.Join(dir, "cluster"), Nodes: 1, DB: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Down(context.WithoutCancel(ctx))
	dsn := cl.DSNAs("n1", "app", sandbox.Owner)
	connect := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	xid := func(c *pgx.Conn) string {
		var x string
		if err := c.QueryRow(ctx, "SELECT pg_current_xact_id()::text").Scan(&x); err != nil {
			t.Fatal(err)
		}
		return x
	}

	c := connect()
	if _, err := c.Exec(ctx, "CREATE TABLE t (id int)"); err != nil {
		t.Fatal(err)
	}
	// Committed, and in doubt for its client: kept.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	committedXid := xid(tx.Conn())
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	committedWall := time.Now()
	// An xid taken, nothing written, then the crash: in doubt, never
	// committed.
	if _, err := c.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	lostXid := xid(c)
	if err := cl.Stop(ctx, "n1", "immediate"); err != nil {
		t.Fatal(err)
	}
	lostWall := time.Now()
	c.Close(ctx)
	if err := cl.Start(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	c = connect()
	defer c.Close(context.WithoutCancel(ctx))
	tx, err = c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reusedXid := xid(tx.Conn())
	if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if reusedXid != lostXid {
		t.Fatalf("after the crash the server handed out xid %s, not the lost %s again: the case this test is about did not happen", reusedXid, lostXid)
	}

	w := newWorkload(WorkloadConfig{}, []target{{name: "n1", dsn: dsn}}, 1)
	w.writes = []Write{
		{Node: "n1", Seq: 1, Table: accounts, Key: 1, Op: OpUpsert, Value: "committed in doubt", xid: committedXid, inDoubt: true, Wall: committedWall},
		{Node: "n1", Seq: 2, Table: accounts, Key: 1, Op: OpDelete, xid: lostXid, inDoubt: true, Wall: lostWall},
		{Node: "n1", Seq: 1, Table: accounts, Key: 2, Op: OpUpsert, Value: "acknowledged", xid: reusedXid, Wall: time.Now()},
	}
	if err := w.resolve(ctx); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, wr := range w.writes {
		if wr.At.IsZero() {
			t.Errorf("kept write %+v has no commit time", wr)
		}
		got = append(got, string(wr.Op)+" "+wr.Value)
	}
	if len(w.writes) != 2 || w.writes[0].Value != "committed in doubt" || w.writes[1].Value != "acknowledged" {
		t.Fatalf("resolved writes %q, want the committed one in doubt and the acknowledged one (the delete in doubt never committed)", got)
	}
	if !w.writes[0].At.Before(w.writes[1].At) {
		t.Errorf("commit times %v, %v: the write in doubt took the time of the transaction that reused its xid?", w.writes[0].At, w.writes[1].At)
	}
}
