package setup

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/origin"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// Teardown removes pgmesh from every node: the pgmesh slots of the node's
// database, the origins of its inbound links (and their parallel-apply
// origins pgmesh_<up>_<k>), the publication and schema pgmesh. A node with
// an active pgmesh slot is left untouched (stop the agents first); the other
// nodes are still torn down and every problem is returned, joined.
func Teardown(ctx context.Context, cfg *config.Config) error {
	links := cfg.Links()
	var errs []error
	for _, n := range cfg.Nodes {
		if err := teardownNode(ctx, n, topology.Inbound(links, n.Name)); err != nil {
			errs = append(errs, fmt.Errorf("node %s: teardown: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

func teardownNode(ctx context.Context, n config.Node, inbound []topology.Link) error {
	conn, err := pg.Connect(ctx, n.Name, n.DSN, "pgmesh teardown")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	// Slots belong to a database, so every pgmesh slot of this one is ours.
	rows, err := conn.Query(ctx, `SELECT slot_name::text, active FROM pg_replication_slots
	                               WHERE database = current_database() AND slot_name LIKE 'pgmesh\_%'
	                               ORDER BY slot_name`)
	if err != nil {
		return fmt.Errorf("list slots: %w", err)
	}
	var slots, active []string
	var name string
	var isActive bool
	if _, err := pgx.ForEachRow(rows, []any{&name, &isActive}, func() error {
		slots = append(slots, name)
		if isActive {
			active = append(active, name)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("list slots: %w", err)
	}
	if len(active) > 0 {
		return fmt.Errorf("slots %s are in use: stop the pgmesh agents consuming them, then run again", strings.Join(active, ", "))
	}
	for _, s := range slots {
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s); err != nil {
			return fmt.Errorf("drop slot %s: %w", s, err)
		}
	}

	// Origins are shared by all databases of the server: drop only this
	// node's, by name.
	for _, l := range inbound {
		if err := origin.Drop(ctx, conn, l.Up); err != nil {
			return err
		}
	}

	if _, err := conn.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pg.Ident(Publication)); err != nil {
		return fmt.Errorf("drop publication %s: %w", Publication, err)
	}
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pg.Ident(pg.MetaSchema)+" CASCADE"); err != nil {
		return fmt.Errorf("drop schema %s: %w", pg.MetaSchema, err)
	}
	return nil
}
