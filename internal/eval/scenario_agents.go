package eval

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/pgmesh/pgmesh/internal/agent"
	"github.com/pgmesh/pgmesh/internal/config"
)

// nodeAgent runs the inbound links of one node, either in this process or
// as a `pgmesh run --node` child process (which a crash can SIGKILL).
type nodeAgent struct {
	node   string
	cfg    *config.Config // the node's view: its peers through their proxies
	bin    string         // pgmesh binary; "" = in-process
	dir    string         // config file and log of a child
	logger *slog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan error
	cmd    *exec.Cmd
}

// start starts the agent; it must not be running.
func (a *nodeAgent) start(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bin == "" {
		ag, err := agent.New(a.cfg, agent.Options{Node: a.node, Listen: "-", Logger: a.logger.With("agent", a.node)})
		if err != nil {
			return fmt.Errorf("agent of %s: %w", a.node, err)
		}
		actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		a.cancel, a.done = cancel, make(chan error, 1)
		go func() { a.done <- ag.Run(actx) }()
		return nil
	}
	path := filepath.Join(a.dir, "pgmesh-"+a.node+".yaml")
	if err := os.WriteFile(path, a.cfg.Marshal(), 0o600); err != nil {
		return fmt.Errorf("agent of %s: %w", a.node, err)
	}
	logf, err := os.OpenFile(filepath.Join(a.dir, "agent-"+a.node+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("agent of %s: %w", a.node, err)
	}
	cmd := exec.Command(a.bin, "run", "-c", path, "--node", a.node, "--listen", "-")
	cmd.Stdout, cmd.Stderr = logf, logf
	// The child must not outlive the harness, even if the harness is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("agent of %s: start %s: %w", a.node, a.bin, err)
	}
	a.cmd, a.done = cmd, make(chan error, 1)
	go func() {
		err := cmd.Wait()
		logf.Close()
		a.done <- err
	}()
	return nil
}

// kill stops the agent the hard way: SIGKILL for a child, cancel for an
// in-process agent (which cannot be killed, only stopped at once).
func (a *nodeAgent) kill() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.cmd != nil:
		_ = a.cmd.Process.Signal(syscall.SIGKILL)
		<-a.done
		a.cmd = nil
	case a.cancel != nil:
		a.cancel()
		<-a.done
		a.cancel = nil
	default:
		return fmt.Errorf("agent of %s is not running", a.node)
	}
	return nil
}

// stop stops the agent cleanly (SIGTERM or cancel) if it runs.
func (a *nodeAgent) stop() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.cmd != nil:
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		var err error
		select {
		case err = <-a.done:
		case <-time.After(30 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.done
			err = errors.New("did not stop within 30s of SIGTERM")
		}
		a.cmd = nil
		if err != nil {
			return fmt.Errorf("agent of %s: %w", a.node, err)
		}
	case a.cancel != nil:
		a.cancel()
		err := <-a.done
		a.cancel = nil
		if err != nil {
			return fmt.Errorf("agent of %s: %w", a.node, err)
		}
	}
	return nil
}

// running reports whether the agent runs.
func (a *nodeAgent) running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil || a.cancel != nil
}

// logTail returns the end of a child's log, for error messages.
func (a *nodeAgent) logTail() string {
	if a.bin == "" {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(a.dir, "agent-"+a.node+".log"))
	if err != nil {
		return ""
	}
	lines := bytes.Split(b, []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-20):], []byte("\n")))
}
