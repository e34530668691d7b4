package diff

import (
	"context"
	"fmt"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// column is one live column of a compared table.
type column struct {
	Name string
	Type string // format_type, for casts from text
	// HashFn is the type's extended hash support function when it takes the
	// column's type directly (hashint8extended, uuid_hash_extended…); "" means
	// hash the text form instead.
	HashFn    string
	Generated bool
	// XML: the type is xml (or a domain over it), hashed through its output
	// function rather than its cast to text, which keeps the bytes stored:
	// a value a node received from a peer lacks the XML declaration
	// (version 1.0 alone) that the writer's copy may keep, and both print
	// the same.
	XML bool
}

// table is what the comparison needs to know about one table: the SQL
// expressions are built once, from the first node's catalog, and run
// unchanged on every node so that all nodes hash the same way.
type table struct {
	pg.Table
	Columns []column
	Keys    []column // key columns, in index order; empty = multiset
}

func (t *table) multiset() bool { return len(t.Keys) == 0 }

func (t *table) identity() string {
	switch {
	case t.multiset():
		return "full (multiset)"
	case t.ReplicaIdentity == 'i':
		return "index " + t.IdentityIndex
	}
	return "primary key"
}

// describeColumns reads the live columns of t with the hash function that
// fits each, from one node.
func describeColumns(ctx context.Context, q pg.Querier, t pg.Table) ([]column, error) {
	// A default hash opclass whose extended function (amprocnum 2) takes the
	// column's base type exactly can be called by name; anything else
	// (timestamptz, whose function is declared on timestamp; arrays, enums,
	// types without hash support) is hashed through its text form.
	const query = `
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
       COALESCE((SELECT p.proname::text
                   FROM pg_opclass oc
                   JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 2
                                    AND ap.amproclefttype = oc.opcintype AND ap.amprocrighttype = oc.opcintype
                   JOIN pg_proc p ON p.oid = ap.amproc
                  WHERE oc.opcmethod = (SELECT oid FROM pg_am WHERE amname = 'hash')
                    AND oc.opcdefault AND oc.opcintype = bt.base
                    AND p.proargtypes[0] = bt.base
                    AND p.pronamespace = 'pg_catalog'::regnamespace
                  LIMIT 1), ''),
       a.attgenerated <> '',
       bt.base = 'pg_catalog.xml'::regtype
  FROM pg_attribute a
  JOIN pg_type ty ON ty.oid = a.atttypid
  CROSS JOIN LATERAL (SELECT CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE a.atttypid END AS base) bt
 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum`
	rows, err := q.Query(ctx, query, t.Ident())
	if err != nil {
		return nil, fmt.Errorf("table %s: read columns: %w", t.QualifiedName(), err)
	}
	defer rows.Close()
	var cols []column
	for rows.Next() {
		var c column
		if err := rows.Scan(&c.Name, &c.Type, &c.HashFn, &c.Generated, &c.XML); err != nil {
			return nil, fmt.Errorf("table %s: read columns: %w", t.QualifiedName(), err)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("table %s: read columns: %w", t.QualifiedName(), err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s: no columns", t.QualifiedName())
	}
	return cols, nil
}

func newTable(t pg.Table, cols []column) (*table, error) {
	tb := &table{Table: t, Columns: cols}
	byName := make(map[string]column, len(cols))
	for _, c := range cols {
		byName[c.Name] = c
	}
	for _, k := range t.KeyColumns {
		c, ok := byName[k]
		if !ok {
			return nil, fmt.Errorf("table %s: key column %s not found", t.QualifiedName(), k)
		}
		tb.Keys = append(tb.Keys, c)
	}
	return tb, nil
}

// alias is the table alias in every generated query; columns are always
// qualified with it so that they cannot clash with helper names.
const alias = "r"

// mix64 spreads i into a 64-bit constant (splitmix64), for per-column seeds
// and NULL markers.
func mix64(i uint64) int64 {
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return int64(z ^ (z >> 31))
}

// colHash is a 64-bit hash of one column with a seed that depends on its
// position, so that swapping values between columns changes the row hash,
// and a distinct marker for NULL.
func colHash(c column, pos uint64) string {
	ref := alias + "." + pg.Ident(c.Name)
	seed := mix64(pos)
	var h string
	switch {
	case c.HashFn != "":
		h = fmt.Sprintf("pg_catalog.%s(%s, %d)", pg.Ident(c.HashFn), ref, seed)
	case c.XML:
		h = fmt.Sprintf("pg_catalog.hashtextextended(pg_catalog.textin(pg_catalog.xml_out(%s)), %d)", ref, seed)
	default:
		h = fmt.Sprintf("pg_catalog.hashtextextended(%s::text, %d)", ref, seed)
	}
	return fmt.Sprintf("COALESCE(%s, %d)", h, mix64(pos+1<<32))
}

// rowHash is the bigint row hash: the XOR of the column hashes. Hashing the
// columns one by one is about twice as fast as hash_record_extended(r) or
// hashing r::text, which both build the whole row first.
func (t *table) rowHash() string {
	parts := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		parts[i] = colHash(c, uint64(i))
	}
	return "(" + strings.Join(parts, " # ") + ")"
}

// keyHash places a row in a bucket: it depends on the key only, so every
// version of a row lands in the same bucket on every node. Multisets use the
// row hash: the whole row is the key.
func (t *table) keyHash() string {
	if t.multiset() {
		return t.rowHash()
	}
	parts := make([]string, len(t.Keys))
	for i, c := range t.Keys {
		parts[i] = colHash(c, 1000+uint64(i))
	}
	return "(" + strings.Join(parts, " # ") + ")"
}

// keyText selects the key columns as text.
func (t *table) keyText() string {
	parts := make([]string, len(t.Keys))
	for i, c := range t.Keys {
		parts[i] = alias + "." + pg.Ident(c.Name) + "::text"
	}
	return strings.Join(parts, ", ")
}

// keyJoin joins the table with unnest of one text[] parameter per key
// column, starting at parameter $first: the way to look rows up by a batch
// of keys with their index.
func (t *table) keyJoin(first int) string {
	arrays := make([]string, len(t.Keys))
	names := make([]string, len(t.Keys))
	conds := make([]string, len(t.Keys))
	for i, c := range t.Keys {
		arrays[i] = fmt.Sprintf("$%d::text[]", first+i)
		names[i] = fmt.Sprintf("pgmesh_k%d", i)
		conds[i] = fmt.Sprintf("%s.%s = x.pgmesh_k%d::%s", alias, pg.Ident(c.Name), i, c.Type)
	}
	return fmt.Sprintf("%s AS %s JOIN unnest(%s) AS x(%s) ON %s", t.Ident(), alias,
		strings.Join(arrays, ", "), strings.Join(names, ", "), strings.Join(conds, " AND "))
}

// keyWhere matches one key given as text parameters from $first.
func (t *table) keyWhere(first int) string {
	conds := make([]string, len(t.Keys))
	for i, c := range t.Keys {
		conds[i] = fmt.Sprintf("%s.%s = $%d::text::%s", alias, pg.Ident(c.Name), first+i, c.Type)
	}
	return strings.Join(conds, " AND ")
}
