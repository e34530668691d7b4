package topology

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%d", i+1)
	}
	return out
}

func TestLinkNames(t *testing.T) {
	l := Link{Up: "n1", Down: "n2"}
	if l.Name() != "n1->n2" || l.Slot() != "pgmesh_n1_n2" || l.Origin() != "pgmesh_n1" || OriginName("paris") != "pgmesh_paris" {
		t.Errorf("got name %q slot %q origin %q", l.Name(), l.Slot(), l.Origin())
	}
}

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func TestSlotNameLength(t *testing.T) {
	long1 := "a" + strings.Repeat("b", 30) // 31 bytes, the longest node name
	long2 := "a" + strings.Repeat("b", 29) + "c"
	tests := []struct {
		link Link
		want string // "" = hashed
	}{
		{Link{"paris", "tokyo"}, "pgmesh_paris_tokyo"},
		{Link{long1, "x"}, "pgmesh_" + long1 + "_x"},
		// 7 + 31 + 1 + 24 = 63 bytes: still the plain name.
		{Link{long1, strings.Repeat("y", 24)}, "pgmesh_" + long1 + "_" + strings.Repeat("y", 24)},
		{Link{long1, strings.Repeat("y", 25)}, ""},
		{Link{long1, long2}, ""},
		{Link{long2, long1}, ""},
		{Link{long1, long2 + "d"}, ""},
	}
	seen := map[string]Link{}
	for _, tc := range tests {
		slot := tc.link.Slot()
		if len(slot) > 63 || !identRE.MatchString(slot) {
			t.Errorf("%s: slot %q (%d bytes) is not a valid slot name", tc.link.Name(), slot, len(slot))
		}
		if tc.want != "" && slot != tc.want {
			t.Errorf("%s: slot %q, want %q", tc.link.Name(), slot, tc.want)
		}
		if tc.want == "" && (len(slot) != 63 || !strings.HasPrefix(slot, "pgmesh_"+tc.link.Up[:20])) {
			t.Errorf("%s: hashed slot %q should be 63 bytes starting with pgmesh_ and the upstream", tc.link.Name(), slot)
		}
		if slot != tc.link.Slot() {
			t.Errorf("%s: slot name is not deterministic", tc.link.Name())
		}
		if other, dup := seen[slot]; dup {
			t.Errorf("links %s and %s share slot %s", other.Name(), tc.link.Name(), slot)
		}
		seen[slot] = tc.link
	}
}

func TestFullMesh(t *testing.T) {
	got := FullMesh([]string{"a", "b", "c"})
	want := []Link{{"a", "b"}, {"a", "c"}, {"b", "a"}, {"b", "c"}, {"c", "a"}, {"c", "b"}}
	if !slices.Equal(got, want) {
		t.Errorf("FullMesh = %v, want %v", got, want)
	}
	if in := Inbound(got, "b"); !slices.Equal(in, []Link{{"a", "b"}, {"c", "b"}}) {
		t.Errorf("Inbound(b) = %v", in)
	}
	if out := Outbound(got, "b"); !slices.Equal(out, []Link{{"b", "a"}, {"b", "c"}}) {
		t.Errorf("Outbound(b) = %v", out)
	}
	if n := len(FullMesh(names(12))); n != 12*11 {
		t.Errorf("FullMesh of 12 nodes has %d links, want 132", n)
	}
}

func TestProve(t *testing.T) {
	chain := []Link{{"a", "b"}, {"b", "c"}}
	triangle := FullMesh([]string{"a", "b", "c"})
	tests := []struct {
		name  string
		nodes []string
		plan  Plan
		want  []string // substrings of the error; nil = proven
	}{
		{"full mesh 2", names(2), Plan{Links: FullMesh(names(2))}, nil},
		{"full mesh 3", names(3), Plan{Links: FullMesh(names(3))}, nil},
		{"full mesh 12", names(12), Plan{Links: FullMesh(names(12))}, nil},
		{"single node", names(1), Plan{}, nil},
		{"chain without forwarding", []string{"a", "b", "c"}, Plan{Links: chain},
			[]string{"c never receives changes from a", "a never receives changes from b", "b never receives changes from c"}},
		// Forwarding fixes a->c (see TestProveOneWayChain), but a one-way
		// chain never brings b and c's changes back to a.
		{"one-way chain with forwarding", []string{"a", "b", "c"},
			Plan{Links: chain, Forward: map[string][]string{"b->c": {"a"}}},
			[]string{"a never receives changes from b", "a never receives changes from c", "b never receives changes from c"}},
		{"bidirectional chain with forwarding", []string{"a", "b", "c"},
			Plan{
				Links:   []Link{{"a", "b"}, {"b", "c"}, {"c", "b"}, {"b", "a"}},
				Forward: map[string][]string{"b->c": {"a"}, "b->a": {"c"}},
			}, nil},
		{"star through a hub", []string{"hub", "x", "y", "z"},
			Plan{
				Links: []Link{{"x", "hub"}, {"y", "hub"}, {"z", "hub"}, {"hub", "x"}, {"hub", "y"}, {"hub", "z"}},
				Forward: map[string][]string{
					"hub->x": {"y", "z"}, "hub->y": {"x", "z"}, "hub->z": {"x", "y"},
				},
			}, nil},
		{"triangle plus forwarding", []string{"a", "b", "c"},
			Plan{Links: triangle, Forward: map[string][]string{"b->c": {"a"}}},
			[]string{"c receives changes from a 2 times (paths a->c, a->b->c)"}},
		{"forwarding back to the source", []string{"a", "b"},
			Plan{Links: FullMesh([]string{"a", "b"}), Forward: map[string][]string{"b->a": {"a"}}},
			[]string{"changes from a loop back to a via a->b->a"}},
		{"unknown node", []string{"a", "b"}, Plan{Links: []Link{{"a", "b"}, {"b", "z"}}}, []string{"link b->z: unknown node"}},
		{"self link", []string{"a"}, Plan{Links: []Link{{"a", "a"}}}, []string{"link a->a: a node cannot replicate from itself"}},
		{"duplicate link", []string{"a", "b"}, Plan{Links: []Link{{"a", "b"}, {"b", "a"}, {"a", "b"}}}, []string{"link a->b is listed twice"}},
		{"forwarding on a missing link", []string{"a", "b"},
			Plan{Links: FullMesh([]string{"a", "b"}), Forward: map[string][]string{"a->c": {"b"}}},
			[]string{"forwarding rule for a->c, which is not a link of the plan"}},
		{"slot clash", []string{"a_b", "c", "a", "b_c"}, Plan{Links: FullMesh([]string{"a_b", "c", "a", "b_c"})},
			[]string{"links a_b->c and a->b_c would both use slot pgmesh_a_b_c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Prove(tc.nodes, tc.plan)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Prove: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Prove succeeded, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}

		})
	}
}

// TestProveOneWayChain checks that forwarding on b->c delivers a's changes to
// c: of the chain's failures, only the missing way back remains.
func TestProveOneWayChain(t *testing.T) {
	nodes := []string{"a", "b", "c"}
	chain := []Link{{"a", "b"}, {"b", "c"}}
	without := Prove(nodes, Plan{Links: chain})
	with := Prove(nodes, Plan{Links: chain, Forward: map[string][]string{"b->c": {"a"}}})
	if without == nil || !strings.Contains(without.Error(), "c never receives changes from a") {
		t.Errorf("without forwarding: %v, want c never receives changes from a", without)
	}
	if with == nil || strings.Contains(with.Error(), "from a") {
		t.Errorf("with forwarding: %v, want only the way back to fail", with)
	}
}

func TestCarries(t *testing.T) {
	p := Plan{Links: []Link{{"a", "b"}, {"b", "c"}}, Forward: map[string][]string{"b->c": {"a"}}}
	for _, tc := range []struct {
		link   Link
		origin string
		want   bool
	}{
		{Link{"a", "b"}, "a", true},
		{Link{"a", "b"}, "c", false},
		{Link{"b", "c"}, "b", true},
		{Link{"b", "c"}, "a", true},
		{Link{"b", "c"}, "c", false},
	} {
		if got := p.Carries(tc.link, tc.origin); got != tc.want {
			t.Errorf("Carries(%s, %s) = %v, want %v", tc.link.Name(), tc.origin, got, tc.want)
		}
	}
}
