package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgmesh/pgmesh/internal/joinstate"
)

// Metric labels. A link is named up->down; upstream and downstream repeat
// its ends so that queries can aggregate by node.
var (
	linkLabels = []string{"link", "upstream", "downstream"}
	slotLabels = []string{"link", "upstream", "downstream", "slot"}
)

func linkDesc(name, help string, extra ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, append(append([]string{}, linkLabels...), extra...), nil)
}

// The metrics the agent exports. Counters count since the agent started
// (they survive link restarts); gauges read from the nodes are as of the
// monitor's last round (Options.SampleInterval).
var (
	descLinkUp = linkDesc("pgmesh_link_up",
		"1 when the link applies what its upstream sends (state streaming or catching_up), else 0.")
	descLinkState = linkDesc("pgmesh_link_state",
		"1 for the link's current health, 0 for the others: connecting, streaming, catching_up, retrying, blocked, unreachable, stopped.", "state")
	descLagSeconds = linkDesc("pgmesh_link_lag_seconds",
		"How far behind the downstream is in time: age of the last applied commit while more than 64 KiB behind, else 0.")
	descLagBytes = linkDesc("pgmesh_link_lag_bytes",
		"Upstream WAL not yet confirmed by the downstream (current WAL position minus the slot's confirmed_flush_lsn).")
	descTxns = linkDesc("pgmesh_link_applied_transactions_total",
		"Remote transactions committed on the downstream by this agent.")
	descChanges = linkDesc("pgmesh_link_applied_changes_total",
		"Row changes and truncates in the remote transactions committed by this agent.")
	descRetries = linkDesc("pgmesh_link_retries_total",
		"Sessions of the link that failed (could not connect, or broke) and were retried after a backoff.")
	descApplyRetries = linkDesc("pgmesh_link_apply_retries_total",
		"Remote transactions rolled back and run again at once on the same session (deadlock, serialization failure or lock timeout): the link was not restarted.")
	descRestarts = linkDesc("pgmesh_link_restarts_total",
		"Streaming sessions that ended (failure or config reload) and were started again.")
	descLastError = linkDesc("pgmesh_link_last_error_timestamp_seconds",
		"Unix time of the link's last failure; 0 when it never failed since the agent started.")
	descBlockedSince = linkDesc("pgmesh_link_blocked_since_timestamp_seconds",
		"Unix time of the first failure of the remote transaction the link is stuck on; absent when it is not stuck.")
	descConflicts = linkDesc("pgmesh_link_conflicts_total",
		"Conflicts met in committed remote transactions (one pgmesh.conflict_log row each), by table, kind and resolution.",
		"table", "kind", "resolution")
	descDDLPending = linkDesc("pgmesh_link_ddl_pending",
		"DDL run on the upstream that the downstream has neither applied nor skipped.")
	descDDLFailed = linkDesc("pgmesh_link_ddl_failed",
		"DDL of the upstream that failed on the downstream and is not applied or skipped since.")
	descDDLOldest = linkDesc("pgmesh_link_ddl_oldest_pending_timestamp_seconds",
		"Unix time the oldest pending DDL of the link was run upstream; absent when none is pending.")
	descRetained = prometheus.NewDesc("pgmesh_slot_retained_wal_bytes",
		"WAL kept on the upstream's disk for the link's slot (current WAL position minus restart_lsn).", slotLabels, nil)
	descSafeWAL = prometheus.NewDesc("pgmesh_slot_safe_wal_size_bytes",
		"WAL that can still be written upstream before the slot is in danger of losing WAL it needs (max_slot_wal_keep_size); absent when unlimited.", slotLabels, nil)
	descWALStatus = prometheus.NewDesc("pgmesh_slot_wal_status",
		"1 for the slot's wal_status (reserved, extended, unreserved, lost), 0 for the others.", append(append([]string{}, slotLabels...), "wal_status"), nil)
	descSlotActive = prometheus.NewDesc("pgmesh_slot_active",
		"1 when a walsender streams the link's slot.", slotLabels, nil)
	descNodeState = prometheus.NewDesc("pgmesh_node_state",
		"1 for the node's join state (ready, copying, catching_up, leaving, removed), 0 for the others.", []string{"node", "state"}, nil)
	descCopyRows = prometheus.NewDesc("pgmesh_join_copied_rows",
		"Rows copied so far into a joining node, per table.", []string{"node", "table"}, nil)
	descCopyEst = prometheus.NewDesc("pgmesh_join_estimated_rows",
		"Rows of the table on the join's source (planner estimate).", []string{"node", "table"}, nil)
	descCopyBytes = prometheus.NewDesc("pgmesh_join_copied_bytes",
		"Bytes copied so far into a joining node, per table.", []string{"node", "table"}, nil)
	descCopyETA = prometheus.NewDesc("pgmesh_join_eta_seconds",
		"Estimated time left to copy the table into a joining node (0 when done).", []string{"node", "table"}, nil)
	descNodeUp = prometheus.NewDesc("pgmesh_node_up",
		"1 when the agent could query the node in its last round.", []string{"node"}, nil)
	descClock = prometheus.NewDesc("pgmesh_node_clock_offset_seconds",
		"The node's clock minus the agent's, measured over one round trip; compare nodes of one agent for their skew.", []string{"node"}, nil)
	descTombstones = prometheus.NewDesc("pgmesh_node_tombstones",
		"Rows in pgmesh.tombstone on a downstream node of this agent.", []string{"node"}, nil)
	descConflictLog = prometheus.NewDesc("pgmesh_node_conflict_log_rows",
		"Rows in pgmesh.conflict_log on a downstream node of this agent.", []string{"node"}, nil)
	descReloadOK = prometheus.NewDesc("pgmesh_agent_config_last_reload_successful",
		"1 when the last config reload (SIGHUP) succeeded, 0 when the file did not load.", nil, nil)
	descReloadAt = prometheus.NewDesc("pgmesh_agent_config_last_reload_success_timestamp_seconds",
		"Unix time of the last successful config load.", nil, nil)
)

// walStatuses are the values of pg_replication_slots.wal_status.
var walStatuses = []string{"reserved", "extended", "unreserved", "lost"}

// applyTimeBuckets span a one-row transaction on a local server to a bulk
// load.
var applyTimeBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

func newApplyTimeHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgmesh_link_transaction_apply_duration_seconds",
		Help:    "Time from a remote transaction's BEGIN queued on the downstream to its COMMIT confirmed (including the wait behind the transactions pipelined before it).",
		Buckets: applyTimeBuckets,
	}, linkLabels)
}

// registry returns a registry with every metric of the agent.
func (a *Agent) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{a: a}, a.applyTime)
	return reg
}

// collector exports the agent's metrics at scrape time: counters from the
// links, the rest from the monitor's last View (no query per scrape).
type collector struct{ a *Agent }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLinkUp, descLinkState, descLagSeconds, descLagBytes, descTxns, descChanges,
		descRetries, descApplyRetries, descRestarts, descLastError, descBlockedSince, descConflicts, descDDLPending, descDDLFailed, descDDLOldest,
		descRetained, descSafeWAL, descWALStatus, descSlotActive, descNodeUp, descClock, descTombstones, descConflictLog,
		descReloadOK, descReloadAt, descNodeState, descCopyRows, descCopyEst, descCopyBytes, descCopyETA} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	view, _, _ := c.a.mon.snapshot()
	views := map[string]LinkView{}
	for _, lv := range view.Links {
		views[lv.Link] = lv
	}
	for _, l := range c.a.currentLinks() {
		ls := []string{l.Name(), l.Up, l.Down}
		s := l.snapshot()
		lv, sampled := views[l.Name()]
		h := c.a.health(l, views)
		gauge(descLinkUp, b2f(h == HealthStreaming || h == HealthCatchingUp), ls...)
		for _, st := range Healths {
			if st != HealthNoAgent {
				gauge(descLinkState, b2f(st == h), append(ls, st)...)
			}
		}
		counter(descTxns, float64(s.txns), ls...)
		counter(descChanges, float64(s.changes), ls...)
		counter(descRetries, float64(s.retries), ls...)
		counter(descApplyRetries, float64(s.applyRetries), ls...)
		counter(descRestarts, float64(s.restarts), ls...)
		gauge(descLastError, unixOrZero(s.lastErrAt), ls...)
		if b := l.blockedTxn(); b != nil {
			gauge(descBlockedSince, unixOrZero(b.Since), ls...)
		}
		for k, n := range l.conflictCounts() {
			counter(descConflicts, float64(n), append(ls, k.Table, k.Kind, k.Resolution)...)
		}
		if !sampled {
			continue
		}
		if lv.DDLKnown {
			gauge(descDDLPending, float64(lv.DDLPending), ls...)
			gauge(descDDLFailed, float64(lv.DDLFailed), ls...)
			if lv.DDLOldestPending != nil {
				gauge(descDDLOldest, unixOrZero(*lv.DDLOldestPending), ls...)
			}
		}
		// Slot figures only when the upstream answered for the slot.
		if !lv.SlotRead {
			continue
		}
		gauge(descLagBytes, float64(lv.LagBytes), ls...)
		gauge(descLagSeconds, lv.LagSeconds, ls...)
		sl := append(ls, lv.Slot)
		gauge(descRetained, float64(lv.RetainedWALBytes), sl...)
		gauge(descSlotActive, b2f(lv.SlotActive), sl...)
		if lv.SafeWALBytes != nil {
			gauge(descSafeWAL, float64(*lv.SafeWALBytes), sl...)
		}
		for _, w := range walStatuses {
			gauge(descWALStatus, b2f(w == lv.WALStatus), append(sl, w)...)
		}
	}
	for _, n := range view.Nodes {
		gauge(descNodeUp, b2f(n.Up), n.Name)
		if !n.Up {
			continue
		}
		gauge(descClock, n.ClockOffsetSeconds, n.Name)
		if n.Tombstones != nil {
			gauge(descTombstones, float64(*n.Tombstones), n.Name)
			gauge(descConflictLog, float64(*n.ConflictLogRows), n.Name)
		}
	}
	c.a.mu.Lock()
	ok, at := c.a.reloadOK, c.a.reloadAt
	c.a.mu.Unlock()
	gauge(descReloadOK, b2f(ok))
	gauge(descReloadAt, unixOrZero(at))
	for _, j := range view.Joins {
		if j.Problem != "" {
			continue
		}
		for _, st := range joinstate.States {
			gauge(descNodeState, b2f(st == j.State), j.Node, st)
		}
		if j.State != joinstate.Copying {
			continue
		}
		for _, t := range j.Tables {
			gauge(descCopyRows, float64(t.Rows), j.Node, t.Name)
			gauge(descCopyEst, float64(t.EstRows), j.Node, t.Name)
			gauge(descCopyBytes, float64(t.Bytes), j.Node, t.Name)
			gauge(descCopyETA, t.ETA().Seconds(), j.Node, t.Name)
		}
	}
}

// health is a link's health as of the monitor's last round; before the
// first round, what the agent knows alone.
func (a *Agent) health(l *link, views map[string]LinkView) string {
	if lv, ok := views[l.Name()]; ok {
		return lv.Health
	}
	return health(l.snapshot().state, true, l.blockedTxn() != nil, false, true, 0)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unixOrZero(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
