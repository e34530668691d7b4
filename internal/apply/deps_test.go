package apply

import (
	"context"
	"fmt"
	"testing"

	"github.com/pgmesh/pgmesh/internal/stream"
)

// The dependency tracker, change by change: which earlier transaction each
// change must wait for. Tables are described as the catalog would.
func TestDeps(t *testing.T) {
	k := rel(1, "k", 'd', "*id", "v")
	u := rel(2, "u", 'd', "*id", "email")
	uf := rel(3, "uf", 'f', "id", "email")
	kl := rel(4, "kl", 'f', "a", "b")
	parent := rel(5, "parent", 'd', "*id")
	child := rel(6, "child", 'd', "*id", "pid")
	other := rel(7, "other", 'd', "*id")
	idx := func(table string, cols ...int) depIndex {
		names := map[string][]string{"public.k": {"id", "v"}, "public.u": {"id", "email"}, "public.uf": {"id", "email"},
			"public.parent": {"id"}, "public.child": {"id", "pid"}}[table]
		var n []string
		for _, c := range cols {
			n = append(n, names[c])
		}
		di, _ := indexOf(table, n, n, map[string]int{names[0]: 0, names[len(names)-1]: len(names) - 1})
		return di
	}
	rels := map[*stream.Relation]*depRel{
		k:      {table: "public.k", ident: ptr(idx("public.k", 0))},
		u:      {table: "public.u", ident: ptr(idx("public.u", 0)), uniques: []depIndex{idx("public.u", 1)}},
		uf:     {table: "public.uf", ident: ptr(idx("public.uf", 0)), uniques: []depIndex{idx("public.uf", 1)}},
		kl:     {table: "public.kl"},
		parent: {table: "public.parent", ident: ptr(idx("public.parent", 0))},
		child: {table: "public.child", ident: ptr(idx("public.child", 0)),
			fks: []depIndex{func() depIndex {
				d, _ := indexOf("public.parent", []string{"id"}, []string{"pid"}, map[string]int{"pid": 1})
				return d
			}()}},
		other: {table: "public.other", whole: true},
	}
	truncate := func(cascade bool, rs ...*stream.Relation) *stream.Change {
		return &stream.Change{Op: stream.Truncate, TruncateRels: rs, Cascade: cascade}
	}
	type step struct {
		c    *stream.Change
		want int // transaction (1-based) the change waits for, 0: none
	}
	cases := []struct {
		name  string
		steps []step // one transaction each
	}{
		{"same key", []step{{ins(k, "1", "a"), 0}, {upd(k, nil, "1", "b"), 1}, {ins(k, "2", "a"), 0}, {del(k, "1", "∅"), 2}}},
		{"key change touches both keys", []step{{ins(k, "1", "a"), 0}, {ins(k, "2", "a"), 0}, {upd(k, tup("1", "∅"), "3", "a"), 1}, {ins(k, "3", "x"), 3}}},
		{"unique value freed by an update without the old row", []step{
			{upd(u, nil, "1", "y"), 0}, {ins(u, "2", "x"), 1}, {ins(u, "3", "z"), 1}}},
		{"unique value freed with the whole old row", []step{
			{upd(uf, tup("1", "x"), "1", "y"), 0}, {ins(uf, "2", "z"), 0}, {ins(uf, "3", "x"), 1}, {ins(uf, "4", "y"), 1}}},
		{"unique value of an insert", []step{{ins(u, "1", "x"), 0}, {ins(u, "2", "x"), 1}, {ins(u, "3", "y"), 0}}},
		{"table without a key", []step{
			{ins(kl, "1", "x"), 0}, {ins(kl, "1", "x"), 0}, {del(kl, "1", "x"), 2}, {ins(kl, "2", "y"), 3}}},
		{"truncate", []step{{ins(k, "1", "a"), 0}, {truncate(false, k), 1}, {ins(k, "2", "a"), 2}, {ins(u, "1", "x"), 0}}},
		{"truncate cascade", []step{{ins(u, "1", "x"), 0}, {truncate(true, k), 1}, {ins(u, "2", "y"), 2}}},
		{"whole table", []step{{ins(other, "1"), 0}, {ins(other, "2"), 1}, {ins(k, "1", "a"), 0}}},
		// A later insert into the table waits for a transaction that may
		// hold one of its key gates exclusively: a delete, a key move.
		{"key gates", []step{
			{ins(k, "1", "a"), 0}, {del(k, "5", "∅"), 0}, {ins(k, "2", "b"), 2}, {ins(k, "3", "c"), 2},
			{upd(k, tup("3", "∅"), "4", "c"), 4}, {upd(k, nil, "2", "x"), 3}, {ins(k, "6", "f"), 5}, {ins(u, "1", "x"), 0}}},
		{"foreign key", []step{
			{ins(parent, "1"), 0}, {ins(child, "10", "1"), 1}, {ins(child, "11", "2"), 0}, {del(parent, "1"), 2}, {ins(child, "12", "∅"), 0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &Applier{deps: newTracker(), depRels: rels}
			var txns []*txn
			for i, s := range tc.steps {
				tx := &txn{seq: uint64(i + 1)}
				if i > 0 {
					tx.pred = txns[i-1]
				}
				txns = append(txns, tx)
				got, err := a.changeDeps(context.Background(), tx, s.c)
				if err != nil {
					t.Fatal(err)
				}
				want := (*txn)(nil)
				if s.want > 0 {
					want = txns[s.want-1]
				}
				if got != want {
					t.Errorf("step %d (%c): waits for %s, want %s", i+1, s.c.Op, seqOf(got), seqOf(want))
				}
			}
		})
	}

	// A transaction with more keys than the tracker keeps makes every
	// later change wait for it.
	a := &Applier{deps: newTracker(), depRels: rels}
	big := &txn{seq: 1}
	for i := range maxTxnKeys + 10 {
		if _, err := a.changeDeps(context.Background(), big, ins(k, fmt.Sprint(i), "a")); err != nil {
			t.Fatal(err)
		}
	}
	if len(a.deps.last) > maxTxnKeys {
		t.Errorf("%d keys kept for one transaction, want at most %d", len(a.deps.last), maxTxnKeys)
	}
	if got, _ := a.changeDeps(context.Background(), &txn{seq: 2, pred: big}, ins(u, "1", "x")); got != big {
		t.Errorf("a change after a huge transaction waits for %s, want 1", seqOf(got))
	}
}

func ptr[T any](v T) *T { return &v }

func seqOf(t *txn) string {
	if t == nil {
		return "none"
	}
	return fmt.Sprint(t.seq)
}
