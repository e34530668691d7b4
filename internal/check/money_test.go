package check

import (
	"strings"
	"testing"
)

// TestMoneyFindings: the check says nothing without money columns, passes
// when every node formats money alike, and fails the odd nodes out when
// their lc_monetary gives money another currency or other fraction digits
// (the formats are what en_US.UTF-8, de_DE.UTF-8 and ja_JP.UTF-8 print).
func TestMoneyFindings(t *testing.T) {
	us := func(name string, cols ...string) moneyNode {
		return moneyNode{name: name, lcMonetary: "en_US.UTF-8", probe: "-$1,234,567.89", columns: cols}
	}
	de := func(name string, cols ...string) moneyNode {
		return moneyNode{name: name, lcMonetary: "de_DE.UTF-8", probe: "-1.234.567,89 €", columns: cols}
	}
	jp := func(name string, cols ...string) moneyNode {
		return moneyNode{name: name, lcMonetary: "ja_JP.UTF-8", probe: "-￥1,234,568", columns: cols}
	}
	tests := []struct {
		name     string
		nodes    []moneyNode
		want     []Status
		failOn   []string
		inFail   []string // substrings of every FAIL's message
		inFix    string
		inObject string
	}{
		{name: "no money columns, locales differ", nodes: []moneyNode{us("n1"), jp("n2")}},
		{name: "money, same format everywhere", nodes: []moneyNode{us("n1", "public.t.price"), us("n2", "public.t.price")},
			want: []Status{Pass}, inObject: "public.t.price"},
		{name: "money on one node only still counts", nodes: []moneyNode{us("n1"), de("n2", "public.t.price")},
			want: []Status{Fail}, failOn: []string{"n2"}, inFail: []string{"n1: lc_monetary en_US.UTF-8", "n2: lc_monetary de_DE.UTF-8", "integer count"},
			inFix: "lc_monetary = 'en_US.UTF-8'"},
		{name: "odd node out", nodes: []moneyNode{us("n1", `public.t.price`), jp("n2", `public.t.price`), us("n3", `public.t.price`)},
			want: []Status{Fail}, failOn: []string{"n2"}, inFail: []string{"-￥1,234,568", "-$1,234,567.89"}, inFix: "numeric"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := moneyFindings(tt.nodes)
			if len(fs) != len(tt.want) {
				t.Fatalf("findings %+v, want statuses %v", fs, tt.want)
			}
			var failed []string
			for i, f := range fs {
				if f.Status != tt.want[i] || f.Check != "money" || !strings.Contains(f.Object, tt.inObject) {
					t.Errorf("finding %+v, want %s with object containing %q", f, tt.want[i], tt.inObject)
				}
				if f.Status != Fail {
					continue
				}
				failed = append(failed, f.Node)
				for _, s := range tt.inFail {
					if !strings.Contains(f.Message, s) {
						t.Errorf("message %q lacks %q", f.Message, s)
					}
				}
				if !strings.Contains(f.Fix, tt.inFix) {
					t.Errorf("fix %q lacks %q", f.Fix, tt.inFix)
				}
			}
			if strings.Join(failed, ",") != strings.Join(tt.failOn, ",") {
				t.Errorf("FAIL on %v, want %v", failed, tt.failOn)
			}
		})
	}
}
