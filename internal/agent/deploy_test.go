package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
)

// The monitoring files shipped in deploy/.
var (
	alertRules     = filepath.Join("..", "..", "deploy", "prometheus", "pgmesh-alerts.yml")
	alertRuleTests = filepath.Join("..", "..", "deploy", "prometheus", "pgmesh-alerts.test.yml")
	dashboard      = filepath.Join("..", "..", "deploy", "grafana", "pgmesh-dashboard.json")
)

// TestAlertRules checks the alert rules with promtool and runs their unit
// tests; the rules use only metrics the agent exports (and Prometheus's
// own up).
func TestAlertRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", alertRules}, {"test", "rules", alertRuleTests}} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Expr string
			}
		}
	}
	b, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	checkMetricNames(t, "alert rules", exprs, "up")
}

// TestDashboardUsesExportedMetrics checks that every query of the Grafana
// dashboard parses (promtool, as a recording rule) and uses only metrics
// the agent registers.
func TestDashboardUsesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("%d queries in %s: the dashboard did not parse as expected", len(exprs), dashboard)
	}
	checkMetricNames(t, "dashboard", exprs)

	// Grafana's $__rate_interval is a duration; promtool checks the rest.
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		e = strings.ReplaceAll(e, "$__rate_interval", "5m")
		q, _ := json.Marshal(e)
		fmt.Fprintf(&rules, "      - record: dashboard_query_%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool(t), "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("a dashboard query does not parse: %v\n%s", err, out)
	}
}

// checkMetricNames fails for every metric name in exprs that the agent
// does not register (a histogram's _bucket, _sum and _count included) and
// is not in also.
func checkMetricNames(t *testing.T, what string, exprs []string, also ...string) {
	t.Helper()
	known := map[string]bool{}
	for _, n := range append(registeredMetrics(t), also...) {
		known[n] = true
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			known[n+s] = true
		}
	}
	used := 0
	for _, e := range exprs {
		for _, n := range metricNames(e) {
			used++
			if !known[n] {
				t.Errorf("%s: %q uses metric %s, which the agent does not export", what, e, n)
			}
		}
	}
	if used == 0 {
		t.Errorf("%s: no metric name found", what)
	}
}

var (
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	selector    = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	labelList   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident       = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeyword = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}
)

// metricNames returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges and grouping lists
// are removed, that are neither keywords nor called (functions).
func metricNames(expr string) []string {
	e := stringLit.ReplaceAllString(expr, `""`)
	e = selector.ReplaceAllString(e, " ")
	e = labelList.ReplaceAllString(e, " ")
	var out []string
	for _, m := range ident.FindAllStringIndex(e, -1) {
		name := e[m[0]:m[1]]
		if m[0] > 0 && strings.ContainsAny(e[m[0]-1:m[0]], "0123456789.$") {
			continue // part of a number (1e3, 5m) or a variable
		}
		if strings.HasPrefix(strings.TrimSpace(e[m[1]:]), "(") || slices.Contains(promKeyword, strings.ToLower(name)) {
			continue
		}
		out = append(out, name)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	cases := []struct {
		expr string
		want []string
	}{
		{`pgmesh_link_up == 0`, []string{"pgmesh_link_up"}},
		{`sum by (link, le) (rate(pgmesh_link_transaction_apply_duration_seconds_bucket{job="x",a=~"b|c"}[$__rate_interval]))`,
			[]string{"pgmesh_link_transaction_apply_duration_seconds_bucket"}},
		{`(sum without (table) (rate(a_total[5m])) > 1) unless (b <= 5 * c offset 5m) and on (x) up`, []string{"a_total", "b", "c", "up"}},
		{`time() - max by (link) (x > 1e3) or vector(0)`, []string{"x"}},
	}
	for _, c := range cases {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}
