package agent

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// handler serves /metrics (Prometheus), /healthz, the status page at / and
// what it shows as /status.json.
func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry(), promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", a.healthz)
	mux.HandleFunc("GET /status.json", a.statusJSON)
	mux.HandleFunc("GET /{$}", a.statusPage)
	return mux
}

// healthz answers 200 when every link of this agent applies what its
// upstream sends (streaming or catching up), 503 otherwise, with the link
// states as JSON either way.
func (a *Agent) healthz(w http.ResponseWriter, r *http.Request) {
	view, _, _ := a.mon.snapshot()
	views := map[string]LinkView{}
	for _, lv := range view.Links {
		views[lv.Link] = lv
	}
	states := map[string]string{}
	healthy := true
	for _, l := range a.currentLinks() {
		h := a.health(l, views)
		states[l.Name()] = h
		if h != HealthStreaming && h != HealthCatchingUp {
			healthy = false
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !healthy {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"healthy": healthy, "links": states})
}

// statusJSON serves the monitor's last View with the links' history.
func (a *Agent) statusJSON(w http.ResponseWriter, r *http.Request) {
	view, hist, conflicts := a.mon.snapshot()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		View
		History          map[string][]Sample `json:"history"`
		ConflictsHistory []ConflictSample    `json:"conflicts_history"`
	}{view, hist, conflicts})
}
