package conflict

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"
)

// SeenPrefix is the prefix of the logical decoding messages in which a node
// tells its peers, per origin node, up to which commit time it has applied
// that node's changes.
const SeenPrefix = "pgmesh.seen"

// SeenMessage is the content of a "pgmesh.seen" message:
//
//	{"node":"n2","seen":{"n1":"2026-01-02T03:04:05.123456Z","n3":"…"}}
//
// Node is the sender; Seen maps an origin node to the commit time (as that
// origin stamped it) up to which the sender had applied all its changes
// when it emitted the message. The sender's applier emits it inside the
// apply transaction of the last of those changes, after its row changes and
// before its COMMIT (pgmesh.claim_seen, sql/0005), as a non-transactional
// message with the session's replication origin released around it, so
// that the peers' slots do not filter it with the applied changes; see
// internal/apply/seen.go for why that placement makes the claim hold.
type SeenMessage struct {
	Node string               `json:"node"`
	Seen map[string]time.Time `json:"seen"`
}

var nodeName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)

// Marshal returns the message content.
func (m SeenMessage) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	utc := make(map[string]time.Time, len(m.Seen))
	for k, v := range m.Seen {
		utc[k] = v.UTC()
	}
	return json.Marshal(SeenMessage{Node: m.Node, Seen: utc})
}

// ParseSeenMessage decodes the content of a "pgmesh.seen" message. Anything
// else (malformed JSON, unknown fields, bad node names, missing times) is an
// error.
func ParseSeenMessage(content []byte) (SeenMessage, error) {
	var m SeenMessage
	dec := json.NewDecoder(bytes.NewReader(content))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return SeenMessage{}, fmt.Errorf("parse %s message: %w", SeenPrefix, err)
	}
	if dec.More() {
		return SeenMessage{}, fmt.Errorf("parse %s message: trailing data", SeenPrefix)
	}
	if err := m.validate(); err != nil {
		return SeenMessage{}, fmt.Errorf("parse %s message: %w", SeenPrefix, err)
	}
	return m, nil
}

func (m SeenMessage) validate() error {
	if !nodeName.MatchString(m.Node) {
		return fmt.Errorf("bad node name %q", m.Node)
	}
	for origin, ts := range m.Seen {
		if !nodeName.MatchString(origin) {
			return fmt.Errorf("bad origin node name %q", origin)
		}
		if ts.IsZero() {
			return fmt.Errorf("origin %s: no time", origin)
		}
	}
	return nil
}

// SeenSQL is the statement that records one entry of a SeenMessage on the
// receiving node; parameters (text): $1 the sender (peer), $2 the origin
// node, $3 seen_until (timestamptz, RFC 3339). The applier runs it, for each
// entry, at the start of the next remote transaction of the sender after the
// message, so that every change of that transaction is judged with it. The
// value never goes back (messages of parallel or restarted links may arrive
// out of order).
func SeenSQL() string {
	return `INSERT INTO pgmesh.peer_seen (peer, origin, seen_until) VALUES ($1::text, $2::text, $3::timestamptz)
ON CONFLICT (peer, origin) DO UPDATE SET seen_until = greatest(pgmesh.peer_seen.seen_until, excluded.seen_until)`
}

// Params returns the SeenSQL parameters of every entry of m, as text,
// sorted by origin.
func (m SeenMessage) Params() [][3]string {
	origins := slices.Sorted(maps.Keys(m.Seen))
	out := make([][3]string, len(origins))
	for i, origin := range origins {
		out[i] = [3]string{m.Node, origin, m.Seen[origin].UTC().Format(time.RFC3339Nano)}
	}
	return out
}
