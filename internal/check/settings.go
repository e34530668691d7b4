package check

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/origin"
)

// minVersion is the oldest server pgmesh is built and tested for;
// init also relies on catalogs that appeared in 15 (pg_publication_namespace).
const minVersion = 150000

// headroom is how many spare slots, senders and origins a node should keep
// beyond what the topology needs: room to add a node or run a repair without
// a restart. Below the need is a FAIL, below need+headroom a WARN.
const headroom = 2

func checkVersion(_ context.Context, _ *run, n *Node) ([]Finding, error) {
	return []Finding{versionFinding(n.Name, n.Version, n.Settings["server_version"].Value)}, nil
}

func versionFinding(node string, num int, version string) Finding {
	f := Finding{Status: Pass, Node: node, Check: "version", Object: "server_version", Message: "PostgreSQL " + version}
	if num < minVersion {
		f.Status = Fail
		f.Message = fmt.Sprintf("PostgreSQL %s: pgmesh needs 15 or newer", version)
		f.Fix = "upgrade the server to PostgreSQL 15 or newer"
	}
	return f
}

func checkSettings(_ context.Context, _ *run, n *Node) ([]Finding, error) {
	return settingFindings(n.Name, n.Settings), nil
}

// settingFindings checks the settings that logical replication and conflict
// resolution need, and warns about unbounded WAL retention.
func settingFindings(node string, s map[string]Setting) []Finding {
	fs := []Finding{
		// Logical decoding needs wal_level = logical.
		restartSetting(node, "wal_level", "logical", s["wal_level"]),
		// Last-update-wins reads commit timestamps of local rows.
		restartSetting(node, "track_commit_timestamp", "on", s["track_commit_timestamp"]),
	}
	keep := s["max_slot_wal_keep_size"]
	f := Finding{Status: Pass, Node: node, Check: "wal_retention", Object: "max_slot_wal_keep_size", Message: "max_slot_wal_keep_size = " + keep.Value + "MB"}
	if keep.Value == "-1" {
		f.Status = Warn
		f.Message = "max_slot_wal_keep_size = -1 (unlimited): while a peer's agent is stopped or a node is unreachable, its slot keeps WAL until the disk fills"
		f.Fix = "ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf();\n" +
			"(size it above the longest outage to ride out: a slot that exceeds it is invalidated and its link must be set up again)"
	}
	return append(fs, f)
}

// restartSetting checks a setting that only a server restart can change.
func restartSetting(node, name, want string, got Setting) Finding {
	f := Finding{Status: Pass, Node: node, Check: name, Object: name, Message: name + " = " + got.Value}
	switch {
	case got.Value == want:
	case got.PendingRestart:
		f.Status = Fail
		f.Message = fmt.Sprintf("%s = %s: changed in the configuration but the server has not been restarted", name, got.Value)
		f.Fix = "restart the server"
	default:
		f.Status = Fail
		f.Message = fmt.Sprintf("%s = %s, need %s", name, dash(got.Value), want)
		f.Fix = fmt.Sprintf("ALTER SYSTEM SET %s = %s; then restart the server", name, want)
	}
	return f
}

// usage is what a node's topology needs and what others already use.
type usage struct {
	outbound, inbound int // pgmesh slots on this node, pgmesh origins on this node
	otherSlots        int // replication slots that are not this node's pgmesh slots
	otherOrigins      int // replication origins that are not this node's pgmesh origins
}

func checkCapacity(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	workers := r.cfg.Agent.Workers()
	u := usage{outbound: len(n.Outbound), inbound: len(n.Inbound) * workers}
	slots := make([]string, 0, len(n.Outbound))
	for _, l := range n.Outbound {
		slots = append(slots, l.Slot())
	}
	origins := make([]string, 0, u.inbound)
	for _, l := range n.Inbound {
		origins = append(origins, origin.Names(l.Up, workers)...)
	}
	err := n.Conn.QueryRow(ctx, `SELECT
	    (SELECT count(*) FROM pg_replication_slots WHERE slot_name <> ALL($1)),
	    (SELECT count(*) FROM pg_replication_origin WHERE roname <> ALL($2))`, slots, origins).
		Scan(&u.otherSlots, &u.otherOrigins)
	if err != nil {
		return nil, fmt.Errorf("count replication slots and origins: %w", err)
	}
	return capacityFindings(n.Name, n.Version, n.Settings, u), nil
}

// capacityFindings checks that slots, WAL senders and replication origins
// suffice for the node's links. Each outbound link holds a slot and a WAL
// sender on this node; each inbound link an origin per apply worker
// (agent.apply_workers). Before PostgreSQL 18,
// max_replication_slots also bounds the origins in use.
func capacityFindings(node string, version int, s map[string]Setting, u usage) []Finding {
	originSetting := "max_replication_slots"
	if version >= 180000 {
		originSetting = "max_active_replication_origins"
	}
	return []Finding{
		capacity(node, "replication_slots", "max_replication_slots", s,
			u.outbound+u.otherSlots, fmt.Sprintf("pgmesh slots: %d, other slots: %d", u.outbound, u.otherSlots)),
		capacity(node, "wal_senders", "max_wal_senders", s,
			u.outbound, fmt.Sprintf("pgmesh links served: %d", u.outbound)),
		capacity(node, "replication_origins", originSetting, s,
			u.inbound+u.otherOrigins, fmt.Sprintf("pgmesh origins: %d, other origins: %d", u.inbound, u.otherOrigins)),
	}
}

func capacity(node, check, setting string, s map[string]Setting, need int, why string) Finding {
	f := Finding{Node: node, Check: check, Object: setting}
	have, err := strconv.Atoi(s[setting].Value)
	if err != nil {
		f.Status = Fail
		f.Message = fmt.Sprintf("%s = %q is not a number", setting, s[setting].Value)
		return f
	}
	f.Message = fmt.Sprintf("%s = %d; needed %d (%s), plus %d spare recommended", setting, have, need, why, headroom)
	switch {
	case have < need:
		f.Status = Fail
	case have < need+headroom:
		f.Status = Warn
	default:
		f.Status = Pass
		return f
	}
	f.Fix = fmt.Sprintf("ALTER SYSTEM SET %s = %d; then restart the server", setting, need+headroom)
	return f
}

// checkLocalNode refuses a database that is already another pgmesh node: a
// config pointing two nodes at one database, or at another cluster's node,
// would make the node replicate to itself.
func checkLocalNode(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	cfg := r.cfg
	f := Finding{Status: Pass, Node: n.Name, Check: "local_node", Object: "pgmesh.local_node", Message: "not yet initialised"}
	var exists bool
	if err := n.Conn.QueryRow(ctx, "SELECT to_regclass('pgmesh.local_node') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for pgmesh.local_node: %w", err)
	}
	if !exists {
		return []Finding{f}, nil
	}
	var cluster, name string
	err := n.Conn.QueryRow(ctx, "SELECT cluster, name FROM pgmesh.local_node").Scan(&cluster, &name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read pgmesh.local_node: %w", err)
	case cluster == cfg.Cluster && name == n.Name:
		f.Message = fmt.Sprintf("node %s of cluster %s", name, cluster)
	default:
		f.Status = Fail
		f.Message = fmt.Sprintf("this database is already node %s of cluster %s", name, cluster)
		f.Fix = fmt.Sprintf("point node %s at its own database in %s, or remove pgmesh from this one first", n.Name, configName(cfg))
	}
	return []Finding{f}, nil
}
