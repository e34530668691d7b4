// Package pg holds what every other package needs to talk to PostgreSQL:
// connecting (with errors that name the node and address but never the
// password), server features, identifier quoting and LSN helpers.
package pg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultConnectTimeout bounds a connection attempt when the DSN sets none,
// so that an unreachable node is reported instead of hanging.
const DefaultConnectTimeout = 10 * time.Second

// Address describes where a DSN points, for messages: "host:port/db user=u".
// It never contains the password.
func Address(dsn string) string {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return fmt.Sprintf("%s/%s user=%s", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), cfg.Database, cfg.User)
}

// SearchPath is the search_path of every session pgmesh opens: nothing a
// user creates in another schema can shadow a function, operator or type
// that pgmesh's SQL names without a schema. Sent in the startup packet, it
// wins over ALTER ROLE / ALTER DATABASE … SET search_path.
const SearchPath = "pg_catalog, pg_temp"

// ParseConfig parses a DSN and applies pgmesh's defaults (connect timeout,
// application_name, the pinned search_path).
func ParseConfig(dsn, appName string) (*pgx.ConnConfig, error) {
	cfg, err := parseConfig(dsn, appName)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["search_path"] = SearchPath
	return cfg, nil
}

func parseConfig(dsn, appName string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DSN: %w", redact(err))
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if appName != "" {
		cfg.RuntimeParams["application_name"] = appName
	}
	return cfg, nil
}

// Connect opens a connection of pgmesh's own to node. Errors name the node
// and its address so that "which of my twelve nodes is down" needs no
// guessing.
func Connect(ctx context.Context, node, dsn, appName string) (*pgx.Conn, error) {
	cfg, err := ParseConfig(dsn, appName)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	return connect(ctx, node, dsn, cfg)
}

// ConnectUser opens a connection that runs SQL written for the role's own
// search_path, as an application does: workloads of the demo, eval and
// tests. pgmesh's own SQL never runs on it.
func ConnectUser(ctx context.Context, node, dsn, appName string) (*pgx.Conn, error) {
	cfg, err := parseConfig(dsn, appName)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	return connect(ctx, node, dsn, cfg)
}

func connect(ctx context.Context, node, dsn string, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("node %s: connect to %s: %w", node, Address(dsn), redact(err))
	}
	return conn, nil
}

// ConnectReplication opens a logical replication connection
// (replication=database) to node.
func ConnectReplication(ctx context.Context, node, dsn, appName string) (*pgconn.PgConn, error) {
	cfg, err := ParseConfig(dsn, appName)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	pc := cfg.Config.Copy()
	pc.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("node %s: replication connection to %s: %w", node, Address(dsn), redact(err))
	}
	return conn, nil
}

// redact strips a password that pgconn may echo in a parse error.
func redact(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid DSN: " + pe.Error())
	}
	return err
}

// Ident quotes a possibly schema-qualified identifier: Ident("public", "t").
func Ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// QuoteLiteral quotes s as an SQL string literal. Only for the rare places
// where PostgreSQL refuses parameters (utility statements); values go as
// parameters everywhere else.
func QuoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// ServerVersionNum returns server_version_num (150004, 180000…).
func ServerVersionNum(ctx context.Context, q Querier) (int, error) {
	var s string
	if err := q.QueryRow(ctx, "SHOW server_version_num").Scan(&s); err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("parse server_version_num %q: %w", s, err)
	}
	return v, nil
}

// Querier is the part of pgx.Conn / pgx.Tx / pgxpool.Pool that read-only
// helpers need.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}
