package sequence

import "math/big"

// progression is the set {From, From+Step, From+2·Step, …} ∩ [From, To]:
// the ids a sequence can still generate. Step ≥ 1; empty when From > To.
type progression struct {
	From, Step, To int64
}

// progressions returns the ids c's sequence can still generate: from the
// next value to the end, plus the whole range again when it cycles.
// Descending sequences are turned around (same set, ascending).
func (c Column) progressions() []progression {
	next, ok := c.Next()
	var ps []progression
	if c.Increment > 0 {
		if ok {
			ps = append(ps, progression{next, c.Increment, c.Max})
		}
		if c.Cycle {
			ps = append(ps, progression{c.Min, c.Increment, c.Max})
		}
		return ps
	}
	d := -c.Increment
	lowest := func(from int64) int64 { // smallest value ≥ Min reached from `from` going down
		return from - (from-c.Min)/d*d
	}
	if ok {
		ps = append(ps, progression{lowest(next), d, next})
	}
	if c.Cycle {
		ps = append(ps, progression{lowest(c.Max), d, c.Max})
	}
	return ps
}

// count is the number of values in p.
func (p progression) count() *big.Int {
	if p.From > p.To {
		return new(big.Int)
	}
	n := new(big.Int).Sub(big.NewInt(p.To), big.NewInt(p.From))
	n.Quo(n, big.NewInt(p.Step))
	return n.Add(n, big.NewInt(1))
}

// common returns the smallest value in both p and q, if any. Both are
// arithmetic progressions, so by the Chinese remainder theorem they share
// values iff From_p ≡ From_q (mod gcd(Step_p, Step_q)), and then exactly the
// values x0 + k·lcm; the smallest one above both starts must not pass either
// end.
func common(p, q progression) (int64, bool) {
	if p.From > p.To || q.From > q.To {
		return 0, false
	}
	a1, d1 := big.NewInt(p.From), big.NewInt(p.Step)
	a2, d2 := big.NewInt(q.From), big.NewInt(q.Step)
	g := new(big.Int).GCD(nil, nil, d1, d2)
	diff := new(big.Int).Sub(a2, a1)
	if new(big.Int).Mod(diff, g).Sign() != 0 {
		return 0, false
	}
	// x = a1 + d1·t with d1·t ≡ a2 − a1 (mod d2), i.e.
	// t ≡ (diff/g)·inverse(d1/g) (mod d2/g).
	m := new(big.Int).Quo(d2, g)
	t := new(big.Int)
	if m.Cmp(big.NewInt(1)) != 0 {
		inv := new(big.Int).ModInverse(new(big.Int).Quo(d1, g), m)
		t.Mul(new(big.Int).Quo(diff, g), inv)
		t.Mod(t, m)
	}
	x := new(big.Int).Add(a1, new(big.Int).Mul(d1, t))
	lcm := new(big.Int).Mul(new(big.Int).Quo(d1, g), d2)
	lower := a1
	if a2.Cmp(a1) > 0 {
		lower = a2
	}
	if x.Cmp(lower) < 0 {
		// k = ceil((lower − x) / lcm)
		k := new(big.Int).Sub(lower, x)
		k.Add(k, new(big.Int).Sub(lcm, big.NewInt(1)))
		k.Quo(k, lcm)
		x.Add(x, k.Mul(k, lcm))
	}
	upper := p.To
	if q.To < upper {
		upper = q.To
	}
	if x.Cmp(big.NewInt(upper)) > 0 {
		return 0, false
	}
	return x.Int64(), true
}
