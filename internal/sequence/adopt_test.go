package sequence

import (
	"math"
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
)

func TestAdoptParams(t *testing.T) {
	cfg := &config.Config{Sequences: config.Sequences{MaxNodes: 8}}
	lo, hi := rangeBlock("integer", 3, 8)
	lo16, hi16 := rangeBlock("bigint", 2, 16)
	for _, tc := range []struct {
		name     string
		col      Column
		strategy Strategy
		maxNodes int
		err      string
	}{
		{"snowflake", Column{Strategy: Snowflake, Type: "bigint"}, Snowflake, 0, ""},
		{"step", Column{Strategy: Step, Type: "integer", Increment: 8}, Step, 8, ""},
		{"range of the config", Column{Strategy: Range, Type: "integer", Increment: 1, Min: lo, Max: hi}, Range, 8, ""},
		{"range of another max_nodes", Column{Strategy: Range, Type: "bigint", Increment: 1, Min: lo16, Max: hi16}, Range, 16, ""},
		{"foreign range", Column{Strategy: Range, Type: "integer", Increment: 1, Min: 5, Max: 77}, None, 0, "not a block"},
		{"plain", Column{Strategy: None, Type: "bigint", Increment: 1, Min: 1, Max: math.MaxInt64}, None, 0, ""},
	} {
		s, m, err := adoptParams(cfg, tc.col)
		if s != tc.strategy || m != tc.maxNodes || (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %s, %d, %v; want %s, %d, %q", tc.name, s, m, err, tc.strategy, tc.maxNodes, tc.err)
		}
	}
}

func TestJoinFindings(t *testing.T) {
	cfg := &config.Config{Sequences: config.Sequences{MaxNodes: 8}}
	id := func(n int) *int { return &n }
	col := func(strategy Strategy, inc, last int64) Column {
		return Column{Schema: "public", Table: "t", Column: "id", Type: "bigint", Strategy: strategy, Increment: inc,
			Min: 1, Max: math.MaxInt64, LastValue: last, IsCalled: true}
	}
	for _, tc := range []struct {
		name   string
		node   config.Node
		source NodeState
		peers  []NodeState
		fail   string
	}{
		{"snowflake id free", config.Node{Name: "n4", ID: 4},
			NodeState{Node: "n1", NodeID: id(1), Columns: []Column{col(Snowflake, 1, 0)}},
			[]NodeState{{Node: "n1", NodeID: id(1)}, {Node: "n2", NodeID: id(2)}}, ""},
		{"snowflake id taken", config.Node{Name: "n4", ID: 2},
			NodeState{Node: "n1", NodeID: id(1), Columns: []Column{col(Snowflake, 1, 0)}},
			[]NodeState{{Node: "n1", NodeID: id(1)}, {Node: "n2", NodeID: id(2)}}, "n2 already generates snowflake ids with node id 2"},
		{"step class free", config.Node{Name: "n4", ID: 4},
			NodeState{Node: "n1", Columns: []Column{col(Step, 8, 9)}},
			[]NodeState{{Node: "n1", Columns: []Column{col(Step, 8, 9)}}, {Node: "n2", Columns: []Column{col(Step, 8, 10)}}}, ""},
		{"step class taken", config.Node{Name: "n4", ID: 10},
			NodeState{Node: "n1", Columns: []Column{col(Step, 8, 9)}},
			[]NodeState{{Node: "n1", Columns: []Column{col(Step, 8, 9)}}, {Node: "n2", Columns: []Column{col(Step, 8, 10)}}}, "n2 generates step ids in slot 2 of 8"},
	} {
		fs := JoinFindings(cfg, tc.node, tc.source, tc.peers)
		var fail string
		for _, f := range fs {
			if f.Status == Fail {
				fail = f.Message
			}
		}
		if len(fs) == 0 || (fail == "") != (tc.fail == "") || !strings.Contains(fail, tc.fail) {
			t.Errorf("%s: %+v, want FAIL %q", tc.name, fs, tc.fail)
		}
	}
}
