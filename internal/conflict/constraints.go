package conflict

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// Constraint is a unique index or an exclusion constraint of a table other
// than its key: two rows conflict when, for every element, the operator
// holds between their values (for a unique index, its equality), and both
// satisfy the index predicate. The statements find the local rows a remote
// row conflicts with before writing it, and resolve each conflict like any
// other (unique_conflict), whatever the kind: plain columns, expressions
// (UNIQUE (lower(email))), partial indexes, NULLS NOT DISTINCT, exclusion
// constraints, deferrable ones.
//
// Expressions and predicates are the server's own deparse of the catalog
// (pg_get_indexdef, pg_get_expr) in the apply session, whose search_path is
// pg_catalog, pg_temp: every name outside pg_catalog comes qualified. They
// are the expressions PostgreSQL evaluates in that session anyway whenever
// it maintains the index, and the applier refuses a table whose index
// expressions call code that would run as pgmesh (untrusted_code).
type Constraint struct {
	Name      string // the index
	Exclusion bool   // an exclusion constraint (else a unique index)
	// Deferrable: checked at the end of the statement or transaction, not
	// row by row (DEFERRABLE constraints).
	Deferrable       bool
	NullsNotDistinct bool
	Elems            []Elem
	// Pred is the predicate of a partial index, over unqualified column
	// names; "" for none.
	Pred string
	// Columns are the table's columns it reads (elements and predicate).
	Columns []string
}

// Elem is one element of a Constraint: a column or an expression, and the
// operator two rows' values are compared with.
type Elem struct {
	Column string // a plain column, or "" for Expr
	Expr   string // an expression over unqualified column names
	// Op is the operator as SQL: "=", or OPERATOR(schema.op).
	Op string
	// Collation is the index's collation when it is not the column's (or,
	// for an expression, the default), as schema."name"; else "".
	Collation string
}

// Plain: every element a column compared with the ordinary = of its type,
// no predicate, NULLs distinct, not deferrable: the conflicting rows are
// those holding the same values, and a NULL conflicts with nothing.
func (c Constraint) Plain() bool {
	if c.Exclusion || c.Deferrable || c.NullsNotDistinct || c.Pred != "" {
		return false
	}
	return !slices.ContainsFunc(c.Elems, func(e Elem) bool { return e.Column == "" || e.Op != "=" || e.Collation != "" })
}

// Describe says what the constraint is, for check and messages.
func (c Constraint) Describe() string {
	var elems []string
	for _, e := range c.Elems {
		s := e.Column
		if s == "" {
			s = e.Expr
		}
		if e.Collation != "" {
			s += " COLLATE " + e.Collation
		}
		if c.Exclusion {
			s += " WITH " + strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(e.Op, "OPERATOR("), "pg_catalog."), ")")
		}
		elems = append(elems, s)
	}
	what := "unique index"
	if c.Exclusion {
		what = "exclusion constraint"
	}
	s := fmt.Sprintf("%s %s (%s)", what, c.Name, strings.Join(elems, ", "))
	if c.NullsNotDistinct {
		s += " NULLS NOT DISTINCT"
	}
	if c.Pred != "" {
		s += " WHERE " + c.Pred
	}
	if c.Deferrable {
		s += " DEFERRABLE"
	}
	return s
}

// constraintsSQL lists the unique indexes and exclusion constraints of
// table $1 that enforce anything (ready: also an index still being built,
// or left invalid by a failed CREATE INDEX CONCURRENTLY), with whether
// each is the replica identity (ident), as JSON. A btree unique index
// compares with its operator class's equality, an exclusion constraint
// with its operators. An index's columns are its key columns and those its
// expressions and predicate read, which PostgreSQL records as dependencies
// of the index, or of the constraint that owns it.
const constraintsSQL = `
SELECT coalesce(json_agg(json_build_object(
         'name', ic.relname,
         'ident', CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END,
         'exclusion', i.indisexclusion,
         'deferrable', NOT i.indimmediate,
         'nulls_not_distinct', i.indnullsnotdistinct,
         'pred', pg_get_expr(i.indpred, i.indrelid, true),
         'columns', (SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                      WHERE a.attrelid = i.indrelid AND a.attnum > 0
                        AND (a.attnum = ANY (i.indkey::int2[])
                             OR EXISTS (SELECT FROM pg_depend d
                                         WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                           AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum)
                             OR EXISTS (SELECT FROM pg_constraint con JOIN pg_depend d ON d.classid = 'pg_constraint'::regclass AND d.objid = con.oid
                                         WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                                           AND d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))),
         'elems', (SELECT json_agg(json_build_object(
                       'column', a.attname,
                       'expr', CASE WHEN k.attnum = 0 THEN pg_get_indexdef(i.indexrelid, k.ord::int, true) END,
                       'op', (SELECT CASE WHEN o.oprnamespace = 'pg_catalog'::regnamespace AND o.oprname = '=' THEN '='
                                          ELSE format('OPERATOR(%I.%s)', n.nspname, o.oprname) END
                                FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
                               WHERE o.oid = CASE WHEN i.indisexclusion
                                                  THEN (SELECT con.conexclop[k.ord] FROM pg_constraint con
                                                         WHERE con.conindid = i.indexrelid AND con.contype = 'x')
                                                  ELSE (SELECT ao.amopopr FROM pg_opclass oc
                                                          JOIN pg_amop ao ON ao.amopfamily = oc.opcfamily
                                                         WHERE oc.oid = i.indclass[k.ord - 1] AND ao.amopmethod = ic.relam
                                                           AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype
                                                           AND ao.amopstrategy = 3) END),
                       'collation', (SELECT format('%I.%I', n.nspname, co.collname)
                                       FROM pg_collation co JOIN pg_namespace n ON n.oid = co.collnamespace
                                      WHERE co.oid = i.indcollation[k.ord - 1]
                                        AND co.oid <> coalesce(a.attcollation, 100))) ORDER BY k.ord)
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum AND k.attnum > 0
                    WHERE k.ord <= i.indnkeyatts)) ORDER BY i.indexrelid), '[]')
  FROM pg_class c
  JOIN pg_index i ON i.indrelid = c.oid
  JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE c.oid = to_regclass($1) AND (i.indisunique OR i.indisexclusion) AND i.indisready`

// catalogConstraint is a row of constraintsSQL.
type catalogConstraint struct {
	Name             string `json:"name"`
	Ident            bool   `json:"ident"`
	Exclusion        bool   `json:"exclusion"`
	Deferrable       bool   `json:"deferrable"`
	NullsNotDistinct bool   `json:"nulls_not_distinct"`
	Pred             string `json:"pred"`
	Columns          []string
	Elems            []struct {
		Column    string `json:"column"`
		Expr      string `json:"expr"`
		Op        string `json:"op"`
		Collation string `json:"collation"`
	} `json:"elems"`
}

func (cc catalogConstraint) constraint() Constraint {
	c := Constraint{Name: cc.Name, Exclusion: cc.Exclusion, Deferrable: cc.Deferrable,
		NullsNotDistinct: cc.NullsNotDistinct, Pred: cc.Pred, Columns: cc.Columns}
	for _, e := range cc.Elems {
		c.Elems = append(c.Elems, Elem{Column: e.Column, Expr: e.Expr, Op: e.Op, Collation: e.Collation})
	}
	return c
}

// check is a constraint as one statement checks it: which rows conflict
// with the row it writes, and whether the row it updates already had the
// same values.
type check struct {
	b *builder
	c Constraint
	// key: the table's key, checked when an update moves the row.
	key bool
	// cols are the key's new values, or a plain constraint's.
	cols []column
	// name names the key in messages.
	name string
}

// NameLiteral is the constraint's name (the index's) as a literal.
func (k check) NameLiteral() string {
	if k.key {
		return pg.QuoteLiteral(k.name)
	}
	return pg.QuoteLiteral(k.c.Name)
}

// Deferred: a deferrable constraint (see unique_holders), unless the table
// decides them now (Table.DeferredNow).
func (k check) Deferred() bool { return k.c.Deferrable && !k.b.t.DeferredNow }

// checks are the constraints the statement checks before it writes Row:
// those whose every column has a new value (Row, or for an update in the
// full statement the local row's value of a column the change left
// unchanged), and for an update that sets the key, the key (the row may
// move onto another one). unchecked are the names of those it cannot
// check: a column that the upstream does not send (a local column filled
// by its default) has no known new value.
func (b *builder) checks(update bool) (checks []check, unchecked []string) {
	inRow := func(c string) bool { return slices.ContainsFunc(b.Row, func(r column) bool { return r.Name == c }) }
	for _, c := range b.t.Constraints {
		if slices.ContainsFunc(c.Columns, func(col string) bool { return !slices.Contains(b.t.Columns, col) }) {
			unchecked = append(unchecked, c.Name)
			continue
		}
		if c.Plain() {
			cols := make([]string, len(c.Elems))
			for i, e := range c.Elems {
				cols[i] = e.Column
			}
			// As before other indexes were checked: a plain index whose
			// columns did not all come is left to the fast update's
			// "unchanged" rule and the full statement's local values.
			if !slices.ContainsFunc(cols, func(col string) bool { return !inRow(col) }) {
				checks = append(checks, check{b: b, c: c, cols: pick(b.Row, cols)})
				continue
			}
		}
		if !slices.ContainsFunc(c.Columns, inRow) {
			// Nothing it reads changes.
			continue
		}
		checks = append(checks, check{b: b, c: c})
	}
	if update && !b.Keyless && !slices.ContainsFunc(b.t.Key, func(k string) bool { return !inRow(k) }) {
		checks = append(checks, check{b: b, key: true, cols: pick(b.Row, b.t.Key)})
	}
	return checks, unchecked
}

// Conflicts is the condition "row alias (of the table, the only table of
// its FROM) conflicts with the new row under this constraint". alias must
// be the innermost FROM item: the constraint's expressions name columns
// without a table.
func (k check) Conflicts(alias string) string {
	if k.key || k.c.Plain() && k.cols != nil {
		return k.b.Holds(alias, k.cols)
	}
	var conds []string
	if k.c.Pred != "" {
		conds = append(conds, "("+k.c.Pred+")", k.onNewRow("("+k.c.Pred+")"))
	}
	for _, e := range k.c.Elems {
		local, remote := alias+"."+pg.Ident(e.Column), k.newValue(e.Column)
		if e.Column == "" {
			local, remote = "("+e.Expr+")", k.onNewRow(e.Expr)
		}
		if e.Collation != "" {
			local += " COLLATE " + e.Collation
			remote += " COLLATE " + e.Collation
		}
		cond := local + " " + e.Op + " " + remote
		if k.c.NullsNotDistinct {
			cond = "(" + cond + " OR (" + local + " IS NULL AND " + remote + " IS NULL))"
		}
		conds = append(conds, cond)
	}
	return strings.Join(conds, " AND ")
}

// Unchanged is the condition "row alias, which the update writes, already
// holds the new values this constraint reads": then the update cannot make
// it conflict with another row. For a plain constraint a NULL new value
// conflicts with nothing either.
func (k check) Unchanged(alias string) string {
	if k.key || k.c.Plain() && k.cols != nil {
		var s strings.Builder
		for _, c := range k.cols {
			if !c.Key {
				s.WriteString(c.Value + " IS NULL OR ")
			}
		}
		return s.String() + "(" + k.b.Holds(alias, k.cols) + ")"
	}
	var conds []string
	for _, c := range k.b.Row {
		if !slices.Contains(k.c.Columns, c.Name) {
			continue
		}
		col := alias + "." + pg.Ident(c.Name)
		if noEquality[strings.TrimSuffix(c.Type, "[]")] {
			conds = append(conds, asText(col, c.Type)+" IS NOT DISTINCT FROM "+asText(c.Value, c.Type))
		} else {
			conds = append(conds, col+" IS NOT DISTINCT FROM "+c.Value)
		}
	}
	return strings.Join(conds, " AND ")
}

// newValue is the new value of column col: the change's, or (an update
// that left it unchanged, in the full statement) the local row's.
func (k check) newValue(col string) string {
	if i := slices.IndexFunc(k.b.Row, func(c column) bool { return c.Name == col }); i >= 0 {
		return k.b.Row[i].Value
	}
	return "(SELECT (s.img)." + pg.Ident(col) + " FROM local_state s)"
}

// onNewRow is expr (over unqualified column names) evaluated on the new
// row: a sub-select whose only FROM item has the constraint's columns with
// their new values, so that each name means the new value.
func (k check) onNewRow(expr string) string {
	cols := make([]string, len(k.c.Columns))
	for i, c := range k.c.Columns {
		cols[i] = k.newValue(c) + " AS " + pg.Ident(c)
	}
	return "(SELECT " + expr + " FROM (SELECT " + strings.Join(cols, ", ") + ") pgmesh_n)"
}
