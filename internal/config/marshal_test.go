package config

import (
	"reflect"
	"testing"
	"time"
)

// stripLines clears what depends on the file layout rather than its meaning.
func stripLines(c *Config) *Config {
	out := *c
	out.Path = ""
	out.Nodes = make([]Node, len(c.Nodes))
	for i, n := range c.Nodes {
		n.Line = 0
		out.Nodes[i] = n
	}
	return &out
}

func TestMarshalRoundTrip(t *testing.T) {
	t.Setenv("PGMESH_TEST_PASSWORD", "p\"w\\x y")
	for name, yaml := range map[string]string{"defaults": twoNodes, "full": fullConfig} {
		t.Run(name, func(t *testing.T) {
			cfg, err := Parse([]byte(yaml), "in.yaml")
			if err != nil {
				t.Fatal(err)
			}
			out := cfg.Marshal()
			back, err := Parse(out, "out.yaml")
			if err != nil {
				t.Fatalf("Parse(Marshal()) failed: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(stripLines(back), stripLines(cfg)) {
				t.Errorf("round trip changed the config\nbefore %+v\nafter  %+v\nyaml:\n%s", cfg, back, out)
			}
		})
	}
}

func TestMarshalBuiltConfig(t *testing.T) {
	cfg := &Config{
		Cluster: "demo",
		Nodes: []Node{
			{Name: "n1", DSN: "host=/tmp port=5432 dbname=demo\n", ID: 1},
			{Name: "n2", DSN: "host=/tmp port=5433 dbname='a: b' # not a comment", ID: 5},
		},
		Replicate: Replicate{Schemas: []string{"public", "yes", "123"}},
		Conflicts: Conflicts{
			Default:            FirstUpdateWins,
			Tables:             map[string]TableConfig{"public.t": {}, "public.u": {Policy: PolicyError}},
			LogRetention:       36 * time.Hour,
			TombstoneRetention: 90 * time.Second,
		},
		Sequences: Sequences{Strategy: "none", MaxNodes: 5},
		DDL:       DDL{Capture: "auto"},
		Agent:     Agent{Listen: "[::1]:9187", ApplyWorkers: 3, LogLevel: "debug"},
	}
	back, err := Parse(cfg.Marshal(), "")
	if err != nil {
		t.Fatalf("%v\n%s", err, cfg.Marshal())
	}
	if !reflect.DeepEqual(stripLines(back), cfg) {
		t.Errorf("round trip changed the config\nbefore %+v\nafter  %+v\nyaml:\n%s", cfg, back, cfg.Marshal())
	}
}
