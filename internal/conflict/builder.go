package conflict

import (
	"crypto/sha256"
	"embed"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
	"github.com/pgmesh/pgmesh/internal/topology"
)

// The statements are text/templates (templates/*.sql.tmpl), one per shape
// (<op>_full, <op>_fast) built from shared parts, and read as the SQL they
// produce. A builder is the data of one execution: the table's quoted names,
// the parameters as they are cast in this mode, the column lists, and the
// few expressions that depend on the table's conflict policy. It decides
// nothing about a change; the statements do, in the database.

//go:embed templates/*.sql.tmpl
var templateFiles embed.FS

var statements = template.Must(template.New("statements").Funcs(template.FuncMap{
	"ident":  func(name string) string { return pg.Ident(name) },
	"astext": asText,
	"idents": func(cols []column) string { return join(cols, func(c column) string { return pg.Ident(c.Name) }) },
	"values": func(cols []column) string { return join(cols, func(c column) string { return c.Value }) },
	// The kinds and resolutions, as literals: {{InsertExists}} is
	// 'insert_exists'.
	"InsertExists":          literal(InsertExists),
	"InsertDeleted":         literal(InsertDeleted),
	"UpdateOriginDiffers":   literal(UpdateOriginDiffers),
	"UpdateMissing":         literal(UpdateMissing),
	"UpdateDeleted":         literal(UpdateDeleted),
	"DeleteOriginDiffers":   literal(DeleteOriginDiffers),
	"DeleteMissing":         literal(DeleteMissing),
	"UniqueConflict":        literal(UniqueConflict),
	"TruncateOriginDiffers": literal(TruncateOriginDiffers),
	"ApplyRemote":           literal(ApplyRemote),
	"KeepLocal":             literal(KeepLocal),
	"KeepLocalClockSkew":    literal(KeepLocalClockSkew),
	"SkipIncomplete":        literal(SkipIncomplete),
	"Skip":                  literal(Skip),
}).ParseFS(templateFiles, "templates/*.sql.tmpl"))

func literal(s string) func() string { return func() string { return pg.QuoteLiteral(s) } }

// The operations, as the templates name them.
const (
	opInsert = "insert"
	opUpdate = "update"
	opDelete = "delete"
	// opMove is an update that changes the key: a delete of the old key
	// and an insert of the new row (statements.go).
	opMove = "move"
	// opTruncate is a TRUNCATE of the table.
	opTruncate = "truncate"
	// opDeferredCheck checks the deferrable constraints at the end of a
	// remote transaction (DeferredCheckSQL).
	opDeferredCheck = "deferred_check"
)

// mode is how a statement refers to its parameters.
type mode int

const (
	// direct: $n::type, the full statement run on its own: updates and
	// deletes of tables without a key (rare, and scanned anyway), whose
	// duplicate rows the full statement handles one at a time.
	direct mode = iota
	// fast: $n::text::type. Every parameter is text, so that the fast
	// statement can pass the values to the full one exactly as received.
	fast
	// slow: ($1[n])::type, the full statement as pgmesh.resolve_change runs
	// it, with every parameter in one text[].
	slow
	// many: the values of a row are columns of the unnested text[]
	// parameters of InsertManySQL (v.pgmesh_cN::type), the commit time,
	// origin and LSN parameters as in fast.
	many
)

// column is a column of the table with the parameter that holds its value
// in the statement.
type column struct {
	N     int    // the parameter's number
	Name  string // unquoted
	Type  string // as format_type prints it
	Key   bool   // part of the table's key
	Value string // the parameter, cast to Type
	// Old is, for a delta column in an update, the parameter holding its
	// old value (else "").
	Old string
}

// builder is the template data of one statement.
type builder struct {
	t    Table
	mode mode
	next int // next parameter number

	Op      string // opInsert, opUpdate or opDelete
	Table   string // quoted schema.table
	Name    string // 'schema.table': the table in the log and tombstones
	Keyless bool   // no key: every column identifies a row
	// Ident are the columns that identify the changed row (the key, or
	// every column) with the values that identify it: the new row's for
	// an insert, the old identity's for an update or delete.
	Ident []column
	// Row are the columns an insert or update writes, with their new
	// values: every column for an insert, those that came with the change
	// (all but unchanged TOAST values) for an update.
	Row []column
	// Uniques are the unique indexes and exclusion constraints checked
	// before Row is written (builder.checks).
	Uniques []check
	// Unchecked are the constraints this statement cannot check: a
	// violation of one is caught by pgmesh.resolve_guarded.
	Unchecked []string
	// Delta: an update of a table with delta columns.
	Delta bool
	// Complete: an update that carries every column, so a missing row can
	// be inserted.
	Complete bool
	// Fallback is, in a fast statement, the full statement it falls back
	// to (in mode slow).
	Fallback string
	// Missing are, in a move, the columns the change did not carry
	// (unchanged TOAST values): the new row takes them from the old one.
	Missing []column
	// Removal and Addition are, in a move, the full statements (in mode
	// slow) of its two halves: the delete of the old key and the insert
	// of the new row.
	Removal, Addition string
}

// newBuilder allocates the parameters of one shape in the order of the
// parameter convention (statements.go). set are the columns of an update
// that came with the change.
func newBuilder(t Table, op string, set []string, m mode) *builder {
	b := &builder{
		t: t, mode: m, next: firstValue, Op: op,
		Table:   pg.Ident(t.Schema, t.Name),
		Name:    pg.QuoteLiteral(t.QualifiedName()),
		Keyless: len(t.Key) == 0,
	}
	ident := t.Key
	if b.Keyless {
		ident = t.Columns
	}
	switch op {
	case opInsert:
		b.Row = b.params(t.Columns)
		b.Ident = pick(b.Row, ident)
		b.Uniques, b.Unchecked = b.checks(false)
	case opUpdate, opMove:
		b.Ident = b.params(ident)
		b.Row = b.params(set)
		for _, d := range t.DeltaColumns {
			if op == opMove {
				// A move is a delete and an insert: nothing to merge.
				break
			}
			if i := slices.IndexFunc(b.Row, func(c column) bool { return c.Name == d }); i >= 0 {
				b.Row[i].Old = b.params([]string{d})[0].Value
			}
		}
		b.Uniques, b.Unchecked = b.checks(true)
		b.Delta = len(t.DeltaColumns) > 0
		b.Complete = len(set) == len(t.Columns)
		if op == opMove {
			for i, c := range t.Columns {
				if !slices.Contains(set, c) {
					b.Missing = append(b.Missing, column{Name: c, Type: t.Types[i]})
				}
			}
			b.Removal = full(t, opDelete, nil, slow)
			b.Addition = full(t, opInsert, t.Columns, slow)
		}
	case opDelete:
		b.Ident = b.params(ident)
	case opTruncate:
	case opDeferredCheck:
		// The rows the transaction wrote (w.img), by the keys it wrote:
		// one text[] parameter per key column.
		for i, c := range t.Columns {
			b.Row = append(b.Row, column{Name: c, Type: t.Types[i], Key: slices.Contains(t.Key, c), Value: "(w.img)." + pg.Ident(c)})
		}
		b.next = 1
		for _, k := range t.Key {
			b.Ident = append(b.Ident, column{N: b.next, Name: k, Type: t.Types[slices.Index(t.Columns, k)], Key: true,
				Value: fmt.Sprintf("$%d::text[]", b.next)})
			b.next++
		}
		for _, c := range t.Constraints {
			if c.Deferrable {
				b.Uniques = append(b.Uniques, check{b: b, c: c})
			}
		}
		if t.KeyDeferrable {
			b.Uniques = append(b.Uniques, check{b: b, key: true, name: "the key", cols: pick(b.Row, t.Key)})
		}
	default:
		panic("conflict: unknown operation " + op)
	}
	return b
}

// params allocates the next parameters for cols.
func (b *builder) params(cols []string) []column {
	out := make([]column, len(cols))
	for i, c := range cols {
		typ := b.t.Types[slices.Index(b.t.Columns, c)]
		out[i] = column{N: b.next, Name: c, Type: typ, Key: slices.Contains(b.t.Key, c), Value: b.arg(b.next, typ)}
		b.next++
	}
	return out
}

// arg is parameter n as a value of type typ.
func (b *builder) arg(n int, typ string) string {
	switch {
	case b.mode == slow && typ == "text":
		return fmt.Sprintf("($1[%d])", n)
	case b.mode == slow:
		return fmt.Sprintf("($1[%d])::%s", n, typ)
	case b.mode == many && n >= firstValue && typ == "text":
		return "v." + manyColumn(n)
	case b.mode == many && n >= firstValue:
		return fmt.Sprintf("v.%s::%s", manyColumn(n), typ)
	case (b.mode == fast || b.mode == many) && typ != "text":
		return fmt.Sprintf("$%d::text::%s", n, typ)
	default:
		return fmt.Sprintf("$%d::%s", n, typ)
	}
}

// CommitTime, Origin and LSN are the remote change's commit time, node
// name and commit LSN.
func (b *builder) CommitTime() string { return b.arg(paramCommitTime, "timestamptz") }
func (b *builder) Origin() string     { return b.arg(paramOrigin, "text") }
func (b *builder) LSN() string        { return b.arg(paramLSN, "pg_lsn") }

// CommitTimeText is, in a fast statement, the remote commit time as
// received: text, which pgmesh.insert_clear compares without parsing it.
func (b *builder) CommitTimeText() string { return fmt.Sprintf("$%d::text", paramCommitTime) }

// OriginPrefix is what the name of a link's replication origin adds to its
// upstream's node name.
func (b *builder) OriginPrefix() string { return pg.QuoteLiteral(topology.OriginName("")) }

// Fast: this is the fast statement of the shape.
func (b *builder) Fast() bool { return b.mode == fast }

// KeyDeferrable: the key's index is deferrable, which ON CONFLICT cannot
// name.
func (b *builder) KeyDeferrable() bool { return b.t.KeyDeferrable }

// EveryArbiter: the fast insert leaves every unique index and exclusion
// constraint to ON CONFLICT DO NOTHING without a target, which cannot
// take a deferrable one (templates/fast.sql.tmpl says why it may).
func (b *builder) EveryArbiter() bool { return !b.Keyless && !b.t.Deferrable() }

// AnyDeferred: some checked constraint is deferrable.
func (b *builder) AnyDeferred() bool {
	return slices.ContainsFunc(b.Uniques, func(k check) bool { return k.Deferred() })
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

// Match is the condition "row alias has the changed row's identity". A key
// is NOT NULL and compared with =; a whole-row identity (no key) may hold
// NULLs, and columns of types without equality.
func (b *builder) Match(alias string) string {
	if !b.Keyless {
		return b.Holds(alias, b.Ident)
	}
	return list(b.Ident, " AND ", func(c column) string {
		col := alias + "." + pg.Ident(c.Name)
		if noEquality[strings.TrimSuffix(c.Type, "[]")] {
			return asText(col, c.Type) + " IS NOT DISTINCT FROM " + asText(c.Value, c.Type)
		}
		return col + " IS NOT DISTINCT FROM " + c.Value
	})
}

// Holds is the condition "row alias holds these values" (a NULL value
// never matches).
func (b *builder) Holds(alias string, cols []column) string {
	return list(cols, " AND ", func(c column) string { return alias + "." + pg.Ident(c.Name) + " = " + c.Value })
}

// NewKeyJSON is, in a move, the new key as jsonb, rendered as KeyJSON.
func (b *builder) NewKeyJSON() string { return keyJSON(pick(b.Row, b.t.Key)) }

// ImageKeyJSON is the key of the row image expr (a value of the table's
// row type) as jsonb, rendered as KeyJSON; NULL for a table without key.
func (b *builder) ImageKeyJSON(expr string) string {
	if b.Keyless {
		return "NULL::jsonb"
	}
	cols := make([]column, len(b.t.Key))
	for i, k := range b.t.Key {
		cols[i] = column{Name: k, Type: b.t.Types[slices.Index(b.t.Columns, k)], Value: "(" + expr + ")." + pg.Ident(k)}
	}
	return keyJSON(cols)
}

// KeyJSON is the changed row's identity as jsonb, as pgmesh.record_delete
// stores it in tombstones: that trigger renders a key under TimeZone UTC
// and IntervalStyle postgres, and so must the statements, or the tombstone
// of a key is never found again. pgmesh.to_jsonb_utc does, but its SET
// clause costs about as much as a plain INSERT at every execution, so keys
// whose every column is of a type that renders the same under any setting
// (settingFree) are built by jsonb_build_object, which converts each value
// as to_jsonb of the row does and, being one expression rather than a
// sub-select, adds no plan node to initialise at every execution; any
// other type — timestamptz and interval, but also ranges, domains and
// composites over them — goes through the function.
func (b *builder) KeyJSON() string { return keyJSON(b.Ident) }

func keyJSON(cols []column) string {
	for _, c := range cols {
		if !settingFree.MatchString(c.Type) {
			return jsonOf("pgmesh.to_jsonb_utc", cols)
		}
	}
	if 2*len(cols) > maxFuncArgs {
		return jsonOf("to_jsonb", cols)
	}
	return "pg_catalog.jsonb_build_object(" + join(cols, func(c column) string { return pg.QuoteLiteral(c.Name) + ", " + c.Value }) + ")"
}

// maxFuncArgs is the most arguments a PostgreSQL function call takes
// (FUNC_MAX_ARGS): jsonb_build_object takes two per column.
const maxFuncArgs = 100

// settingFree matches the types (as format_type prints them, and arrays of
// them) whose to_jsonb depends on no session setting.
var settingFree = regexp.MustCompile(`^(smallint|integer|bigint|numeric(\(\d+(,\d+)?\))?|text|character varying(\(\d+\))?|character(\(\d+\))?|uuid|boolean|date|timestamp(\(\d\))? without time zone)(\[\])*$`)

// TableKey is the key of a table's truncation in pgmesh.tombstone: no key
// of a row is an empty object (sql/0011_keys.sql).
func (b *builder) TableKey() string { return "'{}'::jsonb" }

// RowJSON is the remote row image (Row) as jsonb, for the log.
func (b *builder) RowJSON() string { return jsonOf("to_jsonb", b.Row) }

func jsonOf(fn string, cols []column) string {
	return fmt.Sprintf("(SELECT %s(x) FROM (SELECT %s) x)", fn,
		join(cols, func(c column) string { return c.Value + " AS " + pg.Ident(c.Name) }))
}

// Compared are the columns a delta update can conflict on: those it sets
// that are neither delta columns (which always merge) nor the key.
func (b *builder) Compared() []column {
	var out []column
	for _, c := range b.Row {
		if !c.Key && !slices.Contains(b.t.DeltaColumns, c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// NonKey are the columns an insert that finds the row overwrites: all but
// the key, or the whole row when the key is the whole row.
func (b *builder) NonKey() []column {
	out := slices.DeleteFunc(slices.Clone(b.Row), func(c column) bool { return c.Key })
	if len(out) == 0 {
		return b.Row
	}
	return out
}

// The conflict policy's choices, as SQL over the decision's columns: c.newer
// (the remote change orders after the local state) for the row, the unique
// verdict u for unique conflicts. Everything else in a decision is the same
// under every policy.

// PolicyError: a conflict stops the link instead of being resolved.
func (b *builder) PolicyError() bool { return b.t.policy() == config.PolicyError }

// NewerWins: last_update_wins orders even causal changes by (commit time,
// rank), so that every node converges on the same winner under clock skew;
// the other policies let a causal change win.
func (b *builder) NewerWins() bool { return b.t.policy() == config.LastUpdateWins }

// policyWins is the policy's winner of a conflict, given the conditions
// "the remote change orders after" (newer) and "before" (older) the local
// side.
func (b *builder) policyWins(newer, older string) string {
	switch b.t.policy() {
	case config.FirstUpdateWins:
		return older
	case config.KeepLocal, config.PolicyError:
		return "false"
	case config.ApplyRemote:
		return "true"
	default:
		return newer
	}
}

// ConcurrentWins is "the remote change wins a concurrent conflict" against
// the local state: side is "row" (no delete involved), "tombstone" (the
// local state is a delete) or "delete" (the remote change is one), which
// delete_wins decides before the policy.
func (b *builder) ConcurrentWins(side string) string {
	switch side {
	case "row":
	case "tombstone", "delete":
		if b.t.DeleteWins {
			return strconv.FormatBool(side == "delete")
		}
	default:
		panic("conflict: unknown side " + side)
	}
	return b.policyWins("c.newer", "NOT c.newer")
}

// SupersededWins is "a superseded remote change applies": the local state
// already follows it, so it is skipped without asking the policy — but
// under NewerWins, which stays (commit time, rank) ordered.
func (b *builder) SupersededWins() string {
	if b.NewerWins() {
		return "c.newer"
	}
	return "false"
}

// CausalWins is "a causal remote change applies" (its node had seen the
// local state): always, but under NewerWins.
func (b *builder) CausalWins() string {
	if b.NewerWins() {
		return "c.newer"
	}
	return "true"
}

// UniqueWins is "the remote row wins against every row holding one of its
// unique values", in (commit time, rank) order like any other conflict:
// otherwise nodes that received the rows in different orders would keep
// different ones.
func (b *builder) UniqueWins() string { return b.policyWins("u.all_newer", "u.all_older") }

// withArg passes one more value to a sub-template: {{template "x" (.With "a")}}
// gives x the builder's fields and methods and .Arg = "a".
type withArg struct {
	*builder
	Arg string
}

func (b *builder) With(arg string) withArg { return withArg{b, arg} }

// FallbackName names the prepared statement of Fallback in a session: the
// same text always gets the same name.
func (b *builder) FallbackName() string { return StatementName(b.Fallback) }

// FallbackRef names, as a literal, the prepared statement of Fallback that
// the fast statement calls (Fallbacks).
func (b *builder) FallbackRef() string { return pg.QuoteLiteral(fallbackName(b.Fallback)) }

// FallbackText is Fallback as a dollar-quoted literal whose tag it does not
// contain, so that it appears verbatim.
func (b *builder) FallbackText() string { return dollarQuote(b.Fallback) }

// StatementName names the prepared statement of a full statement, as a
// literal: the same text always gets the same name, so that a fast
// statement and a move share the full statement they both run.
func StatementName(sql string) string {
	sum := sha256.Sum256([]byte(sql))
	return pg.QuoteLiteral(fmt.Sprintf("pgmesh_full_%x", sum[:12]))
}

// dollarQuote is sql as a dollar-quoted literal whose tag it does not
// contain.
func dollarQuote(sql string) string {
	tag := "$pgmesh$"
	for i := 1; strings.Contains(sql, tag); i++ {
		tag = "$pgmesh" + strconv.Itoa(i) + "$"
	}
	return tag + sql + tag
}

// RemovalName, RemovalText, AdditionName and AdditionText are the two
// halves of a move as pgmesh.resolve_change takes them.
func (b *builder) RemovalName() string  { return StatementName(b.Removal) }
func (b *builder) RemovalText() string  { return dollarQuote(b.Removal) }
func (b *builder) AdditionName() string { return StatementName(b.Addition) }
func (b *builder) AdditionText() string { return dollarQuote(b.Addition) }

// RemovalArgs are the parameters of a move's delete: the change's first
// three and the old key, as text.
func (b *builder) RemovalArgs() string {
	args := []string{"$1::text", "$2::text", "$3::text"}
	for _, c := range b.Ident {
		args = append(args, fmt.Sprintf("$%d::text", c.N))
	}
	return strings.Join(args, ", ")
}

// AdditionArgs are the parameters of a move's insert: the change's first
// three and the new row in the table's column order, a column the change
// did not carry from the old row (moved_from).
func (b *builder) AdditionArgs() string {
	args := []string{"$1::text", "$2::text", "$3::text"}
	for _, name := range b.t.Columns {
		if i := slices.IndexFunc(b.Row, func(c column) bool { return c.Name == name }); i >= 0 {
			args = append(args, fmt.Sprintf("$%d::text", b.Row[i].N))
		} else {
			args = append(args, "(SELECT f."+pg.Ident(name)+" FROM moved_from f)")
		}
	}
	return strings.Join(args, ", ")
}

// TextParams are every parameter of the statement as text, in order: the
// fast statement passes them on to its fallback as they came.
func (b *builder) TextParams() string {
	ps := make([]string, b.next-1)
	for i := range ps {
		ps[i] = fmt.Sprintf("$%d::text", i+1)
	}
	return strings.Join(ps, ", ")
}

// render executes template name. The templates are fixed and every shape
// runs in the golden tests, so a failure is a bug in this package.
func (b *builder) render(name string) string {
	var s strings.Builder
	if err := statements.ExecuteTemplate(&s, name, b); err != nil {
		panic(fmt.Sprintf("conflict: render %s of %s: %v", name, b.t.QualifiedName(), err))
	}
	return s.String()
}

// pick returns the columns named names out of cols, in names' order.
func pick(cols []column, names []string) []column {
	out := make([]column, len(names))
	for i, n := range names {
		out[i] = cols[slices.IndexFunc(cols, func(c column) bool { return c.Name == n })]
	}
	return out
}

// join renders each column with f, separated by commas.
func join(cols []column, f func(column) string) string { return list(cols, ", ", f) }

// list renders each column with f, separated by sep.
func list(cols []column, sep string, f func(column) string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = f(c)
	}
	return strings.Join(parts, sep)
}
