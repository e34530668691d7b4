package eval

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/human"
)

// HTML renders the report as one self-contained page: inline SVG charts,
// inline CSS, no script and nothing fetched from the network.
func (r *Report) HTML() ([]byte, error) {
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, r.view()); err != nil {
		return nil, fmt.Errorf("render report: %w", err)
	}
	return b.Bytes(), nil
}

type invariantRow struct {
	Name, Value, Expected, Meaning string
	OK                             bool
}

type pageView struct {
	R          *Report
	Verdict    string
	Invariants []invariantRow
	Measures   []invariantRow
	Charts     []chartView
	Conflicts  []kv
}

type chartView struct {
	ID, Title, Explain string
	SVG                template.HTML
}

type kv struct {
	K string
	V int
}

func (r *Report) view() pageView {
	v := pageView{R: r, Verdict: "PASSED"}
	if !r.Passed {
		v.Verdict = "FAILED"
	}
	total := 0
	for k, n := range r.Conflicts {
		v.Conflicts = append(v.Conflicts, kv{k, n})
		total += n
	}
	slices.SortFunc(v.Conflicts, func(a, b kv) int { return strings.Compare(a.K, b.K) })
	v.Invariants = []invariantRow{
		{"converged", fmt.Sprint(r.Converged), "true", "Every table of the workload is identical on every node once the links have caught up (pgmesh diff).", r.Converged},
		{"lww_violations", fmt.Sprint(r.LWWViolations), "0", "Keys whose final value is not the last write by commit time (ties: the node listed first), deletes included.", r.LWWViolations == 0},
		{"lost_increments", fmt.Sprint(r.LostIncrements), "0", "How far the counters (merged by adding increments, not by last-write-wins) are from the sum of the increments the workload made.", r.LostIncrements == 0},
		{"unlogged_losses", fmt.Sprint(r.UnloggedLosses), "0", fmt.Sprintf("Writes that vanished silently: not in the final data, not overwritten by a later write that had seen them (%d were), and not in any node's conflict log (%d were there).", r.LossesOverwritten, r.LossesLogged), r.UnloggedLosses == 0},
	}
	v.Measures = []invariantRow{
		{Name: "conflicts", Value: fmt.Sprint(total), Meaning: "Concurrent writes to the same row that pgmesh had to resolve; every losing version is kept in pgmesh.conflict_log."},
		{Name: "lag_ms p50 / p95 / p99 / max", Value: fmt.Sprintf("%.0f / %.0f / %.0f / %.0f", r.LagMS.P50, r.LagMS.P95, r.LagMS.P99, r.LagMS.Max), Meaning: "How long a write on one node took to become visible on another, sampled on every link every 250 ms."},
		{Name: "convergence_seconds", Value: fmt.Sprintf("%.2f", r.ConvergenceSeconds), Meaning: "After a fault that healed while the nodes kept writing: the time until every node had everything the others wrote before the heal. Otherwise: the time from the end of the writes until every link had caught up."},
		{Name: "slot_wal_peak_bytes", Value: human.Bytes(r.SlotWALPeakBytes), Meaning: "The most WAL a replication slot kept on its node's disk for a peer that was behind."},
	}
	end := r.DurationSeconds
	for _, s := range r.LagSamples {
		end = max(end, s.T)
	}
	v.Charts = []chartView{
		{"chart-lag", "Replication lag per link", "Each line is one link (upstream → downstream). Shaded bands are the faults.",
			lagChart(r, end)},
		{"chart-conflicts", "Conflicts per second, by kind", "insert_exists: both sides inserted the key; update_origin_differs: both updated it; update_deleted / delete_origin_differs: an update raced a delete; delete_missing: both deleted it.",
			perSecondChart("chart-conflicts", r.ConflictsPerSecond, r.Faults, end, "conflicts/s")},
		{"chart-writes", "Writes per second, by node", "Committed transactions of the workload on each node.",
			perSecondChart("chart-writes", r.WritesPerSecond, r.Faults, end, "writes/s")},
		{"chart-wal", "WAL retained by each slot", "What a slot keeps on its upstream's disk until the peer confirms it.",
			walChart(r, end)},
	}
	return v
}

// series is one line of a chart.
type series struct {
	name string
	pts  [][2]float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#393b79", "#637939"}

func lagChart(r *Report, end float64) template.HTML {
	by := map[string]*series{}
	var names []string
	for _, s := range r.LagSamples {
		if by[s.Link] == nil {
			by[s.Link] = &series{name: s.Link}
			names = append(names, s.Link)
		}
		by[s.Link].pts = append(by[s.Link].pts, [2]float64{s.T, s.LagMS})
	}
	slices.Sort(names)
	ss := make([]series, len(names))
	for i, n := range names {
		ss[i] = *by[n]
	}
	return lineChart("chart-lag", ss, r.Faults, end, "lag", msLabel)
}

func walChart(r *Report, end float64) template.HTML {
	by := map[string]*series{}
	var names []string
	for _, s := range r.WALSamples {
		if by[s.Link] == nil {
			by[s.Link] = &series{name: s.Link}
			names = append(names, s.Link)
		}
		by[s.Link].pts = append(by[s.Link].pts, [2]float64{s.T, float64(s.Bytes)})
	}
	slices.Sort(names)
	ss := make([]series, len(names))
	for i, n := range names {
		ss[i] = *by[n]
	}
	return lineChart("chart-wal", ss, r.Faults, end, "retained WAL", func(v float64) string { return human.Bytes(int64(v)) })
}

func perSecondChart(id string, m map[string][]int, faults []Fault, end float64, unit string) template.HTML {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	ss := make([]series, len(names))
	for i, n := range names {
		ss[i].name = n
		for sec, c := range m[n] {
			ss[i].pts = append(ss[i].pts, [2]float64{float64(sec) + 0.5, float64(c)})
		}
	}
	return lineChart(id, ss, faults, end, unit, func(v float64) string { return fmt.Sprintf("%g", v) })
}

func msLabel(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%gs", math.Round(v/100)/10)
	}
	return fmt.Sprintf("%gms", v)
}

// niceStep returns a round tick step giving about n ticks up to max.
func niceStep(maxV float64, n int) float64 {
	if maxV <= 0 {
		return 1
	}
	raw := maxV / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

// lineChart draws series over seconds 0..end as an SVG, with the fault
// windows shaded and a legend below.
func lineChart(id string, ss []series, faults []Fault, end float64, yName string, yLabel func(float64) string) template.HTML {
	const w, h, left, right, top, bottom = 1100.0, 300.0, 80.0, 20.0, 24.0, 40.0
	legendRows := (len(ss) + 5) / 6
	total := h + float64(legendRows)*20 + 10
	ymax := 0.0
	for _, s := range ss {
		for _, p := range s.pts {
			ymax = max(ymax, p[1])
		}
	}
	ystep := niceStep(ymax, 5)
	ytop := math.Max(ystep, math.Ceil(ymax/ystep)*ystep)
	end = math.Max(end, 1)
	x := func(t float64) float64 { return left + (w-left-right)*min(t, end)/end }
	y := func(v float64) float64 { return top + (h-top-bottom)*(1-v/ytop) }
	esc := template.HTMLEscapeString

	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="%s-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" width="100%%" role="img" aria-label="%s">`, id, w, total, esc(yName))
	fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#fff" stroke="#ccc"/>`, left, top, w-left-right, h-top-bottom)
	for i, f := range faults {
		fEnd := f.End
		if fEnd < 0 {
			fEnd = end
		}
		fmt.Fprintf(&b, `<rect class="fault" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#f4a261" fill-opacity="0.25"><title>%s</title></rect>`,
			x(f.Start), top, math.Max(1, x(fEnd)-x(f.Start)), h-top-bottom, esc(f.What))
		// Labels of overlapping windows go one under the other.
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="#a0522d">%s</text>`, x(f.Start)+3, top+13+float64(i)*14, esc(f.What))
	}
	for v := 0.0; v <= ytop+ystep/2; v += ystep {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#eee"/>`, left, w-right, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="end" fill="#555">%s</text>`, left-6, y(v)+4, esc(yLabel(v)))
	}
	xstep := niceStep(end, 10)
	for t := 0.0; t <= end+xstep/100; t += xstep {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="middle" fill="#555">%gs</text>`, x(t), h-bottom+16, t)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" text-anchor="middle" fill="#555">seconds since the start of the run</text>`, left+(w-left-right)/2, h-6)
	if len(ss) == 0 {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="14" text-anchor="middle" fill="#777">none</text>`, left+(w-left-right)/2, top+(h-top-bottom)/2)
	}
	for i, s := range ss {
		color := palette[i%len(palette)]
		var pts strings.Builder
		for _, p := range s.pts {
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(p[0]), y(p[1]))
		}
		fmt.Fprintf(&b, `<polyline class="series" fill="none" stroke="%s" stroke-width="1.5" points="%s"><title>%s</title></polyline>`, color, strings.TrimSpace(pts.String()), esc(s.name))
		lx := left + float64(i%6)*170
		ly := h + 8 + float64(i/6)*20
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="14" height="4" fill="%s"/><text x="%.1f" y="%.1f" font-size="12" fill="#333">%s</text>`, lx, ly+4, color, lx+20, ly+9, esc(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built from escaped parts above
}

var pageTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"pct": func(f float64) float64 { return 100 * f },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>pgmesh evaluation: {{.R.Scenario}} — {{.Verdict}}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1160px; color: #222; line-height: 1.45; }
h1 { margin-bottom: 4px; }
.verdict { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 600; }
.PASSED { background: #2a9d4b; } .FAILED { background: #c0392b; }
table { border-collapse: collapse; margin: 8px 0 20px; }
th, td { border: 1px solid #ddd; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.ok { color: #2a9d4b; font-weight: 600; } td.bad { color: #c0392b; font-weight: 600; }
.muted { color: #666; font-size: 0.92em; }
section.chart { margin: 18px 0 28px; }
code { background: #f3f3f3; padding: 0 3px; }
</style></head><body>
<h1>pgmesh evaluation — scenario <em>{{.R.Scenario}}</em> <span class="verdict {{.Verdict}}">{{.Verdict}}</span></h1>
<p class="muted">{{len .R.Nodes}} nodes ({{range $i, $n := .R.Nodes}}{{if $i}}, {{end}}{{$n}}{{end}}) on PostgreSQL {{.R.PostgresMajor}},
writes for {{.R.DurationSeconds}} s from {{.R.StartedAt.Format "2006-01-02 15:04:05 MST"}}, seed {{.R.Seed}}.</p>
<p>{{.R.Description}}</p>
<p>Every node accepted writes at the same time ({{.R.Workload.Rate}} transactions per second per node, {{.R.Workload.Writers}} connections each):
updates and deletes of <code>accounts</code> (ids 1–{{.R.Workload.Keys}}, of which {{.R.Workload.HotKeys}} "hot" ids get {{printf "%.0f" (pct .R.Workload.HotShare)}}% of the writes, so nodes often write the same row at once),
increments of {{.R.Workload.Counters}} shared <code>counters</code> (merged by adding the increments) and inserts into <code>events</code> (ids from per-node snowflake sequences).
Every link between two nodes went through a network proxy that the scenario can slow down or cut.
After the writes stopped and every fault was healed, the harness waited until every node had caught up, then checked the invariants below
against its own record of every committed write (node, row, value, commit time).</p>

<h2>Invariants</h2>
{{if .R.Failures}}<p><strong>Failed:</strong> {{range .R.Failures}}{{.}}. {{end}}</p>{{end}}
<table id="invariants">
<tr><th>check</th><th>result</th><th>must be</th><th>what it means</th></tr>
{{range .Invariants}}<tr><td><code>{{.Name}}</code></td><td class="{{if .OK}}ok{{else}}bad{{end}}">{{.Value}}</td><td>{{.Expected}}</td><td>{{.Meaning}}</td></tr>
{{end}}</table>
{{if .R.Examples}}<p>First problems found:</p><ul>{{range .R.Examples}}<li><code>{{.}}</code></li>{{end}}</ul>{{end}}
{{if .R.Diagnosis}}<p>What each node holds of the keys of the unlogged losses:</p><ul>{{range .R.Diagnosis}}<li><code>{{.}}</code></li>{{end}}</ul>{{end}}

<h2>Measurements</h2>
<table id="measures">
<tr><th>measure</th><th>value</th><th>what it means</th></tr>
{{range .Measures}}<tr><td><code>{{.Name}}</code></td><td>{{.Value}}</td><td>{{.Meaning}}</td></tr>
{{end}}</table>
{{if .Conflicts}}<table id="conflicts"><tr><th>conflict kind</th><th>count</th></tr>
{{range .Conflicts}}<tr><td><code>{{.K}}</code></td><td>{{.V}}</td></tr>{{end}}</table>{{end}}

{{range .Charts}}<section class="chart" id="{{.ID}}"><h2>{{.Title}}</h2><p class="muted">{{.Explain}}</p>{{.SVG}}</section>
{{end}}

<h2>Faults</h2>
{{if .R.Faults}}<table id="faults"><tr><th>fault</th><th>from</th><th>to</th></tr>
{{range .R.Faults}}<tr><td>{{.What}}</td><td>{{printf "%.1f" .Start}} s</td><td>{{printf "%.1f" .End}} s</td></tr>{{end}}</table>
{{else}}<p>None: this is the reference run.</p>{{end}}

<h2>Writes per node</h2>
<table id="writes"><tr><th>node</th><th>committed</th><th>by operation</th><th>failed (node unreachable…)</th></tr>
{{range $n, $w := .R.Writes}}<tr><td>{{$n}}</td><td>{{$w.Committed}}</td><td>{{range $op, $c := $w.ByOp}}{{$op}} {{$c}}&nbsp; {{end}}</td><td>{{$w.Failed}}{{if $w.FirstError}} <span class="muted">(first: {{$w.FirstError}})</span>{{end}}</td></tr>
{{end}}</table>
<p class="muted">Generated by <code>pgmesh eval</code>. The raw numbers are in report.json next to this file.</p>
</body></html>
`))
