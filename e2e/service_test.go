package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// waitExit waits for the agent to exit on its own (after a signal) and
// returns its exit code; an agent still running after 30s is a failure.
func (a *agentProc) waitExit(t *testing.T) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("wait for the agent: %v", err)
		}
		return 0
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
		t.Fatalf("the agent did not exit within 30s of its signal:\n%s", tail(a.out.String(), 40))
		return -1
	}
}

// logLine is one line of `--log-format json`.
type logLine map[string]any

func (l logLine) str(k string) string { s, _ := l[k].(string); return s }

// jsonLog parses the agent's output: every line must be a JSON object, and
// every line but the agent's own ("agent: …") must name its link.
func jsonLog(t *testing.T, out string, links ...string) []logLine {
	t.Helper()
	var lines []logLine
	if strings.TrimSpace(out) == "" {
		return nil
	}
	for i, raw := range strings.Split(strings.TrimSpace(out), "\n") {
		var l logLine
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Errorf("log line %d is not JSON: %v\n%s", i+1, err, raw)
			continue
		}
		if l.str("msg") == "" || l.str("level") == "" || l.str("time") == "" {
			t.Errorf("log line %d lacks time, level or msg: %s", i+1, raw)
		}
		if !strings.HasPrefix(l.str("msg"), "agent: ") && !slicesContain(links, l.str("link")) {
			t.Errorf("log line %d does not carry its link (one of %v): %s", i+1, links, raw)
		}
		lines = append(lines, l)
	}
	return lines
}

func countMsg(lines []logLine, msg, link string) int {
	n := 0
	for _, l := range lines {
		if l.str("msg") == msg && (link == "" || l.str("link") == link) {
			n++
		}
	}
	return n
}

// TestAgentSIGTERM stops a real agent process with SIGTERM while it
// applies a stream of large transactions: it exits 0 within seconds,
// leaves no session on the nodes, records the links as stopped, and the
// next agent resumes exactly where it stopped (no transaction lost or
// applied twice: a twice-applied insert would be an insert_exists conflict).
func TestAgentSIGTERM(t *testing.T) {
	env := sandboxtest.New(t, 2)
	initMesh(t, env, 2, `CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL)`)
	cs := conns(t, env, 2)
	ctx := context.Background()
	agent := startPgmesh(t, "run", "-c", env.ConfigPath, "--listen", "-", "--log-format", "json", "--log-level", "debug")

	const txns, rows = 120, 200
	var wg sync.WaitGroup
	wg.Add(1)
	var writeErr error
	go func() {
		defer wg.Done()
		c, err := pgx.Connect(ctx, env.DSNs[0])
		if err != nil {
			writeErr = err
			return
		}
		defer c.Close(ctx)
		for i := range txns {
			if _, err := c.Exec(ctx, `INSERT INTO items SELECT $1 * 1000 + g, repeat(md5(g::text), 8) FROM generate_series(1, $2) g`, i, rows); err != nil {
				writeErr = err
				return
			}
		}
	}()
	eventually(t, 60*time.Second, "n2 applying", func() (bool, string) {
		var n int
		err := cs[1].QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n)
		return err == nil && n > 0, fmt.Sprint(n, err)
	})
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := agent.waitExit(t); code != 0 {
		t.Fatalf("agent exited %d after SIGTERM:\n%s", code, tail(agent.out.String(), 30))
	}
	lines := jsonLog(t, agent.out.String(), "n1->n2", "n2->n1")
	if last := lines[len(lines)-1]; last.str("msg") != "agent: stopped" {
		t.Errorf("last log line %v, want agent: stopped", last)
	}
	for i, c := range cs {
		eventually(t, 30*time.Second, fmt.Sprintf("no pgmesh session left on n%d", i+1), func() (bool, string) {
			var sessions []string
			var active int
			err := c.QueryRow(ctx, `SELECT (SELECT array_agg(application_name || ' ' || coalesce(state, '') || ' ' || left(query, 60)) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'pgmesh %'),
			                               (SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active)`).Scan(&sessions, &active)
			return err == nil && len(sessions) == 0 && active == 0, fmt.Sprintf("sessions %q, %d active slots, %v", sessions, active, err)
		})
		var state string
		if err := c.QueryRow(ctx, `SELECT string_agg(DISTINCT state, ',') FROM pgmesh.link_state`).Scan(&state); err != nil || state != "stopped" {
			t.Errorf("n%d: link states %q (%v), want stopped", i+1, state, err)
		}
	}

	startAgent(t, env.ConfigPath)
	wg.Wait()
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	eventually(t, 90*time.Second, "n2 has every row", func() (bool, string) {
		var n int
		err := cs[1].QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n)
		return err == nil && n == txns*rows, fmt.Sprint(n, err)
	})
	for i, c := range cs {
		if n := totalLog(t, c); n != 0 {
			t.Errorf("n%d: %d conflicts logged: a transaction was applied twice", i+1, n)
		}
	}
}

// TestAgentSIGHUP reloads a running agent: a new conflict policy applies
// to the next conflict (the links restart their sessions), agent.log_level
// changes the log level, and a config that does not load leaves the agent
// running on the previous one. Its JSON log names the link on every line.
func TestAgentSIGHUP(t *testing.T) {
	env := sandboxtest.New(t, 2)
	initMesh(t, env, 2, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	cs := conns(t, env, 2)
	ctx := context.Background()
	cfg := *env.Config
	cfg.Agent.LogLevel = "info"
	path := writeConfig(t, &cfg)
	agent := startPgmesh(t, "run", "-c", path, "--listen", "-", "--log-format", "json")
	links := []string{"n1->n2", "n2->n1"}
	waitLog := func(what string, cond func([]logLine) bool) {
		t.Helper()
		eventually(t, 60*time.Second, what, func() (bool, string) {
			return cond(jsonLog(t, agent.out.String(), links...)), tail(agent.out.String(), 5)
		})
	}
	waitLog("both links streaming", func(ls []logLine) bool {
		return countMsg(ls, "link streaming", "n1->n2") == 1 && countMsg(ls, "link streaming", "n2->n1") == 1
	})

	// n2 holds id 1 written before n1's insert of it: last-update-wins
	// lets n1's newer row win on n2.
	conflictOnN2 := func(id int) string {
		t.Helper()
		hiddenExec(t, env, 1, fmt.Sprintf(`INSERT INTO t VALUES (%d, 'n2')`, id))
		env.Exec(t, 0, `INSERT INTO t VALUES ($1, 'n1')`, id)
		var res string
		eventually(t, 60*time.Second, fmt.Sprintf("conflict on id %d logged on n2", id), func() (bool, string) {
			err := cs[1].QueryRow(ctx, `SELECT resolution FROM pgmesh.conflict_log WHERE key = jsonb_build_object('id', $1::int)`, id).Scan(&res)
			return err == nil, fmt.Sprint(err)
		})
		return res
	}
	if r := conflictOnN2(1); r != "apply_remote" {
		t.Fatalf("before the reload: resolution %s, want apply_remote (last_update_wins)", r)
	}
	for _, l := range jsonLog(t, agent.out.String(), links...) {
		if l.str("level") == "DEBUG" {
			t.Fatalf("a debug line at agent.log_level info: %v", l)
		}
	}

	cfg.Conflicts.Tables = map[string]config.TableConfig{"public.t": {Policy: config.KeepLocal}}
	cfg.Agent.LogLevel = "debug"
	if err := os.WriteFile(path, cfg.Marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog("both links restarted with the new settings, at debug level", func(ls []logLine) bool {
		return countMsg(ls, "agent: config reloaded", "") == 1 &&
			countMsg(ls, "link restarting with the reloaded conflict settings", "n1->n2") == 1 &&
			countMsg(ls, "link restarting with the reloaded conflict settings", "n2->n1") == 1 &&
			countMsg(ls, "link streaming", "n1->n2") >= 2 && countMsg(ls, "replication started", "n1->n2") >= 1
	})
	if r := conflictOnN2(2); r != "keep_local" {
		t.Errorf("after the reload: resolution %s, want keep_local (the reloaded policy)", r)
	}

	// A broken file: reported, the agent goes on with what it has.
	if err := os.WriteFile(path, []byte("cluster: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := agent.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog("the failed reload reported", func(ls []logLine) bool {
		return countMsg(ls, "agent: config reload failed, keeping the running config", "") == 1
	})
	if r := conflictOnN2(3); r != "keep_local" {
		t.Errorf("after a failed reload: resolution %s, want keep_local (the last good config)", r)
	}
	if agent.cmd.ProcessState != nil {
		t.Fatal("the agent exited on a bad config reload")
	}
}

// TestSystemdUnit checks the example unit against the CLI: the flags of
// ExecStart exist, reload is SIGHUP and stop is SIGTERM, which the agent
// handles (TestAgentSIGHUP, TestAgentSIGTERM).
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../deploy/systemd/pgmesh@.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = v
		}
	}
	start := strings.Fields(keys["ExecStart"])
	if len(start) < 2 || !strings.HasSuffix(start[0], "/pgmesh") || start[1] != "run" {
		t.Fatalf("ExecStart=%s: want /…/pgmesh run …", keys["ExecStart"])
	}
	args := append(start[1:], "--help")
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "%i", "paris")
	}
	if out, code := runCLI(t, args...); code != 0 {
		t.Errorf("pgmesh %s: exit %d (a flag of ExecStart does not exist?)\n%s", strings.Join(args, " "), code, out)
	}
	if keys["KillSignal"] != "SIGTERM" || keys["ExecReload"] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("KillSignal=%s ExecReload=%s: want SIGTERM and kill -HUP", keys["KillSignal"], keys["ExecReload"])
	}
}
