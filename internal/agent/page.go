package agent

import (
	_ "embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/pgmesh/pgmesh/internal/human"
)

//go:embed page.html
var pageHTML string

// pageTmpl is the status page.
var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"sub": func(a, b float64) float64 { return a - b },
}).Parse(pageHTML))

func (a *Agent) statusPage(w http.ResponseWriter, r *http.Request) {
	view, hist, conflicts := a.mon.snapshot()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := pageTmpl.Execute(w, buildPage(view, hist, conflicts, a.opts.SampleInterval)); err != nil {
		a.log.Warn("agent: render status page", "err", err)
	}
}

// page is what the template renders: the View in human units and the
// geometry of the pictures.
type page struct {
	View
	Agent     string // "node n2" or "all nodes"
	Updated   string
	Problems  int
	Mesh      meshPic
	Links     []pageLink
	Blocked   []pageBlocked
	Charts    []chart
	Conflicts []pageConflict
	DDL       []pageDDL
	Nodes     []pageNode
}

type pageLink struct {
	Name, Health, Lag, Behind, Rate, Applied, SlotWAL, WALStatus, Restarts, Problem string
	Mine                                                                            bool
}

type pageBlocked struct {
	BlockedTxn
	Committed, For, Where string
}

type pageConflict struct {
	ConflictView
	When, Age, LocalCommit, RemoteCommit string
}

type pageDDL struct {
	PendingDDL
	Age string
}

type pageNode struct {
	Name, Offset, Tombstones, ConflictLog, Problem string
	Up                                             bool
}

func buildPage(v View, hist map[string][]Sample, conflicts []ConflictSample, interval time.Duration) page {
	now := v.At
	if now.IsZero() {
		now = time.Now()
	}
	p := page{View: v, Agent: "all nodes", Updated: now.Local().Format("15:04:05")}
	if v.Node != "" {
		p.Agent = "node " + v.Node
	}
	p.Mesh = layoutMesh(v)
	for _, l := range v.Links {
		if l.Mine && l.Health != HealthStreaming && l.Health != HealthCatchingUp {
			p.Problems++
		}
		pl := pageLink{Name: l.Link, Health: l.Health, Mine: l.Mine, Lag: "–", Behind: "–", SlotWAL: "–", WALStatus: l.WALStatus,
			Rate: "–", Applied: "–", Restarts: "–", Problem: firstNonEmpty(l.LastError, l.Problem)}
		if l.SlotRead {
			pl.Lag, pl.Behind, pl.SlotWAL = humanSeconds(l.LagSeconds), human.Bytes(l.LagBytes), human.Bytes(l.RetainedWALBytes)
		}
		if l.Mine {
			pl.Rate = fmt.Sprintf("%.1f/s", l.TxnsPerSecond)
			pl.Applied = fmt.Sprintf("%d txn, %d changes", l.AppliedTxns, l.AppliedChanges)
			pl.Restarts = fmt.Sprintf("%d / %d", l.Restarts, l.Retries)
		}
		p.Links = append(p.Links, pl)
	}
	for _, b := range v.Blocked {
		p.Blocked = append(p.Blocked, pageBlocked{BlockedTxn: b,
			Committed: b.CommitTime.Local().Format("2006-01-02 15:04:05.000"),
			For:       humanSeconds(now.Sub(b.Since).Seconds()),
			Where:     strings.TrimSpace(b.What + keyText(b.Key))})
	}
	for _, c := range v.Conflicts {
		p.Conflicts = append(p.Conflicts, pageConflict{ConflictView: c,
			When: c.DetectedAt.Local().Format("15:04:05.000"), Age: humanSeconds(now.Sub(c.DetectedAt).Seconds()) + " ago",
			LocalCommit: commitText(c.LocalOrigin, c.LocalCommitTime), RemoteCommit: commitText(c.RemoteOrigin, c.RemoteCommitTime)})
	}
	for _, d := range v.PendingDDL {
		p.DDL = append(p.DDL, pageDDL{PendingDDL: d, Age: humanSeconds(now.Sub(d.EmittedAt).Seconds())})
	}
	for _, n := range v.Nodes {
		pn := pageNode{Name: n.Name, Up: n.Up, Problem: n.Problem, Offset: "–", Tombstones: "–", ConflictLog: "–"}
		if n.Up {
			pn.Offset = signedMillis(n.ClockOffsetSeconds)
		}
		if n.Up && n.Tombstones != nil {
			pn.Tombstones, pn.ConflictLog = fmt.Sprint(*n.Tombstones), fmt.Sprint(*n.ConflictLogRows)
		}
		p.Nodes = append(p.Nodes, pn)
	}
	p.Charts = buildCharts(v, hist, conflicts, now)
	return p
}

func keyText(k string) string {
	if k == "" {
		return ""
	}
	return " key " + k
}

func commitText(origin string, t *time.Time) string {
	s := firstNonEmpty(origin, "?")
	if t != nil {
		s += " at " + t.Local().Format("15:04:05.000")
	}
	return s
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// humanSeconds renders a duration in the unit a human reads best.
func humanSeconds(s float64) string {
	switch {
	case s <= 0:
		return "0 ms"
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case s < 60:
		return fmt.Sprintf("%.1f s", s)
	case s < 3600:
		return fmt.Sprintf("%.1f min", s/60)
	case s < 86400:
		return fmt.Sprintf("%.1f h", s/3600)
	}
	return fmt.Sprintf("%.1f d", s/86400)
}

func signedMillis(s float64) string {
	return fmt.Sprintf("%+.1f ms", s*1000)
}

// --- the mesh picture -------------------------------------------------------

type meshPic struct {
	W, H  int
	Nodes []picNode
	Links []picLink
}

type picNode struct {
	Name, Sub string
	X, Y, R   float64
	Up        bool
}

type picLink struct {
	Name, Health, D, Label string
	LX, LY                 float64
	Mine                   bool
}

const nodeRadius = 34

func layoutMesh(v View) meshPic {
	m := meshPic{W: 600, H: 400}
	n := len(v.Nodes)
	cx, cy, r := float64(m.W)/2, float64(m.H)/2, 135.0
	pos := map[string][2]float64{}
	for i, node := range v.Nodes {
		// Two nodes side by side; more around a circle, the first on top.
		a := -math.Pi/2 + 2*math.Pi*float64(i)/float64(n)
		if n == 2 {
			a = math.Pi * float64(1-i)
		}
		x, y := cx+r*math.Cos(a)*1.25, cy+r*math.Sin(a)
		pos[node.Name] = [2]float64{x, y}
		sub := "unreachable"
		if node.Up {
			sub = "clock " + signedMillis(node.ClockOffsetSeconds)
		}
		m.Nodes = append(m.Nodes, picNode{Name: node.Name, Sub: sub, X: x, Y: y, R: nodeRadius, Up: node.Up})
	}
	for _, l := range v.Links {
		p0, p1 := pos[l.Upstream], pos[l.Downstream]
		dx, dy := p1[0]-p0[0], p1[1]-p0[1]
		d := math.Hypot(dx, dy)
		if d == 0 {
			continue
		}
		// The two directions of a pair bend to opposite sides.
		nx, ny := -dy/d, dx/d
		c := [2]float64{(p0[0]+p1[0])/2 + nx*38, (p0[1]+p1[1])/2 + ny*38}
		s := toward(p0, c, nodeRadius+2)
		e := toward(p1, c, nodeRadius+7)
		label := linkLabel(l)
		// The label sits beyond the curve's middle, on its outer side.
		mx, my := 0.25*s[0]+0.5*c[0]+0.25*e[0], 0.25*s[1]+0.5*c[1]+0.25*e[1]
		m.Links = append(m.Links, picLink{Name: l.Link, Health: l.Health, Mine: l.Mine, Label: label,
			D:  fmt.Sprintf("M%.1f,%.1f Q%.1f,%.1f %.1f,%.1f", s[0], s[1], c[0], c[1], e[0], e[1]),
			LX: mx + nx*14, LY: my + ny*14 + 4})
	}
	return m
}

// toward returns the point at distance dist from p in the direction of q.
func toward(p, q [2]float64, dist float64) [2]float64 {
	dx, dy := q[0]-p[0], q[1]-p[1]
	d := math.Hypot(dx, dy)
	return [2]float64{p[0] + dx/d*dist, p[1] + dy/d*dist}
}

func linkLabel(l LinkView) string {
	switch l.Health {
	case HealthUnreachable, HealthBlocked, HealthRetrying, HealthStopped, HealthNoAgent, HealthConnecting:
		return strings.ReplaceAll(l.Health, "_", " ")
	}
	return humanSeconds(l.LagSeconds) + " · " + human.Bytes(l.LagBytes)
}

// --- charts -----------------------------------------------------------------

type chart struct {
	ID, Title string
	W, H      int
	X0, X1    float64 // plot area
	Y0, Y1    float64
	Series    []series
	YTicks    []tick
	XTicks    []tick
	Empty     bool
}

type series struct{ Name, Color, Points, Last string }

type tick struct {
	Pos   float64
	Label string
}

var palette = []string{"#2f6fdf", "#e4572e", "#17a398", "#9b5de5", "#f2a541", "#d6336c", "#6c757d", "#2b9348"}

// point is one value at one time.
type point struct {
	t time.Time
	v float64
}

func buildCharts(v View, hist map[string][]Sample, conflicts []ConflictSample, now time.Time) []chart {
	var links []string
	for _, l := range v.Links {
		if l.Mine {
			links = append(links, l.Link)
		}
	}
	lag, rate := map[string][]point{}, map[string][]point{}
	for _, name := range links {
		h := hist[name]
		for i, s := range h {
			if s.LagKnown {
				lag[name] = append(lag[name], point{s.At, s.LagSeconds})
			}
			if i > 0 {
				dt := s.At.Sub(h[i-1].At).Seconds()
				if dt > 0 && s.Txns >= h[i-1].Txns {
					rate[name] = append(rate[name], point{s.At, float64(s.Txns-h[i-1].Txns) / dt})
				}
			}
		}
	}
	kinds := conflictKinds(conflicts)
	perKind := map[string][]point{}
	for i := 1; i < len(conflicts); i++ {
		dt := conflicts[i].At.Sub(conflicts[i-1].At).Seconds()
		if dt <= 0 {
			continue
		}
		for _, k := range kinds {
			a, b := conflicts[i-1].ByKind[k], conflicts[i].ByKind[k]
			if b >= a {
				perKind[k] = append(perKind[k], point{conflicts[i].At, float64(b-a) / dt})
			}
		}
	}
	start := now.Add(-10 * time.Minute)
	for _, h := range hist {
		if len(h) > 0 && h[0].At.After(start) {
			start = h[0].At
		}
	}
	return []chart{
		lineChart("chart-lag", "Lag per link", links, lag, start, now, humanSeconds, niceSeconds),
		lineChart("chart-rate", "Applied transactions per second, per link", links, rate, start, now, perSecond, niceCeil),
		lineChart("chart-conflicts", "Conflicts per second, by kind", kinds, perKind, start, now, perSecond, niceCeil),
	}
}

func perSecond(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2g/s", v)
	}
	return fmt.Sprintf("%.0f/s", v)
}

func lineChart(id, title string, names []string, data map[string][]point, start, end time.Time, format func(float64) string, nice func(float64) float64) chart {
	c := chart{ID: id, Title: title, W: 560, H: 180, X0: 64, X1: 545, Y0: 12, Y1: 152}
	top := 0.0
	for _, n := range names {
		for _, p := range data[n] {
			top = max(top, p.v)
		}
	}
	top = nice(top)
	span := end.Sub(start).Seconds()
	if span <= 0 {
		span = 1
	}
	x := func(t time.Time) float64 { return c.X0 + (c.X1-c.X0)*math.Max(0, t.Sub(start).Seconds())/span }
	y := func(v float64) float64 { return c.Y1 - (c.Y1-c.Y0)*v/top }
	for i, n := range names {
		pts := data[n]
		var b strings.Builder
		for _, p := range pts {
			fmt.Fprintf(&b, "%.1f,%.1f ", x(p.t), y(p.v))
		}
		s := series{Name: n, Color: palette[i%len(palette)], Points: strings.TrimSpace(b.String()), Last: "–"}
		if len(pts) > 0 {
			s.Last = format(pts[len(pts)-1].v)
		}
		c.Series = append(c.Series, s)
	}
	c.Empty = len(c.Series) == 0
	for _, f := range []float64{0, 0.5, 1} {
		c.YTicks = append(c.YTicks, tick{Pos: y(top * f), Label: format(top * f)})
	}
	c.XTicks = []tick{{c.X0, "−" + humanSeconds(span)}, {c.X1, "now"}}
	sort.SliceStable(c.Series, func(i, j int) bool { return c.Series[i].Name < c.Series[j].Name })
	return c
}

// niceSeconds rounds a duration in seconds up to one whose half reads
// well in ms, s, min or h.
func niceSeconds(v float64) float64 {
	if v < 60 {
		return niceCeil(v)
	}
	for _, s := range []float64{120, 240, 600, 1200, 1800, 3600, 7200, 4 * 3600, 12 * 3600, 86400} {
		if v <= s {
			return s
		}
	}
	return math.Ceil(v/86400) * 86400
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten (1 for 0).
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}
