package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// waitLimit only keeps a broken test from hanging forever.
const waitLimit = 2 * time.Minute

// recorder is a Handler that writes down what it is given.
type recorder struct {
	mu      sync.Mutex
	events  []string
	begins  []Begin
	commits []Commit
	rels    map[string]*Relation
	changed chan struct{}
	// onChange, when set, runs for each change (outside the lock).
	onChange func(*Change)
	// quiet records only Begin/Commit, not each change.
	quiet       bool
	changes     int
	idles       int
	lastMessage Message
}

func newRecorder() *recorder {
	return &recorder{rels: map[string]*Relation{}, changed: make(chan struct{}, 1)}
}

func (r *recorder) add(ev string) {
	r.events = append(r.events, ev)
	signal(r.changed)
}

func (r *recorder) Begin(_ context.Context, b Begin) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.begins = append(r.begins, b)
	r.add("BEGIN")
	return nil
}

func (r *recorder) Change(_ context.Context, c *Change) error {
	if r.onChange != nil {
		r.onChange(c)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes++
	if c.Rel != nil {
		r.rels[c.Rel.QualifiedName()] = c.Rel
	}
	if !r.quiet {
		r.add(formatChange(c))
	}
	return nil
}

func (r *recorder) Message(_ context.Context, m Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastMessage = m
	tx := ""
	if m.Transactional {
		tx = "tx "
	}
	r.add(fmt.Sprintf("MESSAGE %s%s %s", tx, m.Prefix, m.Content))
	return nil
}

func (r *recorder) Commit(_ context.Context, c Commit) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commits = append(r.commits, c)
	r.add("COMMIT")
	return nil
}

func (r *recorder) Idle(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.idles++
	return nil
}

// waitCommits waits until n transactions have committed, failing if run
// ends first.
func (r *recorder) waitCommits(t testing.TB, run *running, n int) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		r.mu.Lock()
		got := len(r.commits)
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-r.changed:
		case <-run.done:
			if r.mu.Lock(); len(r.commits) < n {
				t.Fatalf("Run ended after %d of %d commits: %v", len(r.commits), n, run.err)
			}
			r.mu.Unlock()
		case <-deadline:
			t.Fatalf("waited for %d commits, got %d", n, got)
		}
	}
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func formatChange(c *Change) string {
	switch c.Op {
	case Truncate:
		var names []string
		for _, r := range c.TruncateRels {
			names = append(names, r.QualifiedName())
		}
		s := "TRUNCATE " + strings.Join(names, ",")
		if c.Cascade {
			s += " cascade"
		}
		if c.RestartIdentity {
			s += " restart"
		}
		return s
	}
	s := map[Op]string{Insert: "INSERT", Update: "UPDATE", Delete: "DELETE"}[c.Op] + " " + c.Rel.QualifiedName()
	if c.Old != nil {
		if c.OldIsKey {
			s += " key" + formatTuple(c.Old)
		} else {
			s += " old" + formatTuple(c.Old)
		}
	}
	if c.New != nil {
		s += " " + formatTuple(c.New)
	}
	return s
}

func formatTuple(t Tuple) string {
	var parts []string
	for _, v := range t {
		switch {
		case v.Kind == Null:
			parts = append(parts, "NULL")
		case v.Kind == Unchanged:
			parts = append(parts, "<unchanged>")
		case len(v.Data) > 100:
			parts = append(parts, fmt.Sprintf("<%d bytes>", len(v.Data)))
		default:
			parts = append(parts, string(v.Data))
		}
	}
	return "(" + strings.Join(parts, ",") + ")"
}

// running is one Run in the background.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned err
	err    error
}

// stop cancels Run and returns its error.
func (r *running) stop(t testing.TB) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after cancel")
	}
	return r.err
}

// replConn opens a replication connection; extra is appended to the DSN.
func replConn(t testing.TB, e *env, extra string) *pgconn.PgConn {
	t.Helper()
	conn, err := pg.ConnectReplication(context.Background(), "n1", e.DSN+" "+extra, "pgmesh-stream-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// smallWorkMem makes the walsender spill or stream transactions over 64kB.
const smallWorkMem = "options='-c logical_decoding_work_mem=64kB'"

func start(t testing.TB, e *env, o Options, h Handler, flushed Flushed) *running {
	t.Helper()
	conn := replConn(t, e, smallWorkMem)
	if o.Node == "" {
		o.Node = "n1"
	}
	if o.Publication == "" {
		o.Publication = "pgmesh"
	}
	if flushed == nil {
		flushed = func(context.Context) (LSN, error) { return 0, nil }
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = Run(ctx, conn, o, h, flushed)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stopCanceled stops r and checks it ended because of the cancel, leaving
// no goroutine of this package behind.
func stopCanceled(t testing.TB, rs ...*running) {
	t.Helper()
	for _, r := range rs {
		if err := r.stop(t); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run after cancel: %v, want context.Canceled", err)
		}
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, fn := range []string{"stream.(*receiver)", "stream.(*consumer)", "stream.run("} {
		if strings.Contains(stacks, fn) {
			t.Fatalf("goroutine left in %s after Run returned:\n%s", fn, stacks)
		}
	}
}

const schema = `
CREATE TABLE t (id int PRIMARY KEY, v text, big text);
ALTER TABLE t ALTER big SET STORAGE EXTERNAL; -- out of line, uncompressed: unchanged TOAST
CREATE TABLE f (id int, v text);
ALTER TABLE f REPLICA IDENTITY FULL;
CREATE PUBLICATION pgmesh FOR ALL TABLES;
`

func createSlot(t testing.TB, e *env, name string) {
	t.Helper()
	e.Exec(t, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name)
}

// workload makes one transaction per entry of want (see TestEvents).
func workload(t testing.TB, e *env) {
	t.Helper()
	for _, sql := range []string{
		"INSERT INTO t VALUES (1, 'a', NULL)",
		"UPDATE t SET v = 'b' WHERE id = 1",
		"UPDATE t SET id = 2 WHERE id = 1",
		"DELETE FROM t WHERE id = 2",
		"INSERT INTO f VALUES (1, 'x')",
		"UPDATE f SET v = 'y'",
		"DELETE FROM f",
		"INSERT INTO t VALUES (3, 'c', repeat('x', 1000000))",
		"UPDATE t SET v = 'd' WHERE id = 3",
		"BEGIN; INSERT INTO t VALUES (4, 'e', NULL); SELECT pg_logical_emit_message(true, 'p', 'hello'); COMMIT",
		"SELECT pg_logical_emit_message(false, 'p', 'nt')",
		"TRUNCATE t, f RESTART IDENTITY CASCADE",
	} {
		if _, err := e.admin.PgConn().Exec(context.Background(), sql).ReadAll(); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

var wantEvents = []string{
	"BEGIN", "INSERT public.t (1,a,NULL)", "COMMIT",
	"BEGIN", "UPDATE public.t (1,b,NULL)", "COMMIT",
	"BEGIN", "UPDATE public.t key(1,NULL,NULL) (2,b,NULL)", "COMMIT",
	"BEGIN", "DELETE public.t key(2,NULL,NULL)", "COMMIT",
	"BEGIN", "INSERT public.f (1,x)", "COMMIT",
	"BEGIN", "UPDATE public.f old(1,x) (1,y)", "COMMIT",
	"BEGIN", "DELETE public.f old(1,y)", "COMMIT",
	"BEGIN", "INSERT public.t (3,c,<1000000 bytes>)", "COMMIT",
	"BEGIN", "UPDATE public.t (3,d,<unchanged>)", "COMMIT",
	"BEGIN", "INSERT public.t (4,e,NULL)", "MESSAGE tx p hello", "COMMIT",
	"MESSAGE p nt",
	"BEGIN", "TRUNCATE public.t,public.f cascade restart", "COMMIT",
}

func TestEvents(t *testing.T) {
	{
		{
			e := newEnv(t)
			e.Exec(t, schema)
			createSlot(t, e, "s")
			workload(t, e)
			rec := newRecorder()
			r := start(t, e, Options{Slot: "s"}, rec, nil)
			rec.waitCommits(t, r, 11)
			stopCanceled(t, r)

			if got := rec.snapshot(); !slices.Equal(got, wantEvents) {
				t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantEvents, "\n"))
			}
			if rec.idles == 0 {
				t.Error("Handler.Idle never called")
			}
			var prevEnd LSN
			for i, c := range rec.commits {
				b := rec.begins[i]
				if b.FinalLSN != c.CommitLSN || c.EndLSN <= c.CommitLSN || c.CommitLSN < prevEnd || c.CommitTime.IsZero() || !b.CommitTime.Equal(c.CommitTime) || b.XID == 0 {
					t.Fatalf("transaction %d: begin %+v commit %+v (previous end %s)", i, b, c, prevEnd)
				}
				prevEnd = c.EndLSN
			}
			wantRels := map[string]Relation{
				"public.t": {Schema: "public", Name: "t", ReplicaIdentity: 'd', Columns: []Column{{"id", 23, true}, {"v", 25, false}, {"big", 25, false}}},
				"public.f": {Schema: "public", Name: "f", ReplicaIdentity: 'f', Columns: []Column{{"id", 23, true}, {"v", 25, true}}},
			}
			for name, want := range wantRels {
				got := rec.rels[name]
				if got == nil || got.ID == 0 || got.Schema != want.Schema || got.Name != want.Name || got.ReplicaIdentity != want.ReplicaIdentity || !slices.Equal(got.Columns, want.Columns) {
					t.Errorf("relation %s: %+v, want %+v", name, got, want)
				}
			}
		}
	}
}

// inOrigin runs sql in one transaction applied under a replication origin,
// as the apply engine does.
func inOrigin(t testing.TB, e *env, sql string) {
	t.Helper()
	ctx := context.Background()
	c := e.Conn(t)
	// Origins belong to the whole server, not to the test's database.
	origin := "pgmesh_" + e.DB
	e.Exec(t, "SELECT pg_replication_origin_create($1)", origin)
	t.Cleanup(func() { e.Exec(t, "SELECT pg_replication_origin_drop($1)", origin) })
	if _, err := c.Exec(ctx, "SELECT pg_replication_origin_session_setup($1)", origin); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"BEGIN",
		"SELECT pg_replication_origin_xact_setup('0/10', now())",
		sql,
		"COMMIT",
		"SELECT pg_replication_origin_session_reset()",
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func TestOriginTransactionsDropped(t *testing.T) {
	type tc struct {
		name       string
		originNone bool
		sql        string
	}
	small := "INSERT INTO t VALUES (10, 'from origin', NULL)"
	// Over logical_decoding_work_mem: spilled by the walsender.
	big := "INSERT INTO t SELECT g, repeat('o', 100), NULL FROM generate_series(100, 3100) g"
	cases := []tc{
		{"small", false, small},
		{"big", false, big},
	}
	if newEnv(t).Major >= 16 {
		cases = append(cases,
			tc{"small_origin_none", true, small},
			tc{"big_origin_none", true, big})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.Exec(t, schema)
			createSlot(t, e, "s")
			inOrigin(t, e, c.sql)
			e.Exec(t, "INSERT INTO t VALUES (11, 'local', NULL)")
			rec := newRecorder()
			r := start(t, e, Options{Slot: "s", OriginNone: c.originNone}, rec, nil)
			rec.waitCommits(t, r, 1)
			stopCanceled(t, r)
			want := []string{"BEGIN", "INSERT public.t (11,local,NULL)", "COMMIT"}
			if got := rec.snapshot(); !slices.Equal(got, want) {
				t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func slotConfirmed(t testing.TB, e *env, slot string) LSN {
	t.Helper()
	var s string
	if err := e.admin.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// waitConfirmed waits until the slot's confirmed_flush_lsn is want.
func waitConfirmed(t testing.TB, e *env, slot string, want LSN) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		got := slotConfirmed(t, e, slot)
		if got == want {
			return
		}
		if got > want || time.Now().After(deadline) {
			t.Fatalf("slot %s confirmed_flush_lsn %s, want %s", slot, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFeedbackOnlyUpToFlushed(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, schema)
	createSlot(t, e, "s")
	e.Exec(t, "INSERT INTO t VALUES (1, 'a', NULL)")
	e.Exec(t, "INSERT INTO t VALUES (2, 'b', NULL)")
	var flushed atomic.Uint64
	var calls atomic.Int64
	rec := newRecorder()
	r := start(t, e, Options{Slot: "s", StatusInterval: 20 * time.Millisecond}, rec, func(context.Context) (LSN, error) {
		calls.Add(1)
		return LSN(flushed.Load()), nil
	})
	rec.waitCommits(t, r, 2)
	first, second := rec.commits[0].EndLSN, rec.commits[1].EndLSN

	flushed.Store(uint64(first))
	waitConfirmed(t, e, "s", first)
	// Several more status rounds must not move the slot past Flushed.
	for n := calls.Load() + 5; calls.Load() < n; {
		time.Sleep(20 * time.Millisecond)
	}
	if got := slotConfirmed(t, e, "s"); got != first {
		t.Fatalf("confirmed_flush_lsn %s, want %s (Flushed), second commit ends at %s", got, first, second)
	}
	flushed.Store(uint64(second))
	waitConfirmed(t, e, "s", second)
	stopCanceled(t, r)
}

func TestHandlerErrorEndsRun(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, schema)
	createSlot(t, e, "s")
	e.Exec(t, "INSERT INTO t VALUES (1, 'a', NULL)")
	boom := errors.New("boom")
	r := start(t, e, Options{Slot: "s"}, failing{boom}, nil)
	select {
	case <-r.done:
	case <-time.After(waitLimit):
		t.Fatal("Run did not end on a handler error")
	}
	if err := r.err; !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "stream from n1 slot s: ") {
		t.Fatalf("Run: %v, want boom wrapped with node and slot", err)
	}
}

type failing struct{ err error }

func (f failing) Begin(context.Context, Begin) error     { return nil }
func (f failing) Change(context.Context, *Change) error  { return f.err }
func (f failing) Message(context.Context, Message) error { return nil }
func (f failing) Commit(context.Context, Commit) error   { return nil }
func (f failing) Idle(context.Context) error             { return nil }

// TestHugeTransactionFlatMemory streams a 1,000,000-row transaction and
// checks that the heap never holds more than a fraction of it.
func TestHugeTransactionFlatMemory(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, "CREATE TABLE h (id int PRIMARY KEY, v text); CREATE PUBLICATION pgmesh FOR ALL TABLES")
	createSlot(t, e, "s")
	const rows = 1_000_000
	e.Exec(t, "INSERT INTO h SELECT g, 'row ' || g FROM generate_series(1, $1) g", rows)
	rec := newRecorder()
	rec.quiet = true
	var peak uint64
	n := 0
	rec.onChange = func(*Change) {
		if n++; n%50_000 == 0 {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
	}
	r := start(t, e, Options{Slot: "s"}, rec, nil)
	rec.waitCommits(t, r, 1)
	stopCanceled(t, r)
	if rec.changes != rows {
		t.Fatalf("%d changes, want %d", rec.changes, rows)
	}
	// Held in memory, the decoded transaction alone would take >150 MB.
	if peak > 64<<20 {
		t.Fatalf("heap reached %d MB while streaming", peak>>20)
	}
	t.Logf("peak heap %d MB", peak>>20)
}

// capture reads raw pgoutput messages from slot until commits
// transactions have ended, for decoder tests.
func capture(t testing.TB, e *env, slot string, o Options, commits int) []item {
	t.Helper()
	o = o.withDefaults()
	conn := replConn(t, e, smallWorkMem)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: o.pluginArgs()}); err != nil {
		t.Fatal(err)
	}
	var items []item
	for commits > 0 {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		x, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, item{lsn: x.WALStart, data: bytes.Clone(x.WALData)})
		if c := x.WALData[0]; c == 'C' || c == 'c' {
			commits--
		}
	}
	return items
}

// TestStartLSNSkipsAppliedTransactions feeds the consumer what the server
// sent from the start of the slot: transactions ending at or before
// StartLSN must not reach the Handler, whatever the server sends.
func TestStartLSNSkipsAppliedTransactions(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, schema)
	createSlot(t, e, "s")
	for i := 1; i <= 3; i++ {
		e.Exec(t, "INSERT INTO t VALUES ($1, 'v', NULL)", i)
	}
	items := capture(t, e, "s", Options{Publication: "pgmesh"}, 3)
	var ends []LSN
	for _, it := range items {
		if it.data[0] == 'C' {
			ev, err := decode(map[uint32]*Relation{}, it.data, it.lsn)
			if err != nil {
				t.Fatal(err)
			}
			ends = append(ends, ev.commit.EndLSN)
		}
	}
	for _, tc := range []struct {
		start LSN
		want  []string
	}{
		{0, []string{"INSERT public.t (1,v,NULL)", "INSERT public.t (2,v,NULL)", "INSERT public.t (3,v,NULL)"}},
		{ends[0], []string{"INSERT public.t (2,v,NULL)", "INSERT public.t (3,v,NULL)"}},
		{ends[1], []string{"INSERT public.t (3,v,NULL)"}},
		{ends[2], nil},
	} {
		t.Run(tc.start.String(), func(t *testing.T) {
			rec := newRecorder()
			c := &consumer{o: Options{StartLSN: tc.start}.withDefaults(), h: rec, log: slog.New(slog.DiscardHandler), rels: map[uint32]*Relation{}}
			for _, it := range items {
				if err := c.process(context.Background(), it); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for _, ev := range rec.snapshot() {
				if ev != "BEGIN" && ev != "COMMIT" {
					got = append(got, ev)
				}
			}
			if !slices.Equal(got, tc.want) || len(rec.begins) != len(tc.want) || len(rec.commits) != len(tc.want) {
				t.Fatalf("events %v, want %v", rec.snapshot(), tc.want)
			}
		})
	}
}

// TestFeedbackConfirmsUnpublishedWAL: once everything handed to the Handler
// is durable, WAL that carries nothing for the link (here DDL, which
// pgoutput does not send) is confirmed too, so the slot does not pin it.
// While a delivered transaction is not yet durable, nothing past Flushed is.
func TestFeedbackConfirmsUnpublishedWAL(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, schema)
	createSlot(t, e, "s")
	e.Exec(t, "INSERT INTO t VALUES (1, 'a', NULL)")
	var flushed atomic.Uint64
	rec := newRecorder()
	r := start(t, e, Options{Slot: "s", StatusInterval: 20 * time.Millisecond}, rec, func(context.Context) (LSN, error) {
		return LSN(flushed.Load()), nil
	})
	rec.waitCommits(t, r, 1)
	end := rec.commits[0].EndLSN

	e.Exec(t, "CREATE TABLE unrelated (a int)")
	var walAfterDDL string
	if err := e.admin.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&walAfterDDL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // several status rounds
	if got := slotConfirmed(t, e, "s"); got != 0 && got > end {
		t.Fatalf("confirmed %s past the undurable commit %s", got, end)
	}

	flushed.Store(uint64(end))
	deadline := time.Now().Add(waitLimit)
	for slotConfirmed(t, e, "s") <= end {
		if time.Now().After(deadline) {
			t.Fatalf("slot stuck at %s although everything delivered is durable (WAL at %s)", slotConfirmed(t, e, "s"), walAfterDDL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopCanceled(t, r)
}

// TestFeedbackHoldsUnsavedMessages: a non-transactional message is not
// confirmed to the upstream, even by an idle stream that has handled
// everything, until Flushed has passed it: what the Handler keeps of it
// must survive a restart, as the upstream does not send it again.
func TestFeedbackHoldsUnsavedMessages(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, schema)
	createSlot(t, e, "s")
	e.Exec(t, "INSERT INTO t VALUES (1, 'a', NULL)")
	var msgLSN string
	if err := e.admin.QueryRow(context.Background(), "SELECT pg_logical_emit_message(false, 'p', 'claim')::text").Scan(&msgLSN); err != nil {
		t.Fatal(err)
	}
	var flushed atomic.Uint64
	var calls atomic.Int64
	rec := newRecorder()
	r := start(t, e, Options{Slot: "s", StatusInterval: 20 * time.Millisecond}, rec, func(context.Context) (LSN, error) {
		calls.Add(1)
		return LSN(flushed.Load()), nil
	})
	rec.waitCommits(t, r, 1)
	end := rec.commits[0].EndLSN
	flushed.Store(uint64(end))
	deadline := time.Now().Add(waitLimit)
	for !slices.Contains(rec.snapshot(), "MESSAGE p claim") {
		if time.Now().After(deadline) {
			t.Fatalf("message not delivered: %v", rec.snapshot())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var m Message
	rec.mu.Lock()
	m = rec.lastMessage
	rec.mu.Unlock()
	if m.LSN.String() != msgLSN {
		t.Fatalf("message LSN %s, pg_logical_emit_message returned %s", m.LSN, msgLSN)
	}
	waitConfirmed(t, e, "s", end)
	// Several status rounds while idle: the slot stays before the message.
	for n := calls.Load() + 5; calls.Load() < n; {
		time.Sleep(20 * time.Millisecond)
	}
	if got := slotConfirmed(t, e, "s"); got >= m.LSN {
		t.Fatalf("confirmed %s, past the message at %s that the Handler has not saved", got, m.LSN)
	}
	flushed.Store(uint64(m.LSN))
	for slotConfirmed(t, e, "s") < m.LSN {
		if time.Now().After(deadline) {
			t.Fatalf("slot stuck at %s although the message at %s is saved", slotConfirmed(t, e, "s"), m.LSN)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopCanceled(t, r)
}
