package sandbox

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/grants"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Role is a login role of a sandbox. Every sandbox server has the same four,
// set up as the README's Security section says production should be:
type Role string

const (
	// Admin is the bootstrap superuser: the sandbox's own work, and the
	// DBA's part of pgmesh's setup (admin_dsn in pgmesh.yaml).
	Admin Role = "postgres"
	// Pgmesh is pgmesh's role: not a superuser, with exactly the grants of
	// internal/grants. pgmesh.yaml uses it.
	Pgmesh Role = "pgmesh"
	// Owner owns the application's tables and runs its DDL (pgmesh is a
	// member of it, so that it can publish them and replay the DDL).
	Owner Role = "app_owner"
	// App is an application role: SELECT, INSERT, UPDATE, DELETE and
	// TRUNCATE on the tables Owner creates, USAGE on their sequences,
	// nothing on schema pgmesh.
	App Role = "app"
)

// Roles are the sandbox's roles, Admin first.
var Roles = []Role{Admin, Pgmesh, Owner, App}

// ParseRole reads a role name as `sandbox dsn --role` takes it.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	names := make([]string, len(Roles))
	for i, r := range Roles {
		names[i] = string(r)
	}
	return "", fmt.Errorf("no sandbox role %q (roles: %s)", s, strings.Join(names, ", "))
}

// passfileName is the libpq password file of a sandbox, mode 0600, named
// in every DSN (passfile=): passwords never appear in DSNs, configs or logs.
const passfileName = "passfile"

// Passfile is the sandbox's password file.
func (c *Cluster) Passfile() string { return filepath.Join(c.Dir, passfileName) }

// newPasswords makes a random password for every role.
func newPasswords() (map[Role]string, error) {
	pw := make(map[Role]string, len(Roles))
	for _, r := range Roles {
		b := make([]byte, 18)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("generate a password: %w", err)
		}
		pw[r] = hex.EncodeToString(b)
	}
	return pw, nil
}

// writePassfile writes one line per node and role, for the node's exact
// address: a password is never offered to another server.
func (c *Cluster) writePassfile(pw map[Role]string) error {
	var b strings.Builder
	b.WriteString("# pgmesh sandbox passwords (libpq password file); keep it private\n")
	for _, n := range c.Nodes {
		for _, r := range Roles {
			fmt.Fprintf(&b, "127.0.0.1:%d:*:%s:%s\n", n.Port, r, pw[r])
		}
	}
	tmp := c.Passfile() + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, c.Passfile())
}

// AliasPassfile writes to path (mode 0600) the passwords of every role for
// each address of aliases (host:port → the name of the node it leads to,
// e.g. a TCP proxy in front of it), so that a DSN that points at the alias
// and names path as its passfile authenticates. Passwords are looked up by
// address, and the sandbox's own file names the servers' addresses only.
func (c *Cluster) AliasPassfile(path string, aliases map[string]string) error {
	pw, err := c.readPasswords()
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, addr := range slices.Sorted(maps.Keys(aliases)) {
		if _, err := c.Node(aliases[addr]); err != nil {
			return err
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("alias %q: %w", addr, err)
		}
		for _, r := range Roles {
			fmt.Fprintf(&b, "%s:%s:*:%s:%s\n", host, port, r, pw[r])
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write password file %s: %w", path, err)
	}
	return nil
}

// ServerDSN is a DSN to node's database db as role with the password
// inline: for connections a sandbox server makes itself (a native
// subscription's walreceiver), which run as the server's OS user and cannot
// read the password file. It never goes into output.
func (c *Cluster) ServerDSN(node, db string, role Role) (string, error) {
	pw, err := c.readPasswords()
	if err != nil {
		return "", err
	}
	return c.DSNAs(node, db, role) + " password=" + dsnValue(pw[role]), nil
}

// readPasswords reads the passwords back from the password file.
func (c *Cluster) readPasswords() (map[Role]string, error) {
	f, err := os.Open(c.Passfile())
	if err != nil {
		return nil, fmt.Errorf("read sandbox passwords: %w", err)
	}
	defer f.Close()
	pw := map[Role]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) == 5 && !strings.HasPrefix(fields[0], "#") {
			pw[Role(fields[3])] = fields[4]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read sandbox passwords: %w", err)
	}
	for _, r := range Roles {
		if pw[r] == "" {
			return nil, fmt.Errorf("read sandbox passwords: %s has no password for role %s", c.Passfile(), r)
		}
	}
	return pw, nil
}

// setupRoles creates the roles of node n (whose superuser password initdb
// set) and gives pgmesh its server-wide grants.
func (c *Cluster) setupRoles(ctx context.Context, n *Node, pw map[Role]string) error {
	conn, err := pg.Connect(ctx, n.Name, c.DSNAs(n.Name, "postgres", Admin), appName)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, r := range Roles[1:] {
		attrs := "LOGIN"
		if r == Pgmesh {
			attrs = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
		}
		v, err := scramVerifier(pw[r])
		if err != nil {
			return err
		}
		// PASSWORD takes no parameter; the verifier is base64 and $.
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE ROLE %s %s PASSWORD %s", pg.Ident(string(r)), attrs, pg.QuoteLiteral(v))); err != nil {
			return fmt.Errorf("%s: create role %s: %w", n.Name, r, err)
		}
	}
	stmts := grants.Statements(grants.Server(grants.Node{Role: string(Pgmesh), Owners: []string{string(Owner)}, Major: c.Major}))
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %s: %w", n.Name, s, err)
		}
	}
	return nil
}

// prepareDB gives the sandbox roles their privileges in database db of
// node n: pgmesh's grants (internal/grants), CREATE for the owner (new
// schemas, tables in public), and default privileges so that the app role
// may read and write every table and sequence the owner creates.
func (c *Cluster) prepareDB(ctx context.Context, n *Node, db string) error {
	conn, err := pg.Connect(ctx, n.Name, c.DSNAs(n.Name, db, Admin), appName)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	owner, app := pg.Ident(string(Owner)), pg.Ident(string(App))
	stmts := grants.Statements(grants.Database(grants.Node{Role: string(Pgmesh), DB: db, Major: c.Major}))
	stmts = append(stmts,
		fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s", pg.Ident(db), owner),
		fmt.Sprintf("GRANT CREATE ON SCHEMA public TO %s", owner),
		fmt.Sprintf("GRANT USAGE ON SCHEMA public TO %s", app),
		fmt.Sprintf("ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO %s", owner, app),
		fmt.Sprintf("ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT USAGE, SELECT ON SEQUENCES TO %s", owner, app),
		fmt.Sprintf("ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT USAGE ON SCHEMAS TO %s", owner, app),
	)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: database %s: %s: %w", n.Name, db, s, err)
		}
	}
	return nil
}

// CreateDB creates database db on node unless it exists, with the sandbox
// roles' privileges in it.
func (c *Cluster) CreateDB(ctx context.Context, node, db string) error {
	n, err := c.Node(node)
	if err != nil {
		return err
	}
	return c.createDB(ctx, n, db)
}

// createDB creates database db on n unless it exists.
func (c *Cluster) createDB(ctx context.Context, n *Node, db string) error {
	conn, err := pg.Connect(ctx, n.Name, c.DSNAs(n.Name, "postgres", Admin), appName)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return fmt.Errorf("%s: look up database %s: %w", n.Name, db, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pg.Ident(db)); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // created meanwhile
			return nil
		}
		return fmt.Errorf("%s: create database %s: %w", n.Name, db, err)
	}
	return c.prepareDB(ctx, n, db)
}

// AdminConn opens a superuser connection to database db of node (the
// sandbox's own work, tests that play the DBA).
func (c *Cluster) AdminConn(ctx context.Context, node, db string) (*pgx.Conn, error) {
	return pg.Connect(ctx, node, c.DSNAs(node, db, Admin), appName)
}

// scramVerifier is what PostgreSQL stores for password pw (SCRAM-SHA-256,
// RFC 5802/7677), so that CREATE ROLE … PASSWORD carries no password that
// a server log could keep.
func scramVerifier(pw string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("generate a salt: %w", err)
	}
	const iterations = 4096
	salted, err := pbkdf2.Key(sha256.New, pw, salt, iterations, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(mac(salted, "Server Key"))), nil
}
