package agent

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/joinstate"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Health is what a link is doing, as the metrics and the status page show
// it: the supervisor's state refined with what the nodes say.
const (
	HealthConnecting  = "connecting"  // starting a session
	HealthWaiting     = "waiting"     // a node of the link is copying its data (node add) or leaving
	HealthStreaming   = "streaming"   // applying, caught up
	HealthCatchingUp  = "catching_up" // applying, more than IdleLagBytes behind
	HealthRetrying    = "retrying"    // the last session failed; waiting to retry
	HealthBlocked     = "blocked"     // a remote transaction keeps failing to apply
	HealthUnreachable = "unreachable" // the upstream or the downstream node cannot be reached
	HealthStopped     = "stopped"     // its agent stopped
	HealthNoAgent     = "no_agent"    // no agent applies it (another agent's link whose agent is gone)
)

// Healths lists every health, in the order of the pgmesh_link_state series.
var Healths = []string{HealthConnecting, HealthWaiting, HealthStreaming, HealthCatchingUp, HealthRetrying,
	HealthBlocked, HealthUnreachable, HealthStopped, HealthNoAgent}

// View is what the agent knows of the mesh at one moment: the status page
// and /status.json show it, the metrics read from it.
type View struct {
	Cluster string     `json:"cluster"`
	Node    string     `json:"node,omitempty"` // the node whose inbound links this agent runs; "" = all
	At      time.Time  `json:"at"`
	Nodes   []NodeView `json:"nodes"`
	// Links are every link of the mesh; Mine marks this agent's.
	Links      []LinkView     `json:"links"`
	Conflicts  []ConflictView `json:"recent_conflicts"` // newest first, on this agent's downstream nodes
	PendingDDL []PendingDDL   `json:"pending_ddl"`      // of this agent's links
	Blocked    []BlockedTxn   `json:"blocked"`          // of this agent's links
	// Joins are the nodes' join states (ready, copying, catching_up,
	// leaving…) with a copy's progress per table.
	Joins []NodeStatus `json:"joins"`
}

// NodeView is one node as the agent sees it.
type NodeView struct {
	Name    string `json:"name"`
	Up      bool   `json:"up"`
	Problem string `json:"problem,omitempty"`
	// ClockOffsetSeconds is the node's clock minus the agent's, measured
	// over one round trip (error at most half of it). The difference
	// between two nodes' offsets is their skew.
	ClockOffsetSeconds float64 `json:"clock_offset_seconds"`
	// Counted on the downstream nodes of this agent's links only.
	Tombstones      *int64 `json:"tombstones,omitempty"`
	ConflictLogRows *int64 `json:"conflict_log_rows,omitempty"`
}

// LinkView is one link with what the agent adds to its status.
type LinkView struct {
	LinkStatus
	Mine   bool   `json:"mine"`
	Health string `json:"health"`
	// SlotRead tells that the upstream answered for the slot (the lag and
	// slot fields are meaningful).
	SlotRead bool `json:"-"`
	// The following are known for this agent's links only.
	AppliedTxns    uint64     `json:"applied_transactions,omitempty"`
	AppliedChanges uint64     `json:"applied_changes,omitempty"`
	TxnsPerSecond  float64    `json:"transactions_per_second,omitempty"`
	Retries        uint64     `json:"retries,omitempty"`
	Restarts       uint64     `json:"restarts,omitempty"`
	LastErrorAt    *time.Time `json:"last_error_at,omitempty"`
	// DDL of the upstream not yet applied on the downstream (DDLKnown
	// false: the ddl_logs could not be read).
	DDLKnown         bool       `json:"-"`
	DDLPending       int        `json:"ddl_pending,omitempty"`
	DDLFailed        int        `json:"ddl_failed,omitempty"`
	DDLOldestPending *time.Time `json:"ddl_oldest_pending,omitempty"`
}

// ConflictView is one pgmesh.conflict_log row, images cut to imageMax.
type ConflictView struct {
	Node             string     `json:"node"`
	ID               int64      `json:"id"`
	DetectedAt       time.Time  `json:"detected_at"`
	Table            string     `json:"table"`
	Kind             string     `json:"kind"`
	Resolution       string     `json:"resolution"`
	Key              string     `json:"key"`
	LocalRow         string     `json:"local_row,omitempty"`
	RemoteRow        string     `json:"remote_row,omitempty"`
	LocalCommitTime  *time.Time `json:"local_commit_time,omitempty"`
	RemoteCommitTime *time.Time `json:"remote_commit_time,omitempty"`
	LocalOrigin      string     `json:"local_origin,omitempty"`
	RemoteOrigin     string     `json:"remote_origin,omitempty"`
}

// PendingDDL is a DDL of a link's upstream that its downstream has not
// applied (or skipped) yet.
type PendingDDL struct {
	Link      string    `json:"link"`
	ID        string    `json:"id"`
	SQL       string    `json:"sql"`
	EmittedAt time.Time `json:"emitted_at"`
	Failed    bool      `json:"failed"`
	Error     string    `json:"error,omitempty"`
}

// Sample is one point of a link's history.
type Sample struct {
	At time.Time `json:"at"`
	// LagKnown is false when the upstream could not be read: the lag is
	// unknown, not 0.
	LagKnown   bool    `json:"lag_known"`
	LagSeconds float64 `json:"lag_seconds"`
	LagBytes   int64   `json:"lag_bytes"`
	Txns       uint64  `json:"applied_transactions"` // cumulative
	Health     string  `json:"health"`
}

// ConflictSample is the agent's conflict counters by kind at one moment.
type ConflictSample struct {
	At     time.Time         `json:"at"`
	ByKind map[string]uint64 `json:"by_kind"` // cumulative
}

// historyLen is the number of samples kept: 10 minutes at the default
// interval.
const historyLen = 300

// imageMax bounds a row image on the status page.
const imageMax = 2048

// recentConflicts is how many conflict_log rows the page shows.
const recentConflicts = 12

// monitor reads the nodes every SampleInterval into a View and keeps the
// recent history of this agent's links.
type monitor struct {
	a     *Agent
	nodes []*nodeProbe

	mu        sync.Mutex
	view      View
	history   map[string][]Sample // by link, oldest first
	conflicts []ConflictSample
	lastCount time.Time
	counts    map[string]nodeCounts // by node
	ddlLogs   map[string][]ddlRow   // by node, when its last read succeeded
	joins     []NodeStatus          // last read, see joining
}

type nodeCounts struct{ tombstones, conflictLog int64 }

type ddlRow struct {
	id, origin, status, err, sql string
	emittedAt                    time.Time
}

// nodeProbe is the monitor's connection to one node.
type nodeProbe struct {
	node config.Node
	conn *pgx.Conn
}

func newMonitor(a *Agent) *monitor {
	m := &monitor{a: a, history: map[string][]Sample{}, counts: map[string]nodeCounts{}, ddlLogs: map[string][]ddlRow{}}
	for _, n := range a.config().Nodes {
		m.nodes = append(m.nodes, &nodeProbe{node: n})
	}
	m.view = View{Cluster: a.config().Cluster, Node: a.opts.Node}
	return m
}

func (m *monitor) run(ctx context.Context) {
	defer func() {
		for _, p := range m.nodes {
			if p.conn != nil {
				p.conn.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	tick := time.NewTicker(m.a.opts.SampleInterval)
	defer tick.Stop()
	for {
		m.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// snapshot returns the last View and the history.
func (m *monitor) snapshot() (View, map[string][]Sample, []ConflictSample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := make(map[string][]Sample, len(m.history))
	for k, v := range m.history {
		h[k] = slices.Clone(v)
	}
	return m.view, h, slices.Clone(m.conflicts)
}

// probeResult is what one node answered in one round.
type probeResult struct {
	up        bool
	problem   string
	offset    float64
	links     map[string]LinkStatus // by link: the parts read on this node
	linkErrs  map[string]string
	conflicts []ConflictView
	counts    *nodeCounts
	ddl       []ddlRow
	ddlRead   bool
	join      *NodeStatus // when read this round
}

// syncNodes follows the nodes of the config, which `pgmesh node add` and
// `node remove` change while the agent runs.
func (m *monitor) syncNodes(ctx context.Context) {
	want := m.a.config().Nodes
	same := len(want) == len(m.nodes)
	for i := 0; same && i < len(want); i++ {
		same = want[i] == m.nodes[i].node
	}
	if same {
		return
	}
	for _, p := range m.nodes {
		if p.conn != nil {
			p.conn.Close(context.WithoutCancel(ctx))
		}
	}
	m.nodes = m.nodes[:0]
	for _, n := range want {
		m.nodes = append(m.nodes, &nodeProbe{node: n})
	}
}

// joining tells whether a node was last seen copying, catching up or
// leaving: then its join state is read at every round (a copy's progress),
// else at counting rounds only.
func (m *monitor) joining() bool {
	for _, j := range m.joins {
		if j.State != "" && j.State != joinstate.Ready {
			return true
		}
	}
	return false
}

// sample reads every node (in parallel, each on its own connection) and
// builds the View.
func (m *monitor) sample(ctx context.Context) {
	m.syncNodes(ctx)
	now := time.Now()
	count := now.Sub(m.lastCount) >= m.a.opts.CountInterval
	readJoins := count || m.joining() || len(m.joins) != len(m.nodes)
	mine := map[string]*link{}
	downstream := map[string]bool{}
	for _, l := range m.a.currentLinks() {
		mine[l.Name()] = l
		downstream[l.Down] = true
	}
	all := m.a.config().Links()
	results := make([]probeResult, len(m.nodes))
	var wg sync.WaitGroup
	for i, p := range m.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, max(m.a.opts.SampleInterval, 5*time.Second))
			defer cancel()
			results[i] = p.probe(pctx, all, downstream[p.node.Name], count, readJoins)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}

	byNode := map[string]*probeResult{}
	if readJoins {
		joins := make([]NodeStatus, len(m.nodes))
		for i, p := range m.nodes {
			joins[i] = NodeStatus{Node: p.node.Name, Problem: results[i].problem}
			if j := results[i].join; j != nil {
				joins[i] = *j
			}
		}
		m.joins = joins
	}
	v := View{Cluster: m.a.config().Cluster, Node: m.a.opts.Node, At: now, Joins: m.joins}
	for i, p := range m.nodes {
		r := &results[i]
		byNode[p.node.Name] = r
		nv := NodeView{Name: p.node.Name, Up: r.up, Problem: r.problem, ClockOffsetSeconds: r.offset}
		if downstream[p.node.Name] {
			c, ok := m.counts[p.node.Name]
			if r.counts != nil {
				c, ok = *r.counts, true
			}
			if ok {
				m.counts[p.node.Name] = c
				nv.Tombstones, nv.ConflictLogRows = &c.tombstones, &c.conflictLog
			}
		}
		if count {
			if r.ddlRead {
				m.ddlLogs[p.node.Name] = r.ddl
			} else {
				delete(m.ddlLogs, p.node.Name)
			}
		}
		v.Nodes = append(v.Nodes, nv)
		v.Conflicts = append(v.Conflicts, r.conflicts...)
	}
	if count {
		m.lastCount = now
	}
	sort.Slice(v.Conflicts, func(i, j int) bool { return v.Conflicts[i].DetectedAt.After(v.Conflicts[j].DetectedAt) })
	if len(v.Conflicts) > recentConflicts {
		v.Conflicts = v.Conflicts[:recentConflicts]
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	prev := map[string]LinkView{}
	for _, lv := range m.view.Links {
		prev[lv.Link] = lv
	}
	for _, tl := range all {
		lv := m.linkView(tl, byNode, mine[tl.Name()], now)
		if l := mine[tl.Name()]; l != nil {
			p, ok := prev[tl.Name()]
			if dt := now.Sub(m.view.At).Seconds(); ok && dt > 0 && lv.AppliedTxns >= p.AppliedTxns {
				lv.TxnsPerSecond = float64(lv.AppliedTxns-p.AppliedTxns) / dt
			}
			m.history[tl.Name()] = push(m.history[tl.Name()], Sample{At: now, LagKnown: lv.SlotRead, LagSeconds: lv.LagSeconds, LagBytes: lv.LagBytes, Txns: lv.AppliedTxns, Health: lv.Health})
			if b := l.blockedTxn(); b != nil {
				v.Blocked = append(v.Blocked, *b)
			}
			v.PendingDDL = append(v.PendingDDL, m.pendingDDL(tl)...)
		}
		v.Links = append(v.Links, lv)
	}
	byKind := map[string]uint64{}
	for _, l := range m.a.currentLinks() {
		for k, n := range l.conflictCounts() {
			byKind[k.Kind] += n
		}
	}
	m.conflicts = push(m.conflicts, ConflictSample{At: now, ByKind: byKind})
	m.view = v
}

// push appends s, dropping the oldest beyond historyLen.
func push[T any](h []T, s T) []T {
	if len(h) >= historyLen {
		h = append(h[:0], h[len(h)-historyLen+1:]...)
	}
	return append(h, s)
}

// linkView combines what the two ends of a link said with what the agent
// knows of it (l is nil for another agent's link).
func (m *monitor) linkView(tl topology.Link, byNode map[string]*probeResult, l *link, now time.Time) LinkView {
	lv := LinkView{LinkStatus: newLinkStatus(tl), Mine: l != nil}
	up, down := byNode[tl.Up], byNode[tl.Down]
	if r, ok := up.links[tl.Name()]; ok {
		lv.SlotRead = true
		lv.SlotActive, lv.LagBytes, lv.RetainedWALBytes, lv.WALStatus, lv.SafeWALBytes = r.SlotActive, r.LagBytes, r.RetainedWALBytes, r.WALStatus, r.SafeWALBytes
	}
	if r, ok := down.links[tl.Name()]; ok {
		lv.State, lv.LastError, lv.LastCommitTime, lv.AppliedLSN = r.State, r.LastError, r.LastCommitTime, r.AppliedLSN
	}
	for _, p := range []string{up.problem, up.linkErrs[tl.Name()], down.problem, down.linkErrs[tl.Name()]} {
		if p != "" && p != lv.Problem {
			lv.Problem = joinProblem(lv.Problem, p)
		}
	}
	unreachable := !up.up || !down.up
	var blocked bool
	if l != nil {
		// The agent's own knowledge is fresher than what it recorded.
		s := l.snapshot()
		lv.State, lv.LastError = s.state, s.lastErr
		if !s.lastCommitTime.IsZero() {
			t := s.lastCommitTime
			lv.LastCommitTime = &t
		}
		lv.AppliedTxns, lv.AppliedChanges, lv.Retries, lv.Restarts = s.txns, s.changes, s.retries, s.restarts
		if !s.lastErrAt.IsZero() {
			t := s.lastErrAt
			lv.LastErrorAt = &t
		}
		blocked = l.blockedTxn() != nil
		lv.DDLKnown, lv.DDLPending, lv.DDLFailed, lv.DDLOldestPending = m.ddlCounts(tl)
	}
	lv.setLagSeconds(now)
	lv.Health = health(lv.State, l != nil, blocked, unreachable, lv.SlotActive, lv.LagBytes)
	return lv
}

// health refines a link's state. For another agent's link the recorded
// state may be stale (that agent died): an inactive slot says nobody
// streams it.
func health(state string, mine, blocked, unreachable, slotActive bool, lagBytes int64) string {
	switch {
	case state == StateStopped:
		return HealthStopped
	case unreachable:
		return HealthUnreachable
	case blocked:
		return HealthBlocked
	case state == StateNoAgent || !mine && state == StateStreaming && !slotActive:
		return HealthNoAgent
	case state == StateRetrying:
		return HealthRetrying
	case state == StateConnecting:
		return HealthConnecting
	case state == StateWaiting:
		return HealthWaiting
	case lagBytes > IdleLagBytes:
		return HealthCatchingUp
	}
	return HealthStreaming
}

// ddlCounts compares the upstream's own DDL with the downstream's
// ddl_log; known is false when either could not be read.
func (m *monitor) ddlCounts(tl topology.Link) (known bool, pending, failed int, oldest *time.Time) {
	if _, ok := m.ddlLogs[tl.Up]; !ok {
		return false, 0, 0, nil
	}
	if _, ok := m.ddlLogs[tl.Down]; !ok {
		return false, 0, 0, nil
	}
	p := m.pendingDDL(tl)
	for _, d := range p {
		if d.Failed {
			failed++
		}
		if oldest == nil || d.EmittedAt.Before(*oldest) {
			t := d.EmittedAt
			oldest = &t
		}
	}
	return true, len(p), failed, oldest
}

// pendingDDL lists the DDL emitted on the link's upstream that its
// downstream has neither applied nor skipped. A DDL that did not replicate
// (CONCURRENTLY) is the operator's to run and is not tracked.
func (m *monitor) pendingDDL(tl topology.Link) []PendingDDL {
	upLog, ok1 := m.ddlLogs[tl.Up]
	downLog, ok2 := m.ddlLogs[tl.Down]
	if !ok1 || !ok2 {
		return nil
	}
	down := map[string]ddlRow{}
	for _, r := range downLog {
		down[r.id] = r
	}
	var out []PendingDDL
	for _, r := range upLog {
		if r.origin != tl.Up || r.status != "applied" {
			continue
		}
		d, ok := down[r.id]
		if ok && (d.status == "applied" || d.status == "skipped") {
			continue
		}
		out = append(out, PendingDDL{Link: tl.Name(), ID: r.id, SQL: r.sql, EmittedAt: r.emittedAt, Failed: d.status == "failed", Error: d.err})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].EmittedAt.Before(out[j].EmittedAt) })
	return out
}

// probe reads, on one node: its clock, the slots of the links it feeds,
// the recorded state of the links it applies, and — when it is a
// downstream of this agent — its recent conflicts (and, on counting
// rounds, its tombstones and conflict_log rows). On counting rounds it
// reads its ddl_log as well. A failed query drops the connection; the next
// round connects again.
func (p *nodeProbe) probe(ctx context.Context, all []topology.Link, downstream, count, joins bool) probeResult {
	r := probeResult{links: map[string]LinkStatus{}, linkErrs: map[string]string{}}
	if p.conn == nil || p.conn.IsClosed() {
		c, err := pg.Connect(ctx, p.node.Name, p.node.DSN, "pgmesh agent monitor")
		if err != nil {
			r.problem = err.Error()
			return r
		}
		p.conn = c
	}
	fail := func(err error) probeResult {
		p.conn.Close(context.WithoutCancel(ctx))
		p.conn = nil
		return probeResult{problem: err.Error(), links: map[string]LinkStatus{}, linkErrs: map[string]string{}}
	}
	t0 := time.Now()
	var server time.Time
	if err := p.conn.QueryRow(ctx, "SELECT pg_catalog.clock_timestamp()").Scan(&server); err != nil {
		return fail(fmt.Errorf("node %s: read clock: %w", p.node.Name, err))
	}
	rtt := time.Since(t0)
	r.up = true
	r.offset = server.Sub(t0.Add(rtt / 2)).Seconds()

	for _, tl := range all {
		s := newLinkStatus(tl)
		var err error
		switch p.node.Name {
		case tl.Up:
			err = readSlot(ctx, p.conn, &s)
		case tl.Down:
			err = readLinkState(ctx, p.conn, &s)
		default:
			continue
		}
		if err != nil {
			if p.conn.IsClosed() || ctx.Err() != nil {
				return fail(err)
			}
			r.linkErrs[tl.Name()] = err.Error()
			continue
		}
		r.links[tl.Name()] = s
	}
	if downstream {
		cs, err := readConflicts(ctx, p.conn, p.node.Name)
		if err != nil {
			return fail(err)
		}
		r.conflicts = cs
		if count {
			var c nodeCounts
			err := p.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pgmesh.tombstone), (SELECT count(*) FROM pgmesh.conflict_log)`).Scan(&c.tombstones, &c.conflictLog)
			if err != nil {
				return fail(fmt.Errorf("node %s: count tombstones and conflict_log rows: %w", p.node.Name, err))
			}
			r.counts = &c
		}
	}
	if count {
		// Small: one row per DDL statement the cluster ever ran.
		rows, err := p.conn.Query(ctx, `SELECT id, origin_node, status, coalesce(error, ''), left(sql, 500), emitted_at FROM pgmesh.ddl_log`)
		if err == nil {
			r.ddl, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (ddlRow, error) {
				var d ddlRow
				var at *time.Time
				err := row.Scan(&d.id, &d.origin, &d.status, &d.err, &d.sql, &at)
				if at != nil {
					d.emittedAt = *at
				}
				return d, err
			})
		}
		if err != nil && (p.conn.IsClosed() || ctx.Err() != nil) {
			return fail(fmt.Errorf("node %s: read pgmesh.ddl_log: %w", p.node.Name, err))
		}
		r.ddlRead = err == nil
	}
	if joins {
		st, err := joinstate.Read(ctx, p.conn)
		if err != nil {
			return fail(fmt.Errorf("node %s: read join state: %w", p.node.Name, err))
		}
		r.join = joinStatus(p.node.Name, st)
	}
	return r
}

// readConflicts reads the newest conflict_log rows of a node.
func readConflicts(ctx context.Context, conn *pgx.Conn, node string) ([]ConflictView, error) {
	rows, err := conn.Query(ctx, `
SELECT id, detected_at, table_name, kind, resolution, coalesce(key::text, ''),
       coalesce(left(local_row::text, $1), ''), coalesce(left(remote_row::text, $1), ''),
       local_commit_time, remote_commit_time, coalesce(local_origin, ''), coalesce(remote_origin, '')
FROM pgmesh.conflict_log ORDER BY id DESC LIMIT $2`, imageMax, recentConflicts)
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.conflict_log: %w", node, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ConflictView, error) {
		c := ConflictView{Node: node}
		err := row.Scan(&c.ID, &c.DetectedAt, &c.Table, &c.Kind, &c.Resolution, &c.Key, &c.LocalRow, &c.RemoteRow,
			&c.LocalCommitTime, &c.RemoteCommitTime, &c.LocalOrigin, &c.RemoteOrigin)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: read pgmesh.conflict_log: %w", node, err)
	}
	return out, nil
}

// conflictKinds returns the kinds seen in the samples, sorted.
func conflictKinds(h []ConflictSample) []string {
	kinds := map[string]bool{}
	for _, s := range h {
		for k := range maps.Keys(s.ByKind) {
			kinds[k] = true
		}
	}
	return slices.Sorted(maps.Keys(kinds))
}
