package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// CatchUp runs one session of the link up -> down of cfg, as an agent does
// but whatever the nodes' join states, until the upstream's slot confirms
// until: every transaction of up committed before until is then applied on
// down. `pgmesh node remove` uses it to deliver the last changes of the
// node it removes. No agent may run the link meanwhile (the slot is used by
// one session at a time).
func CatchUp(ctx context.Context, cfg *config.Config, up, down string, until pglogrepl.LSN, log *slog.Logger) error {
	un, ok := cfg.NodeByName(up)
	dn, ok2 := cfg.NodeByName(down)
	if !ok || !ok2 {
		return fmt.Errorf("catch up %s->%s: not nodes of the config", up, down)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &link{Link: topology.Link{Up: up, Down: down}, up: un, down: dn, log: log, ungated: true,
		applyTime: prometheus.ObserverFunc(func(float64) {}),
		conflicts: func() *config.Config { return cfg }, workers: cfg.Agent.Workers()}
	conn, err := pg.Connect(ctx, up, un.DSN, "pgmesh catch up")
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := l.session(sctx)
		done <- err
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("catch up %s: %w", l.Name(), err)
		case <-ctx.Done():
			<-done
			return ctx.Err()
		case <-tick.C:
		}
		var confirmed *string
		if err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
			l.Slot()).Scan(&confirmed); err != nil {
			cancel()
			<-done
			return fmt.Errorf("catch up %s: read slot %s: %w", l.Name(), l.Slot(), err)
		}
		if confirmed == nil {
			continue
		}
		c, err := pglogrepl.ParseLSN(*confirmed)
		if err == nil && c >= until {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) && sctx.Err() == nil {
				return err
			}
			return nil
		}
	}
}
