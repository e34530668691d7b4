// Package diff compares the replicated tables of all nodes and repairs the
// rows that differ.
//
// Comparison runs inside PostgreSQL, one scan per node per level and all
// nodes in parallel: each row gets a 64-bit hash (the XOR of per-column
// hashes), and rows are summarised by the exact sum of their hashes and
// their count, which needs no sort. Level 0 sums the whole table; if nodes
// disagree, rows are grouped into hash buckets of their key and only
// differing buckets are split further or read down to keys. Tables whose
// only identity is the whole row are compared as multisets (each distinct
// row with its number of copies).
//
// Consistency under writes: the WAL position of every node is taken before
// any scan. When differences are found, Compare waits until every link has
// applied its upstream up to that position (pgmesh origins and slots; plain
// databases have none and are not waited for), then reads the differing keys
// again on all nodes, a few times with a pause, and reports only keys that
// still differ. What remains possible: a key written continuously during
// every re-check can still be reported (it is in flight, not divergent); a
// divergence that is overwritten by a newer write during the diff is not
// reported (the write repaired it). Values that are equal but print
// differently (numeric 1.0 and 1.00) hash alike and are not differences.
// In topologies with forwarding, one wait covers direct links only.
package diff

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Options tunes Compare. The zero value is usable.
type Options struct {
	Tables []string // "schema.table" or "table"; none = every replicated table
	Limit  int      // differing keys listed per table (default 100); the total is always counted
	// WaitTimeout bounds the wait for links to apply up to the start
	// positions (default 60s; negative = do not wait).
	WaitTimeout  time.Duration
	Rechecks     int           // re-reads of differing keys (default 3)
	RecheckPause time.Duration // pause between re-reads (default 500ms)
	// Progress receives a line every few seconds for tables that take
	// longer than ProgressAfter (default 3s); nil = silent.
	Progress      io.Writer
	ProgressAfter time.Duration
}

func (o *Options) defaults() {
	if o.Limit <= 0 {
		o.Limit = 100
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = time.Minute
	}
	if o.Rechecks <= 0 {
		o.Rechecks = 3
	}
	if o.RecheckPause <= 0 {
		o.RecheckPause = 500 * time.Millisecond
	}
	if o.ProgressAfter <= 0 {
		o.ProgressAfter = 3 * time.Second
	}
}

// Report is the result of Compare.
type Report struct {
	Nodes  []string      `json:"nodes"`
	Tables []TableReport `json:"tables"`
	Notes  []string      `json:"notes,omitempty"`
}

// Identical reports whether no table differs.
func (r *Report) Identical() bool {
	for _, t := range r.Tables {
		if t.Differences > 0 {
			return false
		}
	}
	return true
}

// TableReport is the comparison of one table.
type TableReport struct {
	Table      string           `json:"table"`
	Identity   string           `json:"identity"` // "primary key", "index NAME" or "full (multiset)"
	KeyColumns []string         `json:"key_columns,omitempty"`
	Rows       map[string]int64 `json:"rows"` // per node, at scan time
	// Differences counts differing keys (multiset: distinct rows whose
	// number of copies differs); Keys lists the first Limit of them.
	Differences int       `json:"differences"`
	Keys        []KeyDiff `json:"keys,omitempty"`
	Seconds     float64   `json:"seconds"`
}

// KeyDiff is one differing key and the versions the nodes hold.
type KeyDiff struct {
	Key      []string  `json:"key,omitempty"` // key column values as text
	Row      string    `json:"row,omitempty"` // multiset: the row as text
	Versions []Version `json:"versions"`
}

// Version is what a group of nodes holds for a key: the same row (same
// hash), or nothing. For multisets, the same number of copies.
type Version struct {
	Hash    string   `json:"hash,omitempty"`   // row hash, hex
	Copies  int64    `json:"copies,omitempty"` // multiset only
	Missing bool     `json:"missing,omitempty"`
	Nodes   []string `json:"nodes"`
}

// Compare compares the tables on all nodes of cfg.
func Compare(ctx context.Context, cfg *config.Config, opts Options) (*Report, error) {
	opts.defaults()
	s, err := open(ctx, cfg, "pgmesh diff")
	if err != nil {
		return nil, err
	}
	defer s.close()
	start, err := s.walPositions(ctx)
	if err != nil {
		return nil, err
	}
	tables, err := s.tables(ctx, cfg, opts.Tables)
	if err != nil {
		return nil, err
	}
	rep := &Report{Nodes: s.names}
	waited := false
	for _, t := range tables {
		began := time.Now()
		rows, diffs, err := s.diffTable(ctx, t, &opts, start, &waited, &rep.Notes)
		if err != nil {
			return nil, err
		}
		rep.Tables = append(rep.Tables, s.tableReport(t, rows, diffs, opts.Limit, time.Since(began)))
	}
	return rep, nil
}

// diffTable scans t and re-checks what differs after the nodes have caught
// up with the start positions (waiting at most once per Compare).
func (s *session) diffTable(ctx context.Context, t *table, opts *Options, start []string, waited *bool, notes *[]string) ([]int64, []*rowDiff, error) {
	phase := s.progress(ctx, t, opts)
	defer phase("")
	rows, diffs, err := s.scanTable(ctx, t, phase)
	if err != nil || len(diffs) == 0 {
		return rows, diffs, err
	}
	if !*waited {
		*waited = true
		phase("waiting for links to apply up to the start position")
		note, err := s.waitApplied(ctx, start, opts.WaitTimeout)
		if err != nil {
			return nil, nil, err
		}
		if note != "" {
			*notes = append(*notes, note)
		}
	}
	for i := 0; i < opts.Rechecks && len(diffs) > 0; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-time.After(opts.RecheckPause):
			}
		}
		phase(fmt.Sprintf("re-checking %d keys", len(diffs)))
		if diffs, err = s.recheck(ctx, t, diffs); err != nil {
			return nil, nil, err
		}
	}
	return rows, diffs, nil
}

// progress returns a function that sets the current phase of t; after
// ProgressAfter, the phase is printed every few seconds. phase("") stops it.
func (s *session) progress(ctx context.Context, t *table, opts *Options) func(string) {
	if opts.Progress == nil {
		return func(string) {}
	}
	var cur atomic.Value
	cur.Store("starting")
	done := make(chan struct{})
	began := time.Now()
	go func() {
		timer := time.NewTimer(opts.ProgressAfter)
		defer timer.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-timer.C:
				fmt.Fprintf(opts.Progress, "diff %s: %s (%s)\n", t.QualifiedName(), cur.Load(), time.Since(began).Round(time.Second))
				timer.Reset(2 * time.Second)
			}
		}
	}()
	var stopped bool
	return func(p string) {
		if p == "" {
			if !stopped {
				stopped = true
				close(done)
			}
			return
		}
		cur.Store(p)
	}
}

func (s *session) tableReport(t *table, rows []int64, diffs []*rowDiff, limit int, took time.Duration) TableReport {
	tr := TableReport{
		Table:       t.QualifiedName(),
		Identity:    t.identity(),
		KeyColumns:  t.KeyColumns,
		Rows:        map[string]int64{},
		Differences: len(diffs),
		Seconds:     took.Seconds(),
	}
	for i, n := range s.names {
		tr.Rows[n] = rows[i]
	}
	for _, d := range diffs[:min(limit, len(diffs))] {
		tr.Keys = append(tr.Keys, s.keyDiff(d))
	}
	return tr
}

// keyDiff groups the nodes by what they hold, in config order of the first
// node of each group, missing last.
func (s *session) keyDiff(d *rowDiff) KeyDiff {
	kd := KeyDiff{Key: d.Key, Row: d.Row}
	var missing []string
	index := map[string]int{}
	for i, n := range s.names {
		var id string
		v := Version{}
		switch {
		case d.Key == nil && d.Count[i] == 0, d.Key != nil && !d.Present[i]:
			missing = append(missing, n)
			continue
		case d.Key == nil:
			v.Hash, v.Copies = hexHash(d.RowHash), d.Count[i]
			id = strconv.FormatInt(d.Count[i], 10)
		default:
			v.Hash = hexHash(d.Hash[i])
			id = v.Hash
		}
		if j, ok := index[id]; ok {
			kd.Versions[j].Nodes = append(kd.Versions[j].Nodes, n)
			continue
		}
		index[id] = len(kd.Versions)
		v.Nodes = []string{n}
		kd.Versions = append(kd.Versions, v)
	}
	if missing != nil {
		kd.Versions = append(kd.Versions, Version{Missing: true, Nodes: missing})
	}
	return kd
}

func hexHash(h int64) string { return fmt.Sprintf("%016x", uint64(h)) }

// walPositions reads every node's current WAL position.
func (s *session) walPositions(ctx context.Context) ([]string, error) {
	lsn := make([]string, len(s.names))
	err := s.each(ctx, func(ctx context.Context, i int, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn[i]); err != nil {
			return fmt.Errorf("read WAL position: %w", err)
		}
		return nil
	})
	return lsn, err
}

// waitApplied waits until every link up→down has applied up to start[up]:
// the downstream's origin progress or the upstream's slot confirmation is
// there (an idle link confirms positions without committing anything, so
// the origin alone could wait forever). Links with neither origin nor slot
// do not exist (plain databases) and are not waited for. A timeout is not an
// error: the re-check still runs, and the returned note says so.
func (s *session) waitApplied(ctx context.Context, start []string, timeout time.Duration) (string, error) {
	if timeout < 0 {
		return "did not wait for replication (disabled)", nil
	}
	idx := map[string]int{}
	for i, n := range s.names {
		idx[n] = i
	}
	pending := topology.FullMesh(s.names)
	deadline := time.Now().Add(timeout)
	present := 0
	for first := true; ; first = false {
		var next []topology.Link
		for _, l := range pending {
			up, down := idx[l.Up], idx[l.Down]
			var slotExists, slotDone bool
			// A link applies under one origin per apply worker: its
			// progress is the greatest of theirs.
			origins, err := origin.List(ctx, s.conns[down], l.Up)
			if err != nil {
				return "", fmt.Errorf("node %s: %w", l.Down, err)
			}
			originExists := len(origins) > 0
			progress, err := origin.Progress(ctx, s.conns[down], l.Up, false)
			if err != nil {
				return "", fmt.Errorf("node %s: %w", l.Down, err)
			}
			want, err := pglogrepl.ParseLSN(start[up])
			if err != nil {
				return "", fmt.Errorf("node %s: start position %q: %w", l.Up, start[up], err)
			}
			originDone := originExists && progress >= want
			err = s.conns[up].QueryRow(ctx, `
SELECT count(*) > 0, COALESCE(bool_or(confirmed_flush_lsn >= $2::pg_lsn), false)
  FROM pg_replication_slots WHERE slot_name = $1`, l.Slot(), start[up]).Scan(&slotExists, &slotDone)
			if err != nil {
				return "", fmt.Errorf("node %s: slot %s position: %w", l.Up, l.Slot(), err)
			}
			if first && (originExists || slotExists) {
				present++
			}
			if (originExists || slotExists) && !originDone && !slotDone {
				next = append(next, l)
			}
		}
		pending = next
		if present == 0 {
			return "no replication links found: compared without waiting for replication", nil
		}
		if len(pending) == 0 {
			return "", nil
		}
		if time.Now().After(deadline) {
			names := make([]string, len(pending))
			for i, l := range pending {
				names[i] = l.Name()
			}
			slices.Sort(names)
			return fmt.Sprintf("links %v had not applied up to the start position after %s: differences may include rows in flight", names, timeout), nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
