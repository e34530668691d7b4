package agent

import (
	"context"
	"encoding/json"
	"html/template"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgmesh/pgmesh/internal/joinstate"
)

// handler serves /metrics (Prometheus), /healthz and a status page at /.
func (a *Agent) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{a: a})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /{$}", a.statusPage)
	return mux
}

// healthz answers 200 when every link of this agent is streaming, 503
// otherwise, with the link states as JSON either way.
func (a *Agent) healthz(w http.ResponseWriter, r *http.Request) {
	states := map[string]string{}
	healthy := true
	for _, l := range a.currentLinks() {
		s := l.snapshot()
		states[l.Name()] = s.state
		if s.state != StateStreaming {
			healthy = false
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"healthy": healthy, "links": states})
}

// linkStatuses reads the status of this agent's links from the nodes.
func (a *Agent) linkStatuses(ctx context.Context) []LinkStatus {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	all, _ := Status(ctx, a.config())
	mine := map[string]bool{}
	for _, l := range a.currentLinks() {
		mine[l.Name()] = true
	}
	var out []LinkStatus
	for _, s := range all {
		if mine[s.Link] {
			out = append(out, s)
		}
	}
	return out
}

var statusTmpl = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>pgmesh agent</title>
<meta http-equiv="refresh" content="5">
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.bad{color:#b00}</style>
</head><body><h1>pgmesh agent — cluster {{.Cluster}}</h1>
<table><tr><th>link</th><th>state</th><th>lag bytes</th><th>lag s</th><th>last applied commit</th><th>slot WAL retained</th><th>problem</th></tr>
{{range .Links}}<tr><td>{{.Link}}</td><td{{if ne .State "streaming"}} class="bad"{{end}}>{{.State}}</td><td>{{.LagBytes}}</td><td>{{printf "%.1f" .LagSeconds}}</td><td>{{if .LastCommitTime}}{{.LastCommitTime.Format "2006-01-02 15:04:05.000"}}{{end}}</td><td>{{.RetainedWALBytes}}</td><td class="bad">{{.LastError}} {{.Problem}}</td></tr>
{{end}}</table><p><a href="/metrics">metrics</a> · <a href="/healthz">healthz</a></p></body></html>`))

func (a *Agent) statusPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusTmpl.Execute(w, map[string]any{"Cluster": a.config().Cluster, "Links": a.linkStatuses(r.Context())})
}

// collector exports link metrics at scrape time: counters from the running
// links, lag and retained WAL read from the nodes.
type collector struct{ a *Agent }

var (
	descUp       = prometheus.NewDesc("pgmesh_link_up", "1 when the link is streaming.", []string{"link"}, nil)
	descTxns     = prometheus.NewDesc("pgmesh_link_applied_transactions_total", "Remote transactions applied by this agent.", []string{"link"}, nil)
	descLagBytes = prometheus.NewDesc("pgmesh_link_lag_bytes", "Upstream WAL not yet confirmed by the downstream.", []string{"link"}, nil)
	descLagSecs  = prometheus.NewDesc("pgmesh_link_lag_seconds", "Age of the last applied commit while the link is behind, else 0.", []string{"link"}, nil)
	descRetained = prometheus.NewDesc("pgmesh_slot_retained_wal_bytes", "WAL retained on the upstream by the link's slot.", []string{"link", "slot"}, nil)
	descConflict = prometheus.NewDesc("pgmesh_link_conflicts_total", "Conflicts met and resolved by this agent, by kind.", []string{"link", "kind"}, nil)
	descNode     = prometheus.NewDesc("pgmesh_node_state", "1 for the node's state: ready, copying, catching_up, leaving, removed.", []string{"node", "state"}, nil)
	descCopyRows = prometheus.NewDesc("pgmesh_join_copied_rows", "Rows copied so far into a joining node, per table.", []string{"node", "table"}, nil)
	descCopyEst  = prometheus.NewDesc("pgmesh_join_estimated_rows", "Rows of the table on the source (planner estimate).", []string{"node", "table"}, nil)
	descCopyB    = prometheus.NewDesc("pgmesh_join_copied_bytes", "Bytes copied so far into a joining node, per table.", []string{"node", "table"}, nil)
	descCopyETA  = prometheus.NewDesc("pgmesh_join_eta_seconds", "Estimated time left to copy the table (0 when done).", []string{"node", "table"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descTxns, descLagBytes, descLagSecs, descRetained, descConflict,
		descNode, descCopyRows, descCopyEst, descCopyB, descCopyETA} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.a.currentLinks() {
		s := l.snapshot()
		up := 0.0
		if s.state == StateStreaming {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, l.Name())
		ch <- prometheus.MustNewConstMetric(descTxns, prometheus.CounterValue, float64(s.txns), l.Name())
		for kind, n := range l.conflictCounts() {
			ch <- prometheus.MustNewConstMetric(descConflict, prometheus.CounterValue, float64(n), l.Name(), kind)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range NodeStatuses(ctx, c.a.config()) {
		if n.Problem != "" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descNode, prometheus.GaugeValue, 1, n.Node, n.State)
		for _, t := range n.Tables {
			if n.State != joinstate.Copying {
				break
			}
			ch <- prometheus.MustNewConstMetric(descCopyRows, prometheus.GaugeValue, float64(t.Rows), n.Node, t.Name)
			ch <- prometheus.MustNewConstMetric(descCopyEst, prometheus.GaugeValue, float64(t.EstRows), n.Node, t.Name)
			ch <- prometheus.MustNewConstMetric(descCopyB, prometheus.GaugeValue, float64(t.Bytes), n.Node, t.Name)
			ch <- prometheus.MustNewConstMetric(descCopyETA, prometheus.GaugeValue, t.ETA().Seconds(), n.Node, t.Name)
		}
	}
	for _, s := range c.a.linkStatuses(context.Background()) {
		if s.Problem != "" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, float64(s.LagBytes), s.Link)
		ch <- prometheus.MustNewConstMetric(descLagSecs, prometheus.GaugeValue, s.LagSeconds, s.Link)
		ch <- prometheus.MustNewConstMetric(descRetained, prometheus.GaugeValue, float64(s.RetainedWALBytes), s.Link, s.Slot)
	}
}
