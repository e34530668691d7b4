package sequence

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestCommon(t *testing.T) {
	tests := []struct {
		name   string
		p, q   progression
		want   int64
		wantOK bool
	}{
		{"plain sequences on two nodes", progression{1, 1, 100}, progression{1, 1, 100}, 1, true},
		{"step classes differ", progression{1, 16, 1 << 40}, progression{2, 16, 1 << 40}, 0, false},
		{"step same class", progression{17, 16, 1 << 40}, progression{33, 16, 1 << 40}, 33, true},
		{"different steps meet by CRT", progression{1, 4, 100}, progression{3, 6, 100}, 9, true},
		{"different steps never meet", progression{1, 4, 100}, progression{2, 6, 100}, 0, false},
		{"disjoint ranges", progression{1, 1, 100}, progression{101, 1, 200}, 0, false},
		{"touching ranges", progression{1, 1, 100}, progression{100, 1, 200}, 100, true},
		{"meet only past an end", progression{1, 4, 8}, progression{3, 6, 8}, 0, false},
		{"empty", progression{5, 1, 4}, progression{1, 1, 10}, 0, false},
		{"bigint range edges", progression{1, 1, math.MaxInt64 / 2}, progression{math.MaxInt64 / 2, 1, math.MaxInt64}, math.MaxInt64 / 2, true},
		{"huge steps", progression{math.MaxInt64 - 10, math.MaxInt64 / 3, math.MaxInt64}, progression{math.MaxInt64 - 10, 7, math.MaxInt64}, math.MaxInt64 - 10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, swap := range []bool{false, true} {
				p, q := tt.p, tt.q
				if swap {
					p, q = q, p
				}
				got, ok := common(p, q)
				if ok != tt.wantOK || got != tt.want {
					t.Errorf("common(%v, %v) = %d, %v; want %d, %v", p, q, got, ok, tt.want, tt.wantOK)
				}
			}
		})
	}
}

// TestCommonBruteForce compares common with enumeration on small sets.
func TestCommonBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		p := progression{r.Int64N(60), 1 + r.Int64N(12), r.Int64N(120)}
		q := progression{r.Int64N(60), 1 + r.Int64N(12), r.Int64N(120)}
		in := map[int64]bool{}
		for v := p.From; v <= p.To; v += p.Step {
			in[v] = true
		}
		var want int64
		wantOK := false
		for v := q.From; v <= q.To; v += q.Step {
			if in[v] {
				want, wantOK = v, true
				break
			}
		}
		got, ok := common(p, q)
		if ok != wantOK || ok && got != want {
			t.Fatalf("common(%v, %v) = %d, %v; enumeration says %d, %v", p, q, got, ok, want, wantOK)
		}
		if n := p.count().Int64(); n != int64(len(in)) {
			t.Fatalf("count(%v) = %d, enumeration says %d", p, n, len(in))
		}
	}
}

func TestProgressions(t *testing.T) {
	tests := []struct {
		name string
		c    Column
		want []progression
	}{
		{"fresh serial", Column{Increment: 1, Min: 1, Max: math.MaxInt32, LastValue: 1}, []progression{{1, 1, math.MaxInt32}}},
		{"used step", Column{Increment: 16, Min: 1, Max: 1000, LastValue: 33, IsCalled: true}, []progression{{49, 16, 1000}}},
		{"exhausted", Column{Increment: 1, Min: 1, Max: 10, LastValue: 10, IsCalled: true}, nil},
		{"cycling", Column{Increment: 1, Min: 1, Max: 10, LastValue: 10, IsCalled: true, Cycle: true}, []progression{{1, 1, 10}}},
		{"descending", Column{Increment: -3, Min: 1, Max: 100, LastValue: 20, IsCalled: true}, []progression{{2, 3, 17}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.c.progressions()
			if len(got) != len(tt.want) {
				t.Fatalf("progressions = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("progressions = %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestClashSnowflake(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	id := func(n int) *int { return &n }
	snow := func(node int) generator {
		return generator{node: "n", nodeID: id(node), col: Column{Strategy: Snowflake, Increment: 1, Min: 1, Max: math.MaxInt64}}
	}
	plain := func(max int64) generator {
		return generator{node: "p", col: Column{Strategy: None, Increment: 1, Min: 1, Max: max, LastValue: 1}}
	}
	tests := []struct {
		name  string
		a, b  generator
		clash bool
	}{
		{"distinct node ids", snow(1), snow(2), false},
		{"same node id", snow(3), snow(3), true},
		{"integer serial stays below snowflake ids", snow(1), plain(math.MaxInt32), false},
		{"bigint serial can reach snowflake ids", snow(1), plain(math.MaxInt64), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, pair := range [][2]generator{{tt.a, tt.b}, {tt.b, tt.a}} {
				if _, got := clash(pair[0], pair[1], now); got != tt.clash {
					t.Errorf("clash = %v, want %v", got, tt.clash)
				}
			}
		})
	}
}

func TestRangeBlocks(t *testing.T) {
	for _, typ := range []string{"smallint", "integer", "bigint"} {
		for _, n := range []int{1, 3, 16, 1023} {
			prevHi := int64(0)
			for k := 0; k < n; k++ {
				lo, hi := rangeBlock(typ, k, n)
				if lo != prevHi+1 || hi < lo || hi > typeMax(typ) {
					t.Fatalf("%s/%d block %d = %d..%d after %d", typ, n, k, lo, hi, prevHi)
				}
				prevHi = hi
			}
		}
	}
}

func TestSnowflakeParts(t *testing.T) {
	at := time.Date(2025, 6, 1, 12, 0, 0, 123e6, time.UTC)
	ms := at.Sub(SnowflakeEpoch).Milliseconds()
	gotAt, node, counter := SnowflakeParts(ms<<22 | 77<<12 | 4095)
	if !gotAt.Equal(at) || node != 77 || counter != 4095 {
		t.Fatalf("SnowflakeParts = %v, %d, %d", gotAt, node, counter)
	}
}
