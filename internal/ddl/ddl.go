// Package ddl propagates schema changes through the replication stream
// (README, "DDL"). A DDL runs on its origin node together with a
// transactional logical message (prefix Prefix) that carries its text, so
// each peer executes it at the same point of the origin's stream. The SQL
// side lives in sql/0004_ddl.sql: pgmesh.ddl_run (`pgmesh ddl`), the event
// triggers (ddl.capture: auto), pgmesh.ddl_apply (peers) and pgmesh.ddl_log,
// where every node records what it has applied.
//
// This package holds the Go side: Install (per node, called by init), Emit,
// Wait, Skip and Collect for the CLI, and the Executor that the applier
// calls for each message.
package ddl

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Prefix is the logical decoding message prefix of DDL messages.
const Prefix = "pgmesh.ddl"

// Statuses of a DDL in a node's pgmesh.ddl_log.
const (
	StatusApplied       = "applied"
	StatusFailed        = "failed"
	StatusSkipped       = "skipped"
	StatusNotReplicated = "not_replicated"
)

// Payload is the content of a DDL message, as pgmesh.ddl_announce builds it.
type Payload struct {
	V          int       `json:"v"`
	ID         string    `json:"id"`
	Origin     string    `json:"origin"`
	SQL        string    `json:"sql"`
	SearchPath string    `json:"search_path"`
	Role       string    `json:"role"`
	EmittedAt  time.Time `json:"emitted_at"`
	// Settings are the issuer's settings that change how a literal in the
	// DDL reads (DateStyle…, from version 2): the peers replay the DDL
	// under them (pgmesh.ddl_value_settings says which).
	Settings map[string]string `json:"settings,omitempty"`
}

// maxIDLen bounds the DDL id: ids are UUIDs, anything much longer is not
// one of ours.
const maxIDLen = 64

// ParsePayload decodes and validates a DDL message. Messages come from the
// upstream's WAL, where any role allowed to call pg_logical_emit_message
// could have written one, so nothing is trusted: unknown versions, missing
// fields and text PostgreSQL cannot store (NUL, invalid UTF-8) are errors.
func ParsePayload(content []byte) (Payload, error) {
	var p Payload
	dec := json.NewDecoder(strings.NewReader(string(content)))
	if err := dec.Decode(&p); err != nil {
		return Payload{}, fmt.Errorf("invalid %s message: %w", Prefix, err)
	}
	if dec.More() {
		return Payload{}, fmt.Errorf("invalid %s message: trailing data after the JSON object", Prefix)
	}
	if p.V != 1 && p.V != 2 {
		return Payload{}, fmt.Errorf("invalid %s message: version %d, this pgmesh knows versions 1 and 2 (upgrade pgmesh on this node)", Prefix, p.V)
	}
	switch {
	case p.ID == "" || len(p.ID) > maxIDLen:
		return Payload{}, fmt.Errorf("invalid %s message: id %q", Prefix, p.ID)
	case p.Origin == "":
		return Payload{}, fmt.Errorf("invalid %s message %s: no origin node", Prefix, p.ID)
	case strings.TrimSpace(p.SQL) == "":
		return Payload{}, fmt.Errorf("invalid %s message %s: no SQL", Prefix, p.ID)
	case p.EmittedAt.IsZero():
		return Payload{}, fmt.Errorf("invalid %s message %s: no emitted_at", Prefix, p.ID)
	}
	texts := []string{p.ID, p.Origin, p.SQL, p.SearchPath, p.Role}
	for k, v := range p.Settings {
		texts = append(texts, k, v)
	}
	for _, s := range texts {
		if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return Payload{}, fmt.Errorf("invalid %s message %s: text with NUL or invalid UTF-8", Prefix, p.ID)
		}
	}
	return p, nil
}

// ApplyError is a DDL that failed on this node. The link stops with it (the
// agent records it as the link error, shown by `pgmesh status`); the
// operator fixes the node and restarts the link, or skips the DDL.
type ApplyError struct {
	Node    string // this node ("" if the executor was not told)
	Payload Payload
	Err     error // the PostgreSQL error
}

func (e *ApplyError) Error() string {
	skip := fmt.Sprintf("pgmesh ddl skip %s --node %s", e.Payload.ID, orThisNode(e.Node))
	return fmt.Sprintf("ddl %s from node %s failed: %v (fix this node and restart the link, or skip it: %s)",
		e.Payload.ID, e.Payload.Origin, e.Err, skip)
}

func (e *ApplyError) Unwrap() error { return e.Err }

func orThisNode(n string) string {
	if n == "" {
		return "<this node>"
	}
	return n
}

// AsApplyError returns the DDL failure inside err, if any, so that the
// agent can record it with RecordFailure.
func AsApplyError(err error) (*ApplyError, bool) {
	var ae *ApplyError
	ok := errors.As(err, &ae)
	return ae, ok
}

// quoteE quotes s as an escape string literal (E'…'), which means the same
// whatever standard_conforming_strings is. Used only where the Execer
// interface leaves no way to pass parameters; s never contains NUL
// (ParsePayload refuses it).
func quoteE(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "E'" + s + "'"
}
