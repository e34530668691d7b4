package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// owner is the OS user that runs the servers: postgres when we are root
// (initdb and postgres refuse root), else ourselves (nil credential).
type owner struct {
	cred *syscall.Credential
}

func currentOwner() (owner, error) {
	if os.Geteuid() != 0 {
		return owner{}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return owner{}, fmt.Errorf("running as root, the servers run as the postgres OS user: %w (install PostgreSQL with scripts/install-pg.sh or create the user)", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return owner{}, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return owner{}, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	return owner{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

// mkdir creates dir (mode 0755) owned by the server user.
func (o owner) mkdir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return o.chown(dir)
}

func (o owner) chown(path string) error {
	if o.cred == nil {
		return nil
	}
	return os.Chown(path, int(o.cred.Uid), int(o.cred.Gid))
}

// run runs a PostgreSQL program as the server user in dir and returns its
// output; the error carries the output.
func (o owner) run(ctx context.Context, dir, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = dir
	cmd.Env = serverEnv()
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		if text != "" {
			err = fmt.Errorf("%s %s: %w: %s", filepath.Base(prog), strings.Join(args, " "), err, text)
		} else {
			err = fmt.Errorf("%s %s: %w", filepath.Base(prog), strings.Join(args, " "), err)
		}
	}
	return text, err
}

// serverEnv is our environment without libpq/server variables (PGDATA,
// PGPORT, PGOPTIONS…) that would change what the programs do, and with the
// C locale so that messages can be matched.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C")
}

// checkTraversable reports the first directory on the way to path that the
// server user cannot enter. uid/gid describe that user.
func checkTraversable(path string, uid, gid uint32) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for dir := abs; ; dir = filepath.Dir(dir) {
		st, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if !canEnter(st, uid, gid) {
			return fmt.Errorf("the postgres OS user (uid %d) cannot enter %s (mode %#o): run `chmod o+x %s` or choose a directory outside it", uid, dir, st.Mode().Perm(), dir)
		}
		if dir == filepath.Dir(dir) {
			return nil
		}
	}
}

func canEnter(st os.FileInfo, uid, gid uint32) bool {
	perm := st.Mode().Perm()
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return perm&0o001 != 0
	}
	switch {
	case sys.Uid == uid:
		return perm&0o100 != 0
	case sys.Gid == gid:
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

// postmasterPID returns the pid recorded in dataDir/postmaster.pid and
// whether that process is alive. A pid file left by a killed server names a
// dead (or reused, which we accept for a sandbox) pid.
func postmasterPID(dataDir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, processAlive(pid)
}

// processAlive reports whether pid exists and is not a zombie: a stopped
// postmaster lingers as a zombie until its new parent (init) reaps it.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false
		}
		err := syscall.Kill(pid, 0) // no /proc: ask the kernel
		return err == nil || errors.Is(err, syscall.EPERM)
	}
	// "pid (comm) S ...": comm may contain anything, the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	state := b[i+2]
	return state != 'Z' && state != 'X'
}

// waitGone waits until pid has exited, at most about ten seconds.
func waitGone(pid int) bool {
	for range 200 {
		if !processAlive(pid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// tail returns the last n lines of the file from offset on.
func tail(path string, offset int64, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if offset > 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TempDir makes a new temporary directory (prefix as for os.MkdirTemp) that
// the postgres OS user can enter, which it must when the servers run as it
// (as root), and returns the sandbox directory to use inside it and a
// function that removes both.
func TempDir(prefix string) (dir string, remove func(), err error) {
	d, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	if err := os.Chmod(d, 0o755); err != nil {
		os.RemoveAll(d)
		return "", nil, err
	}
	return filepath.Join(d, "cluster"), func() { os.RemoveAll(d) }, nil
}
