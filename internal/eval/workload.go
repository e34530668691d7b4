package eval

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The workload's schema, created on every node before init. accounts is
// resolved by last-update-wins; counters by delta (their totals add up);
// events get snowflake ids (sequences convert), so inserts never collide.
const (
	evalSchema = "eval"
	accounts   = "accounts"
	counters   = "counters"
	events     = "events"
)

var workloadSchema = []string{
	`CREATE SCHEMA eval`,
	`CREATE TABLE eval.accounts (id int PRIMARY KEY, val text NOT NULL, node text NOT NULL)`,
	`CREATE TABLE eval.counters (id int PRIMARY KEY, total bigint NOT NULL)`,
	// delta_columns need the old row of an update.
	`ALTER TABLE eval.counters REPLICA IDENTITY FULL`,
	`CREATE TABLE eval.events (id bigserial PRIMARY KEY, node text NOT NULL, payload text NOT NULL)`,
	// Each node writes its own row only (see heartbeats): it measures lag.
	`CREATE TABLE eval.heartbeat (node text PRIMARY KEY, at timestamptz NOT NULL)`,
}

// oracleSchema is harness machinery, created by pgmesh's role on every
// node after init: the workload runs as an application role, which has no
// privilege on schema pgmesh, yet the checker needs, in the writing
// transaction, the commit time of the delete an insert replaces (see
// accountWrite). The function does only that, for eval.accounts.
var oracleSchema = []string{
	`CREATE FUNCTION eval.replaced_delete_at(k int) RETURNS timestamptz
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgmesh.tombstone_time(t.deleted_at, t.xid) FROM pgmesh.tombstone t
       WHERE t.table_name = 'eval.accounts' AND t.key = jsonb_build_object('id', k) FOR UPDATE $$`,
	`REVOKE EXECUTE ON FUNCTION eval.replaced_delete_at(int) FROM PUBLIC`,
	`GRANT EXECUTE ON FUNCTION eval.replaced_delete_at(int) TO app`,
}

// Op is what a write did.
type Op string

const (
	OpUpsert    Op = "upsert"    // accounts: insert or update of the whole row
	OpDelete    Op = "delete"    // accounts
	OpIncrement Op = "increment" // counters: total = total + delta
	OpInsert    Op = "insert"    // events
)

// Write is one committed transaction of the workload (each writes one row).
type Write struct {
	Node  string    `json:"node"`
	Seq   int64     `json:"seq"` // per node, in issue order
	Table string    `json:"table"`
	Key   int64     `json:"key"`
	Op    Op        `json:"op"`
	Value string    `json:"value,omitempty"` // accounts.val or events.payload: unique per write
	Delta int64     `json:"delta,omitempty"`
	At    time.Time `json:"at"` // commit time as PostgreSQL stamped it
	// PrevAt is, for accounts, the commit time of the version this write
	// replaced on its node (the row, or the tombstone of its delete); nil
	// when there was none. It tells which writes were overwritten in the
	// normal course (by a write that had seen them).
	PrevAt *time.Time `json:"prev_at,omitempty"`
	// Wall is the harness clock when the commit returned (for the charts).
	Wall time.Time `json:"-"`
	xid  string    // xid8, to read the commit time (and, in doubt, the outcome)
	// inDoubt: COMMIT did not answer (server crash); pg_xact_status decides.
	inDoubt bool
}

// WorkloadConfig shapes the writes. Zero fields take the defaults.
type WorkloadConfig struct {
	Rate     float64 `json:"rate"`      // transactions per second per node (default 40)
	Writers  int     `json:"writers"`   // connections per node (default 2)
	Keys     int     `json:"keys"`      // accounts ids 1..Keys (default 500)
	HotKeys  int     `json:"hot_keys"`  // ids 1..HotKeys are hot (default 5)
	HotShare float64 `json:"hot_share"` // share of account writes on hot ids: the skew (default 0.5)
	Counters int     `json:"counters"`  // counter rows (default 5)
}

func (c *WorkloadConfig) defaults() {
	if c.Rate <= 0 {
		c.Rate = 40
	}
	if c.Writers <= 0 {
		c.Writers = 2
	}
	if c.Keys <= 0 {
		c.Keys = 500
	}
	if c.HotKeys <= 0 {
		c.HotKeys = 5
	}
	if c.HotShare <= 0 {
		c.HotShare = 0.5
	}
	if c.Counters <= 0 {
		c.Counters = 5
	}
}

// target is a node the workload writes to, directly (never through a proxy).
type target struct {
	name string
	dsn  string
}

// workload runs the writers and records what they committed.
type workload struct {
	cfg   WorkloadConfig
	nodes []target
	seed  uint64
	// factor multiplies the rate (bursts), as float64 bits.
	factor atomic.Uint64

	mu     sync.Mutex
	writes []Write
	errs   map[string]int    // per node: failed transactions
	first  map[string]string // per node: first error, for the report
	seqs   []atomic.Int64
}

func newWorkload(cfg WorkloadConfig, nodes []target, seed uint64) *workload {
	cfg.defaults()
	w := &workload{cfg: cfg, nodes: nodes, seed: seed, errs: map[string]int{}, first: map[string]string{},
		seqs: make([]atomic.Int64, len(nodes))}
	w.setFactor(1)
	return w
}

func (w *workload) setFactor(f float64) { w.factor.Store(math.Float64bits(f)) }
func (w *workload) rate() float64       { return w.cfg.Rate * math.Float64frombits(w.factor.Load()) }

// run writes on every node until stop is closed.
func (w *workload) run(ctx context.Context, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for i := range w.nodes {
		for k := range w.cfg.Writers {
			wg.Go(func() { w.writer(ctx, i, k, stop) })
		}
	}
	wg.Wait()
}

func (w *workload) fail(node string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs[node]++
	if _, ok := w.first[node]; !ok {
		w.first[node] = err.Error()
	}
}

// writer paces its transactions to its share of the node's rate; when it
// falls behind (the node is slow or down) it does not try to catch up
// more than a second's worth.
func (w *workload) writer(ctx context.Context, node, k int, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(w.seed, uint64(node*1000+k)))
	n := w.nodes[node]
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-stop:
			return false
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	next := time.Now()
	for {
		select {
		case <-stop:
			return
		default:
		}
		if conn == nil || conn.IsClosed() {
			c, err := pgx.Connect(ctx, n.dsn)
			if err != nil {
				w.fail(n.name, fmt.Errorf("connect: %w", err))
				if !sleep(200 * time.Millisecond) {
					return
				}
				continue
			}
			conn = c
		}
		next = next.Add(time.Duration(float64(time.Second) * float64(w.cfg.Writers) / w.rate()))
		if d := time.Until(next); d > 0 {
			if !sleep(d) {
				return
			}
		} else if d < -time.Second {
			next = time.Now()
		}
		wr, err := w.transaction(ctx, conn, n.name, rng)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.fail(n.name, err)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				// The connection is in an unknown state: start afresh.
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
		}
		if wr != nil {
			wr.Node, wr.Wall = n.name, time.Now()
			wr.Seq = w.seqs[node].Add(1)
			w.mu.Lock()
			w.writes = append(w.writes, *wr)
			w.mu.Unlock()
		}
	}
}

// transaction runs one random write. It returns the write when it reached
// COMMIT (committed, or in doubt when COMMIT got no answer), nil when
// there was nothing to do or it failed before.
func (w *workload) transaction(ctx context.Context, conn *pgx.Conn, node string, rng *rand.Rand) (*Write, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var wr *Write
	switch p := rng.Float64(); {
	case p < 0.45:
		wr, err = w.accountWrite(ctx, tx, node, OpUpsert, rng)
	case p < 0.55:
		wr, err = w.accountWrite(ctx, tx, node, OpDelete, rng)
	case p < 0.80:
		wr = &Write{Table: counters, Op: OpIncrement, Key: int64(1 + rng.IntN(w.cfg.Counters)), Delta: int64(1 + rng.IntN(10))}
		err = tx.QueryRow(ctx, `UPDATE eval.counters SET total = total + $2 WHERE id = $1 RETURNING pg_current_xact_id()::text`,
			wr.Key, wr.Delta).Scan(&wr.xid)
	default:
		wr = &Write{Table: events, Op: OpInsert, Value: fmt.Sprintf("%s-%d", node, rng.Uint64())}
		err = tx.QueryRow(ctx, `INSERT INTO eval.events (node, payload) VALUES ($1, $2) RETURNING id, pg_current_xact_id()::text`,
			node, wr.Value).Scan(&wr.Key, &wr.xid)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", describeOp(wr), err)
	}
	if wr == nil {
		return nil, nil
	}
	if err := tx.Commit(ctx); err != nil {
		// Committed or not: only the server knows, once it answers again.
		wr.inDoubt = true
		return wr, fmt.Errorf("commit %s: %w", describeOp(wr), err)
	}
	return wr, nil
}

func describeOp(wr *Write) string {
	if wr == nil {
		return "account write"
	}
	return fmt.Sprintf("%s %s %d", wr.Op, wr.Table, wr.Key)
}

// accountWrite upserts or deletes one account. It locks the version it
// replaces first, so that PrevAt is exactly that version: the row (locked
// FOR UPDATE, which waits for a concurrent writer and then sees its
// result), or, when there is no row, the tombstone of the last delete
// (locked too, so that a remote delete cannot slip in between). Each read
// is its own statement: in READ COMMITTED only the locked row is re-read
// after a wait, a later statement sees everything committed before it. An
// insert that races with an applied insert of the same id is abandoned
// (nil) rather than turned into an update of a row it never saw.
func (w *workload) accountWrite(ctx context.Context, tx pgx.Tx, node string, op Op, rng *rand.Rand) (*Write, error) {
	key := int64(w.cfg.HotKeys + 1 + rng.IntN(max(1, w.cfg.Keys-w.cfg.HotKeys)))
	if rng.Float64() < w.cfg.HotShare {
		key = int64(1 + rng.IntN(w.cfg.HotKeys))
	}
	wr := &Write{Table: accounts, Key: key, Op: op, Value: fmt.Sprintf("%s:%x", node, rng.Uint64())}
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&wr.xid); err != nil {
		return nil, err
	}
	var rowAt, tombAt *time.Time
	err := tx.QueryRow(ctx, `SELECT pg_xact_commit_timestamp(xmin) FROM eval.accounts WHERE id = $1 FOR UPDATE`, key).Scan(&rowAt)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if !exists {
		if op == OpDelete {
			return nil, nil
		}
		if err := tx.QueryRow(ctx, `SELECT eval.replaced_delete_at($1)`, key).Scan(&tombAt); err != nil {
			return nil, err
		}
	}
	var tag pgconn.CommandTag
	switch {
	case op == OpDelete:
		wr.PrevAt = rowAt
		tag, err = tx.Exec(ctx, `DELETE FROM eval.accounts WHERE id = $1`, key)
	case exists:
		wr.PrevAt = rowAt
		tag, err = tx.Exec(ctx, `UPDATE eval.accounts SET val = $2, node = $3 WHERE id = $1`, key, wr.Value, node)
	default:
		wr.PrevAt = tombAt
		tag, err = tx.Exec(ctx, `INSERT INTO eval.accounts (id, val, node) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`, key, wr.Value, node)
	}
	if err != nil {
		return nil, err
	}
	if tag.RowsAffected() != 1 {
		return nil, nil
	}
	return wr, nil
}

// resolve reads the commit time of every recorded write from its node and
// settles the writes in doubt: kept if committed, dropped if not. A write
// whose COMMIT succeeded but that the server does not know as committed is
// an error (a durability bug, not something to paper over).
//
// A write in doubt is identified by its xid, which alone does not tell:
// a server that crashes hands out again, after its restart, the xids of
// transactions whose WAL it lost (nothing of them was written), so that
// the xid of a write in doubt that never committed may belong to a later
// transaction, local or applied, that did. Such a write would count as
// committed at that transaction's commit time: a write that never
// happened, found in no final state and no conflict log. A write in doubt
// is therefore kept only if its xid committed here, locally (no
// replication origin), and no later than its client saw the COMMIT fail:
// a transaction that reuses the xid starts after the restart, which comes
// after the failure.
func (w *workload) resolve(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	byNode := map[string][]int{}
	for i, wr := range w.writes {
		byNode[wr.Node] = append(byNode[wr.Node], i)
	}
	drop := map[int]bool{}
	for _, n := range w.nodes {
		idx := byNode[n.name]
		if len(idx) == 0 {
			continue
		}
		xids := make([]string, len(idx))
		for j, i := range idx {
			xids[j] = w.writes[i].xid
		}
		conn, err := pgx.Connect(ctx, n.dsn)
		if err != nil {
			return fmt.Errorf("node %s: read commit times: %w", n.name, err)
		}
		// pg_xact_status fails on an xid not handed out yet (one lost in
		// a crash and not reused since): not committed.
		rows, err := conn.Query(ctx, `
SELECT CASE WHEN f.known THEN pg_xact_status(f.x) END, c.timestamp, c.roident
  FROM unnest($1::text[]) WITH ORDINALITY AS u(x, i)
  CROSS JOIN LATERAL (SELECT u.x::xid8 AS x, u.x::xid8 < pg_snapshot_xmax(pg_current_snapshot()) AS known) f
  LEFT JOIN LATERAL pg_xact_commit_timestamp_origin(f.x::xid) c ON f.known
 ORDER BY u.i`, xids)
		if err != nil {
			conn.Close(ctx)
			return fmt.Errorf("node %s: read commit times: %w", n.name, err)
		}
		j := 0
		for rows.Next() {
			var status *string
			var at *time.Time
			var roident *uint32
			if err := rows.Scan(&status, &at, &roident); err != nil {
				rows.Close()
				conn.Close(ctx)
				return fmt.Errorf("node %s: read commit times: %w", n.name, err)
			}
			wr := &w.writes[idx[j]]
			committed := status != nil && *status == "committed" && at != nil
			switch {
			case wr.inDoubt && committed && roident != nil && *roident == 0 && !at.After(wr.Wall):
				wr.At = *at
			case wr.inDoubt:
				drop[idx[j]] = true
			case committed:
				wr.At = *at
			default:
				rows.Close()
				conn.Close(ctx)
				return fmt.Errorf("node %s: %s (xid %s) was acknowledged as committed, but the server says %v with commit time %v",
					n.name, describeOp(wr), wr.xid, deref(status), at)
			}
			j++
		}
		rows.Close()
		conn.Close(ctx)
		if err := rows.Err(); err != nil {
			return fmt.Errorf("node %s: read commit times: %w", n.name, err)
		}
	}
	kept := w.writes[:0]
	for i, wr := range w.writes {
		if !drop[i] {
			kept = append(kept, wr)
		}
	}
	w.writes = kept
	return nil
}

func deref(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}

// snapshot returns the recorded writes and the error counts.
func (w *workload) snapshot() ([]Write, map[string]int, map[string]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	errs := map[string]int{}
	for k, v := range w.errs {
		errs[k] = v
	}
	first := map[string]string{}
	for k, v := range w.first {
		first[k] = strings.TrimSpace(v)
	}
	return append([]Write(nil), w.writes...), errs, first
}
