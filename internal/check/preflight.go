package check

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Node is what Preflight learned about one reachable node. Checks read it
// and may query Conn.
type Node struct {
	Name    string
	Address string // host:port/db user=u, never the password
	Conn    *pgx.Conn
	Version int // server_version_num
	// Settings holds the server settings the checks need, by name.
	Settings map[string]Setting
	// Tables are the replicated tables on this node (config schemas minus
	// excludes).
	Tables []pg.Table
	// Outbound and Inbound are the links of this node in the configured
	// topology.
	Outbound, Inbound []topology.Link
	// Initialised: pgmesh.local_node says this database is this node of
	// this cluster, i.e. init has run here.
	Initialised bool
}

// Setting is one row of pg_settings.
type Setting struct {
	Value string
	// PendingRestart: the configuration changed the value, but it takes
	// effect only after a restart.
	PendingRestart bool
}

// nodeCheck examines one node. An error means the check could not run; it
// becomes a FAIL finding and the other checks still run.
type nodeCheck struct {
	name string
	run  func(ctx context.Context, r *run, n *Node) ([]Finding, error)
}

// clusterCheck compares the reachable nodes.
type clusterCheck struct {
	name string
	run  func(ctx context.Context, r *run, nodes []*Node) ([]Finding, error)
}

// run is what every check of one Preflight sees.
type run struct {
	cfg  *config.Config
	opts Options
}

// The checks Preflight runs, in order.
var (
	nodeChecks = []nodeCheck{
		{"version", checkVersion},
		{"settings", checkSettings},
		{"capacity", checkCapacity},
		{"local_node", checkLocalNode},
		{"privileges", checkPrivileges},
		{"identity", checkIdentity},
		{"constraints", checkConstraints},
		{"slots", checkSlots},
		{"join", checkJoin},
	}
	clusterChecks = []clusterCheck{
		{"tables", checkPresence},
		{"schema", checkDrift},
		{"sequences", checkSequences},
		{"money", checkMoney},
	}
)

// settingNames are read from pg_settings on every node; a name unknown to
// the server (max_active_replication_origins before 18) is simply absent.
var settingNames = []string{
	"server_version", "wal_level", "track_commit_timestamp",
	"max_replication_slots", "max_wal_senders", "max_active_replication_origins",
	"max_slot_wal_keep_size",
}

// Preflight connects to every node of cfg and runs every check with the
// default Options. An unreachable node is a FAIL naming the node and its
// address; the other nodes are still checked. The error is only for a
// cancelled context.
func Preflight(ctx context.Context, cfg *config.Config) ([]Finding, error) {
	return PreflightWith(ctx, cfg, Options{})
}

// PreflightWith is Preflight with thresholds; zero fields of opts take
// their defaults.
func PreflightWith(ctx context.Context, cfg *config.Config, opts Options) ([]Finding, error) {
	r := &run{cfg: cfg, opts: opts.withDefaults()}
	links := cfg.Links()
	conns, errs := pg.ConnectNodes(ctx, cfg.Nodes, "pgmesh check")
	defer pg.CloseAll(ctx, conns)

	var findings []Finding
	var nodes []*Node
	for i, cn := range cfg.Nodes {
		addr := pg.Address(cn.DSN)
		if errs[i] != nil {
			findings = append(findings, Finding{Status: Fail, Node: cn.Name, Check: "connect", Object: addr,
				Message: errs[i].Error(), Fix: "start the server or correct the node's dsn in " + configName(cfg)})
			continue
		}
		n := &Node{Name: cn.Name, Address: addr, Conn: conns[i],
			Outbound: topology.Outbound(links, cn.Name), Inbound: topology.Inbound(links, cn.Name)}
		if err := n.load(ctx, cfg); err != nil {
			findings = append(findings, Finding{Status: Fail, Node: cn.Name, Check: "connect", Object: addr, Message: err.Error()})
			continue
		}
		nodes = append(nodes, n)
		for _, c := range nodeChecks {
			fs, err := c.run(ctx, r, n)
			if err != nil {
				fs = append(fs, Finding{Status: Fail, Node: n.Name, Check: c.name, Message: "could not check: " + err.Error()})
			}
			findings = append(findings, fs...)
		}
	}
	for _, c := range clusterChecks {
		fs, err := c.run(ctx, r, nodes)
		if err != nil {
			fs = append(fs, Finding{Status: Fail, Check: c.name, Message: "could not check: " + err.Error()})
		}
		findings = append(findings, fs...)
	}
	if err := ctx.Err(); err != nil {
		return findings, fmt.Errorf("preflight: %w", err)
	}
	return findings, nil
}

// load reads the version, settings and replicated tables of n.
func (n *Node) load(ctx context.Context, cfg *config.Config) error {
	v, err := pg.ServerVersionNum(ctx, n.Conn)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	n.Version = v
	rows, err := n.Conn.Query(ctx, "SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY($1)", settingNames)
	if err != nil {
		return fmt.Errorf("node %s: read settings: %w", n.Name, err)
	}
	n.Settings = map[string]Setting{}
	var name string
	var s Setting
	if _, err := pgx.ForEachRow(rows, []any{&name, &s.Value, &s.PendingRestart}, func() error {
		n.Settings[name] = s
		return nil
	}); err != nil {
		return fmt.Errorf("node %s: read settings: %w", n.Name, err)
	}
	n.Tables, err = pg.ReplicatedTables(ctx, n.Conn, cfg.Replicate.Schemas, cfg.Replicate.Exclude)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	// The table does not exist before pgmesh is installed (and a query
	// naming it would not even parse).
	var installed bool
	if err := n.Conn.QueryRow(ctx, "SELECT to_regclass('pgmesh.local_node') IS NOT NULL").Scan(&installed); err != nil {
		return fmt.Errorf("node %s: look for pgmesh.local_node: %w", n.Name, err)
	}
	if installed {
		err = n.Conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pgmesh.local_node WHERE cluster = $1 AND name = $2)", cfg.Cluster, n.Name).
			Scan(&n.Initialised)
		if err != nil {
			return fmt.Errorf("node %s: read pgmesh.local_node: %w", n.Name, err)
		}
	}
	return nil
}

func configName(cfg *config.Config) string {
	if cfg.Path == "" {
		return "the config"
	}
	return cfg.Path
}
