package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/netfault"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
	"github.com/pgmesh/pgmesh/internal/setup"
)

func TestMain(m *testing.M) { sandboxtest.Main(m, 3) }

// initMesh creates the schema of each node (ddl[i] on node i) and runs
// init.
func initMesh(t *testing.T, env *sandboxtest.Env, ddl [][]string) {
	t.Helper()
	for i, stmts := range ddl {
		for _, q := range stmts {
			env.Exec(t, i, q)
		}
	}
	if _, err := setup.Init(context.Background(), env.Config, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("init: %v", err)
	}
}

// throughProxy returns a copy of cfg in which node reaches its server
// through a netfault proxy called node, so that the test can cut it.
func throughProxy(t *testing.T, env *sandboxtest.Env, node string) (*config.Config, *netfault.Net) {
	t.Helper()
	cfg := env.Config
	out := *cfg
	out.Nodes = append([]config.Node(nil), cfg.Nodes...)
	net := netfault.New()
	t.Cleanup(func() { _ = net.Close() })
	port := regexp.MustCompile(`port=(\d+)`)
	for i, n := range out.Nodes {
		if n.Name != node {
			continue
		}
		m := port.FindStringSubmatch(n.DSN)
		if m == nil {
			t.Fatalf("no port= in the DSN of %s: %s", node, n.DSN)
		}
		addr, err := net.Proxy(node, "127.0.0.1:"+m[1])
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := strings.Cut(addr, ":")
		// The proxy's address needs its own password file entries.
		passfile := filepath.Join(t.TempDir(), "passfile")
		if err := env.Cluster.AliasPassfile(passfile, map[string]string{addr: env.Cluster.Nodes[i].Name}); err != nil {
			t.Fatal(err)
		}
		out.Nodes[i].DSN = port.ReplaceAllString(n.DSN, "port="+p) + " passfile=" + passfile
	}
	// Not the file's config any more: an agent following the file (node
	// add/remove) would go back to the direct addresses.
	out.Path = ""
	return &out, net
}

// startAgent runs an agent in the test's process until the test ends and
// returns it with its HTTP base URL.
func startAgent(t *testing.T, cfg *config.Config, opts Options) (*Agent, string) {
	t.Helper()
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	a, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	wctx, c := context.WithTimeout(ctx, 30*time.Second)
	defer c()
	addr, err := a.HTTPAddr(wctx)
	if err != nil {
		t.Fatalf("agent HTTP address: %v", err)
	}
	return a, "http://" + addr
}

// testWriter sends log lines to t.Log, so they show with a failure only.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// statusOf fetches /status.json.
func statusOf(t *testing.T, base string) View {
	t.Helper()
	var v View
	getJSON(t, base+"/status.json", &v)
	return v
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// eventually polls cond until it holds; the deadline is a liveness bound.
func eventually(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %s (last: %s)", what, within, detail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// healths returns link → health of a View.
func healths(v View) map[string]string {
	out := map[string]string{}
	for _, l := range v.Links {
		out[l.Link] = l.Health
	}
	return out
}

func fmtHealths(v View) string { return fmt.Sprint(healths(v)) }
