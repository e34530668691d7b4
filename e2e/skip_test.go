package e2e

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// TestPoisonSkipAndReplay blocks the link n1->n2 on a transaction that n2
// refuses (a CHECK constraint only n2 has), then: status names it; a skip
// that names another transaction, or a link that is not blocked, is
// refused; the skip moves exactly that transaction (both its changes) into
// n2's dead letters and the link goes on with what follows; a replay
// before the cause is fixed fails and changes nothing; after the fix the
// replay applies it, once; a restarted agent (the upstream sends from its
// slot's position again) neither applies nor skips it a second time; the
// nodes end identical.
func TestPoisonSkipAndReplay(t *testing.T) {
	env := sandboxtest.New(t, 2)
	initMesh(t, env, 2, `CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)`)
	env.ExecUncaptured(t, 1, `ALTER TABLE items ADD CONSTRAINT no_poison CHECK (v <> 'poison')`)
	cs := conns(t, env, 2)
	agent := startAgent(t, env.ConfigPath)
	ctx := context.Background()
	app := env.App(t, 0)
	exec := func(sql string) {
		t.Helper()
		if _, err := app.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO items VALUES (1, 'ok')`)
	exec(`BEGIN; INSERT INTO items VALUES (2, 'poison'); UPDATE items SET v = 'by the poison transaction' WHERE id = 1; COMMIT`)
	exec(`INSERT INTO items VALUES (3, 'after')`)

	var blocked struct {
		CommitLSN string `json:"commit_lsn"`
		Table     string `json:"table"`
		Error     string `json:"error"`
	}
	eventually(t, 60*time.Second, "status shows n1->n2 blocked", func() (bool, string) {
		out, _ := runCLI(t, "status", "-c", env.ConfigPath, "--json")
		var sts []struct {
			Link    string          `json:"link"`
			Blocked json.RawMessage `json:"blocked"`
		}
		if err := json.Unmarshal([]byte(out), &sts); err != nil {
			return false, out
		}
		for _, s := range sts {
			if s.Link == "n1->n2" && s.Blocked != nil {
				return json.Unmarshal(s.Blocked, &blocked) == nil && blocked.CommitLSN != "", out
			}
		}
		return false, out
	})
	if blocked.Table != "public.items" || !strings.Contains(blocked.Error, "no_poison") {
		t.Errorf("blocked on %+v, want the insert into public.items refused by no_poison", blocked)
	}
	if out := mustCLI(t, "status", "-c", env.ConfigPath); !strings.Contains(out, "pgmesh skip --link n1->n2 --lsn "+blocked.CommitLSN) {
		t.Errorf("status does not say how to skip:\n%s", out)
	}

	// Refusals: another transaction, a link that is not blocked, bad input.
	for _, c := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"--link", "n1->n2", "--lsn", "0/1"}, 1, "blocked on another transaction"},
		{[]string{"--link", "n2->n1"}, 1, "not blocked"},
		{[]string{"--link", "n1->n9"}, 2, `no node "n9"`},
		{[]string{"--link", "n1->n2", "--lsn", "yesterday"}, 2, "want an LSN"},
	} {
		out, code := runCLI(t, append([]string{"skip", "-c", env.ConfigPath, "--wait", "1s"}, c.args...)...)
		if code != c.code || !strings.Contains(out, c.say) {
			t.Errorf("skip %v: exit %d, want %d saying %q:\n%s", c.args, code, c.code, c.say, out)
		}
	}
	assertRows := func(when, want string) {
		t.Helper()
		var got string
		if err := cs[1].QueryRow(ctx, `SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM items`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: n2 has %s, want %s", when, got, want)
		}
	}
	assertRows("blocked", "1=ok")

	out := mustCLI(t, "skip", "-c", env.ConfigPath, "--link", "n1->n2", "--lsn", blocked.CommitLSN)
	if !strings.Contains(out, "moved 2 changes into pgmesh.dead_letter on n2") {
		t.Errorf("skip:\n%s", out)
	}
	eventually(t, 60*time.Second, "n2 applies what follows the skipped transaction", func() (bool, string) {
		var n int
		err := cs[1].QueryRow(ctx, `SELECT count(*) FROM items WHERE id = 3`).Scan(&n)
		return err == nil && n == 1, "not yet"
	})
	assertRows("skipped", "1=ok,3=after")

	type letter struct {
		Node      string `json:"node"`
		ID        int64  `json:"id"`
		Upstream  string `json:"upstream"`
		CommitLSN string `json:"commit_lsn"`
		Error     string `json:"error"`
		Changes   []struct {
			Op    string             `json:"op"`
			Table string             `json:"table"`
			New   map[string]*string `json:"new"`
		} `json:"changes"`
		ReplayedAt *time.Time `json:"replayed_at"`
	}
	skipped := func() []letter {
		t.Helper()
		var ls []letter
		if err := json.Unmarshal([]byte(mustCLI(t, "skipped", "-c", env.ConfigPath, "--json")), &ls); err != nil {
			t.Fatal(err)
		}
		return ls
	}
	ls := skipped()
	if len(ls) != 1 || ls[0].Node != "n2" || ls[0].Upstream != "n1" || ls[0].CommitLSN != blocked.CommitLSN ||
		!strings.Contains(ls[0].Error, "no_poison") || len(ls[0].Changes) != 2 ||
		ls[0].Changes[0].Op != "insert" || ls[0].Changes[0].New["v"] == nil || *ls[0].Changes[0].New["v"] != "poison" ||
		ls[0].Changes[1].Op != "update" || *ls[0].Changes[1].New["v"] != "by the poison transaction" {
		t.Fatalf("dead letters %+v, want the poison transaction's insert and update on n2", ls)
	}
	id := ls[0].ID
	idArg := strconv.FormatInt(id, 10)

	// Replay before the cause is fixed: refused, nothing changes.
	if out, code := runCLI(t, "skipped", "replay", idArg, "--node", "n2", "-c", env.ConfigPath); code != 1 || !strings.Contains(out, "no_poison") {
		t.Errorf("replay before the fix: exit %d, want 1 naming the constraint:\n%s", code, out)
	}
	assertRows("failed replay", "1=ok,3=after")
	if ls := skipped(); ls[0].ReplayedAt != nil {
		t.Errorf("a failed replay marked the dead letter replayed")
	}

	env.ExecUncaptured(t, 1, `ALTER TABLE items DROP CONSTRAINT no_poison`)
	out = mustCLI(t, "skipped", "replay", idArg, "--node", "n2", "-c", env.ConfigPath)
	if !strings.Contains(out, "replayed dead letter") {
		t.Errorf("replay:\n%s", out)
	}
	assertRows("replayed", "1=by the poison transaction,2=poison,3=after")
	if out, code := runCLI(t, "skipped", "replay", idArg, "--node", "n2", "-c", env.ConfigPath); code != 1 || !strings.Contains(out, "replayed at") {
		t.Errorf("second replay: exit %d, want 1 (replayed already):\n%s", code, out)
	}

	// A restarted agent: the upstream resends from the slot's position;
	// nothing is skipped or applied twice.
	agent.kill()
	exec(`INSERT INTO items VALUES (4, 'after the restart')`)
	startAgent(t, env.ConfigPath)
	eventually(t, 60*time.Second, "n2 applies the change after the restart", func() (bool, string) {
		var n int
		err := cs[1].QueryRow(ctx, `SELECT count(*) FROM items WHERE id = 4`).Scan(&n)
		return err == nil && n == 1, "not yet"
	})
	if ls := skipped(); len(ls) != 1 || ls[0].ReplayedAt == nil {
		t.Errorf("dead letters after the restart: %+v, want the one, replayed", ls)
	}
	var requests int
	if err := cs[1].QueryRow(ctx, `SELECT count(*) FROM pgmesh.skip_request`).Scan(&requests); err != nil || requests != 0 {
		t.Errorf("%d skip requests left (%v), want 0", requests, err)
	}
	assertRows("end", "1=by the poison transaction,2=poison,3=after,4=after the restart")
	if out, code := runCLI(t, "diff", "-c", env.ConfigPath); code != 0 {
		t.Errorf("diff after the replay: exit %d\n%s", code, out)
	}
}
