package agent

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgmesh/pgmesh/internal/ddl"
	"github.com/pgmesh/pgmesh/internal/sandbox/sandboxtest"
)

// brokenMesh is a 3-node mesh where everything an operator must see goes
// wrong at once, watched by an agent that runs every link:
//   - n1 and n2 inserted the same key before the links ran: a conflict on
//     each of them, logged with both row images;
//   - n2 refuses a row of n1 (a CHECK constraint only n2 has, which looks
//     the value up in a list of banned values of n2's): link n1->n2 is
//     blocked on that transaction;
//   - a DDL of n2 fails on n1 (the index exists there already): link
//     n2->n1 is blocked on it and the DDL is pending, failed;
//   - n3 is cut off (its server unreachable, as if stopped) after its links
//     streamed: its four links are unreachable.
type brokenMesh struct {
	env  *sandboxtest.Env
	a    *Agent
	base string // the agent's HTTP base URL
}

func newBrokenMesh(t *testing.T) *brokenMesh {
	t.Helper()
	env := sandboxtest.New(t, 3)
	table := `CREATE TABLE t (id int PRIMARY KEY, v text)`
	initMesh(t, env, [][]string{
		{table, `CREATE INDEX t_v ON t (v)`},
		{table, `CREATE SCHEMA local`, `CREATE TABLE local.banned (v text PRIMARY KEY)`, `INSERT INTO local.banned VALUES ('poison')`,
			`CREATE FUNCTION local.allowed(text) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
			 AS $$ SELECT NOT EXISTS (SELECT FROM local.banned b WHERE b.v = $1) $$`,
			`ALTER TABLE t ADD CONSTRAINT no_poison CHECK (local.allowed(v))`},
		{table},
	})
	env.Exec(t, 0, `INSERT INTO t VALUES (1, 'one from n1')`)
	env.Exec(t, 1, `INSERT INTO t VALUES (1, 'one from n2')`)

	cfg, net := throughProxy(t, env, "n3")
	a, base := startAgent(t, cfg, Options{SampleInterval: 200 * time.Millisecond, CountInterval: 200 * time.Millisecond})
	eventually(t, 60*time.Second, "every link streaming and both conflicts logged", func() (bool, string) {
		v := statusOf(t, base)
		for _, h := range healths(v) {
			if h != HealthStreaming {
				return false, fmtHealths(v)
			}
		}
		return len(v.Conflicts) >= 2, fmtHealths(v)
	})

	env.Exec(t, 0, `INSERT INTO t VALUES (2, 'poison')`)
	if _, err := ddl.Emit(context.Background(), env.Config, "n2", `CREATE INDEX t_v ON t (v)`, ddl.EmitOptions{Force: true}); err != nil {
		t.Fatalf("emit DDL on n2: %v", err)
	}
	// n3 applies both before it is cut off.
	eventually(t, 60*time.Second, "n3 has the row and the index", func() (bool, string) {
		var rows, idx int
		err := env.Conn(t, 2).QueryRow(context.Background(),
			`SELECT (SELECT count(*) FROM t WHERE id = 2), (SELECT count(*) FROM pg_indexes WHERE indexname = 't_v')`).Scan(&rows, &idx)
		return err == nil && rows == 1 && idx == 1, "not yet"
	})
	if err := net.Cut("n3"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"n1->n2": HealthBlocked, "n2->n1": HealthBlocked,
		"n1->n3": HealthUnreachable, "n2->n3": HealthUnreachable, "n3->n1": HealthUnreachable, "n3->n2": HealthUnreachable,
	}
	eventually(t, 60*time.Second, "the broken links show as broken", func() (bool, string) {
		v := statusOf(t, base)
		h := healths(v)
		for l, w := range want {
			if h[l] != w {
				return false, fmtHealths(v)
			}
		}
		return len(v.PendingDDL) == 1 && v.PendingDDL[0].Failed, fmtHealths(v)
	})
	return &brokenMesh{env: env, a: a, base: base}
}

func TestBrokenMeshIsVisible(t *testing.T) {
	m := newBrokenMesh(t)

	t.Run("status", func(t *testing.T) {
		v := statusOf(t, m.base)
		byLink := map[string]BlockedTxn{}
		for _, b := range v.Blocked {
			byLink[b.Link] = b
		}
		poison := byLink["n1->n2"]
		if poison.Table != "public.t" || poison.Key != "id=2" || !strings.Contains(poison.Error, "no_poison") || poison.CommitLSN == "" || poison.Attempts < 1 {
			t.Errorf("blocked transaction of n1->n2: %+v, want the insert of id=2 into public.t refused by no_poison", poison)
		}
		// The blocked transaction is recorded on the downstream, where
		// `pgmesh skip` and `pgmesh status` read it.
		n2 := m.env.Inspect(t, 1)
		eventually(t, 30*time.Second, "n2 records what n1->n2 is blocked on", func() (bool, string) {
			var lsn *string
			err := n2.QueryRow(context.Background(),
				`SELECT blocked->>'commit_lsn' FROM pgmesh.link_state WHERE upstream = 'n1'`).Scan(&lsn)
			return err == nil && lsn != nil && *lsn == poison.CommitLSN, fmt.Sprint(lsn, err)
		})
		if d := byLink["n2->n1"]; !strings.Contains(d.What, "pgmesh.ddl") || !strings.Contains(d.Error, "already exists") {
			t.Errorf("blocked transaction of n2->n1: %+v, want the DDL message failing on the existing index", d)
		}
		if len(v.PendingDDL) != 1 || v.PendingDDL[0].Link != "n2->n1" || !strings.Contains(v.PendingDDL[0].Error, "already exists") {
			t.Errorf("pending DDL %+v, want the index of n2 failed on n1", v.PendingDDL)
		}
		for _, n := range v.Nodes {
			if n.Up == (n.Name == "n3") {
				t.Errorf("node %s up=%v (%s)", n.Name, n.Up, n.Problem)
			}
		}
		images := map[string]bool{}
		for _, c := range v.Conflicts {
			if c.Kind == "insert_exists" && c.LocalRow != "" && c.RemoteRow != "" {
				images[c.Node] = true
			}
		}
		if !images["n1"] || !images["n2"] {
			t.Errorf("recent conflicts %+v: want insert_exists with both images on n1 and n2", v.Conflicts)
		}
		if resp := get503(t, m.base+"/healthz"); resp != 503 {
			t.Errorf("/healthz answered %d with broken links, want 503", resp)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		text := get(t, m.base+"/metrics")
		promtoolCheckMetrics(t, text)
		for _, w := range []string{
			`pgmesh_link_state{downstream="n2",link="n1->n2",state="blocked",upstream="n1"} 1`,
			`pgmesh_link_state{downstream="n3",link="n1->n3",state="unreachable",upstream="n1"} 1`,
			`pgmesh_link_up{downstream="n2",link="n1->n2",upstream="n1"} 0`,
			`pgmesh_link_up{downstream="n1",link="n3->n1",upstream="n3"} 0`,
			`pgmesh_link_up{downstream="n3",link="n2->n3",upstream="n2"} 0`,
			`pgmesh_link_up{downstream="n2",link="n3->n2",upstream="n3"} 0`,
			`pgmesh_link_conflicts_total{downstream="n2",kind="insert_exists",link="n1->n2",resolution="keep_local",table="public.t",upstream="n1"} 1`,
			`pgmesh_link_conflicts_total{downstream="n1",kind="insert_exists",link="n2->n1",resolution="apply_remote",table="public.t",upstream="n2"} 1`,
			`pgmesh_link_ddl_pending{downstream="n1",link="n2->n1",upstream="n2"} 1`,
			`pgmesh_link_ddl_failed{downstream="n1",link="n2->n1",upstream="n2"} 1`,
			`pgmesh_node_up{node="n3"} 0`,
			`pgmesh_slot_wal_status{downstream="n2",link="n1->n2",slot="pgmesh_n1_n2",upstream="n1",wal_status="reserved"} 1`,
		} {
			if !strings.Contains(text, w) {
				t.Errorf("/metrics lacks %s", w)
			}
		}
		// Every metric the agent registers is exported in this state, but
		// the slot's safe WAL size (max_slot_wal_keep_size is unlimited
		// here) and a copy's progress (no node joins: e2e TestNodeAdd
		// reads them).
		for _, name := range registeredMetrics(t) {
			if name == "pgmesh_slot_safe_wal_size_bytes" || strings.HasPrefix(name, "pgmesh_join_") {
				continue
			}
			if !regexp.MustCompile(`(?m)^` + name + `(_bucket|_sum|_count)?[{ ]`).MatchString(text) {
				t.Errorf("/metrics has no sample of %s", name)
			}
		}
		for _, l := range []string{"n1->n2", "n2->n1"} {
			if !regexp.MustCompile(`pgmesh_link_blocked_since_timestamp_seconds\{[^}]*link="` + regexp.QuoteMeta(l) + `"[^}]*\} [0-9.e+]+`).MatchString(text) {
				t.Errorf("/metrics has no blocked-since time for %s", l)
			}
		}
	})

	t.Run("page", func(t *testing.T) {
		bin := chromium(t)
		dom := string(runChromium(t, bin, "--dump-dom", m.base+"/"))
		for _, w := range []string{`id="mesh-svg"`, `id="chart-lag-svg"`, `id="chart-rate-svg"`, `id="chart-conflicts-svg"`,
			`id="blocked"`, "no_poison", "one from n1", "one from n2", `class="ddl"`, "already exists", "pgmesh skip --link n1-&gt;n2 --lsn 0/"} {
			if !strings.Contains(dom, w) {
				t.Errorf("rendered page lacks %s", w)
			}
		}
		for _, w := range []string{
			`data-link="n1-&gt;n2" data-health="blocked"`, `data-link="n1-&gt;n3" data-health="unreachable"`,
			`data-link="n3-&gt;n2" data-health="unreachable"`, `data-node="n3" data-up="false"`, `data-node="n1" data-up="true"`,
		} {
			if !strings.Contains(dom, w) {
				t.Errorf("the mesh picture lacks %s", w)
			}
		}
		if t.Failed() {
			t.Logf("the mesh picture: %s", regexp.MustCompile(`(?s)<svg id="mesh-svg".*?</svg>`).FindString(dom))
		}
		if n := strings.Count(dom, `<path class="link `); n != 6 {
			t.Errorf("%d links in the mesh picture, want 6", n)
		}
		// Six lag and six rate series (one per link), one conflict kind.
		if n := strings.Count(dom, "<polyline"); n < 13 {
			t.Errorf("%d chart series, want at least 13", n)
		}
		for _, bad := range []string{"http://", "https://"} {
			if strings.Contains(strings.ReplaceAll(dom, `xmlns="http://www.w3.org/2000/svg"`, ""), bad) {
				t.Errorf("the page refers to %q: it must be self-contained", bad)
			}
		}

		shot := filepath.Join(t.TempDir(), "status.png")
		runChromium(t, bin, "--screenshot="+shot, "--window-size=1280,1700", m.base+"/")
		b, err := os.ReadFile(shot)
		if err != nil {
			t.Fatalf("no screenshot: %v", err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("screenshot is not a PNG: %v", err)
		}
		// The blocked links and the unreachable node are drawn in #c0392b.
		red := 0
		for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
			for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
				r, g, b, _ := img.At(x, y).RGBA()
				if r>>8 == 0xc0 && g>>8 == 0x39 && b>>8 == 0x2b {
					red++
				}
			}
		}
		if red < 500 {
			t.Errorf("only %d red pixels in the screenshot: broken links are not drawn as broken", red)
		}
		if dst := os.Getenv("PGMESH_STATUS_SCREENSHOT"); dst != "" {
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})

	// Last: it changes the mesh. The cause fixed on n2, the blocked
	// transaction applies at the next attempt and the link streams again.
	t.Run("unblocked", func(t *testing.T) {
		m.env.Exec(t, 1, `DELETE FROM local.banned`)
		eventually(t, 60*time.Second, "n1->n2 streaming, not blocked", func() (bool, string) {
			v := statusOf(t, m.base)
			for _, b := range v.Blocked {
				if b.Link == "n1->n2" {
					return false, "still blocked: " + b.Error
				}
			}
			return healths(v)["n1->n2"] == HealthStreaming, fmtHealths(v)
		})
		var v string
		if err := m.env.Conn(t, 1).QueryRow(context.Background(), `SELECT v FROM t WHERE id = 2`).Scan(&v); err != nil || v != "poison" {
			t.Errorf("n2: row 2 is %q (%v), want the once refused row", v, err)
		}
	})
}

func get503(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// promtoolCheckMetrics lints a scrape with promtool, which must be
// installed (make deps: scripts/install-promtool.sh).
func promtoolCheckMetrics(t *testing.T, text string) {
	t.Helper()
	bin := promtool(t)
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: the metrics and alert rules are checked with it. Install it with `make deps` " +
			"(scripts/install-promtool.sh: Debian's prometheus package)")
	}
	return p
}

// registeredMetrics returns the names of the metric families the agent
// registers.
func registeredMetrics(t *testing.T) []string {
	t.Helper()
	a := &Agent{applyTime: newApplyTimeHistogram()}
	ch := make(chan *prometheus.Desc, 100)
	(&collector{a: a}).Describe(ch)
	a.applyTime.Describe(ch)
	close(ch)
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	var names []string
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		names = append(names, m[1])
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// chromium finds Debian's chromium (or another Chrome build on PATH).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no headless browser found: the status page is checked in Chromium. Install Debian's chromium package " +
		"(`make deps` runs scripts/install-chromium.sh)")
	return ""
}

func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + t.TempDir()}, args...)
	cmd := exec.CommandContext(ctx, bin, all...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.Bytes()
}
