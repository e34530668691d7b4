// Package sandbox runs local clusters of real PostgreSQL servers (initdb,
// pg_ctl) for demos, tests and evaluation. A sandbox is a directory holding
// one subdirectory per node (data directory and server log), sandbox.json
// (what Open reads) and a pgmesh.yaml naming the nodes.
//
// When run as root, the servers run as the postgres OS user, because initdb
// and postgres refuse root.
package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

const (
	stateFile  = "sandbox.json"
	configFile = "pgmesh.yaml"
	logFile    = "postgresql.log"
	// DefaultDB is the database created on every node when Options.DB is "".
	DefaultDB = "app"
	// maxNodes bounds Options.Nodes: each server takes ~100 MB of memory.
	maxNodes = 32
	// pgCtlTimeout bounds pg_ctl's wait for start and stop (seconds).
	pgCtlTimeout = "120"
	// portAttempts is how often a new server tries another free port when
	// the one it was given got taken in between.
	portAttempts = 5
	// appName is the application_name of the sandbox's own connections.
	appName = "pgmesh-sandbox"
)

// Options says what Up builds.
type Options struct {
	Dir    string // cluster directory (created if missing)
	Nodes  int
	BinDir string                           // "" = FindBinDir("")
	DB     string                           // database created on every node, default "app"
	Logf   func(format string, args ...any) // progress, may be nil
}

// Cluster is a running (or stopped) sandbox.
type Cluster struct {
	Dir    string  `json:"dir"`
	BinDir string  `json:"bin_dir"`
	Major  int     `json:"major"` // server major version (15, 18)
	DB     string  `json:"db"`
	Nodes  []*Node `json:"nodes"` // n1..nN

	own owner
}

// Node is one server of a sandbox.
type Node struct {
	Name    string `json:"name"`
	Port    int    `json:"port"`
	DataDir string `json:"data_dir"`
}

// LogFile is the node's server log.
func (n *Node) LogFile() string { return filepath.Join(filepath.Dir(n.DataDir), logFile) }

// Running reports whether the node's postmaster is alive.
func (n *Node) Running() bool {
	_, alive := postmasterPID(n.DataDir)
	return alive
}

// Up creates and starts a sandbox of o.Nodes servers in o.Dir, creates
// database o.DB on each and writes Dir/pgmesh.yaml and Dir/sandbox.json. On
// an existing sandbox it starts the stopped servers and creates o.DB where
// missing. A failed creation leaves nothing behind.
func Up(ctx context.Context, o Options) (*Cluster, error) {
	if o.Dir == "" {
		return nil, errors.New("sandbox up: no directory given")
	}
	if o.Nodes < 1 || o.Nodes > maxNodes {
		return nil, fmt.Errorf("sandbox up: %d nodes: want 1 to %d", o.Nodes, maxNodes)
	}
	if o.DB == "" {
		o.DB = DefaultDB
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("sandbox up: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); err == nil {
		c, err := Open(dir)
		if err != nil {
			return nil, err
		}
		if err := c.resume(ctx, o); err != nil {
			return nil, fmt.Errorf("sandbox %s: %w", dir, err)
		}
		return c, nil
	}
	c, err := create(ctx, dir, o)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", dir, err)
	}
	return c, nil
}

// Open reads the sandbox in dir without starting anything.
func Open(dir string) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("open sandbox %s (not created by `pgmesh sandbox up`?): %w", dir, err)
	}
	c := &Cluster{}
	if err := json.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("open sandbox %s: %s: %w", dir, stateFile, err)
	}
	// The directory may have been moved: paths follow it.
	c.Dir = dir
	for _, n := range c.Nodes {
		n.DataDir = filepath.Join(dir, n.Name, "data")
	}
	if c.own, err = currentOwner(); err != nil {
		return nil, err
	}
	return c, nil
}

func create(ctx context.Context, dir string, o Options) (_ *Cluster, err error) {
	own, err := currentOwner()
	if err != nil {
		return nil, err
	}
	binDir, err := FindBinDir(o.BinDir)
	if err != nil {
		return nil, err
	}
	major, err := ServerMajor(ctx, binDir)
	if err != nil {
		return nil, err
	}
	made, err := makeDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, BinDir: binDir, Major: major, DB: o.DB, own: own}
	for i := 1; i <= o.Nodes; i++ {
		name := fmt.Sprintf("n%d", i)
		c.Nodes = append(c.Nodes, &Node{Name: name, DataDir: filepath.Join(dir, name, "data")})
	}
	defer func() {
		if err != nil {
			// Leave nothing running or half-made; the caller gets err.
			ctx := context.WithoutCancel(ctx)
			c.stopAll(ctx)
			if made {
				os.RemoveAll(dir)
			} else {
				for _, n := range c.Nodes {
					os.RemoveAll(filepath.Dir(n.DataDir))
				}
			}
		}
	}()
	if own.cred != nil {
		for _, d := range []string{dir, binDir} {
			if err := checkTraversable(d, own.cred.Uid, own.cred.Gid); err != nil {
				return nil, err
			}
		}
	}
	pw, err := newPasswords()
	if err != nil {
		return nil, err
	}
	o.Logf("creating %d PostgreSQL %d servers in %s", o.Nodes, major, dir)
	// Nodes are independent: initdb and startup run concurrently.
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = c.createNode(ctx, n, pw[Admin], o.Logf) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// The ports are known now: the password file names each server.
	if err := c.writePassfile(pw); err != nil {
		return nil, err
	}
	for i, n := range c.Nodes {
		wg.Go(func() { errs[i] = c.setupRoles(ctx, n, pw) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if err := c.createDB(ctx, n, c.DB); err != nil {
			return nil, err
		}
	}
	if err := c.writeState(); err != nil {
		return nil, err
	}
	if err := c.writeConfig(); err != nil {
		return nil, err
	}
	return c, nil
}

// makeDir creates dir with mode 0755 (the server user must traverse it) and
// reports whether it made it. An existing directory must be empty, so that
// Up never mixes a sandbox into somebody's files.
func makeDir(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	switch {
	case err == nil && len(entries) > 0:
		return false, fmt.Errorf("%s exists, is not empty and holds no %s: remove it or choose another directory", dir, stateFile)
	case err == nil:
		return false, nil
	case !errors.Is(err, os.ErrNotExist):
		return false, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	// MkdirAll's mode is filtered by the umask.
	return true, os.Chmod(dir, 0o755)
}

// createNode runs initdb for n, with password (SCRAM) authentication for
// every connection and adminPW as the superuser's password, and starts it.
func (c *Cluster) createNode(ctx context.Context, n *Node, adminPW string, logf func(string, ...any)) error {
	nodeDir := filepath.Dir(n.DataDir)
	if err := c.own.mkdir(nodeDir); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	// initdb reads the password from a file, which the server user must
	// read: in the node directory, private, removed right after.
	pwfile := filepath.Join(nodeDir, "initdb.pw")
	if err := os.WriteFile(pwfile, []byte(adminPW+"\n"), 0o600); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	defer os.Remove(pwfile)
	if err := c.own.chown(pwfile); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	logf("%s: initdb", n.Name)
	if _, err := c.own.run(ctx, nodeDir, c.program("initdb"), "-D", n.DataDir,
		"--auth=scram-sha-256", "--pwfile="+pwfile, "--username="+string(Admin), "--encoding=UTF8", "--no-locale",
		"--no-sync", "--no-instructions"); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	if err := appendFile(filepath.Join(n.DataDir, "postgresql.conf"), "\ninclude '"+confFile+"'\n"); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		n.Port = port
		if err := c.writeServerConf(n); err != nil {
			return fmt.Errorf("%s: %w", n.Name, err)
		}
		err = c.start(ctx, n)
		if errors.Is(err, errPortTaken) && attempt < portAttempts {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	logf("%s: listening on 127.0.0.1:%d", n.Name, n.Port)
	return nil
}

func (c *Cluster) program(name string) string { return filepath.Join(c.BinDir, name) }

func (c *Cluster) writeServerConf(n *Node) error {
	path := filepath.Join(n.DataDir, confFile)
	if err := os.WriteFile(path, []byte(serverConf(c.Major, n.Port)), 0o600); err != nil {
		return err
	}
	return c.own.chown(path)
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// freePort returns a TCP port that was free a moment ago; start retries with
// another one if it got taken in between.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var errPortTaken = errors.New("port already in use")

// start starts n's server and waits until it accepts connections. The error
// carries the end of the server log.
func (c *Cluster) start(ctx context.Context, n *Node) error {
	var offset int64
	if st, err := os.Stat(n.LogFile()); err == nil {
		offset = st.Size()
	}
	_, err := c.own.run(ctx, filepath.Dir(n.DataDir), c.program("pg_ctl"), "start", "-D", n.DataDir,
		"-l", n.LogFile(), "-w", "-t", pgCtlTimeout, "-s")
	if err == nil {
		return nil
	}
	log := tail(n.LogFile(), offset, 20)
	if strings.Contains(log, "Address already in use") {
		err = fmt.Errorf("%w: %w", errPortTaken, err)
	}
	return fmt.Errorf("%s: start server on port %d: %w\nlast lines of %s:\n%s", n.Name, n.Port, err, n.LogFile(), log)
}

// resume brings an existing sandbox up as o asks.
func (c *Cluster) resume(ctx context.Context, o Options) error {
	if o.Nodes != len(c.Nodes) {
		return fmt.Errorf("has %d nodes, not %d: run `pgmesh sandbox down --dir %s` first", len(c.Nodes), o.Nodes, c.Dir)
	}
	if o.BinDir != "" {
		if bin, err := filepath.Abs(o.BinDir); err != nil || bin != c.BinDir {
			return fmt.Errorf("runs the binaries of %s, not %s: run `pgmesh sandbox down --dir %s` first", c.BinDir, o.BinDir, c.Dir)
		}
	}
	for _, n := range c.Nodes {
		if n.Running() {
			continue
		}
		o.Logf("%s: starting", n.Name)
		if err := c.start(ctx, n); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if err := c.createDB(ctx, n, o.DB); err != nil {
			return err
		}
	}
	_, statErr := os.Stat(filepath.Join(c.Dir, configFile))
	if o.DB == c.DB && statErr == nil {
		// Keep the user's edits of pgmesh.yaml.
		return nil
	}
	c.DB = o.DB
	if err := c.writeState(); err != nil {
		return err
	}
	return c.writeConfig()
}

// Node returns the node called name.
func (c *Cluster) Node(name string) (*Node, error) {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		if n.Name == name {
			return n, nil
		}
		names[i] = n.Name
	}
	return nil, fmt.Errorf("sandbox %s has no node %q (nodes: %s)", c.Dir, name, strings.Join(names, ", "))
}

// DSNAs returns the DSN of database db (c.DB when "") on node for role,
// or "" when there is no such node. The password comes from the sandbox's
// password file, which the DSN names.
func (c *Cluster) DSNAs(node, db string, role Role) string {
	n, err := c.Node(node)
	if err != nil {
		return ""
	}
	if db == "" {
		db = c.DB
	}
	return dsn(n.Port, db, string(role), c.Passfile())
}

// ConfigYAML returns a pgmesh.yaml naming every node with its DSN to
// database db (c.DB when "").
func (c *Cluster) ConfigYAML(db string) []byte {
	if db == "" {
		db = c.DB
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# pgmesh sandbox in %s (PostgreSQL %d)\n", c.Dir, c.Major)
	b.WriteString("cluster: sandbox\nnodes:\n")
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  - name: %s\n    dsn: %s\n    admin_dsn: %s\n", n.Name,
			yamlString(dsn(n.Port, db, string(Pgmesh), c.Passfile())), yamlString(dsn(n.Port, db, string(Admin), c.Passfile())))
	}
	b.WriteString("replicate:\n  schemas: [public]\n")
	return b.Bytes()
}

// Stop stops node's server. Mode "fast" shuts down cleanly; "immediate"
// kills it the way a crash would (recovery at the next start). Stopping a
// stopped node does nothing.
func (c *Cluster) Stop(ctx context.Context, node, mode string) error {
	if mode != "fast" && mode != "immediate" {
		return fmt.Errorf("stop %s: mode %q: want fast or immediate", node, mode)
	}
	n, err := c.Node(node)
	if err != nil {
		return err
	}
	return c.stop(ctx, n, mode)
}

func (c *Cluster) stop(ctx context.Context, n *Node, mode string) error {
	pid, alive := postmasterPID(n.DataDir)
	if !alive {
		return nil
	}
	if _, err := c.own.run(ctx, filepath.Dir(n.DataDir), c.program("pg_ctl"), "stop", "-D", n.DataDir,
		"-m", mode, "-w", "-t", pgCtlTimeout, "-s"); err != nil {
		return fmt.Errorf("%s: stop (%s): %w", n.Name, mode, err)
	}
	// pg_ctl returns once the pid file is gone, a moment before the
	// postmaster exits; callers expect the port and the process gone.
	if !waitGone(pid) {
		return fmt.Errorf("%s: stop (%s): postmaster %d still runs", n.Name, mode, pid)
	}
	return nil
}

// Start starts node's server on its port (a no-op when it runs).
func (c *Cluster) Start(ctx context.Context, node string) error {
	n, err := c.Node(node)
	if err != nil {
		return err
	}
	if n.Running() {
		return nil
	}
	return c.start(ctx, n)
}

// Down stops every server and removes the sandbox directory.
func (c *Cluster) Down(ctx context.Context) error {
	if err := c.stopAll(ctx); err != nil {
		return fmt.Errorf("sandbox %s: %w", c.Dir, err)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		return fmt.Errorf("sandbox %s: remove: %w", c.Dir, err)
	}
	return nil
}

// stopAll stops every server: fast, else immediate, else SIGKILL, so that
// nothing outlives the sandbox.
func (c *Cluster) stopAll(ctx context.Context) error {
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Go(func() {
			err := c.stop(ctx, n, "fast")
			if err != nil {
				err = c.stop(ctx, n, "immediate")
			}
			if err != nil {
				err = killPostmaster(n)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// killPostmaster is the last resort when pg_ctl cannot stop a server.
func killPostmaster(n *Node) error {
	pid, alive := postmasterPID(n.DataDir)
	if !alive {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("%s: kill postmaster %d: %w", n.Name, pid, err)
	}
	if !waitGone(pid) {
		return fmt.Errorf("%s: postmaster %d survives SIGKILL", n.Name, pid)
	}
	return nil
}

func (c *Cluster) writeState() error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(c.Dir, stateFile), append(b, '\n'))
}

func (c *Cluster) writeConfig() error {
	return writeAtomic(filepath.Join(c.Dir, configFile), c.ConfigYAML(c.DB))
}

// writeAtomic replaces path so that readers never see half a file.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
