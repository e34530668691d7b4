package deadletter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// ErrNotBlocked is returned by Skip when the link is not blocked on a
// transaction: there is nothing to skip.
var ErrNotBlocked = errors.New("not blocked")

// ErrMismatch is returned by Skip when the transaction the link is blocked
// on is not the one the operator named.
var ErrMismatch = errors.New("blocked on another transaction")

// ParseLink reads "up->down" and checks that both are nodes of cfg.
func ParseLink(cfg *config.Config, s string) (topology.Link, error) {
	up, down, ok := strings.Cut(s, "->")
	if !ok || up == "" || down == "" || up == down {
		return topology.Link{}, fmt.Errorf("link %q: want UPSTREAM->DOWNSTREAM, e.g. n1->n2", s)
	}
	for _, n := range []string{up, down} {
		if _, ok := cfg.NodeByName(n); !ok {
			return topology.Link{}, fmt.Errorf("link %q: no node %q in the config (nodes: %s)", s, n, strings.Join(cfg.NodeNames(), ", "))
		}
	}
	return topology.Link{Up: up, Down: down}, nil
}

// SkipResult says what became of a skip.
type SkipResult struct {
	Link      string   `json:"link"`
	CommitLSN string   `json:"commit_lsn"`
	Blocked   *Blocked `json:"blocked"`
	// Outcome: "skipped" (in pgmesh.dead_letter as DeadLetter), "applied"
	// (it went through before the skip took effect: nothing was skipped),
	// "requested" (not done within the wait; the link does it at its next
	// retry).
	Outcome    string `json:"outcome"`
	DeadLetter int64  `json:"dead_letter,omitempty"`
	Changes    int    `json:"changes,omitempty"`
}

// Skip orders the transaction that link l is blocked on moved into
// pgmesh.dead_letter on its downstream, and waits up to wait for the link
// to do it. want, when not 0, is the commit LSN the operator saw: the skip
// is refused if the link is blocked on another transaction.
func Skip(ctx context.Context, cfg *config.Config, l topology.Link, want pglogrepl.LSN, wait time.Duration, progress io.Writer) (*SkipResult, error) {
	down, _ := cfg.NodeByName(l.Down)
	conn, err := pg.Connect(ctx, down.Name, down.DSN, "pgmesh skip")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	b, err := ReadBlocked(ctx, conn, l.Up)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", l.Down, err)
	}
	if b == nil {
		return nil, fmt.Errorf("link %s: %w on a transaction (pgmesh status shows the links; the agent records a blocked transaction after its first failed attempt)", l.Name(), ErrNotBlocked)
	}
	lsn, err := pglogrepl.ParseLSN(b.CommitLSN)
	if err != nil {
		return nil, fmt.Errorf("link %s: blocked transaction's commit LSN %q: %w", l.Name(), b.CommitLSN, err)
	}
	if want != 0 && want != lsn {
		return nil, fmt.Errorf("link %s is %w: it commits at %s upstream, not %s (nothing skipped; check pgmesh status)", l.Name(), ErrMismatch, lsn, want)
	}
	res := &SkipResult{Link: l.Name(), CommitLSN: lsn.String(), Blocked: b, Outcome: "requested"}
	if err := RequestSkip(ctx, conn, l.Up, lsn, b.Error); err != nil {
		return nil, fmt.Errorf("node %s: %w", l.Down, err)
	}
	fmt.Fprintf(progress, "link %s: skipping transaction %s (xid %d, committed %s upstream): %s\n", l.Name(), lsn, b.XID,
		b.CommitTime.UTC().Format(time.RFC3339Nano), b.Error)
	deadline := time.Now().Add(wait)
	for {
		// Progress first: once the link is past the transaction, the dead
		// letter, if it was skipped, is committed and read next.
		applied, ok, err := origin.LinkProgress(ctx, conn, l.Up, cfg.NodeNames(), false)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", l.Down, err)
		}
		var id int64
		var n int
		err = conn.QueryRow(ctx, `SELECT id, jsonb_array_length(changes) FROM pgmesh.dead_letter WHERE upstream = $1 AND commit_lsn = $2::pg_lsn`,
			l.Up, lsn.String()).Scan(&id, &n)
		switch {
		case err == nil:
			res.Outcome, res.DeadLetter, res.Changes = "skipped", id, n
			return res, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return nil, fmt.Errorf("node %s: read pgmesh.dead_letter: %w", l.Down, err)
		}
		if ok && applied > lsn {
			// Applied normally (its cause was fixed meanwhile): the request
			// matches nothing any more.
			if _, err := conn.Exec(ctx, `DELETE FROM pgmesh.skip_request WHERE upstream = $1 AND commit_lsn = $2::pg_lsn`, l.Up, lsn.String()); err != nil {
				return nil, fmt.Errorf("node %s: remove the skip request: %w", l.Down, err)
			}
			res.Outcome = "applied"
			return res, nil
		}
		if time.Now().After(deadline) {
			return res, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}
