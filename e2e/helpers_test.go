// Package e2e drives the pgmesh binary against real PostgreSQL servers:
// the mesh as a user runs it, with agents as separate processes that tests
// kill and restart.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 4) }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// pgmeshBin builds the CLI once per test run.
func pgmeshBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pgmesh-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pgmesh")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/pgmesh").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// runCLI runs pgmesh with args and returns its combined output and exit code.
func runCLI(t testing.TB, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgmeshBin(t), args...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("pgmesh %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// mustCLI runs pgmesh and fails the test unless it exits 0.
func mustCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, code := runCLI(t, args...)
	if code != 0 {
		t.Fatalf("pgmesh %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// agentProc is a `pgmesh run` process.
type agentProc struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *syncBuffer
	addr string // HTTP address, with startAgentListening
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startAgent starts `pgmesh run -c cfg` with extra args; it is stopped at
// cleanup and its log is printed when the test failed.
func startAgent(t testing.TB, cfgPath string, args ...string) *agentProc {
	t.Helper()
	return startPgmesh(t, append([]string{"run", "-c", cfgPath, "--listen", "-", "--log-level", "debug"}, args...)...)
}

// startPgmesh starts pgmesh with exactly args, as startAgent does.
func startPgmesh(t testing.TB, all ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(pgmeshBin(t), all...)
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	a := &agentProc{t: t, cmd: cmd, out: buf}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent log (pid %d):\n%s", cmd.Process.Pid, tail(buf.String(), 60))
		}
	})
	return a
}

// startAgentListening starts `pgmesh run -c cfg` with its HTTP endpoint on
// a free local port, like startAgent.
func startAgentListening(t testing.TB, cfgPath string) *agentProc {
	t.Helper()
	cmd := exec.Command(pgmeshBin(t), "run", "-c", cfgPath, "--listen", "127.0.0.1:0", "--log-level", "debug")
	buf := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	a := &agentProc{t: t, cmd: cmd, out: buf}
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent log (pid %d):\n%s", cmd.Process.Pid, tail(buf.String(), 60))
		}
	})
	eventually(t, 30*time.Second, "agent HTTP listening", func() (bool, string) {
		m := regexp.MustCompile(`HTTP listening"? addr=(\S+)`).FindStringSubmatch(buf.String())
		if m != nil {
			a.addr = m[1]
		}
		return m != nil, tail(buf.String(), 5)
	})
	return a
}

// get fetches path from the agent's HTTP endpoint and returns the body.
func (a *agentProc) get(t testing.TB, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + a.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return string(b)
}

// kill sends SIGKILL: no chance to clean up, as in a crash.
func (a *agentProc) kill() {
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	_, _ = a.cmd.Process.Wait()
}

// stop sends SIGTERM and waits; an agent that does not stop in time is a
// failure (it must stop cleanly).
func (a *agentProc) stop() {
	if a.cmd.ProcessState != nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _, _ = a.cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		a.t.Errorf("agent did not stop within 30s of SIGTERM")
		_ = a.cmd.Process.Kill()
		<-done
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// eventually polls cond until it holds or the deadline passes. The deadline
// is a liveness bound (something is stuck), not a performance target.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s (last: %s)", what, within, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
