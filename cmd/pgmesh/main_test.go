package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// run runs the CLI in-process as main does and returns its output and exit
// code.
func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return out.String(), 0
	}
	out.WriteString("pgmesh: " + err.Error() + "\n")
	var ee *exitError
	if errors.As(err, &ee) {
		return out.String(), ee.code
	}
	return out.String(), 1
}

// Every verb says what it does and shows an example in --help.
func TestEveryVerbHasHelpWithAnExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			walk(sub)
		}
		if c.Short == "" {
			t.Errorf("%q has no short description", c.CommandPath())
		}
		if c.Runnable() && c.Example == "" {
			t.Errorf("%q has no example in its help", c.CommandPath())
		}
		args := append(strings.Fields(strings.TrimPrefix(c.CommandPath(), "pgmesh")), "--help")
		if out, code := run(t, args...); code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("pgmesh %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
	}
	walk(newRootCmd())
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("cluster: c\nnodes:\n  - name: n1\n    dsn: \"host=x\"\n    port: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("cluster: c\nnodes:\n  - name: n1\n    dsn: \"host=x\"\n  - name: n2\n    dsn: \"host=y\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"status", "--no-such-flag"}, 2, "unknown flag: --no-such-flag"},
		{"unknown verb", []string{"frobnicate"}, 1, `unknown command "frobnicate"`},
		{"missing config", []string{"plan", "-c", filepath.Join(dir, "none.yaml")}, 2, "none.yaml"},
		{"invalid config", []string{"plan", "-c", bad}, 2, `bad.yaml:5: node #1: unknown key "port"`},
		{"bad log level", []string{"plan", "-c", good, "--log-level", "loud"}, 2, `--log-level "loud"`},
		{"plan needs no connection", []string{"plan", "-c", good}, 0, "n1->n2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := run(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.want) {
				t.Errorf("pgmesh %s: exit %d, want %d with %q:\n%s", strings.Join(tt.args, " "), code, tt.code, tt.want, out)
			}
		})
	}
}
