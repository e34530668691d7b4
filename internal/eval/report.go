package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

// Report is the outcome of one run, written as report.json (these field
// names are a contract: CI and the README read them) and report.html.
type Report struct {
	Scenario        string         `json:"scenario"`
	Description     string         `json:"description"`
	Nodes           []string       `json:"nodes"`
	PostgresMajor   int            `json:"postgres_major"`
	Seed            uint64         `json:"seed"`
	DurationSeconds float64        `json:"duration_seconds"`
	StartedAt       time.Time      `json:"started_at"`
	Workload        WorkloadConfig `json:"workload"`
	// Passed is true when every invariant holds; Failures says which do not.
	Passed   bool     `json:"passed"`
	Failures []string `json:"failures"`
	Invariants
	LagMS Percentiles `json:"lag_ms"`
	// ConvergenceSeconds: after a fault healed while the nodes kept
	// writing (partition, crash, burst), the time until every node had
	// applied everything the others wrote before the heal; otherwise the
	// time from the end of the writes (faults healed) until every link had
	// caught up.
	ConvergenceSeconds float64 `json:"convergence_seconds"`
	// SlotWALPeakBytes is the most WAL any slot retained on its upstream.
	SlotWALPeakBytes int64                 `json:"slot_wal_peak_bytes"`
	Writes           map[string]NodeWrites `json:"writes"`
	Faults           []Fault               `json:"faults"`
	LagSamples       []LagSample           `json:"lag_samples"`
	WALSamples       []WALSample           `json:"wal_samples"`
	// ConflictsPerSecond: kind → conflicts detected in each second of the run.
	ConflictsPerSecond map[string][]int `json:"conflicts_per_second"`
	// WritesPerSecond: node → committed transactions in each second.
	WritesPerSecond map[string][]int `json:"writes_per_second"`
}

// Percentiles summarises lag samples.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// NodeWrites is what the workload did on one node.
type NodeWrites struct {
	Committed  int            `json:"committed"`
	ByOp       map[string]int `json:"by_op"`
	Failed     int            `json:"failed"` // transactions that failed (node down…), not retried
	FirstError string         `json:"first_error,omitempty"`
}

// percentiles uses the nearest-rank method.
func percentiles(samples []LagSample) Percentiles {
	if len(samples) == 0 {
		return Percentiles{}
	}
	v := make([]float64, len(samples))
	for i, s := range samples {
		v[i] = s.LagMS
	}
	slices.Sort(v)
	at := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(v)))) - 1
		return round1(v[max(0, min(i, len(v)-1))])
	}
	return Percentiles{P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: round1(v[len(v)-1])}
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// fill derives the per-node and per-second figures and the verdict.
func (r *Report) fill(writes []Write, log []conflict.Entry, start time.Time, errCounts map[string]int, firstErrs map[string]string) {
	r.Failures = r.Invariants.Failures()
	if r.Failures == nil {
		r.Failures = []string{}
	}
	r.Passed = len(r.Failures) == 0
	r.ConvergenceSeconds = math.Round(r.ConvergenceSeconds*100) / 100
	secs := int(math.Ceil(r.DurationSeconds))
	for _, s := range r.LagSamples {
		secs = max(secs, int(math.Ceil(s.T)))
	}
	bucket := func(t time.Time) int { return min(max(0, int(t.Sub(start).Seconds())), secs) }

	r.Writes = map[string]NodeWrites{}
	r.WritesPerSecond = map[string][]int{}
	for _, n := range r.Nodes {
		r.Writes[n] = NodeWrites{ByOp: map[string]int{}, Failed: errCounts[n], FirstError: firstErrs[n]}
		r.WritesPerSecond[n] = make([]int, secs+1)
	}
	for _, w := range writes {
		nw := r.Writes[w.Node]
		nw.Committed++
		nw.ByOp[string(w.Op)]++
		r.Writes[w.Node] = nw
		r.WritesPerSecond[w.Node][bucket(w.Wall)]++
	}
	r.ConflictsPerSecond = map[string][]int{}
	for _, e := range log {
		s, ok := r.ConflictsPerSecond[e.Kind]
		if !ok {
			s = make([]int, secs+1)
			r.ConflictsPerSecond[e.Kind] = s
		}
		s[bucket(e.DetectedAt)]++
	}
	if r.LagSamples == nil {
		r.LagSamples = []LagSample{}
	}
	if r.WALSamples == nil {
		r.WALSamples = []WALSample{}
	}
	if r.Faults == nil {
		r.Faults = []Fault{}
	}
}

// Write writes dir/report.json and dir/report.html.
func (r *Report) Write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	html, err := r.HTML()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.html"), html, 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
