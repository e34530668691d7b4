package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgmesh/pgmesh/internal/conflict"
)

// sampleReport is a failed partition run with every chart populated.
func sampleReport() *Report {
	r := &Report{
		Scenario: "partition", Description: "Node n3 is cut off <for a while> & healed.",
		Nodes: nodes3, PostgresMajor: 15, Seed: 7, DurationSeconds: 12,
		StartedAt: at(0), Workload: WorkloadConfig{Rate: 40, Writers: 2, Keys: 500, HotKeys: 5, HotShare: 0.5, Counters: 5},
		Invariants: Invariants{Converged: false, LWWViolations: 2, Conflicts: map[string]int{"insert_exists": 3, "update_origin_differs": 9},
			Examples: []string{"last-update-wins: eval.accounts id 3: latest write is \"n2:1\""}},
		LagMS:              Percentiles{P50: 1, P95: 3000, P99: 3900, Max: 4000},
		ConvergenceSeconds: 1.5, SlotWALPeakBytes: 3 << 20,
		Faults: []Fault{{What: "n3 isolated (network partition)", Start: 4, End: 8}},
	}
	for i := range 60 {
		ts := float64(i) / 4
		for _, l := range []string{"n1->n3", "n3->n1"} {
			lag := 0.0
			if ts > 4 && ts < 8.5 {
				lag = (ts - 4) * 1000
			}
			r.LagSamples = append(r.LagSamples, LagSample{T: ts, Link: l, LagMS: lag})
			r.WALSamples = append(r.WALSamples, WALSample{T: ts, Link: l, Bytes: int64(lag) * 700})
		}
	}
	var writes []Write
	var log []conflict.Entry
	for s := range 12 {
		for _, n := range nodes3 {
			writes = append(writes, Write{Node: n, Op: OpUpsert, Table: accounts, Wall: at(s * 1000)})
		}
		log = append(log, conflict.Entry{Kind: "update_origin_differs", DetectedAt: at(s*1000 + 500)})
	}
	r.fill(writes, log, at(0), map[string]int{"n3": 2}, map[string]string{"n3": "connect: refused"})
	return r
}

// chromium finds Debian's chromium (or another Chrome build on PATH).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no headless browser found: the HTML report is checked in Chromium. Install Debian's chromium package " +
		"(apt-get install -y chromium; scripts/install-pg.sh via `make deps` should do it)")
	return ""
}

func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1280,2000"}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}

func TestReportJSONFields(t *testing.T) {
	dir := t.TempDir()
	if err := sampleReport().Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"converged", "lww_violations", "lost_increments", "unlogged_losses", "conflicts", "lag_ms",
		"convergence_seconds", "slot_wal_peak_bytes", "passed", "failures"} {
		if _, ok := m[f]; !ok {
			t.Errorf("report.json has no field %q", f)
		}
	}
	var lag map[string]float64
	if err := json.Unmarshal(m["lag_ms"], &lag); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"p50", "p95", "p99", "max"} {
		if _, ok := lag[p]; !ok {
			t.Errorf("lag_ms has no %q", p)
		}
	}
	if string(m["passed"]) != "false" || !strings.Contains(string(m["failures"]), "did not converge") {
		t.Errorf("a run with violations: passed %s, failures %s", m["passed"], m["failures"])
	}
}

// TestReportInChromium renders report.html in headless Chromium: the page
// loads from a file with the network unused, its charts are in the DOM,
// and the screenshot shows the verdict badge.
func TestReportInChromium(t *testing.T) {
	bin := chromium(t)
	dir := t.TempDir()
	r := sampleReport()
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}
	page := "file://" + filepath.Join(dir, "report.html")
	dom := string(runChromium(t, bin, "--dump-dom", page))
	for _, want := range []string{`id="chart-lag-svg"`, `id="chart-conflicts-svg"`, `id="chart-writes-svg"`, `id="chart-wal-svg"`,
		`id="invariants"`, "n3 isolated (network partition)", "lww_violations", "&lt;for a while&gt;"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered DOM lacks %s", want)
		}
	}
	if n := strings.Count(dom, `class="fault"`); n != 4 {
		t.Errorf("%d shaded fault windows in the DOM, want 4 (one per chart)", n)
	}
	if n := strings.Count(dom, "<polyline"); n < 2+1+3+2 {
		t.Errorf("%d chart lines in the DOM, want at least 8", n)
	}
	for _, bad := range []string{"http://", "https://", "<script"} {
		if strings.Contains(strings.ReplaceAll(dom, `xmlns="http://www.w3.org/2000/svg"`, ""), bad) {
			t.Errorf("the page refers to %q: it must be self-contained", bad)
		}
	}

	shot := filepath.Join(dir, "report.png")
	runChromium(t, bin, "--screenshot="+shot, page)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	// The FAILED badge is #c0392b: the page rendered with its styles.
	found := false
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < min(bounds.Max.Y, 200) && !found; y++ {
		for x := bounds.Min.X; x < bounds.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if r>>8 == 0xc0 && g>>8 == 0x39 && b>>8 == 0x2b {
				found = true
				break
			}
		}
	}
	if !found {
		t.Error("the screenshot does not show the red FAILED badge at the top")
	}
}
