package diff

import (
	"context"
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// rowDiff is one key (or, for a multiset, one distinct row) and what every
// node holds for it. Index i of the slices is node i in config order.
type rowDiff struct {
	Key     []string // key columns as text; multiset: nil
	Row     string   // multiset: the row as text, for people
	RowHash int64    // multiset: the row hash shared by its copies
	Present []bool   // keyed: the node has the key
	Hash    []int64  // keyed: row hash on that node
	Count   []int64  // multiset: copies on that node
}

func (d *rowDiff) id() string {
	if d.Key == nil {
		return fmt.Sprint(d.RowHash)
	}
	return strings.Join(d.Key, "\x00")
}

// differs reports whether the nodes disagree on this key.
func (d *rowDiff) differs() bool {
	if d.Key == nil {
		for _, c := range d.Count[1:] {
			if c != d.Count[0] {
				return true
			}
		}
		return false
	}
	for i := 1; i < len(d.Present); i++ {
		if d.Present[i] != d.Present[0] || d.Present[i] && d.Hash[i] != d.Hash[0] {
			return true
		}
	}
	return false
}

// bucket is the order-independent summary of a set of rows.
type bucket struct {
	Rows int64
	Sum  string // sum of row hashes, exact (numeric)
}

const (
	// leafRows is how many rows the differing buckets may hold before the
	// rows themselves (key and hash) are fetched instead of splitting again.
	leafRows = 50000
	// rowsPerBucket sizes the first split: about this many rows per bucket.
	// Few enough buckets that the HashAggregate stays small in memory, and
	// small enough buckets that reading a differing one is cheap.
	rowsPerBucket = 256
	maxBits       = 48
)

// scanTable finds the keys that differ, with one scan per node per level:
// level 0 sums the whole table; then rows are grouped into hash buckets of
// their key (no sort: a HashAggregate), and only the buckets that differ are
// split further or, when small enough, read down to keys.
func (s *session) scanTable(ctx context.Context, t *table, phase func(string)) (rows []int64, diffs []*rowDiff, err error) {
	n := len(s.names)
	rh, kh := t.rowHash(), t.keyHash()
	rows = make([]int64, n)

	phase("summing")
	total := make([]bucket, n)
	q := fmt.Sprintf("SELECT count(*), COALESCE(sum(%s), 0)::text FROM %s AS %s", rh, t.Ident(), alias)
	err = s.each(ctx, func(ctx context.Context, i int, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, q).Scan(&total[i].Rows, &total[i].Sum); err != nil {
			return fmt.Errorf("table %s: sum row hashes: %w", t.QualifiedName(), err)
		}
		rows[i] = total[i].Rows
		return nil
	})
	if err != nil || allEqual(total) {
		return rows, nil, err
	}

	width := bits.Len64(uint64(slices.Max(rows)/rowsPerBucket)) + 1
	var prevMask int64
	var prev []int64 // differing buckets of the previous level; nil = whole table
	for level := 1; ; level++ {
		width = min(width, maxBits)
		mask := int64(1)<<width - 1
		phase(fmt.Sprintf("level %d: %d-bit buckets", level, width))
		where, args := "", []any{}
		if prev != nil {
			where = fmt.Sprintf("WHERE (%s & %d) = ANY($1::int8[])", kh, prevMask)
			args = append(args, prev)
		}
		q := fmt.Sprintf("SELECT %s & %d, count(*), sum(%s)::text FROM %s AS %s %s GROUP BY 1",
			kh, mask, rh, t.Ident(), alias, where)
		per := make([]map[int64]bucket, n)
		err := s.each(ctx, func(ctx context.Context, i int, c *pgx.Conn) error {
			per[i] = map[int64]bucket{}
			rs, err := c.Query(ctx, q, args...)
			if err != nil {
				return fmt.Errorf("table %s: bucket sums: %w", t.QualifiedName(), err)
			}
			var b int64
			var v bucket
			_, err = pgx.ForEachRow(rs, []any{&b, &v.Rows, &v.Sum}, func() error {
				per[i][b] = v
				return nil
			})
			if err != nil {
				return fmt.Errorf("table %s: bucket sums: %w", t.QualifiedName(), err)
			}
			return nil
		})
		if err != nil {
			return rows, nil, err
		}
		differing, seen, est := compareBuckets(per)
		if len(differing) == 0 {
			// Only possible when rows moved while the levels were read;
			// the re-check after the wait settles such keys anyway.
			return rows, nil, nil
		}
		// Hashing spreads differences evenly, so splitting again only pays
		// when they are few compared with the buckets.
		if est <= leafRows || len(differing)*4 > seen || width >= maxBits {
			phase(fmt.Sprintf("reading %d rows of %d buckets", est, len(differing)))
			d, err := s.leaf(ctx, t, mask, differing)
			return rows, d, err
		}
		prev, prevMask = differing, mask
		width += 12
	}
}

func allEqual(b []bucket) bool {
	for _, x := range b[1:] {
		if x != b[0] {
			return false
		}
	}
	return true
}

// compareBuckets returns the buckets on which nodes disagree, how many
// distinct buckets were seen, and an estimate of the rows they hold.
func compareBuckets(per []map[int64]bucket) (differing []int64, seen int, est int64) {
	all := map[int64]bool{}
	for _, m := range per {
		for b := range m {
			all[b] = true
		}
	}
	for b := range all {
		var most int64
		same := true
		first := per[0][b]
		for _, m := range per {
			most = max(most, m[b].Rows)
			if m[b] != first {
				same = false
			}
		}
		if !same {
			differing = append(differing, b)
			est += most
		}
	}
	slices.Sort(differing)
	return differing, len(all), est
}

// leaf reads the keys and row hashes (multiset: distinct rows and their
// counts) of the differing buckets on every node and keeps those that
// differ.
func (s *session) leaf(ctx context.Context, t *table, mask int64, buckets []int64) ([]*rowDiff, error) {
	var q string
	if t.multiset() {
		q = fmt.Sprintf("SELECT %[1]s, count(*), min(%[3]s::text) FROM %[2]s AS %[3]s WHERE (%[1]s & %[4]d) = ANY($1::int8[]) GROUP BY 1",
			t.rowHash(), t.Ident(), alias, mask)
	} else {
		q = fmt.Sprintf("SELECT %s, %s FROM %s AS %s WHERE (%s & %d) = ANY($1::int8[])",
			t.rowHash(), t.keyText(), t.Ident(), alias, t.keyHash(), mask)
	}
	return s.collect(ctx, t, q, buckets)
}

// collect runs q (which selects row hash, then key columns as text or, for
// multisets, count and row text) on every node and merges the answers by key.
func (s *session) collect(ctx context.Context, t *table, q string, args ...any) ([]*rowDiff, error) {
	n := len(s.names)
	type row struct {
		hash  int64
		key   []string
		count int64
		text  string
	}
	per := make([][]row, n)
	err := s.each(ctx, func(ctx context.Context, i int, c *pgx.Conn) error {
		rs, err := c.Query(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("table %s: read rows: %w", t.QualifiedName(), err)
		}
		defer rs.Close()
		for rs.Next() {
			var r row
			dest := []any{&r.hash, &r.count, &r.text}
			if !t.multiset() {
				r.key = make([]string, len(t.Keys))
				dest = []any{&r.hash}
				for k := range r.key {
					dest = append(dest, &r.key[k])
				}
			}
			if err := rs.Scan(dest...); err != nil {
				return fmt.Errorf("table %s: read rows: %w", t.QualifiedName(), err)
			}
			per[i] = append(per[i], r)
		}
		if err := rs.Err(); err != nil {
			return fmt.Errorf("table %s: read rows: %w", t.QualifiedName(), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	byID := map[string]*rowDiff{}
	var order []*rowDiff
	for i, rs := range per {
		for _, r := range rs {
			d := &rowDiff{Key: r.key, RowHash: r.hash, Row: r.text}
			if old, ok := byID[d.id()]; ok {
				d = old
			} else {
				if t.multiset() {
					d.Count = make([]int64, n)
				} else {
					d.Present, d.Hash = make([]bool, n), make([]int64, n)
				}
				byID[d.id()] = d
				order = append(order, d)
			}
			if t.multiset() {
				d.Count[i] = r.count
			} else {
				d.Present[i], d.Hash[i] = true, r.hash
			}
		}
	}
	var out []*rowDiff
	for _, d := range order {
		if d.differs() {
			out = append(out, d)
		}
	}
	sortDiffs(out)
	return out, nil
}

func sortDiffs(d []*rowDiff) {
	slices.SortFunc(d, func(a, b *rowDiff) int {
		if a.Key == nil {
			return strings.Compare(a.Row, b.Row)
		}
		return slices.Compare(a.Key, b.Key)
	})
}

// recheckBatch bounds the keys looked up by one query.
const recheckBatch = 1000

// recheck reads the given keys again on every node and returns those that
// still differ.
func (s *session) recheck(ctx context.Context, t *table, diffs []*rowDiff) ([]*rowDiff, error) {
	var out []*rowDiff
	for start := 0; start < len(diffs); start += recheckBatch {
		batch := diffs[start:min(start+recheckBatch, len(diffs))]
		var q string
		var args []any
		if t.multiset() {
			hashes := make([]int64, len(batch))
			for i, d := range batch {
				hashes[i] = d.RowHash
			}
			q = fmt.Sprintf("SELECT %[1]s, count(*), min(%[3]s::text) FROM %[2]s AS %[3]s WHERE %[1]s = ANY($1::int8[]) GROUP BY 1",
				t.rowHash(), t.Ident(), alias)
			args = []any{hashes}
		} else {
			q = fmt.Sprintf("SELECT %s, %s FROM %s", t.rowHash(), t.keyText(), t.keyJoin(1))
			args = keyArrays(t, batch)
		}
		got, err := s.collect(ctx, t, q, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
	}
	sortDiffs(out)
	return out, nil
}

// keyArrays turns keys into one text[] argument per key column.
func keyArrays(t *table, diffs []*rowDiff) []any {
	cols := make([][]string, len(t.Keys))
	for _, d := range diffs {
		for k := range cols {
			cols[k] = append(cols[k], d.Key[k])
		}
	}
	args := make([]any, len(cols))
	for k := range cols {
		args[k] = cols[k]
	}
	return args
}
