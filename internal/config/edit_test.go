package config

import (
	"strings"
	"testing"
)

const commented = `# the demo cluster
cluster: demo
nodes:
  # Paris first: it wins ties
  - name: paris
    dsn: "host=/tmp port=5432 dbname=app"   # primary site
  - name: lyon
    dsn: "host=/tmp port=5433 dbname=app"
  - name: nice
    dsn: "host=/tmp port=5434 dbname=app"

# ids from the position
sequences:
  strategy: step
  max_nodes: 8
`

func TestAddNodeKeepsComments(t *testing.T) {
	out, err := AddNode([]byte(commented), "x.yaml", "lille", "host=/tmp port=5435 dbname=app", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{"# the demo cluster", "# Paris first", "# primary site", "# ids from the position"} {
		if !strings.Contains(string(out), keep) {
			t.Errorf("comment %q lost:\n%s", keep, out)
		}
	}
	cfg, err := Parse(out, "x.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := cfg.NodeNames(); strings.Join(got, ",") != "paris,lyon,nice,lille" {
		t.Fatalf("nodes %v\n%s", got, out)
	}
	if n, _ := cfg.NodeByName("lille"); n.ID != 4 || n.DSN != "host=/tmp port=5435 dbname=app" {
		t.Errorf("lille = %+v", n)
	}
	if !strings.Contains(string(out), "    dsn: \"host=/tmp port=5434 dbname=app\"\n  - name: \"lille\"\n") {
		t.Errorf("new entry not right after the last one:\n%s", out)
	}

	out, err = AddNode([]byte(commented), "x.yaml", "lille", "host=/tmp port=5435 dbname=app", 7)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = Parse(out, "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := cfg.NodeByName("lille"); n.ID != 7 {
		t.Errorf("explicit id: lille = %+v", n)
	}
	if _, err := AddNode([]byte(commented), "x.yaml", "lyon", "x", 0); err == nil {
		t.Error("adding a node that is there already: no error")
	}
}

func TestRemoveNodePinsIDs(t *testing.T) {
	out, err := RemoveNode([]byte(commented), "x.yaml", "paris")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(out, "x.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := map[string]int{"lyon": 2, "nice": 3}
	if len(cfg.Nodes) != 2 {
		t.Fatalf("nodes %v\n%s", cfg.NodeNames(), out)
	}
	for _, n := range cfg.Nodes {
		if n.ID != want[n.Name] {
			t.Errorf("%s: id %d, want %d (ids must not move)\n%s", n.Name, n.ID, want[n.Name], out)
		}
	}
	if !strings.Contains(string(out), "# ids from the position") || strings.Contains(string(out), "paris") {
		t.Errorf("wrong edit:\n%s", out)
	}
	// The last node: nothing to pin.
	out, err = RemoveNode([]byte(commented), "x.yaml", "nice")
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err = Parse(out, "x.yaml"); err != nil || strings.Join(cfg.NodeNames(), ",") != "paris,lyon" || strings.Contains(string(out), "id:") {
		t.Errorf("remove last: %v %v\n%s", cfg, err, out)
	}
}

func TestEditRefusesFlowList(t *testing.T) {
	flow := "cluster: c\nnodes: [{name: a, dsn: \"x\"}, {name: b, dsn: \"y\"}]\n"
	if _, err := AddNode([]byte(flow), "f.yaml", "c", "z", 0); err == nil || !strings.Contains(err.Error(), "block list") {
		t.Errorf("AddNode on a flow list: %v", err)
	}
}
