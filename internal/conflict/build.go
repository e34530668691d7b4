package conflict

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// Parameters of the statements built here. Every value is sent as text with
// an unspecified type; the statement casts each parameter to its column's
// type, always with the same cast, so the server infers one type per
// parameter (text for every parameter of InsertSQL/UpdateSQL/DeleteSQL of
// a table with a key, see fast.go). A NULL value is a NULL parameter.
//
//	$1  remote commit time (timestamptz)
//	$2  remote origin node name (text): "n1", never "pgmesh_n1"
//	$3  remote commit LSN (pg_lsn)
//
//	InsertSQL(t)       $4…  the new row: one value per t.Columns, in order
//	UpdateSQL(t, set)  $4…  the old identity: the t.Key values in order (all
//	                        t.Columns when t.Key is empty); when the key did
//	                        not change (no old tuple in the message), the
//	                        new key values;
//	                   then the new values of set, in order;
//	                   then the old values of the t.DeltaColumns that are
//	                        in set, in t.DeltaColumns order
//	DeleteSQL(t)       $4…  the old identity, as for UpdateSQL
//
// Each statement returns exactly one row (kind text, resolution text): kind
// NULL when the change met no conflict, else one of the kinds above with how
// it was resolved. Under policy error a conflict raises an exception
// (SQLSTATE P0001) naming the table, key and kind instead.
const (
	paramCommitTime = 1
	paramOrigin     = 2
	paramLSN        = 3
	firstValue      = 4
)

// insertFull is the full statement that applies a remote INSERT to t: every
// case of DESIGN §5 in one statement. InsertSQL runs it when the fast path
// does not apply.
func insertFull(t Table, m mode) string {
	b := newBuilder(t, m)
	row := b.params(t.Columns)
	ident := b.identOf(t.Columns, row)
	var s strings.Builder
	s.WriteString("WITH ")
	if b.keyless {
		fmt.Fprintf(&s, "l AS MATERIALIZED (SELECT true AS found, NULL::%s AS img, NULL::tid AS tid, NULL::oid AS toid, NULL::timestamptz AS ts, NULL::text AS node WHERE false),\n", b.tbl)
	} else {
		s.WriteString(b.lockCTE(ident))
	}
	s.WriteString(b.keyCTE(ident))
	s.WriteString(b.stateCTE(!b.keyless, ident))
	s.WriteString(b.classifyCTE("", false))
	pWin := b.concWins(noDelete)
	tWin := b.wins(localDeleted)
	fmt.Fprintf(&s, `v AS MATERIALIZED (
 SELECT c.*, CASE WHEN c.present THEN 'present' WHEN c.tomb AND NOT c.same THEN 'tomb' ELSE 'absent' END AS cse,
        CASE WHEN c.present AND c.sup THEN %s WHEN c.present THEN %s WHEN c.tomb AND NOT c.same THEN %s ELSE true END AS apply
   FROM c),
a AS MATERIALIZED (
 SELECT v.*, v.apply AS act,
        CASE v.cse WHEN 'present' THEN CASE WHEN NOT v.sup THEN '%s' END
                   WHEN 'tomb' THEN CASE WHEN v.conc OR NOT (v.apply OR v.sup) THEN '%s' END END AS kind,
        v.cse = 'present' OR v.conc AS conceff,
        %s AS raise
   FROM v),
`, b.supWins(), pWin, tWin, InsertExists, InsertDeleted, b.raiseIf("(v.cse = 'present' AND NOT v.sup) OR (v.cse = 'tomb' AND v.conc)"))
	uniq := b.uniqueMatches(t.Columns, row)
	hasU := len(uniq) > 0
	if hasU {
		excl := "true"
		if !b.keyless {
			excl = "NOT (" + b.match("pgmesh_u", ident) + ")"
		}
		s.WriteString(b.uniqueCTEs(uniq, excl))
	}
	s.WriteString(b.finalCTE(hasU))
	if hasU {
		s.WriteString(b.udCTE())
	}
	gate := b.afterUnique(hasU)
	if !b.keyless {
		var set []string
		for i, c := range t.Columns {
			if !slices.Contains(t.Key, c) {
				set = append(set, pg.Ident(c)+" = "+row[i])
			}
		}
		if len(set) == 0 { // the key is the whole row
			for i, c := range t.Columns {
				set = append(set, pg.Ident(c)+" = "+row[i])
			}
		}
		fmt.Fprintf(&s, "upd AS (UPDATE %s pgmesh_t SET %s WHERE %s AND (SELECT f.go AND f.present FROM f)%s RETURNING 1),\n",
			b.tbl, strings.Join(set, ", "), b.match("pgmesh_t", ident), gate)
	}
	fmt.Fprintf(&s, "ins AS (INSERT INTO %s (%s) SELECT %s WHERE (SELECT f.go AND NOT f.present FROM f)%s RETURNING 1),\n",
		b.tbl, identList(t.Columns), strings.Join(row, ", "), gate)
	s.WriteString(b.logCTEs(b.rowJSON(t.Columns, row), hasU))
	return b.finish(&s, hasU)
}

// updateFull is the full statement that applies a remote UPDATE to t (see
// insertFull).
func updateFull(t Table, set []string, m mode) string {
	b := newBuilder(t, m)
	old := b.params(b.ident)
	ident := b.identOf(b.ident, old)
	newv := b.params(set)
	var oldDelta []string
	deltaOld := map[string]string{}
	for _, d := range t.DeltaColumns {
		if slices.Contains(set, d) {
			p := b.params([]string{d})[0]
			oldDelta = append(oldDelta, p)
			deltaOld[d] = p
		}
	}
	complete := len(set) == len(t.Columns)
	isDelta := len(t.DeltaColumns) > 0

	var s strings.Builder
	s.WriteString("WITH ")
	s.WriteString(b.lockCTE(ident))
	s.WriteString(b.keyCTE(ident))
	s.WriteString(b.stateCTE(!b.keyless, ident))
	// For delta tables only the other columns can conflict: delta columns
	// always merge, so a change that leaves the others as they are locally
	// is no conflict. Compared as text, which every type has.
	differs := ""
	if isDelta {
		var cmp []string
		for i, c := range set {
			if !slices.Contains(t.DeltaColumns, c) && !slices.Contains(t.Key, c) {
				cmp = append(cmp, fmt.Sprintf("%s IS DISTINCT FROM %s", asText("(s.img)."+pg.Ident(c), b.types[c]), asText(newv[i], b.types[c])))
			}
		}
		if len(cmp) == 0 {
			cmp = []string{"false"}
		}
		differs = "(NOT s.present OR " + strings.Join(cmp, " OR ") + ")"
	}
	s.WriteString(b.classifyCTE(differs, true))
	presentAct := "v.apply"
	if isDelta {
		presentAct = "true"
	}
	fmt.Fprintf(&s, `v AS MATERIALIZED (
 SELECT c.*, CASE WHEN c.present THEN 'present' WHEN c.tomb AND NOT c.same THEN 'tomb' ELSE 'absent' END AS cse,
        CASE WHEN c.present THEN %s WHEN c.tomb AND NOT c.same THEN %s ELSE true END AS apply
   FROM c),
a AS MATERIALIZED (
 SELECT v.*,
        CASE v.cse WHEN 'present' THEN %s ELSE v.apply AND %t END AS act,
        CASE v.cse WHEN 'present' THEN CASE WHEN v.conc OR NOT (v.apply OR v.sup) THEN '%s' END
                   WHEN 'tomb' THEN CASE WHEN v.conc OR NOT (v.apply OR v.sup) THEN '%s' END
                   ELSE CASE WHEN NOT (v.inflight AND %t) THEN '%s' END END AS kind,
        v.conc OR v.cse = 'absent' AS conceff,
        %s AS raise
   FROM v),
`, b.wins(noDelete), b.wins(localDeleted), presentAct, complete, UpdateOriginDiffers, UpdateDeleted, complete, UpdateMissing,
		b.raiseIf(fmt.Sprintf("(v.cse = 'absent' AND NOT (v.inflight AND %t)) OR v.conc", complete)))

	// Unique checks: the secondary unique indexes whose columns all came
	// with the change, plus the key itself when the update moves the row.
	uniq := b.uniqueMatches(set, newv)
	if !b.keyless && containsAll(set, t.Key) {
		newKey := make([]string, len(t.Key))
		for i, k := range t.Key {
			newKey[i] = newv[slices.Index(set, k)]
		}
		uniq = append(uniq, b.match("pgmesh_u", b.identOf(t.Key, newKey)))
	}
	hasU := len(uniq) > 0
	if hasU {
		excl := "(pgmesh_u.tableoid = (SELECT s.toid FROM s) AND pgmesh_u.ctid = (SELECT s.tid FROM s)) IS NOT TRUE"
		if !b.keyless {
			excl = "NOT (" + b.match("pgmesh_u", ident) + ")"
		}
		s.WriteString(b.uniqueCTEs(uniq, excl))
	}
	s.WriteString(b.finalCTE(hasU))
	if hasU {
		s.WriteString(b.udCTE())
	}
	gate := b.afterUnique(hasU)

	assign := make([]string, len(set))
	for i, c := range set {
		col := pg.Ident(c)
		switch {
		case deltaOld[c] != "":
			assign[i] = fmt.Sprintf("%s = pgmesh_t.%s + (%s - %s)", col, col, newv[i], deltaOld[c])
		case isDelta:
			assign[i] = fmt.Sprintf("%s = CASE WHEN (SELECT f.apply FROM f) THEN %s ELSE pgmesh_t.%s END", col, newv[i], col)
		default:
			assign[i] = col + " = " + newv[i]
		}
	}
	where := b.match("pgmesh_t", ident)
	if b.keyless {
		where = "pgmesh_t.tableoid = (SELECT s.toid FROM s) AND pgmesh_t.ctid = (SELECT s.tid FROM s)"
	}
	fmt.Fprintf(&s, "upd AS (UPDATE %s pgmesh_t SET %s WHERE %s AND (SELECT f.go AND f.present FROM f)%s RETURNING 1),\n",
		b.tbl, strings.Join(assign, ", "), where, gate)
	if complete {
		fmt.Fprintf(&s, "ins AS (INSERT INTO %s (%s) SELECT %s WHERE (SELECT f.go AND NOT f.present FROM f)%s RETURNING 1),\n",
			b.tbl, identList(set), strings.Join(newv, ", "), gate)
	}
	s.WriteString(b.logCTEs(b.rowJSON(set, newv), hasU))
	return b.finish(&s, hasU)
}

// deleteFull is the full statement that applies a remote DELETE to t (see
// insertFull).
func deleteFull(t Table, m mode) string {
	b := newBuilder(t, m)
	old := b.params(b.ident)
	ident := b.identOf(b.ident, old)
	var s strings.Builder
	s.WriteString("WITH ")
	s.WriteString(b.lockCTE(ident))
	s.WriteString(b.keyCTE(ident))
	// Tombstones are read for the in-flight rule only: a delete of a row
	// that this node deleted too is a delete_missing conflict, not a row
	// whose insert is still on its way.
	s.WriteString(b.stateCTE(!b.keyless, ident))
	s.WriteString(b.classifyCTE("", true))
	fmt.Fprintf(&s, `v AS MATERIALIZED (
 SELECT c.*, CASE WHEN c.present THEN 'present' ELSE 'absent' END AS cse,
        c.present AND %s AS apply
   FROM c),
a AS MATERIALIZED (
 SELECT v.*, v.apply AS act,
        CASE v.cse WHEN 'present' THEN CASE WHEN v.conc OR NOT (v.apply OR v.sup) THEN '%s' END
                   WHEN 'absent' THEN CASE WHEN NOT v.inflight THEN '%s' END END AS kind,
        v.conc AS conceff,
        %s AS raise
   FROM v),
`, b.wins(remoteDeletes), DeleteOriginDiffers, DeleteMissing, b.raiseIf("v.cse = 'present' AND v.conc"))
	s.WriteString(b.finalCTE(false))
	where := b.match("pgmesh_t", ident)
	if b.keyless {
		where = "pgmesh_t.tableoid = (SELECT s.toid FROM s) AND pgmesh_t.ctid = (SELECT s.tid FROM s)"
	}
	fmt.Fprintf(&s, "del AS (DELETE FROM %s pgmesh_t WHERE %s AND (SELECT f.go AND f.present FROM f) RETURNING 1),\n", b.tbl, where)
	if !b.keyless {
		// Keep the newest delete of the key; remote deletes carry their
		// commit time. Written when the delete applies and when the row was
		// already gone (it still orders later changes of the key).
		fmt.Fprintf(&s, `tomb AS (INSERT INTO pgmesh.tombstone AS z (table_name, key, deleted_at, xid, node)
 SELECT %s, (SELECT k.key FROM k), %s, NULL, %s FROM f WHERE f.go OR NOT f.present
 ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = excluded.deleted_at, xid = NULL, node = excluded.node
 WHERE coalesce(pgmesh.tombstone_time(z.deleted_at, z.xid), '-infinity') < excluded.deleted_at
 RETURNING 1),
`, b.lit, b.commitTime(), b.origin())
	}
	s.WriteString(b.logCTEs("(SELECT k.key FROM k)", false))
	return b.finish(&s, false)
}

// builder holds what the three statements share.
type builder struct {
	t       Table
	pol     config.Policy
	types   map[string]string
	tbl     string   // quoted schema.table
	lit     string   // 'schema.table' literal for the log and tombstones
	ident   []string // identity columns: Key, or all Columns
	keyless bool
	mode    mode
	next    int // next parameter number
}

func newBuilder(t Table, m mode) *builder {
	b := &builder{
		t:     t,
		mode:  m,
		pol:   t.policy(),
		types: make(map[string]string, len(t.Columns)),
		tbl:   pg.Ident(t.Schema, t.Name),
		lit:   pg.QuoteLiteral(t.QualifiedName()),
		ident: t.Key,
		next:  firstValue,
	}
	for i, c := range t.Columns {
		b.types[c] = t.Types[i]
	}
	if len(t.Key) == 0 {
		b.keyless = true
		b.ident = t.Columns
	}
	return b
}

// params allocates the next parameters for cols, cast to their types.
func (b *builder) params(cols []string) []string {
	ps := make([]string, len(cols))
	for i, c := range cols {
		ps[i] = b.arg(b.next, b.types[c])
		b.next++
	}
	return ps
}

// identOf picks the identity columns' expressions out of exprs (given for
// cols).
func (b *builder) identOf(cols, exprs []string) []string {
	out := make([]string, len(b.ident))
	for i, k := range b.ident {
		out[i] = exprs[slices.Index(cols, k)]
	}
	return out
}

// noEquality are types without an equality operator: compared as text.
var noEquality = map[string]bool{"json": true, "xml": true, "point": true, "line": true, "lseg": true,
	"box": true, "path": true, "polygon": true, "circle": true}

// asText is expr of type typ as text, the way the type prints it: that is
// the form values travel in. The cast to text is the same for every type
// but xml, whose cast keeps the bytes stored, while its output drops an
// XML declaration that says nothing (version 1.0 alone): a value received
// from a peer lacks the declaration that the writer's copy may keep.
func asText(expr, typ string) string {
	if typ == "xml" {
		return fmt.Sprintf("pg_catalog.textin(pg_catalog.xml_out(%s))", expr)
	}
	return "(" + expr + ")::text"
}

// match is the condition "row alias has this identity". A key is NOT NULL
// and compared with =; a whole-row identity (no key) may hold NULLs.
func (b *builder) match(alias string, exprs []string) string {
	conds := make([]string, len(b.ident))
	for i, c := range b.ident {
		col := alias + "." + pg.Ident(c)
		switch {
		case !b.keyless:
			conds[i] = col + " = " + exprs[i]
		case noEquality[strings.TrimSuffix(b.types[c], "[]")]:
			conds[i] = fmt.Sprintf("%s IS NOT DISTINCT FROM %s", asText(col, b.types[c]), asText(exprs[i], b.types[c]))
		default:
			conds[i] = col + " IS NOT DISTINCT FROM " + exprs[i]
		}
	}
	return strings.Join(conds, " AND ")
}

// lockCTE finds and locks the local row (l: zero or one row) and reads its
// last writer. FOR UPDATE waits for a concurrent local writer and then
// returns the newest version of the row (EvalPlanQual), whose xmin, image
// and commit data are what the decision uses; the later UPDATE/DELETE by key
// follows the same update chain to that version.
func (b *builder) lockCTE(ident []string) string {
	limit := ""
	if b.keyless {
		limit = " LIMIT 1"
	}
	return fmt.Sprintf(`l AS MATERIALIZED (
 SELECT true AS found, y.img, y.tid, y.toid, c."timestamp" AS ts, pgmesh.origin_node(c.roident) AS node
   FROM (SELECT pgmesh_l AS img, pgmesh_l.xmin AS xmin, pgmesh_l.ctid AS tid, pgmesh_l.tableoid AS toid
           FROM %s pgmesh_l WHERE %s%s FOR UPDATE OF pgmesh_l) y,
        LATERAL pg_catalog.pg_xact_commit_timestamp_origin(y.xmin) c),
`, b.tbl, b.match("pgmesh_l", ident), limit)
}

// keyCTE is the identity as jsonb, as pgmesh.record_delete stores it. Key
// types whose text depends on TimeZone or IntervalStyle are rendered under
// fixed settings, like the trigger does.
func (b *builder) keyCTE(ident []string) string {
	fn := "to_jsonb"
	for _, c := range b.ident {
		if t := b.types[c]; strings.Contains(t, "with time zone") || strings.HasPrefix(t, "interval") {
			fn = "pgmesh.to_jsonb_utc"
		}
	}
	return fmt.Sprintf("k AS MATERIALIZED (SELECT %s(x) AS key FROM (SELECT %s) x),\n", fn, aliased(b.ident, ident))
}

// rowJSON is a remote row image as jsonb, evaluated only where used.
func (b *builder) rowJSON(cols, exprs []string) string {
	return fmt.Sprintf("(SELECT to_jsonb(x) FROM (SELECT %s) x)", aliased(cols, exprs))
}

// stateCTE is the local state in one row (s), also when nothing matched:
// the row (present) or else, with tombstones, the newest delete of the key.
// st/sn are the commit time and node of that state.
//
// s is empty when the statement's snapshot holds a row with the identity
// that l could not lock: a concurrent transaction (a local session, or the
// fast path of another link) deleted it, or moved it to another key, and
// committed while l waited. The decision would then be taken without the
// tombstone that transaction wrote, which the snapshot cannot see, and an
// older update could resurrect a newer delete. With s empty nothing is
// written or logged and the statement returns no row; pgmesh.resolve_change
// then runs it again on a fresh snapshot, which sees the outcome.
func (b *builder) stateCTE(tombstones bool, ident []string) string {
	tb := "(SELECT NULL::boolean AS found, NULL::timestamptz AS ts, NULL::text AS node) tb ON true"
	if tombstones {
		tb = fmt.Sprintf(`LATERAL (SELECT true AS found, pgmesh.tombstone_time(z.deleted_at, z.xid) AS ts, z.node
                      FROM pgmesh.tombstone z
                     WHERE l.found IS NULL AND z.table_name = %s AND z.key = (SELECT k.key FROM k)) tb ON true`, b.lit)
	}
	gone := ""
	if !b.keyless {
		gone = fmt.Sprintf("\n  WHERE l.found OR NOT EXISTS (SELECT FROM %s pgmesh_g WHERE %s)", b.tbl, b.match("pgmesh_g", ident))
	}
	return fmt.Sprintf(`s AS MATERIALIZED (
 SELECT coalesce(l.found, false) AS present, coalesce(tb.found, false) AS tomb, l.img, l.tid, l.toid,
        CASE WHEN l.found THEN l.ts ELSE tb.ts END AS st,
        CASE WHEN l.found THEN l.node ELSE tb.node END AS sn
   FROM (VALUES (1)) one (x)
   LEFT JOIN l ON true
   LEFT JOIN %s%s),
`, tb, gone)
}

// newerThan is "the remote change orders after (ts, node)": later commit
// time, or the same time and a node earlier in the config (lower rank; name
// order between unknown nodes). An unknown time is the oldest.
func (b *builder) newerThan(ts, node string) string {
	return fmt.Sprintf(`(%[1]s IS NULL OR %[3]s > %[1]s
   OR (%[3]s = %[1]s
       AND (coalesce((SELECT n.rank FROM pgmesh.node n WHERE n.name = %[4]s), 2147483647), %[4]s)
         < (coalesce((SELECT n.rank FROM pgmesh.node n WHERE n.name = %[2]s), 2147483647), coalesce(%[2]s, ''))))`,
		ts, node, b.commitTime(), b.origin())
}

// classifyCTE compares the remote change with the local state (c): same
// (the state was written by the remote's node, i.e. this is the next change
// in its stream — or, given differs, the change leaves nothing to disagree
// about), newer, and conc (the remote node had not seen the state: its
// commit time is after what peer_seen says the remote had applied of the
// state's node). A state of unknown time is never concurrent.
//
// Links are independent, so a change may arrive after changes that followed
// it elsewhere. Two rules keep such a late change from looking like a
// conflict (see the package doc):
//
//   - sup (superseded): the state's writer W, another node, had seen the
//     remote change (peer_seen(W, remote) reaches its commit time): the state
//     follows the change, which is not concurrent (conc is false) and never
//     logged. A state written by this node is never superseded.
//   - inflight (only given missing, for updates and deletes): there is no
//     row and no tombstone, and the remote had applied changes of some node
//     that this node has not applied yet: the row is most likely on its way.
func (b *builder) classifyCTE(differs string, missing bool) string {
	same := fmt.Sprintf("coalesce(s.sn = %s, false)", b.origin())
	if differs != "" {
		same += " OR NOT " + differs
	}
	inflight := "false"
	if missing {
		inflight = fmt.Sprintf(`(NOT c0.present AND NOT c0.tomb
         AND EXISTS (SELECT FROM pgmesh.peer_seen r
                      WHERE r.peer = %[1]s AND r.origin IS DISTINCT FROM (SELECT ln.name FROM pgmesh.local_node ln)
                        AND r.seen_until > coalesce((SELECT m.seen_until FROM pgmesh.peer_seen m
                                                      WHERE m.peer = (SELECT ln.name FROM pgmesh.local_node ln)
                                                        AND m.origin = r.origin), '-infinity')))`, b.origin())
	}
	return fmt.Sprintf(`c0 AS MATERIALIZED (
 SELECT s.present, s.tomb, s.st, s.sn, %[2]s AS same, %[3]s AS newer
   FROM s),
c1 AS MATERIALIZED (
 SELECT c0.*,
        (c0.st IS NOT NULL AND NOT c0.same
         AND c0.st > coalesce((SELECT p.seen_until FROM pgmesh.peer_seen p
                                WHERE p.peer = %[1]s AND p.origin = c0.sn), '-infinity')) AS conc0,
        %[5]s AS inflight
   FROM c0),
c AS MATERIALIZED (
 SELECT c1.present, c1.tomb, c1.st, c1.sn, c1.same, c1.newer, c1.inflight,
        c1.conc0 AND NOT c1.sup AS conc, c1.sup
   FROM (SELECT c1.*,
                (c1.conc0 AND c1.sn IS DISTINCT FROM (SELECT ln.name FROM pgmesh.local_node ln)
                 AND coalesce((SELECT p.seen_until FROM pgmesh.peer_seen p
                                WHERE p.peer = c1.sn AND p.origin = %[1]s), '-infinity') >= %[4]s) AS sup
           FROM c1) c1),
`, b.origin(), same, b.newerThan("s.st", "s.sn"), b.commitTime(), inflight)
}

// Which side of a conflict is a delete, for delete_wins.
type deleteSide int

const (
	noDelete      deleteSide = iota
	remoteDeletes            // the remote change is a delete
	localDeleted             // the local state is a tombstone
)

// concWins is "the remote change wins a concurrent conflict" under the
// table's policy.
func (b *builder) concWins(d deleteSide) string {
	if b.t.DeleteWins {
		switch d {
		case remoteDeletes:
			return "true"
		case localDeleted:
			return "false"
		}
	}
	switch b.pol {
	case config.FirstUpdateWins:
		return "NOT c.newer"
	case config.KeepLocal, config.PolicyError:
		return "false"
	case config.ApplyRemote:
		return "true"
	default:
		return "c.newer"
	}
}

// wins is "the remote change applies" against the local state: always for
// the next change of the same node and over a state of unknown time; by the
// policy when concurrent; never when superseded (see supWins); otherwise
// (causal) always, except that last_update_wins stays purely (commit time,
// rank) ordered so that every node converges on the same winner even under
// clock skew.
func (b *builder) wins(d deleteSide) string {
	causal := "true"
	if b.pol == config.LastUpdateWins {
		causal = "c.newer"
	}
	return fmt.Sprintf("(CASE WHEN c.same OR c.st IS NULL THEN true WHEN c.conc THEN %s WHEN c.sup THEN %s ELSE %s END)",
		b.concWins(d), b.supWins(), causal)
}

// supWins is "a superseded remote change applies": the local state already
// follows it, so it is skipped without consulting the policy — except under
// last_update_wins, which stays (commit time, rank) ordered so that nodes
// that received the changes in other orders keep the same winner.
func (b *builder) supWins() string {
	if b.pol == config.LastUpdateWins {
		return "c.newer"
	}
	return "false"
}

// raiseIf is the condition under which policy error stops the link.
func (b *builder) raiseIf(cond string) string {
	if b.pol != config.PolicyError {
		return "false"
	}
	return "(" + cond + ")"
}

// uniqueMatches are the conditions "row pgmesh_u holds one of the new unique
// values", one per secondary unique index fully covered by cols.
func (b *builder) uniqueMatches(cols, exprs []string) []string {
	var out []string
	for _, idx := range b.t.Uniques {
		if len(idx) == 0 || !containsAll(cols, idx) || (len(idx) == len(b.t.Key) && containsAll(b.t.Key, idx)) {
			continue
		}
		conds := make([]string, len(idx))
		for i, c := range idx {
			conds[i] = fmt.Sprintf("pgmesh_u.%s = %s", pg.Ident(c), exprs[slices.Index(cols, c)])
		}
		out = append(out, "("+strings.Join(conds, " AND ")+")")
	}
	return out
}

// uniqueCTEs lock the other rows that hold a unique value the change is
// about to write (u) and decide (uv) whether the remote row wins against
// all of them, in (commit time, rank) order like any other conflict:
// otherwise nodes that received the two rows in different orders would
// keep different ones.
func (b *builder) uniqueCTEs(matches []string, exclude string) string {
	return fmt.Sprintf(`u AS MATERIALIZED (
 SELECT y.img, y.tid, y.toid, c2."timestamp" AS ts, pgmesh.origin_node(c2.roident) AS node
   FROM (SELECT pgmesh_u AS img, pgmesh_u.xmin AS xmin, pgmesh_u.ctid AS tid, pgmesh_u.tableoid AS toid
           FROM %s pgmesh_u
          WHERE (SELECT a.act FROM a) AND (%s) AND %s
          FOR UPDATE OF pgmesh_u) y,
        LATERAL pg_catalog.pg_xact_commit_timestamp_origin(y.xmin) c2),
uv AS MATERIALIZED (
 SELECT count(*) > 0 AS hit, coalesce(bool_and(w), true) AS all_newer, coalesce(bool_and(NOT w), true) AS all_older
   FROM (SELECT %s AS w FROM u) uw),
`, b.tbl, strings.Join(matches, " OR "), exclude, b.newerThan("u.ts", "u.node"))
}

// udCTE deletes the rows that lost a unique conflict (ud).
func (b *builder) udCTE() string {
	return fmt.Sprintf("ud AS (DELETE FROM %s pgmesh_d USING u WHERE (SELECT f.go FROM f) AND %s RETURNING 1),\n", b.tbl, b.sameRow("pgmesh_d", "u"))
}

// sameRow is "alias is the row locked in cte".
func (b *builder) sameRow(alias, cte string) string {
	if b.keyless {
		return fmt.Sprintf("%[1]s.tableoid = %[2]s.toid AND %[1]s.ctid = %[2]s.tid", alias, cte)
	}
	conds := make([]string, len(b.t.Key))
	for i, k := range b.t.Key {
		conds[i] = fmt.Sprintf("%s.%s = (%s.img).%s", alias, pg.Ident(k), cte, pg.Ident(k))
	}
	return strings.Join(conds, " AND ")
}

// finalCTE is the verdict (f): whether to write (go), the resolution, and
// the unique conflict outcome.
func (b *builder) finalCTE(hasUnique bool) string {
	res := fmt.Sprintf(`CASE WHEN a.kind IS NULL THEN NULL
                   WHEN a.kind = '%s' THEN '%s'
                   WHEN a.apply AND NOT a.act THEN '%s'
                   WHEN a.apply THEN '%s'
                   WHEN a.conceff THEN '%s'
                   ELSE '%s' END`, DeleteMissing, Skip, SkipIncomplete, ApplyRemote, KeepLocal, KeepLocalClockSkew)
	if !hasUnique {
		return fmt.Sprintf("f AS MATERIALIZED (\n SELECT a.*, false AS uhit, true AS uwin, a.act AS go,\n        %s AS resolution\n   FROM a),\n", res)
	}
	uwin := "uv.all_newer"
	switch b.pol {
	case config.FirstUpdateWins:
		uwin = "uv.all_older"
	case config.KeepLocal, config.PolicyError:
		uwin = "false"
	case config.ApplyRemote:
		uwin = "true"
	}
	return fmt.Sprintf(`f AS MATERIALIZED (
 SELECT a.*, uv.hit AS uhit, (NOT uv.hit OR %[1]s) AS uwin, a.act AND (NOT uv.hit OR %[1]s) AS go,
        %[2]s AS resolution
   FROM a, uv),
`, uwin, res)
}

// afterUnique makes a write wait for the deletion of the rows that lost a
// unique conflict, so that the unique index no longer holds them.
func (b *builder) afterUnique(hasUnique bool) string {
	if !hasUnique {
		return ""
	}
	return " AND (SELECT count(*) FROM ud) >= 0"
}

const logColumns = "table_name, kind, resolution, key, local_row, remote_row, local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn"

// logCTEs write every losing image to pgmesh.conflict_log: the main
// conflict (unless a unique conflict stopped the change, which then is the
// one logged), and each row that held a unique value the change needed.
func (b *builder) logCTEs(remote string, hasUnique bool) string {
	var s strings.Builder
	fmt.Fprintf(&s, `log AS (INSERT INTO pgmesh.conflict_log (%s)
 SELECT %s, f.kind, f.resolution, (SELECT k.key FROM k), to_jsonb(s.img), %s, f.st, %s, f.sn, %s, %s
   FROM f, s WHERE f.kind IS NOT NULL AND f.uwin RETURNING 1),
`, logColumns, b.lit, remote, b.commitTime(), b.origin(), b.lsn())
	if hasUnique {
		fmt.Fprintf(&s, `ulog AS (INSERT INTO pgmesh.conflict_log (%s)
 SELECT %s, '%s', CASE WHEN f.uwin THEN '%s' ELSE '%s' END, (SELECT k.key FROM k), to_jsonb(u.img), %s, u.ts, %s, u.node, %s, %s
   FROM f, u RETURNING 1),
`, logColumns, b.lit, UniqueConflict, ApplyRemote, KeepLocal, remote, b.commitTime(), b.origin(), b.lsn())
	}
	return s.String()
}

// finish ends the WITH list started in s with the final SELECT, which
// returns the verdict row; under policy error it raises instead when there
// was a conflict.
func (b *builder) finish(s *strings.Builder, hasUnique bool) string {
	kind := "f.kind"
	res := "f.resolution"
	if hasUnique {
		kind = fmt.Sprintf("CASE WHEN f.uhit THEN '%s' ELSE f.kind END", UniqueConflict)
		res = fmt.Sprintf("CASE WHEN f.uhit THEN CASE WHEN f.uwin THEN '%s' ELSE '%s' END ELSE f.resolution END", ApplyRemote, KeepLocal)
	}
	if b.pol == config.PolicyError {
		cond, localOrigin := "f.raise", "f.sn"
		if hasUnique {
			cond = "f.raise OR f.uhit"
			localOrigin = "CASE WHEN f.uhit THEN (SELECT u.node FROM u LIMIT 1) ELSE f.sn END"
		}
		res = fmt.Sprintf("CASE WHEN %s THEN pgmesh.raise_conflict(%s, %s, (SELECT k.key FROM k), %s, %s) ELSE %s END",
			cond, b.lit, kind, localOrigin, b.origin(), res)
	}
	return strings.TrimSuffix(s.String(), ",\n") + fmt.Sprintf("\nSELECT %s AS kind, %s AS resolution FROM f", kind, res)
}

func aliased(cols, exprs []string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = exprs[i] + " AS " + pg.Ident(c)
	}
	return strings.Join(parts, ", ")
}

func identList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = pg.Ident(c)
	}
	return strings.Join(q, ", ")
}

func containsAll(set, sub []string) bool {
	for _, c := range sub {
		if !slices.Contains(set, c) {
			return false
		}
	}
	return true
}
