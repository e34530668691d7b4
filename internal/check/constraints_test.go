package check

import (
	"strings"
	"testing"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/conflict"
)

func TestConstraintFindings(t *testing.T) {
	eq := func(col string) conflict.Elem { return conflict.Elem{Column: col, Op: "="} }
	tbl := conflict.Table{Schema: "public", Name: "member", Key: []string{"id"}, Constraints: []conflict.Constraint{
		{Name: "member_email_key", Elems: []conflict.Elem{eq("email")}, Columns: []string{"email"}},
		{Name: "member_lower", Elems: []conflict.Elem{{Expr: "lower(email)", Op: "="}}, Columns: []string{"email"}},
		{Name: "member_captain", Elems: []conflict.Elem{eq("team")}, Pred: "active", Columns: []string{"team", "active"}},
		{Name: "member_slot", Exclusion: true, Elems: []conflict.Elem{{Column: "slot", Op: "OPERATOR(pg_catalog.&&)"}}, Columns: []string{"slot"}},
		{Name: "member_seat", Deferrable: true, Elems: []conflict.Elem{eq("seat")}, Columns: []string{"seat"}},
	}}
	fs := constraintFindings("n1", tbl)
	want := []string{
		"unique index member_lower (lower(email)): a remote row that collides with a local row under it is a unique_conflict: the newer row wins",
		"unique index member_captain (team) WHERE active: a remote row",
		"exclusion constraint member_slot (slot WITH &&): a remote row",
		"unique index member_seat (seat) DEFERRABLE: checked for the rows of each remote transaction when it ends",
	}
	if len(fs) != len(want) {
		t.Fatalf("findings %+v, want %d (plain unique columns are not listed)", fs, len(want))
	}
	for i, w := range want {
		if fs[i].Status != Pass || fs[i].Object != "public.member" || !strings.HasPrefix(fs[i].Message, w) {
			t.Errorf("finding %d: %s %s %q, want PASS public.member %q…", i, fs[i].Status, fs[i].Object, fs[i].Message, w)
		}
	}
	tbl.Policy = config.PolicyError
	if fs := constraintFindings("n1", tbl); !strings.Contains(fs[0].Message, "the link stops") {
		t.Errorf("under policy error: %q", fs[0].Message)
	}
}
