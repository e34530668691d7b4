package pg

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
)

// ConnectNodes connects to every node at once (Connect) and returns the
// connections in the nodes' order: conns[i] is nil where errs[i] says why
// node i could not be reached. Close them with CloseAll.
func ConnectNodes(ctx context.Context, nodes []config.Node, appName string) (conns []*pgx.Conn, errs []error) {
	conns, errs = make([]*pgx.Conn, len(nodes)), make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { conns[i], errs[i] = Connect(ctx, n.Name, n.DSN, appName) })
	}
	wg.Wait()
	return conns, errs
}

// CloseAll closes the connections that are not nil.
func CloseAll(ctx context.Context, conns []*pgx.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close(context.WithoutCancel(ctx))
		}
	}
}
