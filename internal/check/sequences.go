package check

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/sequence"
)

// checkSequences proves, through the connections Preflight already holds,
// that no two nodes can generate the same id for a sequence-fed column of a
// replicated table, and reports each node's headroom.
func checkSequences(ctx context.Context, r *run, nodes []*Node) ([]Finding, error) {
	conns := make(map[string]*pgx.Conn, len(nodes))
	for _, n := range nodes {
		conns[n.Name] = n.Conn
	}
	sfs, err := sequence.Prove(ctx, r.cfg, conns)
	fs := make([]Finding, 0, len(sfs))
	for _, f := range sfs {
		fs = append(fs, fromSequence(f))
	}
	if err != nil {
		return fs, err
	}
	if len(fs) == 0 {
		fs = append(fs, Finding{Status: Pass, Check: sequence.CheckDisjoint,
			Message: "no replicated table has a column fed by a sequence or identity"})
	}
	return fs, nil
}

// fromSequence converts a sequence finding; the statuses are the same words.
func fromSequence(f sequence.Finding) Finding {
	return Finding{Status: Status(f.Status), Node: f.Node, Check: f.Check, Object: f.Object, Message: f.Message, Fix: f.Fix}
}
