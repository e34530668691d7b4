package join

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/human"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Copied rows keep the commit time and origin they have on the source:
// conflict resolution on the new node reads them from the row version
// (pg_xact_commit_timestamp_origin(xmin)), and a row stamped with the
// copy's own commit time would beat every older concurrent change still on
// its way, which the other nodes resolve the other way. Rows are read with
// their commit time and origin in front, and each run of consecutive rows
// with the same pair is written in its own transaction, under a session
// set up with that origin and the transaction's commit time set with
// pg_replication_origin_xact_setup('0/0', t): the LSN 0/0 leaves the
// origin's progress where it is (it only ever moves forward at commit).
//
// A row whose commit time is unknown on the source (frozen, or written
// before track_commit_timestamp was on) counts there as older than any
// change. It is written with the time -infinity, which every decision
// treats the same way (a remote change is newer, and never concurrent with
// it). Unknown origins (such rows, and rows whose origin was dropped) are
// written under UnknownOrigin, a name no node can have: like the source's
// missing origin, it matches no node, no peer_seen row and no rank.
const UnknownOrigin = "pgmesh_(unknown)"

// copySettings: a copy takes as long as the table needs. Both ends print
// and parse values alike (pg.ConnectExact: the rows pass through in COPY
// text format without being decoded), and row security is off there, so a
// policy that would hide rows from pgmesh's role fails the copy instead of
// leaving them out.
const copySettings = `SET statement_timeout = 0`

const (
	// chunkBytes bounds the rows held in memory per table being copied.
	chunkBytes = 4 << 20
	// directRows: a run of at least this many rows is COPYed straight into
	// the table in its own transaction; shorter runs are staged and
	// written by one server-side loop, one transaction each.
	directRows = 64
)

// tableCopy is one table to copy.
type tableCopy struct {
	t                 pg.Table
	cols              []string // writable columns, in the source's order
	estRows, estBytes int64
	rows, bytes, txns atomic.Int64
	started, finished atomic.Int64 // unix nanoseconds
}

func (tc *tableCopy) colList(prefix string) string {
	q := make([]string, len(tc.cols))
	for i, c := range tc.cols {
		q[i] = prefix + pg.Ident(c)
	}
	return strings.Join(q, ", ")
}

// copyData copies every replicated table of the source in the snapshot and
// returns, per origin node, the latest commit time among the copied rows.
func (j *joiner) copyData(ctx context.Context, s *snapshot) (map[string]time.Time, error) {
	lead, err := j.openSource(ctx, s)
	if err != nil {
		return nil, err
	}
	tables, err := j.listTables(ctx, lead)
	lead.Close(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	if err := j.resetProgress(ctx, tables); err != nil {
		return nil, err
	}
	began := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopProgress := j.reportProgress(ctx, tables)
	defer stopProgress()

	ls := newLeases()
	var (
		mu    sync.Mutex
		seen  = map[string]time.Time{}
		errs  []error
		next  atomic.Int64
		wg    sync.WaitGroup
		first sync.Once
	)
	for w := 0; w < min(j.o.Jobs, len(tables)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := j.copyWorker(ctx, s, ls, func() *tableCopy {
				i := int(next.Add(1)) - 1
				if i >= len(tables) {
					return nil
				}
				return tables[i]
			}, func(origin string, ts time.Time) {
				mu.Lock()
				if ts.After(seen[origin]) {
					seen[origin] = ts
				}
				mu.Unlock()
			}, func() { first.Do(func() { j.o.Hold(HoldCopy) }) })
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				cancel()
			}
		}()
	}
	wg.Wait()
	stopProgress()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, tc := range tables {
		st := TableStat{Table: tc.t.QualifiedName(), Rows: tc.rows.Load(), Bytes: tc.bytes.Load(), Txns: tc.txns.Load(),
			Seconds: time.Duration(tc.finished.Load() - tc.started.Load()).Seconds()}
		j.rep.Tables = append(j.rep.Tables, st)
		j.rep.Rows += st.Rows
		j.rep.Bytes += st.Bytes
	}
	j.rep.Seconds = time.Since(began).Seconds()
	j.printf("copied %d rows (%s) of %d tables in %s", j.rep.Rows, human.Bytes(j.rep.Bytes), len(tables), time.Since(began).Round(time.Millisecond))
	return seen, nil
}

// openSource opens a session on the source that reads in the snapshot.
func (j *joiner) openSource(ctx context.Context, s *snapshot) (*pgx.Conn, error) {
	c, err := pg.ConnectExact(ctx, j.source.Name, j.source.DSN, "pgmesh node add "+j.node.Name+": copy")
	if err != nil {
		return nil, err
	}
	if _, err := c.Exec(ctx, copySettings); err != nil {
		c.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("node %s: %w", j.source.Name, err)
	}
	// SET TRANSACTION SNAPSHOT takes no parameter; the name comes from
	// the server.
	if _, err := c.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT "+pg.QuoteLiteral(s.name)); err != nil {
		c.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("node %s: import snapshot %s: %w", j.source.Name, s.name, err)
	}
	return c, nil
}

// listTables lists the replicated tables in the snapshot with their
// writable columns and estimated sizes, largest first.
func (j *joiner) listTables(ctx context.Context, src *pgx.Conn) ([]*tableCopy, error) {
	list, err := pg.ReplicatedTables(ctx, src, j.cfg.Replicate.Schemas, j.cfg.Replicate.Exclude)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", j.source.Name, err)
	}
	var out []*tableCopy
	for _, t := range list {
		tc := &tableCopy{t: t}
		err := src.QueryRow(ctx, `
SELECT (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
         WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
       coalesce(sum(greatest(c.reltuples, 0))::bigint, 0), coalesce(sum(pg_relation_size(c.oid)), 0)::bigint
  FROM pg_class c
 WHERE c.oid = $1::regclass OR c.oid IN (SELECT p.relid FROM pg_partition_tree($1::regclass) p WHERE p.isleaf)`, t.Ident()).
			Scan(&tc.cols, &tc.estRows, &tc.estBytes)
		if err != nil {
			return nil, fmt.Errorf("node %s: describe %s: %w", j.source.Name, t.QualifiedName(), err)
		}
		if len(tc.cols) == 0 {
			return nil, fmt.Errorf("%w: table %s has no column to copy", ErrRefused, t.QualifiedName())
		}
		out = append(out, tc)
	}
	slices.SortStableFunc(out, func(a, b *tableCopy) int { return int(b.estBytes - a.estBytes) })
	return out, nil
}

// copyWorker copies the tables next hands out, each in one COPY from the
// source.
func (j *joiner) copyWorker(ctx context.Context, s *snapshot, ls *leases, next func() *tableCopy, seen func(string, time.Time), committed func()) error {
	src, err := j.openSource(ctx, s)
	if err != nil {
		return err
	}
	defer src.Close(context.WithoutCancel(ctx))
	w, err := newWriter(ctx, j.node, ls, j.log)
	if err != nil {
		return err
	}
	defer w.close()
	for tc := next(); tc != nil; tc = next() {
		tc.started.Store(time.Now().UnixNano())
		ch := newChunker(ctx, w, tc, seen, committed)
		q := fmt.Sprintf(`COPY (SELECT CASE WHEN c.roident = 0 THEN %s ELSE o.node END, c."timestamp", %s
  FROM %s t CROSS JOIN LATERAL pg_catalog.pg_xact_commit_timestamp_origin(t.xmin) c
  LEFT JOIN (SELECT r.roident, pgmesh.origin_node(r.roident) AS node FROM pg_catalog.pg_replication_origin r) o
         ON o.roident = c.roident) TO STDOUT`, pg.QuoteLiteral(j.source.Name), tc.colList("t."), tc.t.Ident())
		_, err := src.PgConn().CopyTo(ctx, ch, q)
		if ferr := ch.finish(); ferr != nil && (err == nil || ch.err != nil) {
			err = ferr
		}
		if err != nil {
			return fmt.Errorf("copy %s from %s to %s: %w", tc.t.QualifiedName(), j.source.Name, j.node.Name, err)
		}
		tc.finished.Store(time.Now().UnixNano())
		j.log.Debug("table copied", "table", tc.t.QualifiedName(), "rows", tc.rows.Load(), "transactions", tc.txns.Load())
	}
	return nil
}

// chunker receives the source's COPY output row by row and writes it to the
// new node in runs of equal (origin, commit time). A full chunk (about
// chunkBytes of rows) is handed to a writer goroutine while the next one
// fills, so that reading the source and writing the new node overlap; at
// most two chunks are held.
type chunker struct {
	ctx       context.Context
	w         *writer
	tc        *tableCopy
	seen      func(string, time.Time)
	committed func()
	partial   []byte
	cur       *chunk
	out       chan *chunk // to the writer goroutine
	free      chan *chunk // back from it
	done      chan error  // the writer goroutine's result
	err       error
}

// chunk is rows of one table: their column data, in order, and where each
// row's data is.
type chunk struct {
	data bytes.Buffer
	rows []chunkRow
}

func newChunker(ctx context.Context, w *writer, tc *tableCopy, seen func(string, time.Time), committed func()) *chunker {
	c := &chunker{ctx: ctx, w: w, tc: tc, seen: seen, committed: committed,
		cur: &chunk{}, out: make(chan *chunk), free: make(chan *chunk, 1), done: make(chan error, 1)}
	c.free <- &chunk{}
	go func() {
		var err error
		for ch := range c.out {
			if err == nil {
				err = c.write(ch)
			}
			ch.data.Reset()
			ch.rows = ch.rows[:0]
			c.free <- ch
		}
		c.done <- err
	}()
	return c
}

type chunkRow struct {
	key      runKey
	from, to int // the row's data in chunker.data
}

// runKey is the origin name on the new node and the commit time as text.
type runKey struct{ origin, ts string }

// Write takes COPY data from the source: whole rows, one per call in
// practice, but any split is handled.
func (c *chunker) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n := len(p)
	if len(c.partial) > 0 {
		c.partial = append(c.partial, p...)
		p, c.partial = c.partial, nil
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.partial = append(c.partial[:0:0], p...)
			break
		}
		if err := c.add(p[:i+1]); err != nil {
			c.err = err
			return 0, err
		}
		p = p[i+1:]
	}
	if c.cur.data.Len() >= chunkBytes {
		if err := c.flush(); err != nil {
			c.err = err
			return 0, err
		}
	}
	return n, nil
}

// add parses the origin and commit time in front of one row.
func (c *chunker) add(line []byte) error {
	i := bytes.IndexByte(line, '\t')
	if i < 0 {
		return fmt.Errorf("malformed COPY row %q", truncate(line))
	}
	k := bytes.IndexByte(line[i+1:], '\t')
	if k < 0 {
		return fmt.Errorf("malformed COPY row %q", truncate(line))
	}
	k += i + 1
	key := runKey{origin: UnknownOrigin, ts: "-infinity"}
	if f := line[:i]; string(f) != `\N` {
		name, err := unescapeCopy(f)
		if err != nil {
			return err
		}
		key.origin = topology.OriginName(name)
	}
	if f := line[i+1 : k]; string(f) != `\N` {
		key.ts = string(f)
	}
	from := c.cur.data.Len()
	c.cur.data.Write(line[k+1:])
	c.cur.rows = append(c.cur.rows, chunkRow{key: key, from: from, to: c.cur.data.Len()})
	c.tc.rows.Add(1)
	c.tc.bytes.Add(int64(len(line)))
	return nil
}

// finish writes what is left and waits for the writer goroutine; it must
// be called once, even after an error.
func (c *chunker) finish() error {
	err := c.err
	if err == nil && len(c.partial) > 0 {
		err = fmt.Errorf("COPY data ended inside a row")
	}
	if err == nil {
		err = c.flush()
	}
	close(c.out)
	if werr := <-c.done; err == nil {
		err = werr
	}
	return err
}

// flush hands the current chunk to the writer goroutine and takes an empty
// one; it fails once the writer has failed.
func (c *chunker) flush() error {
	if len(c.cur.rows) == 0 {
		return nil
	}
	select {
	case c.out <- c.cur:
	case err := <-c.done:
		c.done <- err // for finish
		if err == nil {
			err = fmt.Errorf("copy writer stopped")
		}
		return err
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
	c.cur = <-c.free
	return nil
}

// write writes one chunk: long runs straight, short ones staged.
func (c *chunker) write(ch *chunk) error {
	data := ch.data.Bytes()
	var staged []run
	runs := splitRuns(ch.rows)
	for _, r := range runs {
		if err := c.noteSeen(r.key); err != nil {
			return err
		}
		if len(runs) == 1 || r.n >= directRows {
			if err := c.w.copyRun(c.ctx, c.tc, r.key, data[r.from:r.to]); err != nil {
				return err
			}
			c.tc.txns.Add(1)
			continue
		}
		staged = append(staged, r)
	}
	if len(staged) > 0 {
		if err := c.w.copyStaged(c.ctx, c.tc, staged, ch.rows, data); err != nil {
			return err
		}
		c.tc.txns.Add(int64(len(staged)))
	}
	c.committed()
	return nil
}

func (c *chunker) noteSeen(k runKey) error {
	name, ok := strings.CutPrefix(k.origin, "pgmesh_")
	if !ok || k.origin == UnknownOrigin || k.ts == "-infinity" {
		return nil
	}
	// A time this layout cannot read (before year 1) only makes the
	// announcement of what the node has seen lower, which is safe.
	if ts, err := time.Parse("2006-01-02 15:04:05.999999-07", k.ts); err == nil {
		c.seen(name, ts)
	}
	return nil
}

// run is a stretch of consecutive rows with the same key: rows[first:first+n],
// whose data is data[from:to].
type run struct {
	key      runKey
	first, n int
	from, to int
}

func splitRuns(rows []chunkRow) []run {
	var out []run
	for i, r := range rows {
		if len(out) > 0 && out[len(out)-1].key == r.key {
			last := &out[len(out)-1]
			last.n++
			last.to = r.to
			continue
		}
		out = append(out, run{key: r.key, first: i, n: 1, from: r.from, to: r.to})
	}
	return out
}

// leases lets several writers share the origins: a replication origin can
// be set up by one session at a time. A writer releases what it holds
// before it waits for other origins, so no two writers wait for each other.
type leases struct {
	mu   sync.Mutex
	cond *sync.Cond
	held map[string]*writer
}

func newLeases() *leases {
	l := &leases{held: map[string]*writer{}}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// take gives w the origins names (and only those), waiting for other
// writers to let them go.
func (l *leases) take(ctx context.Context, w *writer, names []string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, h := range l.held {
		if h == w {
			delete(l.held, n)
		}
	}
	l.cond.Broadcast()
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	for _, n := range slices.Sorted(slices.Values(names)) {
		for l.held[n] != nil && l.held[n] != w {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			l.cond.Wait()
		}
		l.held[n] = w
	}
	return nil
}

// drop lets all of w's origins go.
func (l *leases) drop(w *writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for n, h := range l.held {
		if h == w {
			delete(l.held, n)
		}
	}
	l.cond.Broadcast()
}

// writer is a session on the new node that writes copied rows under the
// origin and commit time they have on the source. Its writes never reach a
// slot: they carry an origin, which pgoutput filters (and the new node has
// no slot until the copy is complete).
type writer struct {
	conn    *pgx.Conn
	node    string
	origin  string // origin of the session, "" = none
	origins map[string]bool
	staged  *tableCopy // the table the temp tables are shaped for
	leases  *leases
	log     *slog.Logger
}

func newWriter(ctx context.Context, n config.Node, ls *leases, log *slog.Logger) (*writer, error) {
	c, err := pg.ConnectExact(ctx, n.Name, n.DSN, "pgmesh node add: write")
	if err != nil {
		return nil, err
	}
	// Replica role: no foreign key checks, no user triggers, as for apply.
	// Asynchronous commit: the state change that ends the copy is
	// committed synchronously, which flushes all of it.
	setup := copySettings + `; SET session_replication_role = replica; SET synchronous_commit = off; SET pgmesh.in_ddl = 'on'`
	if _, err := c.Exec(ctx, setup); err != nil {
		c.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("node %s: set up the copy session: %w", n.Name, err)
	}
	return &writer{conn: c, node: n.Name, origins: map[string]bool{}, leases: ls, log: log}, nil
}

// close releases the origin before the connection: a backend that exits
// releases it only once gone, after Close has returned, and the next step
// (advancing the origins) would find it still in use.
func (w *writer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = w.resetOrigin(ctx)
	w.conn.Close(ctx)
	w.leases.drop(w)
}

// resetOrigin ends the session's origin and lets w's leases go.
func (w *writer) resetOrigin(ctx context.Context) error {
	if w.origin != "" {
		if _, err := w.conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_session_reset()"); err != nil {
			return fmt.Errorf("node %s: release origin %s: %w", w.node, w.origin, err)
		}
		w.origin = ""
	}
	w.leases.drop(w)
	return nil
}

// createOrigins makes sure the origins exist.
func (w *writer) createOrigins(ctx context.Context, names []string) error {
	for _, o := range names {
		if w.origins[o] {
			continue
		}
		// Another writer of the same copy may create it at the same
		// moment: the loser of that race finds it in the unique index.
		_, err := w.conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1)
		                             WHERE pg_catalog.pg_replication_origin_oid($1) IS NULL`, o)
		if pgErr := (*pgconn.PgError)(nil); err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "23505") {
			return fmt.Errorf("node %s: create origin %s: %w", w.node, o, err)
		}
		w.origins[o] = true
	}
	return nil
}

// setOrigin makes the session write as origin, creating it if needed.
func (w *writer) setOrigin(ctx context.Context, origin string) error {
	if w.origin == origin {
		return nil
	}
	if err := w.createOrigins(ctx, []string{origin}); err != nil {
		return err
	}
	if err := w.resetOrigin(ctx); err != nil {
		return err
	}
	if err := w.leases.take(ctx, w, []string{origin}); err != nil {
		return err
	}
	if _, err := w.conn.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_session_setup($1)", origin); err != nil {
		return fmt.Errorf("node %s: set up origin %s: %w (is an agent applying that link? none may run while the node copies)", w.node, origin, err)
	}
	w.origin = origin
	return nil
}

// copyRun writes one run in one transaction.
func (w *writer) copyRun(ctx context.Context, tc *tableCopy, k runKey, data []byte) error {
	if err := w.setOrigin(ctx, k.origin); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, w.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_catalog.pg_replication_origin_xact_setup('0/0', $1::timestamptz)", k.ts); err != nil {
			return fmt.Errorf("set the commit time: %w", err)
		}
		_, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(data), "COPY "+tc.t.Ident()+" ("+tc.colList("")+") FROM STDIN")
		return err
	})
	if err != nil {
		return fmt.Errorf("node %s: write %s as origin %s at %s: %w", w.node, tc.t.QualifiedName(), k.origin, k.ts, err)
	}
	return nil
}

// copyStaged writes many short runs: the rows go into a temporary table in
// one COPY, then one DO block writes each run in its own transaction (a
// DO block may COMMIT when it is not inside a transaction block).
func (w *writer) copyStaged(ctx context.Context, tc *tableCopy, runs []run, rows []chunkRow, data []byte) error {
	if w.staged != tc {
		q := fmt.Sprintf(`DROP TABLE IF EXISTS pg_temp.pgmesh_join_stage;
CREATE TEMP TABLE pgmesh_join_stage AS SELECT 0::int AS pgmesh_gid, %s FROM %s WITH NO DATA;
CREATE INDEX ON pg_temp.pgmesh_join_stage (pgmesh_gid);
CREATE TEMP TABLE IF NOT EXISTS pgmesh_join_group (gid int, origin text, ts text)`, tc.colList(""), tc.t.Ident())
		if _, err := w.conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("node %s: create the staging table for %s: %w", w.node, tc.t.QualifiedName(), err)
		}
		w.staged = tc
	}
	var stage, groups bytes.Buffer
	var names []string
	for gid, r := range runs {
		if !slices.Contains(names, r.key.origin) {
			names = append(names, r.key.origin)
		}
		id := strconv.Itoa(gid)
		for _, row := range rows[r.first : r.first+r.n] {
			stage.WriteString(id)
			stage.WriteByte('\t')
			stage.Write(data[row.from:row.to])
		}
		groups.WriteString(id + "\t" + escapeCopy(r.key.origin) + "\t" + escapeCopy(r.key.ts) + "\n")
	}
	if _, err := w.conn.PgConn().CopyFrom(ctx, &stage, "COPY pg_temp.pgmesh_join_stage (pgmesh_gid, "+tc.colList("")+") FROM STDIN"); err != nil {
		return fmt.Errorf("node %s: stage rows of %s: %w", w.node, tc.t.QualifiedName(), err)
	}
	if _, err := w.conn.PgConn().CopyFrom(ctx, &groups, "COPY pg_temp.pgmesh_join_group (gid, origin, ts) FROM STDIN"); err != nil {
		return fmt.Errorf("node %s: stage runs of %s: %w", w.node, tc.t.QualifiedName(), err)
	}
	do := fmt.Sprintf(`DO $pgmesh$
DECLARE
    g record;
    cur text;
BEGIN
    IF pg_catalog.pg_replication_origin_session_is_setup() THEN
        PERFORM pg_catalog.pg_replication_origin_session_reset();
    END IF;
    FOR g IN SELECT x.gid, x.origin, x.ts FROM pg_temp.pgmesh_join_group x ORDER BY x.gid LOOP
        IF cur IS DISTINCT FROM g.origin THEN
            IF cur IS NOT NULL THEN
                PERFORM pg_catalog.pg_replication_origin_session_reset();
            END IF;
            PERFORM pg_catalog.pg_replication_origin_session_setup(g.origin);
            cur := g.origin;
        END IF;
        PERFORM pg_catalog.pg_replication_origin_xact_setup('0/0', g.ts::timestamptz);
        INSERT INTO %s (%s) SELECT %s FROM pg_temp.pgmesh_join_stage s WHERE s.pgmesh_gid = g.gid;
        COMMIT;
    END LOOP;
    IF cur IS NOT NULL THEN
        PERFORM pg_catalog.pg_replication_origin_session_reset();
    END IF;
END
$pgmesh$`, tc.t.Ident(), tc.colList(""), tc.colList("s."))
	if err := w.createOrigins(ctx, names); err != nil {
		return err
	}
	if err := w.resetOrigin(ctx); err != nil {
		return err
	}
	if err := w.leases.take(ctx, w, names); err != nil {
		return err
	}
	if _, err := w.conn.Exec(ctx, do); err != nil {
		return fmt.Errorf("node %s: write %d runs of %s: %w", w.node, len(runs), tc.t.QualifiedName(), err)
	}
	w.leases.drop(w)
	if _, err := w.conn.Exec(ctx, "TRUNCATE pg_temp.pgmesh_join_stage, pg_temp.pgmesh_join_group"); err != nil {
		return fmt.Errorf("node %s: %w", w.node, err)
	}
	return nil
}

// truncate empties tables under an origin, so that the truncate can never
// be shipped to a peer.
func (w *writer) truncate(ctx context.Context, tables []pg.Table) error {
	if len(tables) == 0 {
		return nil
	}
	if err := w.setOrigin(ctx, UnknownOrigin); err != nil {
		return err
	}
	idents := make([]string, len(tables))
	for i, t := range tables {
		idents[i] = t.Ident()
	}
	if _, err := w.conn.Exec(ctx, "TRUNCATE "+strings.Join(idents, ", ")); err != nil {
		return fmt.Errorf("node %s: empty the tables of the interrupted copy: %w", w.node, err)
	}
	return nil
}

// unescapeCopy decodes one field of COPY text format.
func unescapeCopy(f []byte) (string, error) {
	if bytes.IndexByte(f, '\\') < 0 {
		return string(f), nil
	}
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '\\' {
			b.WriteByte(f[i])
			continue
		}
		i++
		if i >= len(f) {
			return "", fmt.Errorf("COPY field ends with a backslash")
		}
		switch c := f[i]; c {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'v':
			b.WriteByte('\v')
		case 'x':
			j := i + 1
			for j < len(f) && j < i+3 && isHex(f[j]) {
				j++
			}
			v, err := strconv.ParseUint(string(f[i+1:j]), 16, 8)
			if err != nil {
				return "", fmt.Errorf("COPY field: bad \\x escape")
			}
			b.WriteByte(byte(v))
			i = j - 1
		default:
			if c >= '0' && c <= '7' {
				j := i
				for j < len(f) && j < i+3 && f[j] >= '0' && f[j] <= '7' {
					j++
				}
				v, _ := strconv.ParseUint(string(f[i:j]), 8, 8)
				b.WriteByte(byte(v))
				i = j - 1
				continue
			}
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// escapeCopy encodes s as a field of COPY text format.
func escapeCopy(s string) string {
	r := strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`)
	return r.Replace(s)
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}
