package sandbox

import (
	"encoding/json"
	"fmt"
	"strings"
)

// confFile is the sandbox's own settings file inside each data directory,
// included from postgresql.conf so that initdb's file stays untouched and
// a new port only rewrites this file.
const confFile = "pgmesh-sandbox.conf"

// serverConf returns the settings of a sandbox server.
func serverConf(major, port int) string {
	var b strings.Builder
	b.WriteString("# Written by pgmesh sandbox; changes are lost when the port changes.\n")
	set := func(name, value string) { fmt.Fprintf(&b, "%s = %s\n", name, value) }
	set("listen_addresses", "'127.0.0.1'")
	set("port", fmt.Sprint(port))
	// No Unix socket: data dirs under long temp paths would exceed the
	// 107-byte socket path limit, and every client connects over TCP.
	set("unix_socket_directories", "''")
	set("wal_level", "logical")
	set("track_commit_timestamp", "on")
	set("max_replication_slots", "32")
	set("max_wal_senders", "32")
	set("max_worker_processes", "32")
	if major >= 18 {
		// Before 18, origins are bounded by max_replication_slots.
		set("max_active_replication_origins", "32")
	}
	// Sandboxes are for tests and demos: the OS does not crash here, and
	// `pg_ctl stop -m immediate` still loses WAL that was not yet written,
	// which is what crash tests need.
	set("fsync", "off")
	set("shared_buffers", "64MB")
	set("max_connections", "100")
	set("wal_sender_timeout", "10s")
	set("logging_collector", "off")
	return b.String()
}

// dsn returns the libpq key/value DSN of a sandbox server for user, whose
// password is in passfile.
func dsn(port int, db, user, passfile string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s passfile=%s sslmode=disable",
		port, dsnValue(db), dsnValue(user), dsnValue(passfile))
}

// dsnValue quotes a libpq key/value value when it needs it.
func dsnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\\'") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// yamlString quotes s as a YAML double-quoted scalar (JSON strings are).
func yamlString(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}
