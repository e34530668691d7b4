package config

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml/ast"
)

// Defaults applied to keys the file leaves out.
const (
	DefaultSchema             = "public"
	DefaultLogRetention       = 30 * 24 * time.Hour
	DefaultTombstoneRetention = 24 * time.Hour
	DefaultSequenceStrategy   = "snowflake"
	DefaultMaxNodes           = 16
	DefaultDDLCapture         = "auto"
	DefaultListen             = "127.0.0.1:9187"
	// DefaultApplyWorkers is agent.apply_workers when the file leaves it
	// out. One: on the 2-core machine we measure on, the server's CPU is
	// the limit, and a second session made `bench apply` slower (0.14 of
	// native against 0.19, TPC-B scale 10), while under live load on every
	// node parallel sessions of different links wait for each other (see
	// README "Parallel apply"). Raise it on a server with idle cores.
	DefaultApplyWorkers = 1
	// MaxApplyWorkers bounds agent.apply_workers: each worker is one
	// connection and one replication origin per inbound link.
	MaxApplyWorkers = 16
	// MaxNodeID is the largest node id: snowflake ids have 10 node bits.
	MaxNodeID = 1023
)

// NameRule is the rule for cluster and node names, which become parts of
// slot and origin names.
const NameRule = `^[a-z][a-z0-9_]{0,30}$`

var nameRE = regexp.MustCompile(NameRule)

const nameRuleText = "must match " + NameRule + " (a lowercase letter, then at most 30 lowercase letters, digits or underscores)"

// Policies lists the conflict policies in the order they are documented.
var Policies = []Policy{LastUpdateWins, FirstUpdateWins, KeepLocal, ApplyRemote, PolicyError}

// SequenceStrategies lists the accepted sequences.strategy values.
var SequenceStrategies = []string{"snowflake", "step", "range", "none"}

// LogLevels lists the accepted agent.log_level values.
var LogLevels = []string{"debug", "info", "warn", "error"}

// DDLCaptures lists the accepted ddl.capture values.
var DDLCaptures = []string{"auto", "manual"}

var topKeys = []string{"cluster", "nodes", "replicate", "conflicts", "sequences", "ddl", "agent"}

func (p *parser) config(data []byte) *Config {
	cfg := &Config{
		Replicate: Replicate{Schemas: []string{DefaultSchema}},
		Conflicts: Conflicts{
			Default:            LastUpdateWins,
			Tables:             map[string]TableConfig{},
			LogRetention:       DefaultLogRetention,
			TombstoneRetention: DefaultTombstoneRetention,
		},
		Sequences: Sequences{Strategy: DefaultSequenceStrategy, MaxNodes: DefaultMaxNodes},
		DDL:       DDL{Capture: DefaultDDLCapture},
		Agent:     Agent{Listen: DefaultListen, ApplyWorkers: DefaultApplyWorkers},
	}
	body, ok := p.syntaxTree(data)
	if !ok {
		return cfg
	}
	top := lineOf(body, 1)
	if _, isMap := body.(*ast.MappingNode); !isMap {
		if _, isPair := body.(*ast.MappingValueNode); !isPair {
			p.errorf(top, "want a mapping with keys %s, got %s", strings.Join(topKeys, ", "), kind(body))
			return cfg
		}
	}
	var haveCluster, haveNodes bool
	nodesLine, maxNodesLine := top, 0
	for _, e := range p.entries(body, "top level", top) {
		switch e.key {
		case "cluster":
			haveCluster = true
			p.cluster(cfg, e)
		case "nodes":
			haveNodes = true
			nodesLine = e.line
			p.nodes(cfg, e)
		case "replicate":
			p.replicate(cfg, e)
		case "conflicts":
			p.conflicts(cfg, e)
		case "sequences":
			maxNodesLine = p.sequences(cfg, e)
		case "ddl":
			for _, f := range p.entries(e.val, "ddl", e.line) {
				if f.key != "capture" {
					p.unknown(f, "ddl", "capture")
					continue
				}
				if s, ok := p.str(f, "ddl.capture"); ok {
					if !slices.Contains(DDLCaptures, s) {
						p.errorf(f.line, "ddl.capture: %q is not one of %s", s, strings.Join(DDLCaptures, ", "))
					}
					cfg.DDL.Capture = s
				}
			}
		case "agent":
			for _, f := range p.entries(e.val, "agent", e.line) {
				switch f.key {
				case "listen":
					if s, ok := p.str(f, "agent.listen"); ok {
						if err := checkListen(s); err != nil {
							p.errorf(f.line, "agent.listen: %q: %v", s, err)
						}
						cfg.Agent.Listen = s
					}
				case "apply_workers":
					if n, ok := p.integer(f, "agent.apply_workers"); ok {
						if n < 1 || n > MaxApplyWorkers {
							p.errorf(f.line, "agent.apply_workers: %d is out of range 1..%d", n, MaxApplyWorkers)
						}
						cfg.Agent.ApplyWorkers = n
					}
				case "log_level":
					if s, ok := p.str(f, "agent.log_level"); ok {
						if !slices.Contains(LogLevels, s) {
							p.errorf(f.line, "agent.log_level: %q is not one of %s", s, strings.Join(LogLevels, ", "))
						}
						cfg.Agent.LogLevel = s
					}
				default:
					p.unknown(f, "agent", "listen", "apply_workers", "log_level")
				}
			}
		default:
			p.unknown(e, "", topKeys...)
		}
	}
	if !haveCluster {
		p.errorf(top, "missing cluster: (the cluster name)")
	}
	if !haveNodes {
		p.errorf(top, "missing nodes: (a list of {name, dsn})")
	}
	p.crossChecks(cfg, nodesLine, maxNodesLine)
	return cfg
}

func (p *parser) cluster(cfg *Config, e entry) {
	s, ok := p.str(e, "cluster")
	if !ok {
		return
	}
	cfg.Cluster = s
	switch {
	case s == "":
		p.errorf(e.line, "cluster: the cluster name is empty")
	case !nameRE.MatchString(s):
		p.errorf(e.line, "cluster: name %q %s", s, nameRuleText)
	}
}

var nodeKeys = []string{"name", "dsn", "admin_dsn", "id"}

func (p *parser) nodes(cfg *Config, e entry) {
	n, ok := p.plain(e.val, e.line)
	if !ok {
		return
	}
	if isNull(n) {
		p.errorf(e.line, "nodes: no nodes; list at least one {name, dsn}")
		return
	}
	seq, isSeq := n.(*ast.SequenceNode)
	if !isSeq {
		p.errorf(lineOf(n, e.line), "nodes: want a list of {name, dsn}, got %s", kind(n))
		return
	}
	switch {
	case len(seq.Values) == 0:
		p.errorf(e.line, "nodes: no nodes; list at least one {name, dsn}")
		return
	case len(seq.Values) > MaxNodeID:
		p.errorf(e.line, "nodes: %d nodes, at most %d are supported", len(seq.Values), MaxNodeID)
		return
	}
	names := map[string]int{}
	for i, v := range seq.Values {
		node := Node{ID: i + 1, Line: lineOf(v, e.line)}
		what := fmt.Sprintf("node #%d", i+1)
		var haveName, haveDSN bool
		for _, f := range p.entries(v, what, node.Line) {
			switch f.key {
			case "name":
				haveName = true
				s, ok := p.str(f, what+": name")
				if !ok {
					continue
				}
				node.Name = s
				switch {
				case s == "":
					p.errorf(f.line, "%s: name is empty", what)
				case !nameRE.MatchString(s):
					p.errorf(f.line, "%s: name %q %s", what, s, nameRuleText)
				default:
					if first, dup := names[s]; dup {
						p.errorf(f.line, "duplicate node name %q (first at line %d)", s, first)
					} else {
						names[s] = f.line
					}
				}
			case "dsn":
				haveDSN = true
				node.DSN = p.dsn(f, what)
			case "admin_dsn":
				node.AdminDSN = p.dsn(f, what)
			case "id":
				id, ok := p.integer(f, what+": id")
				if !ok {
					continue
				}
				if id < 1 || id > MaxNodeID {
					p.errorf(f.line, "%s: id %d is out of range 1..%d", what, id, MaxNodeID)
					continue
				}
				node.ID = id
			default:
				p.unknown(f, what, nodeKeys...)
			}
		}
		if haveName && node.Name != "" {
			what = fmt.Sprintf("node %q", node.Name)
		}
		if !haveName {
			p.errorf(node.Line, "%s: missing name", what)
		}
		if !haveDSN {
			p.errorf(node.Line, "%s: missing dsn", what)
		}
		cfg.Nodes = append(cfg.Nodes, node)
	}
}

var envRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// dsn returns the DSN of entry f with ${VAR} expanded. Messages never quote
// the DSN: it may hold a password.
func (p *parser) dsn(f entry, what string) string {
	what += ": " + f.key
	s, ok := p.str(f, what)
	if !ok {
		return ""
	}
	var missing []string
	s = envRE.ReplaceAllStringFunc(s, func(ref string) string {
		name := ref[2 : len(ref)-1]
		v, set := os.LookupEnv(name)
		if !set {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		p.errorf(f.line, "%s: environment variable %s is not set", what, strings.Join(missing, ", "))
		return ""
	}
	if strings.TrimSpace(s) == "" {
		p.errorf(f.line, "%s is empty", what)
	}
	return s
}

func (p *parser) replicate(cfg *Config, e entry) {
	for _, f := range p.entries(e.val, "replicate", e.line) {
		switch f.key {
		case "schemas":
			items, ok := p.strList(f, "replicate.schemas")
			if !ok {
				continue
			}
			if len(items) == 0 {
				p.errorf(f.line, "replicate.schemas: empty; list the schemas to replicate (default [public])")
				continue
			}
			cfg.Replicate.Schemas = nil
			for _, it := range items {
				cfg.Replicate.Schemas = append(cfg.Replicate.Schemas, it.val)
			}
		case "exclude":
			items, _ := p.strList(f, "replicate.exclude")
			for _, it := range items {
				if !isQualified(it.val) {
					p.errorf(it.line, "replicate.exclude: %q is not written schema.table", it.val)
					continue
				}
				cfg.Replicate.Exclude = append(cfg.Replicate.Exclude, it.val)
			}
		default:
			p.unknown(f, "replicate", "schemas", "exclude")
		}
	}
}

// isQualified reports whether s is written schema.table.
func isQualified(s string) bool {
	schema, table, ok := strings.Cut(s, ".")
	return ok && schema != "" && table != "" && !strings.Contains(table, ".")
}

var conflictKeys = []string{"default", "tables", "log_retention", "tombstone_retention"}

func (p *parser) conflicts(cfg *Config, e entry) {
	for _, f := range p.entries(e.val, "conflicts", e.line) {
		switch f.key {
		case "default":
			if pol, ok := p.policy(f, "conflicts.default"); ok {
				cfg.Conflicts.Default = pol
			}
		case "tables":
			for _, t := range p.entries(f.val, "conflicts.tables", f.line) {
				if !isQualified(t.key) {
					p.errorf(t.line, "conflicts.tables: %q is not written schema.table", t.key)
					continue
				}
				cfg.Conflicts.Tables[t.key] = p.table(t)
			}
		case "log_retention":
			if d, ok := p.duration(f, "conflicts.log_retention"); ok {
				cfg.Conflicts.LogRetention = d
			}
		case "tombstone_retention":
			if d, ok := p.duration(f, "conflicts.tombstone_retention"); ok {
				cfg.Conflicts.TombstoneRetention = d
			}
		default:
			p.unknown(f, "conflicts", conflictKeys...)
		}
	}
}

func (p *parser) table(t entry) TableConfig {
	var tc TableConfig
	what := "conflicts.tables." + t.key
	for _, f := range p.entries(t.val, what, t.line) {
		switch f.key {
		case "policy":
			if pol, ok := p.policy(f, what+".policy"); ok {
				tc.Policy = pol
			}
		case "delta_columns":
			items, _ := p.strList(f, what+".delta_columns")
			seen := map[string]bool{}
			for _, it := range items {
				if seen[it.val] {
					p.errorf(it.line, "%s.delta_columns: %q is listed twice", what, it.val)
					continue
				}
				seen[it.val] = true
				tc.DeltaColumns = append(tc.DeltaColumns, it.val)
			}
		case "delete_wins":
			if b, ok := p.boolean(f, what+".delete_wins"); ok {
				tc.DeleteWins = b
			}
		default:
			p.unknown(f, what, "policy", "delta_columns", "delete_wins")
		}
	}
	return tc
}

func (p *parser) policy(f entry, what string) (Policy, bool) {
	s, ok := p.str(f, what)
	if !ok {
		return "", false
	}
	if !slices.Contains(Policies, Policy(s)) {
		names := make([]string, len(Policies))
		for i, pol := range Policies {
			names[i] = string(pol)
		}
		p.errorf(f.line, "%s: unknown policy %q (known: %s)", what, s, strings.Join(names, ", "))
		return "", false
	}
	return Policy(s), true
}

// duration parses Go durations ("24h", "90m") and whole days ("30d").
func (p *parser) duration(f entry, what string) (time.Duration, bool) {
	s, ok := p.str(f, what)
	if !ok {
		return 0, false
	}
	d, err := ParseDuration(s)
	if err != nil {
		p.errorf(f.line, "%s: %v", what, err)
		return 0, false
	}
	return d, true
}

// maxDays keeps day counts far from time.Duration overflow (about 292 years).
const maxDays = 100 * 365

// ParseDuration parses a positive Go duration ("24h", "1h30m") or a whole
// number of days ("30d").
func ParseDuration(s string) (time.Duration, error) {
	var d time.Duration
	if days, isDays := strings.CutSuffix(s, "d"); isDays {
		n, err := strconv.Atoi(days)
		if err != nil || n > maxDays || strings.HasPrefix(days, "+") {
			return 0, fmt.Errorf("invalid duration %q: want a Go duration such as 24h or 90m, or whole days such as 30d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("invalid duration %q: want a Go duration such as 24h or 90m, or whole days such as 30d", s)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %q must be positive", s)
	}
	return d, nil
}

// FormatDuration formats d the way ParseDuration reads it, in days when whole.
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d > 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	return d.String()
}

// sequences decodes the sequences section and returns the line of
// max_nodes (0 when defaulted).
func (p *parser) sequences(cfg *Config, e entry) int {
	maxLine := 0
	for _, f := range p.entries(e.val, "sequences", e.line) {
		switch f.key {
		case "strategy":
			if s, ok := p.str(f, "sequences.strategy"); ok {
				if !slices.Contains(SequenceStrategies, s) {
					p.errorf(f.line, "sequences.strategy: %q is not one of %s", s, strings.Join(SequenceStrategies, ", "))
					continue
				}
				cfg.Sequences.Strategy = s
			}
		case "max_nodes":
			n, ok := p.integer(f, "sequences.max_nodes")
			if !ok {
				continue
			}
			if n < 1 || n > MaxNodeID {
				p.errorf(f.line, "sequences.max_nodes: %d is out of range 1..%d", n, MaxNodeID)
				continue
			}
			cfg.Sequences.MaxNodes = n
			maxLine = f.line
		default:
			p.unknown(f, "sequences", "strategy", "max_nodes")
		}
	}
	return maxLine
}

func checkListen(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port (e.g. 127.0.0.1:9187)")
	}
	// Port 0 means "any free port" (tests, several agents on one host).
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number in 0..65535", port)
	}
	return nil
}

// crossChecks validates what depends on several keys: node ids and the
// sequence capacity.
func (p *parser) crossChecks(cfg *Config, nodesLine, maxNodesLine int) {
	ids := map[int]Node{}
	for _, n := range cfg.Nodes {
		if prev, dup := ids[n.ID]; dup {
			p.errorf(n.Line, "node %q: id %d is already used by node %q (line %d); ids default to the position in the list", n.Name, n.ID, prev.Name, prev.Line)
			continue
		}
		ids[n.ID] = n
	}
	// A link's apply workers use origins pgmesh_<up> and pgmesh_<up>_<k>
	// (internal/origin): node a_1 would own one of node a's.
	for _, n := range cfg.Nodes {
		for _, m := range cfg.Nodes {
			if rest, ok := strings.CutPrefix(m.Name, n.Name+"_"); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
				p.errorf(m.Line, "node %q: the name is node %q's followed by _<number>, which names %q's parallel apply origins; rename one of them", m.Name, n.Name, n.Name)
			}
		}
	}
	max := cfg.Sequences.MaxNodes
	if len(cfg.Nodes) > max {
		if maxNodesLine > 0 {
			p.errorf(maxNodesLine, "sequences.max_nodes: %d is less than the %d nodes", max, len(cfg.Nodes))
		} else {
			p.errorf(nodesLine, "nodes: %d nodes but sequences.max_nodes is %d (the default); raise sequences.max_nodes", len(cfg.Nodes), max)
		}
		return
	}
	// step and range carve the id space into max_nodes slots by node id.
	if cfg.Sequences.Strategy == "step" || cfg.Sequences.Strategy == "range" {
		for _, n := range cfg.Nodes {
			if n.ID > max {
				p.errorf(n.Line, "node %q: id %d exceeds sequences.max_nodes %d, which strategy %s needs", n.Name, n.ID, max, cfg.Sequences.Strategy)
			}
		}
	}
}
