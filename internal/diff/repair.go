package diff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// RepairOptions says what to repair and from where.
type RepairOptions struct {
	Table  string // "schema.table" or "table"
	From   string // source node: targets become equal to it
	LWW    bool   // instead of From: per key, the version with the latest commit time wins
	DryRun bool   // plan and return the SQL, change nothing
	// Diff tunes the comparison that finds the rows to repair (waiting for
	// links, re-checks); Tables and Limit are ignored.
	Diff Options
}

// RepairResult says what was (or, with DryRun, would be) changed.
type RepairResult struct {
	Table       string   `json:"table"`
	Differences int      `json:"differences"`
	Changes     []Change `json:"changes"`
	// Statements is the SQL per target transaction, parameters inlined
	// (DryRun only).
	Statements []string `json:"statements,omitempty"`
	Notes      []string `json:"notes,omitempty"`
}

// Change is one row operation on one target node.
type Change struct {
	Node   string   `json:"node"`
	Op     string   `json:"op"` // insert, update, delete
	Key    []string `json:"key,omitempty"`
	Row    string   `json:"row,omitempty"`    // multiset: the row as text
	Copies int64    `json:"copies,omitempty"` // multiset: copies inserted or deleted
	Source string   `json:"source"`           // node whose version was copied
	// Skipped says why the change was not made: the target row changed
	// between the diff and the repair.
	Skipped string `json:"skipped,omitempty"`
}

// version is one node's full row for a key.
type version struct {
	present bool
	hash    int64
	json    string // to_jsonb(row), for the conflict log
	// vals is the row as an array literal of the text of its writable
	// columns (table.writable order): what a repair copies. Each value is
	// printed and read back in its own type's text form under the pinned
	// session settings, which loses nothing, where going through jsonb
	// would (json's spacing and duplicate keys, the sign of a float zero).
	vals   string
	ts     string // commit timestamp as text, "" = unknown
	copies int64  // multiset
}

// action is a planned change with what it needs to run.
type action struct {
	Change
	target, source int
	diff           *rowDiff
	src, old       version
}

// Repair makes the differing rows of one table equal on all nodes.
func Repair(ctx context.Context, cfg *config.Config, opts RepairOptions) (*RepairResult, error) {
	src := -1
	switch {
	case opts.LWW && opts.From != "":
		return nil, errors.New("repair: --from and --lww exclude each other")
	case !opts.LWW && opts.From == "":
		return nil, errors.New("repair: say --from NODE or --lww")
	case opts.From != "":
		src = slices.Index(cfg.NodeNames(), opts.From)
		if src < 0 {
			return nil, fmt.Errorf("repair: node %q is not in the config", opts.From)
		}
	}
	dopts := opts.Diff
	dopts.defaults()
	s, err := open(ctx, cfg, "pgmesh repair")
	if err != nil {
		return nil, err
	}
	defer s.close()
	start, err := s.walPositions(ctx)
	if err != nil {
		return nil, err
	}
	tables, err := s.tables(ctx, cfg, []string{opts.Table})
	if err != nil {
		return nil, err
	}
	t := tables[0]
	if opts.LWW && t.multiset() {
		return nil, fmt.Errorf("repair %s: --lww needs a key, and the table has only REPLICA IDENTITY FULL: use --from", t.QualifiedName())
	}
	res := &RepairResult{Table: t.QualifiedName(), Changes: []Change{}}
	waited := false
	_, diffs, err := s.diffTable(ctx, t, &dopts, start, &waited, &res.Notes)
	if err != nil {
		return nil, err
	}
	res.Differences = len(diffs)
	if len(diffs) == 0 {
		return res, nil
	}
	vers, err := s.fetchVersions(ctx, t, diffs)
	if err != nil {
		return nil, err
	}
	actions := s.plan(t, diffs, vers, src)
	if err := s.execute(ctx, t, actions, opts.DryRun, res); err != nil {
		return res, err
	}
	for _, a := range actions {
		res.Changes = append(res.Changes, a.Change)
	}
	return res, nil
}

// fetchVersions reads the full rows behind diffs on every node: [diff][node].
func (s *session) fetchVersions(ctx context.Context, t *table, diffs []*rowDiff) ([][]version, error) {
	out := make([][]version, len(diffs))
	for i := range out {
		out[i] = make([]version, len(s.names))
	}
	index := map[string]int{}
	for i, d := range diffs {
		index[d.id()] = i
	}
	err := s.each(ctx, func(ctx context.Context, node int, c *pgx.Conn) error {
		var track string
		if err := c.QueryRow(ctx, "SELECT current_setting('track_commit_timestamp')").Scan(&track); err != nil {
			return fmt.Errorf("read track_commit_timestamp: %w", err)
		}
		ts := "NULL::text"
		if track == "on" {
			ts = fmt.Sprintf("pg_xact_commit_timestamp(%s.xmin)::text", alias)
		}
		for start := 0; start < len(diffs); start += recheckBatch {
			batch := diffs[start:min(start+recheckBatch, len(diffs))]
			var q string
			var args []any
			if t.multiset() {
				hashes := make([]int64, len(batch))
				for i, d := range batch {
					hashes[i] = d.RowHash
				}
				q = fmt.Sprintf("SELECT %[1]s, count(*), min(to_jsonb(%[3]s)::text), min(%[4]s)::text FROM %[2]s AS %[3]s WHERE %[1]s = ANY($1::int8[]) GROUP BY 1",
					t.rowHash(), t.Ident(), alias, t.writableText())
				args = []any{hashes}
			} else {
				q = fmt.Sprintf("SELECT %s, to_jsonb(%s)::text, %s::text, %s, %s FROM %s", t.rowHash(), alias, t.writableText(), ts, t.keyText(), t.keyJoin(1))
				args = keyArrays(t, batch)
			}
			rs, err := c.Query(ctx, q, args...)
			if err != nil {
				return fmt.Errorf("table %s: read rows to repair: %w", t.QualifiedName(), err)
			}
			for rs.Next() {
				var v version
				var tsv *string
				key := make([]string, len(t.Keys))
				dest := []any{&v.hash, &v.copies, &v.json, &v.vals}
				if !t.multiset() {
					dest = []any{&v.hash, &v.json, &v.vals, &tsv}
					for k := range key {
						dest = append(dest, &key[k])
					}
				}
				if err := rs.Scan(dest...); err != nil {
					rs.Close()
					return fmt.Errorf("table %s: read rows to repair: %w", t.QualifiedName(), err)
				}
				if tsv != nil {
					v.ts = *tsv
				}
				v.present = true
				id := strings.Join(key, "\x00")
				if t.multiset() {
					id = strconv.FormatInt(v.hash, 10)
				}
				if i, ok := index[id]; ok {
					out[i][node] = v
				}
			}
			rs.Close()
			if err := rs.Err(); err != nil {
				return fmt.Errorf("table %s: read rows to repair: %w", t.QualifiedName(), err)
			}
		}
		return nil
	})
	return out, err
}

// plan decides, per differing key, the winning version and the change on
// each node that does not hold it. src < 0 means last-update-wins: the
// latest commit timestamp wins, ties go to the node first in the config,
// an unknown timestamp (frozen row, track_commit_timestamp off) is oldest,
// and an absent row never wins (without tombstones, absence carries no time).
func (s *session) plan(t *table, diffs []*rowDiff, vers [][]version, src int) []action {
	var out []action
	for i, d := range diffs {
		win := src
		if win < 0 {
			for n, v := range vers[i] {
				// Timestamps are UTC text of one fixed format, so text
				// order is time order.
				if v.present && (win < 0 || v.ts > vers[i][win].ts) {
					win = n
				}
			}
		}
		w := vers[i][win]
		for n, v := range vers[i] {
			if n == win {
				continue
			}
			a := action{target: n, source: win, diff: d, src: w, old: v}
			a.Change = Change{Node: s.names[n], Key: d.Key, Row: d.Row, Source: s.names[win]}
			switch {
			case t.multiset() && v.copies < w.copies:
				a.Op, a.Copies = "insert", w.copies-v.copies
			case t.multiset() && v.copies > w.copies:
				a.Op, a.Copies = "delete", v.copies-w.copies
			case t.multiset():
				continue
			case !v.present && w.present:
				a.Op = "insert"
			case v.present && !w.present:
				a.Op = "delete"
			case v.present && v.hash != w.hash:
				a.Op = "update"
			default:
				continue
			}
			out = append(out, a)
		}
	}
	// One transaction per target, source and source commit time: the
	// commit timestamp is per transaction.
	slices.SortStableFunc(out, func(a, b action) int {
		if a.target != b.target {
			return a.target - b.target
		}
		if a.source != b.source {
			return a.source - b.source
		}
		return strings.Compare(a.src.ts, b.src.ts)
	})
	return out
}

// stmt is one SQL statement with text parameters (nil = NULL).
type stmt struct {
	sql  string
	args []any
	// check: the statement must affect one row, else the change is skipped
	check bool
}

// inline renders st with its parameters as literals, for --dry-run.
func (st stmt) inline() string {
	q := st.sql
	for i := len(st.args); i >= 1; i-- {
		lit := "NULL"
		if v, ok := st.args[i-1].(string); ok {
			lit = pg.QuoteLiteral(v)
		}
		q = strings.ReplaceAll(q, "$"+strconv.Itoa(i), lit)
	}
	return q + ";"
}

// statement builds the SQL of one action. Updates and deletes only touch
// the row if it still has the hash the diff saw, inserts only if the key is
// still free: a write that races with the repair wins over it.
func (t *table) statement(a action) stmt {
	cols := t.writable()
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = pg.Ident(c.Name)
	}
	list := strings.Join(names, ", ")
	rh := t.rowHash()
	keyArgs := func(first []any) []any {
		for _, k := range a.diff.Key {
			first = append(first, k)
		}
		return first
	}
	switch {
	case t.multiset() && a.Op == "insert":
		return stmt{sql: fmt.Sprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s, generate_series(1, $2::text::int)",
			t.Ident(), list, valuesOf(cols, nil), valuesFrom(1)), args: []any{a.src.vals, strconv.FormatInt(a.Copies, 10)}}
	case t.multiset():
		return stmt{sql: fmt.Sprintf("DELETE FROM %[1]s AS %[2]s WHERE (%[2]s.tableoid, %[2]s.ctid) IN (SELECT %[2]s.tableoid, %[2]s.ctid FROM %[1]s AS %[2]s WHERE %[3]s = $1::text::int8 LIMIT $2::text::int)",
			t.Ident(), alias, rh), args: []any{strconv.FormatInt(a.diff.RowHash, 10), strconv.FormatInt(a.Copies, 10)}}
	case a.Op == "insert":
		return stmt{sql: fmt.Sprintf("INSERT INTO %[1]s (%[2]s) OVERRIDING SYSTEM VALUE SELECT %[3]s FROM %[4]s WHERE NOT EXISTS (SELECT FROM %[1]s AS %[5]s WHERE %[6]s)",
			t.Ident(), list, valuesOf(cols, nil), valuesFrom(1), alias, t.keyWhere(2)), args: keyArgs([]any{a.src.vals}), check: true}
	case a.Op == "delete":
		return stmt{sql: fmt.Sprintf("DELETE FROM %s AS %s WHERE %s AND %s = $%d::text::int8",
			t.Ident(), alias, t.keyWhere(1), rh, len(t.Keys)+1), args: append(keyArgs(nil), strconv.FormatInt(a.old.hash, 10)), check: true}
	}
	var set []string
	for _, c := range cols {
		if !slices.Contains(t.KeyColumns, c.Name) {
			set = append(set, c.Name)
		}
	}
	idents := make([]string, len(set))
	for i, c := range set {
		idents[i] = pg.Ident(c)
	}
	return stmt{sql: fmt.Sprintf("UPDATE %[1]s AS %[2]s SET (%[3]s) = (SELECT %[4]s FROM %[5]s) WHERE %[6]s AND %[7]s = $%[8]d::text::int8",
		t.Ident(), alias, strings.Join(idents, ", "), valuesOf(cols, set), valuesFrom(1), t.keyWhere(2), rh, len(t.Keys)+2),
		args: append(keyArgs([]any{a.src.vals}), strconv.FormatInt(a.old.hash, 10)), check: true}
}

// writable is the columns a repair writes: all but generated ones.
func (t *table) writable() []column {
	var out []column
	for _, c := range t.Columns {
		if !c.Generated {
			out = append(out, c)
		}
	}
	return out
}

// writableText selects the writable columns of a row as one text[].
func (t *table) writableText() string {
	cols := t.writable()
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = alias + "." + pg.Ident(c.Name) + "::text"
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]::text[]"
}

// valuesFrom names the text[] parameter $n, as produced by writableText,
// as v in a FROM clause.
func valuesFrom(n int) string {
	return fmt.Sprintf("(SELECT $%d::text::text[] AS v) AS pgmesh_src", n)
}

// valuesOf reads the columns named in only (nil = all of cols) out of v,
// each cast from text to its column's type.
func valuesOf(cols []column, only []string) string {
	var out []string
	for i, c := range cols {
		if only == nil || slices.Contains(only, c.Name) {
			out = append(out, fmt.Sprintf("pgmesh_src.v[%d]::%s", i+1, c.Type))
		}
	}
	return strings.Join(out, ", ")
}

// execute runs (or renders) the actions: per target and source, under the
// source's apply origin; per source commit time, one transaction that
// carries that time.
func (s *session) execute(ctx context.Context, t *table, actions []action, dryRun bool, res *RepairResult) error {
	logs := map[int]*conflictLog{}
	for start := 0; start < len(actions); {
		end := start + 1
		for end < len(actions) && actions[end].target == actions[start].target &&
			actions[end].source == actions[start].source && actions[end].src.ts == actions[start].src.ts {
			end++
		}
		group := actions[start:end]
		start = end
		tgt, src := group[0].target, group[0].source
		c := s.conns[tgt]
		cl, ok := logs[tgt]
		if !ok {
			var err error
			if cl, err = readConflictLog(ctx, c); err != nil {
				return fmt.Errorf("node %s: %w", s.names[tgt], err)
			}
			logs[tgt] = cl
			if cl == nil {
				res.Notes = append(res.Notes, fmt.Sprintf("node %s: no pgmesh.conflict_log (or no kind column): repairs not logged there", s.names[tgt]))
			}
		}
		origin := topology.OriginName(s.names[src])
		var stmts []stmt
		if ts := group[0].src.ts; ts != "" {
			// The origin's position stays where it is: only the commit
			// time and origin of the transaction come from the source.
			stmts = append(stmts, stmt{sql: "SELECT pg_replication_origin_xact_setup(COALESCE(pg_replication_origin_session_progress(false), '0/0'), $1::text::timestamptz)", args: []any{ts}})
		}
		for i := range group {
			stmts = append(stmts, t.statement(group[i]))
			if cl != nil {
				stmts = append(stmts, cl.insert(t, group[i], s.names[src]))
			}
		}
		if dryRun {
			var b strings.Builder
			fmt.Fprintf(&b, "-- node %s, as origin %s\nSELECT pg_replication_origin_session_setup(%s);\nBEGIN;\nSET LOCAL session_replication_role = replica;\n",
				s.names[tgt], origin, pg.QuoteLiteral(origin))
			for _, st := range stmts {
				b.WriteString(st.inline() + "\n")
			}
			b.WriteString("COMMIT;\nSELECT pg_replication_origin_session_reset();")
			res.Statements = append(res.Statements, b.String())
			continue
		}
		used, note, err := s.setupOrigin(ctx, tgt, origin)
		if err != nil {
			return err
		}
		if note != "" && !slices.Contains(res.Notes, note) {
			res.Notes = append(res.Notes, note)
		}
		err = s.runGroup(ctx, c, stmts, group)
		if _, rerr := c.Exec(ctx, "SELECT pg_replication_origin_session_reset()"); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("node %s: repair %s as origin %s: %w", s.names[tgt], t.QualifiedName(), used, err)
		}
	}
	return nil
}

// runGroup runs one transaction; a checked statement that affects no row
// marks its action skipped.
func (s *session) runGroup(ctx context.Context, c *pgx.Conn, stmts []stmt, group []action) error {
	return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
			return err
		}
		next := 0
		for _, st := range stmts {
			tag, err := tx.Exec(ctx, st.sql, st.args...)
			if err != nil {
				return err
			}
			if st.check {
				if tag.RowsAffected() == 0 {
					group[next].Skipped = "row changed on the target since the diff"
				}
				next++
			}
		}
		return nil
	})
}

// setupOrigin makes the target session write as origin. If the origin is in
// use (the agent applies that link) or does not exist (no link, e.g. plain
// databases), it uses origin_repair, created on first use: still an origin,
// so the change is not shipped again, and still a pgmesh_<src> prefix, which
// conflict resolution maps to the source node.
func (s *session) setupOrigin(ctx context.Context, tgt int, origin string) (string, string, error) {
	c := s.conns[tgt]
	var exists bool
	if err := c.QueryRow(ctx, "SELECT pg_replication_origin_oid($1) IS NOT NULL", origin).Scan(&exists); err != nil {
		return "", "", fmt.Errorf("node %s: look up origin %s: %w", s.names[tgt], origin, err)
	}
	var why string
	if exists {
		_, err := c.Exec(ctx, "SELECT pg_replication_origin_session_setup($1)", origin)
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return origin, "", nil
		case errors.As(err, &pe) && pe.Code == "55006":
			why = "is in use (agent running)"
		default:
			return "", "", fmt.Errorf("node %s: set up origin %s: %w", s.names[tgt], origin, err)
		}
	} else {
		why = "does not exist (no link)"
	}
	fallback := origin + "_repair"
	_, err := c.Exec(ctx, "SELECT pg_replication_origin_create($1) WHERE pg_replication_origin_oid($1) IS NULL", fallback)
	if err == nil {
		_, err = c.Exec(ctx, "SELECT pg_replication_origin_session_setup($1)", fallback)
	}
	if err != nil {
		return "", "", fmt.Errorf("node %s: origin %s %s, and origin %s failed: %w", s.names[tgt], origin, why, fallback, err)
	}
	return fallback, fmt.Sprintf("node %s: origin %s %s: wrote as origin %s", s.names[tgt], origin, why, fallback), nil
}

// conflictLog is the shape of pgmesh.conflict_log on one node. That table
// belongs to the conflict engine; repair fills the columns it recognises and
// leaves the rest to their defaults.
type conflictLog struct {
	cols map[string]string // column name → type
}

// conflictLogFields maps the values repair knows to the column names they
// may have.
var conflictLogFields = map[string][]string{
	"table":      {"table_name", "relation", "table"},
	"key":        {"key", "row_key", "key_values"},
	"kind":       {"kind", "conflict_type", "type"},
	"resolution": {"resolution"},
	"local":      {"local_row", "local_tuple", "local_image", "local"},
	"remote":     {"remote_row", "remote_tuple", "remote_image", "remote", "new_row"},
	"local_ts":   {"local_ts", "local_commit_ts", "local_time"},
	"remote_ts":  {"remote_ts", "remote_commit_ts", "remote_time"},
	"origin":     {"remote_origin", "remote_node", "origin", "source_node"},
}

// readConflictLog returns nil when the node has no usable conflict log.
func readConflictLog(ctx context.Context, c *pgx.Conn) (*conflictLog, error) {
	rows, err := c.Query(ctx, `
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''
  FROM pg_attribute a
 WHERE a.attrelid = to_regclass('pgmesh.conflict_log') AND a.attnum > 0 AND NOT a.attisdropped`)
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.conflict_log columns: %w", err)
	}
	cl := &conflictLog{cols: map[string]string{}}
	var required []string
	var name, typ string
	var req bool
	_, err = pgx.ForEachRow(rows, []any{&name, &typ, &req}, func() error {
		cl.cols[name] = typ
		if req {
			required = append(required, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read pgmesh.conflict_log columns: %w", err)
	}
	if cl.column("kind") == "" {
		return nil, nil
	}
	for _, r := range required {
		known := false
		for f := range conflictLogFields {
			known = known || cl.column(f) == r
		}
		if !known {
			return nil, nil
		}
	}
	return cl, nil
}

func (cl *conflictLog) column(field string) string {
	for _, n := range conflictLogFields[field] {
		if _, ok := cl.cols[n]; ok {
			return n
		}
	}
	return ""
}

func (cl *conflictLog) insert(t *table, a action, source string) stmt {
	key := map[string]string{}
	for i, k := range t.KeyColumns {
		key[k] = a.Key[i]
	}
	kj, _ := json.Marshal(key)
	if t.multiset() {
		kj, _ = json.Marshal(a.Row)
	}
	values := map[string]any{
		"table": t.QualifiedName(), "key": string(kj), "kind": "repair",
		"resolution": a.Op + " from " + source, "origin": source,
		"local": nilIfEmpty(a.old.json), "remote": nilIfEmpty(a.src.json),
		"local_ts": nilIfEmpty(a.old.ts), "remote_ts": nilIfEmpty(a.src.ts),
	}
	var cols, params []string
	var args []any
	for _, f := range []string{"table", "key", "kind", "resolution", "origin", "local", "remote", "local_ts", "remote_ts"} {
		col := cl.column(f)
		if col == "" {
			continue
		}
		args = append(args, values[f])
		cols = append(cols, pg.Ident(col))
		params = append(params, fmt.Sprintf("$%d::text::%s", len(args), cl.cols[col]))
	}
	return stmt{sql: fmt.Sprintf("INSERT INTO pgmesh.conflict_log (%s) VALUES (%s)", strings.Join(cols, ", "), strings.Join(params, ", ")), args: args}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
