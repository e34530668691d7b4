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

// ConnectExact opens a connection to node whose session prints and parses
// values the same way on every node (ValueSettings): for the sessions that
// move values between nodes or compare them (apply, diff, repair).
func ConnectExact(ctx context.Context, node, dsn, appName string) (*pgx.Conn, error) {
	cfg, err := ParseConfig(dsn, appName)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	pinValueSettings(cfg.RuntimeParams)
	return connect(ctx, node, dsn, cfg)
}

func connect(ctx context.Context, node, dsn string, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("node %s: connect to %s: %w", node, Address(dsn), redact(err))
	}
	return conn, nil
}

// ValueSettings fix every setting that changes the text form of a value,
// the way values travel between nodes: the upstream's walsender prints
// them, the downstream's apply session parses them, each with its own
// session settings. They are sent as startup parameters, which take
// precedence over the server's configuration and over ALTER DATABASE /
// ALTER ROLE … SET (and over -c options in the DSN), and which RESET ALL
// and DISCARD ALL return to.
//
//   - client_encoding UTF8: text is converted to the client encoding on the
//     way out and from it on the way in.
//   - DateStyle ISO: the only output style that every DateStyle reads back
//     unambiguously (SQL and German print day and month in the server's
//     order, and German/Postgres print zone abbreviations like IST that
//     mean different offsets); YMD fixes the order used to read input.
//   - IntervalStyle postgres: sql_standard prints mixed-sign intervals in a
//     form that another IntervalStyle reads with other signs.
//   - TimeZone UTC: timestamptz is printed in the session's zone; a zone
//     whose offset has seconds or that is ambiguous would have to be read
//     back in the same zone.
//   - extra_float_digits 3: the shortest text that reads back to the same
//     float; 0 or less rounds (float4, float8 and the geometric types).
//   - bytea_output hex: escape is readable too, but one form everywhere
//     keeps values byte-comparable as text.
//   - lc_monetary C: money is printed and read with the monetary locale
//     (symbol, separators, fraction digits); C on both ends transfers the
//     stored integer exactly. (What that integer means still depends on
//     each node's lc_monetary: `pgmesh check` fails when nodes differ.)
//   - standard_conforming_strings on: backslashes in string literals.
//   - xmloption content: xml values that are fragments are rejected when
//     read under xmloption document.
//   - array_nulls on: with off, an array's NULL element is read as the
//     string "NULL".
//   - search_path pg_catalog, pg_temp: reg* types (regclass, regtype…) are
//     printed unqualified when visible in the search_path and read through
//     it; with only pg_catalog, user objects are always printed qualified.
//     It also keeps user objects from shadowing what pgmesh's SQL calls.
//   - row_security off: a row-level security policy that applies to the
//     pgmesh role must make a statement fail, not hide rows from apply or
//     from a comparison.
var ValueSettings = []struct{ Name, Value string }{
	{"client_encoding", "UTF8"},
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "3"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
	{"standard_conforming_strings", "on"},
	{"xmloption", "content"},
	{"array_nulls", "on"},
	{"search_path", SearchPath},
	{"row_security", "off"},
}

// pinValueSettings sets ValueSettings in a connection's startup
// parameters, replacing any spelling of the same names from the DSN: the
// server would apply two spellings in an unknown order.
func pinValueSettings(params map[string]string) {
	for _, s := range ValueSettings {
		for k := range params {
			if strings.EqualFold(k, s.Name) {
				delete(params, k)
			}
		}
		params[s.Name] = s.Value
	}
}

// ConnectReplication opens a logical replication connection
// (replication=database) to node. Its walsender prints the replicated
// values under ValueSettings.
func ConnectReplication(ctx context.Context, node, dsn, appName string) (*pgconn.PgConn, error) {
	cfg, err := ParseConfig(dsn, appName)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	pc := cfg.Config.Copy()
	pinValueSettings(pc.RuntimeParams)
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
