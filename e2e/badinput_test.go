package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

func writeFile(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "pgmesh.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// closedPort returns a local port nobody listens on.
func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestBadInput(t *testing.T) {
	env := sandboxtest.New(t, 2)
	port := closedPort(t)
	cases := []struct {
		name     string
		config   string
		verb     []string
		wantCode int
		want     []string
	}{
		{
			name:     "bad yaml",
			config:   "cluster: shop\nnodes:\n  - name: n1\n    dsn: \"host=x\n  - name: [\n",
			verb:     []string{"init"},
			wantCode: 2,
			want:     []string{"pgmesh.yaml:"},
		},
		{
			name:     "unknown key",
			config:   "cluster: shop\nnodes:\n  - name: n1\n    dsn: host=a\n  - name: n2\n    dsn: host=b\nreplicat:\n  schemas: [public]\n",
			verb:     []string{"init"},
			wantCode: 2,
			want:     []string{"pgmesh.yaml:7", "replicat"},
		},
		{
			name: "unreachable node",
			config: fmt.Sprintf("cluster: shop\nnodes:\n  - name: n1\n    dsn: %q\n  - name: ghost\n    dsn: \"host=127.0.0.1 port=%d dbname=app user=postgres password=s3cret connect_timeout=3\"\n",
				env.DSNs[0], port),
			verb:     []string{"init"},
			wantCode: 1,
			want:     []string{"ghost", fmt.Sprintf("127.0.0.1:%d", port)},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCLI(t, append(tc.verb, "-c", writeFile(t, tc.config))...)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d\n%s", code, tc.wantCode, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "s3cret") {
				t.Errorf("output shows the password:\n%s", out)
			}
		})
	}

	t.Run("table without identity", func(t *testing.T) {
		for i := 0; i < 2; i++ {
			env.Exec(t, i, `CREATE TABLE noid (a int NOT NULL, b text)`)
			env.Exec(t, i, `CREATE UNIQUE INDEX noid_a ON noid (a)`)
		}
		out, code := runCLI(t, "init", "-c", env.ConfigPath)
		if code != 1 {
			t.Fatalf("exit %d, want 1\n%s", code, out)
		}
		for _, w := range []string{"public.noid", "REPLICA IDENTITY USING INDEX"} {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	})
}
