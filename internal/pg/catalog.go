package pg

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// Schema is the pgmesh metadata schema. It is never replicated: its tables
// describe the node they live in.
const MetaSchema = "pgmesh"

// Table is a replicated table as the catalog of one node describes it.
type Table struct {
	Schema, Name string
	// ReplicaIdentity is pg_class.relreplident: 'd' default (primary key),
	// 'f' full, 'i' index, 'n' nothing.
	ReplicaIdentity byte
	HasPrimaryKey   bool
	// IdentityIndex is the index that identifies rows in UPDATE/DELETE
	// messages: the primary key for 'd', the chosen index for 'i'; "" for
	// 'f', 'n', or when that index does not exist (then nothing is usable).
	IdentityIndex string
	// KeyColumns are the columns that identify a row, in index order: those
	// of IdentityIndex, or for 'f' those of the primary key if there is one.
	// Empty means only the whole row identifies it.
	KeyColumns []string
}

// QualifiedName is "schema.table" unquoted, as in the config and in logs.
func (t Table) QualifiedName() string { return t.Schema + "." + t.Name }

// Ident is the quoted, schema-qualified name for SQL text.
func (t Table) Ident() string { return Ident(t.Schema, t.Name) }

// HasUsableIdentity reports whether UPDATE and DELETE of the table can be
// replicated: PostgreSQL refuses them on a published table without identity.
func (t Table) HasUsableIdentity() bool {
	switch t.ReplicaIdentity {
	case 'f':
		return true
	case 'd', 'i':
		return t.IdentityIndex != ""
	}
	return false
}

// ReplicatedTables lists the ordinary and partitioned tables of schemas,
// minus excludes ("schema.table"), never those of schema pgmesh, sorted by
// schema and name. Partitions are left out: their root stands for them (the
// publication publishes via the partition root). Unlogged and temporary
// tables cannot be published and are left out too.
func ReplicatedTables(ctx context.Context, q Querier, schemas, exclude []string) ([]Table, error) {
	const query = `
SELECT n.nspname, c.relname, c.relreplident::text,
       EXISTS (SELECT 1 FROM pg_index p WHERE p.indrelid = c.oid AND p.indisprimary),
       COALESCE(ix.relname::text, ''),
       COALESCE((SELECT array_agg(a.attname::text ORDER BY k.ord)
                   FROM unnest(idx.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum),
                '{}')
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
        SELECT i.indexrelid, i.indkey FROM pg_index i
         WHERE i.indrelid = c.oid
           AND CASE c.relreplident WHEN 'i' THEN i.indisreplident
                                   WHEN 'n' THEN false
                                   ELSE i.indisprimary END
         LIMIT 1) idx ON true
  LEFT JOIN pg_class ix ON ix.oid = idx.indexrelid
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
   AND n.nspname = ANY($1) AND n.nspname <> $2
 ORDER BY n.nspname, c.relname`
	excluded := make(map[string]bool, len(exclude))
	for _, e := range exclude {
		excluded[e] = true
	}
	rows, err := q.Query(ctx, query, schemas, MetaSchema)
	if err != nil {
		return nil, fmt.Errorf("list replicated tables: %w", err)
	}
	defer rows.Close()
	var tables []Table
	for rows.Next() {
		var t Table
		var ident string
		if err := rows.Scan(&t.Schema, &t.Name, &ident, &t.HasPrimaryKey, &t.IdentityIndex, &t.KeyColumns); err != nil {
			return nil, fmt.Errorf("list replicated tables: %w", err)
		}
		t.ReplicaIdentity = ident[0]
		if t.ReplicaIdentity == 'f' {
			t.IdentityIndex = ""
		}
		if len(t.KeyColumns) == 0 {
			t.KeyColumns = nil
		}
		if !excluded[t.QualifiedName()] {
			tables = append(tables, t)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list replicated tables: %w", err)
	}
	// The query sorts by collation; sort bytewise so every node agrees.
	sort.Slice(tables, func(i, j int) bool {
		if tables[i].Schema != tables[j].Schema {
			return tables[i].Schema < tables[j].Schema
		}
		return tables[i].Name < tables[j].Name
	})
	return tables, nil
}

// SuggestIdentity returns the SQL (or advice) that gives t a usable replica
// identity: an existing unique index on NOT NULL columns becomes the replica
// identity; otherwise the table needs a primary key. REPLICA IDENTITY FULL is
// only offered for insert-only tables, because with it every UPDATE and
// DELETE ships and matches the whole old row.
func SuggestIdentity(ctx context.Context, q Querier, t Table) (string, error) {
	// A replica identity index must be unique, valid, immediate, not partial,
	// without expressions, and on NOT NULL columns only.
	const query = `
SELECT ix.relname::text
  FROM pg_index i
  JOIN pg_class ix ON ix.oid = i.indexrelid
 WHERE i.indrelid = $1::text::regclass
   AND i.indisunique AND i.indisvalid AND i.indimmediate
   AND i.indpred IS NULL AND i.indexprs IS NULL
   AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) k(attnum)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE NOT a.attnotnull)
 ORDER BY i.indnatts, ix.relname
 LIMIT 1`
	rows, err := q.Query(ctx, query, t.Ident())
	if err != nil {
		return "", fmt.Errorf("table %s: look for a unique index: %w", t.QualifiedName(), err)
	}
	defer rows.Close()
	var index string
	if rows.Next() {
		if err := rows.Scan(&index); err != nil {
			return "", fmt.Errorf("table %s: look for a unique index: %w", t.QualifiedName(), err)
		}
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("table %s: look for a unique index: %w", t.QualifiedName(), err)
	}
	if index != "" {
		return fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX %s;", t.Ident(), Ident(index)), nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "add a primary key: ALTER TABLE %s ADD PRIMARY KEY (<key columns>);", t.Ident())
	fmt.Fprintf(&b, " only if the table is insert-only: ALTER TABLE %s REPLICA IDENTITY FULL;", t.Ident())
	return b.String(), nil
}
