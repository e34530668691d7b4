package check

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/topology"
)

// slotState is a link's slot on its upstream as pg_replication_slots shows
// it; Exists is false when there is none.
type slotState struct {
	Exists   bool
	Database string // the slot's database: a logical slot is per database
	Plugin   string
	Active   bool
	// WALStatus: reserved, extended, unreserved (about to be lost) or lost.
	WALStatus string
	Retained  int64 // bytes of WAL between restart_lsn and the current LSN
}

func checkSlots(ctx context.Context, r *run, n *Node) ([]Finding, error) {
	var db string
	if err := n.Conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return nil, fmt.Errorf("read current database: %w", err)
	}
	var fs []Finding
	var notYet []topology.Link
	for _, l := range n.Outbound {
		var s slotState
		var walStatus *string
		var retained *int64
		err := n.Conn.QueryRow(ctx, `
SELECT COALESCE(database::text, ''), COALESCE(plugin::text, ''), active, wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
  FROM pg_replication_slots WHERE slot_name = $1`, l.Slot()).
			Scan(&s.Database, &s.Plugin, &s.Active, &walStatus, &retained)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fs, fmt.Errorf("read slot %s: %w", l.Slot(), err)
		default:
			s.Exists = true
			if walStatus != nil {
				s.WALStatus = *walStatus
			}
			if retained != nil {
				s.Retained = *retained
			}
		}
		if !s.Exists && !n.Initialised {
			notYet = append(notYet, l)
			continue
		}
		fs = append(fs, slotFinding(r, n.Name, db, n.Initialised, l, s))
	}
	if len(notYet) > 0 {
		fs = append(fs, notYetFinding(r, n.Name, notYet))
	}
	return fs, nil
}

// createSlot is the SQL that creates the link's slot as init does.
func createSlot(l topology.Link) string {
	return fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput')", l.Slot())
}

// notYetFinding is the one WARN for the slots of a node where init has not
// run: expected, but replication does not work yet.
func notYetFinding(r *run, node string, links []topology.Link) Finding {
	slots := make([]string, len(links))
	names := make([]string, len(links))
	for i, l := range links {
		slots[i], names[i] = l.Slot(), l.Name()
	}
	return Finding{Status: Warn, Node: node, Check: "slots", Object: strings.Join(slots, ", "),
		Message: fmt.Sprintf("no slots yet for links %s: init has not run on %s", strings.Join(names, ", "), node),
		Fix:     "pgmesh init -c " + configName(r.cfg)}
}

// slotFinding judges the slot of link l on its upstream node (in database
// db; initialised: init has run on that node).
func slotFinding(r *run, node, db string, initialised bool, l topology.Link, s slotState) Finding {
	f := Finding{Status: Pass, Node: node, Check: "slots", Object: l.Slot()}
	cfg := configName(r.cfg)
	resync := fmt.Sprintf("resync %[2]s: changes %[1]s committed while the slot was gone never reach %[2]s; once the link has caught up, "+
		"compare with pgmesh diff -c %[3]s and repair each differing table with pgmesh repair -c %[3]s --table TABLE --from %[1]s", l.Up, l.Down, cfg)
	switch {
	case !s.Exists && !initialised:
		return notYetFinding(r, node, []topology.Link{l})
	case !s.Exists:
		f.Status = Fail
		f.Message = fmt.Sprintf("slot of link %s is missing although init has run on %s: %s receives nothing from %[2]s", l.Name(), node, l.Down)
		f.Fix = fmt.Sprintf("on %s: %s;\n%s", node, createSlot(l), resync)
	case s.Database == "":
		f.Status = Fail
		f.Message = fmt.Sprintf("%s is a physical slot, not the logical slot of link %s", l.Slot(), l.Name())
		f.Fix = fmt.Sprintf("if nothing uses it, on %s: SELECT pg_drop_replication_slot('%s'); %s;\n%s", node, l.Slot(), createSlot(l), resync)
	case s.Database != db:
		f.Status = Fail
		f.Message = fmt.Sprintf("slot %s belongs to database %q, not %q: another cluster uses the name", l.Slot(), s.Database, db)
		f.Fix = fmt.Sprintf("drop it if it is stale (SELECT pg_drop_replication_slot('%s'); on %s), or rename node %s or %s", l.Slot(), node, l.Up, l.Down)
	case s.Plugin != "pgoutput":
		f.Status = Fail
		f.Message = fmt.Sprintf("slot %s uses plugin %q, pgmesh needs pgoutput", l.Slot(), s.Plugin)
		f.Fix = fmt.Sprintf("stop the agent of %s, then on %s: SELECT pg_drop_replication_slot('%s'); %s;\n%s", l.Down, node, l.Slot(), createSlot(l), resync)
	case s.WALStatus == "lost":
		f.Status = Fail
		f.Message = fmt.Sprintf("slot of link %s is invalidated (wal_status = lost): the WAL %s needs is gone, the link cannot resume", l.Name(), l.Down)
		f.Fix = fmt.Sprintf("stop the agent of %s, then on %s: SELECT pg_drop_replication_slot('%s'); %s;\nstart the agent again, then %s",
			l.Down, node, l.Slot(), createSlot(l), resync)
	case s.WALStatus == "unreserved":
		f.Status = Warn
		f.Message = fmt.Sprintf("slot of link %s retains %s of WAL, beyond max_slot_wal_keep_size (wal_status = unreserved): it is lost at the next checkpoint unless %s catches up",
			l.Name(), FormatSize(s.Retained), l.Down)
		f.Fix = fmt.Sprintf("start the agent of %s (pgmesh run -c %s), or raise max_slot_wal_keep_size on %s", l.Down, cfg, node)
	case !s.Active:
		f.Status = Warn
		f.Message = fmt.Sprintf("slot of link %s is inactive: no agent is reading it, it retains %s of WAL", l.Name(), FormatSize(s.Retained))
		if s.Retained > r.opts.MaxSlotWAL {
			f.Message += fmt.Sprintf(", above the threshold of %s", FormatSize(r.opts.MaxSlotWAL))
		}
		f.Fix = fmt.Sprintf("start the agent of %s: pgmesh run -c %s", l.Down, cfg)
	case s.Retained > r.opts.MaxSlotWAL:
		f.Status = Warn
		f.Message = fmt.Sprintf("slot of link %s retains %s of WAL (threshold %s): %s is falling behind", l.Name(), FormatSize(s.Retained), FormatSize(r.opts.MaxSlotWAL), l.Down)
		f.Fix = fmt.Sprintf("see pgmesh status -c %s for the link's lag and error; the WAL is released as %s applies", cfg, l.Down)
	default:
		f.Message = fmt.Sprintf("slot of link %s is active, retains %s of WAL", l.Name(), FormatSize(s.Retained))
	}
	return f
}
