package ddl

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Node states that are not rows of ddl_log, for Collect and Wait.
const (
	StatusNotReceived = "not_received" // no row: the node has not applied it (yet)
	StatusUnreachable = "unreachable"  // the node's ddl_log could not be read
)

// appName is the application_name of this package's sessions.
const appName = "pgmesh ddl"

// EmitOptions modify Emit.
type EmitOptions struct {
	// Force skips the check that every earlier DDL is applied on every
	// node (and that every node is reachable to tell).
	Force bool
	// Role runs the DDL as this role (SET ROLE), on the node and on every
	// peer: the objects it creates are that role's. "" = pgmesh's role.
	Role string
	// SearchPath resolves the DDL's unqualified names, on the node and on
	// every peer. "" = DefaultSearchPath.
	SearchPath string
}

// DefaultSearchPath is the search_path of `pgmesh ddl` unless told: public,
// as PostgreSQL's default ("$user", public) would mean schema pgmesh for
// pgmesh's role, whose name it shares. pgmesh's own sessions pin theirs to
// pg.SearchPath.
const DefaultSearchPath = "public"

// ErrPending is returned by Emit when an earlier DDL is not applied
// everywhere yet.
var ErrPending = errors.New("an earlier DDL is not applied on every node")

// Emit runs sql on node in one transaction together with its DDL message
// (pgmesh.ddl_run: message first, then the SQL, then the publication
// reconciliation), records it in the node's ddl_log as applied, and returns
// its id. sql is the user's DDL, executed verbatim (several statements
// allowed, no transaction control, no CONCURRENTLY: they would not run on
// the peers either). Unless opts.Force, it refuses while an earlier DDL is
// not applied on every node, so that schema changes do not pile up on
// nodes that are behind.
func Emit(ctx context.Context, cfg *config.Config, node, sql string, opts EmitOptions) (string, error) {
	n, ok := cfg.NodeByName(node)
	if !ok {
		return "", fmt.Errorf("node %q is not in the config (nodes: %s)", node, strings.Join(cfg.NodeNames(), ", "))
	}
	if strings.TrimSpace(sql) == "" {
		return "", errors.New("no SQL to run")
	}
	if !opts.Force {
		if err := checkNothingPending(ctx, cfg); err != nil {
			return "", err
		}
	}
	conn, err := pg.Connect(ctx, n.Name, n.DSN, appName)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	path := opts.SearchPath
	if path == "" {
		path = DefaultSearchPath
	}
	var id string
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_catalog.set_config('search_path', $1, true)", path); err != nil {
			return fmt.Errorf("set search_path %q: %w", path, err)
		}
		return tx.QueryRow(ctx, "SELECT pgmesh.ddl_run($1, $2)", sql, opts.Role).Scan(&id)
	})
	if err != nil {
		return "", fmt.Errorf("node %s: run DDL: %w", node, err)
	}
	return id, nil
}

func checkNothingPending(ctx context.Context, cfg *config.Config) error {
	log := Collect(ctx, cfg)
	if len(log.Unreachable) > 0 {
		var parts []string
		for _, n := range log.Nodes {
			if e, ok := log.Unreachable[n]; ok {
				parts = append(parts, n+": "+e)
			}
		}
		return fmt.Errorf("cannot tell whether earlier DDL is applied everywhere: %s (use --force to run the DDL anyway)", strings.Join(parts, "; "))
	}
	pending := log.Pending()
	if len(pending) == 0 {
		return nil
	}
	var parts []string
	for _, e := range pending {
		var lag []string
		for _, n := range e.Lagging(log.Nodes) {
			s := n + " " + e.Nodes[n].Status
			if msg := e.Nodes[n].Error; msg != "" {
				s += ": " + msg
			}
			lag = append(lag, s)
		}
		parts = append(parts, fmt.Sprintf("%s from %s (%s) on %s", e.ID, e.Origin, FirstLine(e.SQL, 60), strings.Join(lag, ", ")))
	}
	return fmt.Errorf("%w: %s; wait for it (pgmesh ddl list), skip it on a node that cannot apply it (pgmesh ddl skip), or use --force",
		ErrPending, strings.Join(parts, "; "))
}

// NodeState is one node's record of a DDL.
type NodeState struct {
	// Status is a ddl_log status, StatusNotReceived or StatusUnreachable.
	Status    string     `json:"status"`
	AppliedAt *time.Time `json:"applied_at,omitempty"`
	Error     string     `json:"error,omitempty"`
}

// Done reports whether the node has the DDL behind it (applied or skipped).
func (s NodeState) Done() bool { return s.Status == StatusApplied || s.Status == StatusSkipped }

// Entry is one DDL as the nodes of the cluster know it.
type Entry struct {
	ID         string               `json:"id"`
	Origin     string               `json:"origin"`
	SQL        string               `json:"sql"`
	SearchPath string               `json:"search_path"`
	Role       string               `json:"role"`
	EmittedAt  time.Time            `json:"emitted_at"`
	Nodes      map[string]NodeState `json:"nodes"` // every node of the config
}

// NotReplicated reports whether the DDL was captured but cannot replicate
// (CONCURRENTLY): the operator runs it on every node.
func (e Entry) NotReplicated() bool {
	return e.Nodes[e.Origin].Status == StatusNotReplicated
}

// Lagging returns the reachable nodes, in the order of nodes, that have not
// applied or skipped the DDL. A not_replicated DDL lags nowhere: pgmesh
// does not track it beyond its origin.
func (e Entry) Lagging(nodes []string) []string {
	if e.NotReplicated() {
		return nil
	}
	var lag []string
	for _, n := range nodes {
		if s := e.Nodes[n]; !s.Done() && s.Status != StatusUnreachable {
			lag = append(lag, n)
		}
	}
	return lag
}

// Log is the ddl_log of every node, merged by DDL id.
type Log struct {
	Nodes       []string          `json:"nodes"`
	Entries     []Entry           `json:"entries"`               // by emission time
	Unreachable map[string]string `json:"unreachable,omitempty"` // node → why its ddl_log could not be read
}

// Pending returns the entries not applied on some reachable node.
func (l *Log) Pending() []Entry {
	var p []Entry
	for _, e := range l.Entries {
		if len(e.Lagging(l.Nodes)) > 0 {
			p = append(p, e)
		}
	}
	return p
}

type logRow struct {
	id, origin, sql, searchPath, role string
	emittedAt, appliedAt              *time.Time
	status, err                       string
}

// Collect reads the ddl_log of every node (in parallel) and merges them.
// A node that cannot be read is in Unreachable, and its state is
// StatusUnreachable in every entry.
func Collect(ctx context.Context, cfg *config.Config) *Log {
	l := &Log{Nodes: cfg.NodeNames(), Unreachable: map[string]string{}}
	rows := make([][]logRow, len(cfg.Nodes))
	errs := make([]error, len(cfg.Nodes))
	var wg sync.WaitGroup
	for i, n := range cfg.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rows[i], errs[i] = readLog(ctx, n)
		}()
	}
	wg.Wait()
	byID := map[string]*Entry{}
	for i, n := range cfg.Nodes {
		if errs[i] != nil {
			l.Unreachable[n.Name] = errs[i].Error()
			continue
		}
		for _, r := range rows[i] {
			e := byID[r.id]
			if e == nil {
				e = &Entry{ID: r.id, Nodes: map[string]NodeState{}}
				byID[r.id] = e
			}
			// The origin's row is authoritative for what the DDL is.
			if e.Origin == "" || n.Name == r.origin {
				e.Origin, e.SQL, e.SearchPath, e.Role = r.origin, r.sql, r.searchPath, r.role
				if r.emittedAt != nil {
					e.EmittedAt = *r.emittedAt
				}
			}
			e.Nodes[n.Name] = NodeState{Status: r.status, AppliedAt: r.appliedAt, Error: r.err}
		}
	}
	for _, e := range byID {
		for _, n := range l.Nodes {
			if _, ok := e.Nodes[n]; ok {
				continue
			}
			if _, down := l.Unreachable[n]; down {
				e.Nodes[n] = NodeState{Status: StatusUnreachable}
			} else {
				e.Nodes[n] = NodeState{Status: StatusNotReceived}
			}
		}
		l.Entries = append(l.Entries, *e)
	}
	sort.Slice(l.Entries, func(i, j int) bool {
		a, b := l.Entries[i], l.Entries[j]
		if !a.EmittedAt.Equal(b.EmittedAt) {
			return a.EmittedAt.Before(b.EmittedAt)
		}
		return a.ID < b.ID
	})
	return l
}

func readLog(ctx context.Context, n config.Node) ([]logRow, error) {
	conn, err := pg.Connect(ctx, n.Name, n.DSN, appName)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT id, origin_node, sql, search_path, role, emitted_at, applied_at, status, coalesce(error, '')
	                                FROM pgmesh.ddl_log`)
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.ddl_log: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (logRow, error) {
		var r logRow
		err := row.Scan(&r.id, &r.origin, &r.sql, &r.searchPath, &r.role, &r.emittedAt, &r.appliedAt, &r.status, &r.err)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.ddl_log: %w", err)
	}
	return out, nil
}

// pollInterval is how often Wait looks at the nodes.
const pollInterval = 200 * time.Millisecond

// Wait returns when every node's ddl_log has DDL id as applied (or
// skipped). After timeout it returns an error that names each lagging node
// with what it knows of the DDL (not received, failed with the error, or
// unreachable).
func Wait(ctx context.Context, cfg *config.Config, id string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	state := map[string]NodeState{}
	for {
		done := true
		for _, n := range cfg.Nodes {
			if state[n.Name].Done() {
				continue
			}
			s := pollNode(ctx, conns, n, id)
			state[n.Name] = s
			if !s.Done() {
				done = false
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return lagError(cfg, id, timeout, state)
			}
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// pollNode reads node n's state of DDL id, (re)connecting as needed.
func pollNode(ctx context.Context, conns map[string]*pgx.Conn, n config.Node, id string) NodeState {
	conn := conns[n.Name]
	if conn == nil {
		c, err := pg.Connect(ctx, n.Name, n.DSN, appName)
		if err != nil {
			return NodeState{Status: StatusUnreachable, Error: err.Error()}
		}
		conn, conns[n.Name] = c, c
	}
	var s NodeState
	err := conn.QueryRow(ctx, "SELECT status, applied_at, coalesce(error, '') FROM pgmesh.ddl_log WHERE id = $1", id).
		Scan(&s.Status, &s.AppliedAt, &s.Error)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return NodeState{Status: StatusNotReceived}
	case err != nil:
		conn.Close(context.WithoutCancel(ctx))
		delete(conns, n.Name)
		return NodeState{Status: StatusUnreachable, Error: err.Error()}
	}
	return s
}

func lagError(cfg *config.Config, id string, timeout time.Duration, state map[string]NodeState) error {
	var lag []string
	for _, n := range cfg.Nodes {
		s := state[n.Name]
		if s.Done() {
			continue
		}
		d := n.Name + " (" + strings.ReplaceAll(s.Status, "_", " ")
		if s.Error != "" {
			d += ": " + s.Error
		}
		lag = append(lag, d+")")
	}
	return fmt.Errorf("ddl %s: not applied on every node after %s: lagging %s", id, timeout, strings.Join(lag, ", "))
}

// Skip marks DDL id as skipped in node's ddl_log, so that node's link goes
// on without executing it (the operator applied an equivalent change by
// hand, or decided the node does without it). It refuses an id that no
// reachable node knows, and a DDL the node has already applied.
func Skip(ctx context.Context, cfg *config.Config, id, node string) error {
	n, ok := cfg.NodeByName(node)
	if !ok {
		return fmt.Errorf("node %q is not in the config (nodes: %s)", node, strings.Join(cfg.NodeNames(), ", "))
	}
	log := Collect(ctx, cfg)
	if e, down := log.Unreachable[node]; down {
		return fmt.Errorf("node %s: %s", node, e)
	}
	var entry *Entry
	for i := range log.Entries {
		if log.Entries[i].ID == id {
			entry = &log.Entries[i]
		}
	}
	if entry == nil {
		return fmt.Errorf("ddl %s is not in the ddl_log of any reachable node (see pgmesh ddl list)", id)
	}
	switch s := entry.Nodes[node].Status; s {
	case StatusApplied, StatusNotReplicated:
		return fmt.Errorf("ddl %s is %s on node %s: nothing to skip", id, strings.ReplaceAll(s, "_", " "), node)
	case StatusSkipped:
		return nil
	}
	conn, err := pg.Connect(ctx, n.Name, n.DSN, appName)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var emitted *time.Time
	if !entry.EmittedAt.IsZero() {
		emitted = &entry.EmittedAt
	}
	tag, err := conn.Exec(ctx, `
INSERT INTO pgmesh.ddl_log AS l (id, origin_node, sql, search_path, role, emitted_at, applied_at, status)
VALUES ($1, $2, $3, $4, $5, $6, now(), 'skipped')
ON CONFLICT (id) DO UPDATE SET status = 'skipped', applied_at = now() WHERE l.status IN ('failed', 'skipped')`,
		entry.ID, entry.Origin, entry.SQL, entry.SearchPath, entry.Role, emitted)
	if err != nil {
		return fmt.Errorf("node %s: skip ddl %s: %w", node, id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("node %s: ddl %s was applied meanwhile: nothing to skip", node, id)
	}
	return nil
}

// FirstLine returns the first non-empty line of sql, cut to max runes, for
// one-line displays.
func FirstLine(sql string, max int) string {
	s := strings.TrimSpace(sql)
	more := false
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s, more = strings.TrimSpace(s[:i]), true
	}
	if r := []rune(s); len(r) > max {
		s, more = string(r[:max]), true
	}
	if more {
		s += "…"
	}
	return s
}
