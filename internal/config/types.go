package config

import (
	"time"

	"github.com/pgmesh/pgmesh/internal/topology"
)

// Config is a parsed and validated pgmesh.yaml.
type Config struct {
	Path      string // file it was read from ("" when parsed from bytes)
	Cluster   string
	Nodes     []Node
	Replicate Replicate
	Conflicts Conflicts
	Sequences Sequences
	DDL       DDL
	Agent     Agent
}

// Node is one PostgreSQL database that accepts writes.
type Node struct {
	Name string
	DSN  string // ${ENV} references already expanded
	// AdminDSN (optional) connects as a superuser. Only `pgmesh init` uses
	// it, for what pgmesh's own role may not do: its grants and the DDL
	// capture event triggers (internal/grants). Leave it out to have a DBA
	// run `pgmesh setup-sql` instead.
	AdminDSN string
	// ID is the node id used by snowflake sequences: explicit `id:` or the
	// 1-based position in the config.
	ID   int
	Line int // line of the node's entry in the file, for messages
}

// Replicate selects the replicated tables.
type Replicate struct {
	Schemas []string // default [public]
	Exclude []string // "schema.table"
}

// Policy is a conflict resolution policy.
type Policy string

const (
	LastUpdateWins  Policy = "last_update_wins"
	FirstUpdateWins Policy = "first_update_wins"
	KeepLocal       Policy = "keep_local"
	ApplyRemote     Policy = "apply_remote"
	PolicyError     Policy = "error"
)

// Conflicts configures conflict resolution.
type Conflicts struct {
	Default Policy                 // default last_update_wins
	Tables  map[string]TableConfig // key "schema.table"
	// LogRetention is how long pgmesh.conflict_log rows are kept (default 30 days).
	LogRetention time.Duration
	// TombstoneRetention is the minimum age before a tombstone may be pruned (default 24h).
	TombstoneRetention time.Duration
}

// TableConfig overrides conflict handling for one table.
type TableConfig struct {
	Policy       Policy // "" = Conflicts.Default
	DeltaColumns []string
	DeleteWins   bool
}

// Sequences configures id generation.
type Sequences struct {
	Strategy string // snowflake | step | range | none (default snowflake)
	MaxNodes int    // default 16
}

// DDL configures DDL propagation.
type DDL struct {
	Capture string // auto | manual (default auto)
}

// Agent configures `pgmesh run`.
type Agent struct {
	Listen string // default 127.0.0.1:9187
	// ApplyWorkers is the number of apply connections (and replication
	// origins) per inbound link; 0 (a config built in code) means
	// DefaultApplyWorkers. Read it with Workers.
	ApplyWorkers int
	// LogLevel is the agent's log level (debug, info, warn, error; "" =
	// the --log-level flag). Unlike Listen it is applied again on SIGHUP.
	LogLevel string
}

// Workers is ApplyWorkers with the default filled in.
func (a Agent) Workers() int {
	if a.ApplyWorkers <= 0 {
		return DefaultApplyWorkers
	}
	return a.ApplyWorkers
}

// NodeByName returns the node called name.
func (c *Config) NodeByName(name string) (Node, bool) {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// NodeNames returns the node names in config order (the conflict tiebreak order).
func (c *Config) NodeNames() []string {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	return names
}

// Links returns the links of the mesh: one from every node to every other,
// ordered by upstream then downstream in config order.
func (c *Config) Links() []topology.Link { return topology.FullMesh(c.NodeNames()) }

// PolicyFor returns the policy of table "schema.table".
func (c *Config) PolicyFor(table string) Policy {
	if tc, ok := c.Conflicts.Tables[table]; ok && tc.Policy != "" {
		return tc.Policy
	}
	return c.Conflicts.Default
}
