package diff

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// sessionSettings tune the comparison's scans; the settings that fix how
// values print (keys and rows are compared and looked up through their text
// form) come with the connection (pg.ConnectExact). JIT is off because
// compiling the wide hash expressions costs more than it saves on a scan;
// work_mem is raised because the planner cannot know that a bucket number
// has few values and would otherwise plan the HashAggregate to spill.
const sessionSettings = `SET statement_timeout = 0; SET jit = off; SET work_mem = '64MB'`

// session holds one connection per node, in config order.
type session struct {
	names []string
	conns []*pgx.Conn
}

// open connects to every node in parallel.
func open(ctx context.Context, cfg *config.Config, appName string) (*session, error) {
	s := &session{names: cfg.NodeNames(), conns: make([]*pgx.Conn, len(cfg.Nodes))}
	err := s.each(ctx, func(ctx context.Context, i int, _ *pgx.Conn) error {
		c, err := pg.ConnectExact(ctx, cfg.Nodes[i].Name, cfg.Nodes[i].DSN, appName)
		if err != nil {
			return err
		}
		s.conns[i] = c
		if _, err := c.Exec(ctx, sessionSettings); err != nil {
			return fmt.Errorf("session settings: %w", err)
		}
		return nil
	})
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *session) close() {
	for _, c := range s.conns {
		if c != nil {
			c.Close(context.Background())
		}
	}
}

// each runs fn on every node at once and returns the first error, naming
// the node.
func (s *session) each(ctx context.Context, fn func(ctx context.Context, i int, c *pgx.Conn) error) error {
	errs := make([]error, len(s.names))
	var wg sync.WaitGroup
	for i := range s.names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, i, s.conns[i]); err != nil {
				if !strings.HasPrefix(err.Error(), "node "+s.names[i]+":") {
					err = fmt.Errorf("node %s: %w", s.names[i], err)
				}
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// tables resolves the tables to compare from the first node: every
// replicated table, or those named ("schema.table" or "table" in the first
// replicated schema).
func (s *session) tables(ctx context.Context, cfg *config.Config, names []string) ([]*table, error) {
	var list []pg.Table
	if len(names) == 0 {
		all, err := pg.ReplicatedTables(ctx, s.conns[0], cfg.Replicate.Schemas, cfg.Replicate.Exclude)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", s.names[0], err)
		}
		list = all
	}
	for _, n := range names {
		schema, name, ok := strings.Cut(n, ".")
		if !ok {
			schema, name = "public", n
			if len(cfg.Replicate.Schemas) > 0 {
				schema = cfg.Replicate.Schemas[0]
			}
		}
		all, err := pg.ReplicatedTables(ctx, s.conns[0], []string{schema}, nil)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", s.names[0], err)
		}
		found := false
		for _, t := range all {
			if t.Name == name {
				list = append(list, t)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("node %s: table %s.%s not found", s.names[0], schema, name)
		}
	}
	out := make([]*table, 0, len(list))
	for _, t := range list {
		cols, err := describeColumns(ctx, s.conns[0], t)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", s.names[0], err)
		}
		tb, err := newTable(t, cols)
		if err != nil {
			return nil, err
		}
		out = append(out, tb)
	}
	return out, nil
}
