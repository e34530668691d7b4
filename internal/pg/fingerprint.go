package pg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Fingerprint is the definition of a table on one node, in the terms that
// matter for replicating it: what two nodes must agree on for the rows of
// one to apply on the other the same way. Names inside definitions are
// schema-qualified the same way on every node (see Fingerprints), so equal
// definitions compare equal as text.
type Fingerprint struct {
	Table   string // schema.table
	Columns []ColumnDef
	// Constraints are primary key, unique, exclusion, check and foreign
	// key constraints (not the NOT NULL constraints of PostgreSQL 18: those
	// are ColumnDef.NotNull).
	Constraints []ConstraintDef
	// Indexes are the indexes that do not implement a constraint.
	Indexes []IndexDef
	// ReplicaIdentity is relreplident ('d', 'f', 'i', 'n'); IdentityIndex
	// the index of 'i'.
	ReplicaIdentity byte
	IdentityIndex   string
}

// ColumnDef is one live column.
type ColumnDef struct {
	Name    string
	Type    string // format_type with modifiers: "numeric(10,2)"
	NotNull bool
	// Default is the default expression, "" for none; generated columns
	// have their expression in Generated instead.
	Default   string
	Generated string // "stored: expr", "virtual: expr" or ""
	Identity  string // "always", "by default" or ""
	Collation string // "" when the type's default collation
}

// ConstraintDef is one table constraint.
type ConstraintDef struct {
	Name string
	// Kind is pg_constraint.contype: p primary key, u unique, x exclusion,
	// c check, f foreign key.
	Kind byte
	Def  string // pg_get_constraintdef
}

// IndexDef is one index that no constraint owns.
type IndexDef struct {
	Name   string
	Unique bool
	Def    string // pg_get_indexdef: CREATE [UNIQUE] INDEX name ON schema.table USING …
}

const fingerprintTables = `
  FROM unnest($1::text[], $2::text[]) AS r(nsp, rel)
  JOIN pg_namespace n ON n.nspname = r.nsp
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = r.rel`

// Fingerprints reads the fingerprints of tables, keyed by "schema.table";
// tables that do not exist on this node are absent. It reads in a
// read-only transaction with search_path = pg_catalog, so that every name
// in a default, type or definition is printed schema-qualified whatever the
// session's search_path is: nodes compare the same text for the same thing.
func Fingerprints(ctx context.Context, conn *pgx.Conn, tables []Table) (map[string]*Fingerprint, error) {
	nsps := make([]string, 0, len(tables))
	rels := make([]string, 0, len(tables))
	for _, t := range tables {
		nsps, rels = append(nsps, t.Schema), append(rels, t.Name)
	}
	fps := map[string]*Fingerprint{}
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path = pg_catalog"); err != nil {
			return err
		}
		if err := readTableIdentity(ctx, tx, nsps, rels, fps); err != nil {
			return err
		}
		if err := readColumns(ctx, tx, nsps, rels, fps); err != nil {
			return err
		}
		if err := readConstraints(ctx, tx, nsps, rels, fps); err != nil {
			return err
		}
		return readIndexes(ctx, tx, nsps, rels, fps)
	})
	if err != nil {
		return nil, fmt.Errorf("read table definitions: %w", err)
	}
	return fps, nil
}

func readTableIdentity(ctx context.Context, tx pgx.Tx, nsps, rels []string, fps map[string]*Fingerprint) error {
	rows, err := tx.Query(ctx, `
SELECT r.nsp || '.' || r.rel, c.relreplident::text,
       COALESCE((SELECT ix.relname::text FROM pg_index i JOIN pg_class ix ON ix.oid = i.indexrelid
                  WHERE i.indrelid = c.oid AND i.indisreplident), '')`+fingerprintTables, nsps, rels)
	if err != nil {
		return fmt.Errorf("replica identity: %w", err)
	}
	var name, ident, index string
	_, err = pgx.ForEachRow(rows, []any{&name, &ident, &index}, func() error {
		fp := &Fingerprint{Table: name, ReplicaIdentity: ident[0]}
		if fp.ReplicaIdentity == 'i' {
			fp.IdentityIndex = index
		}
		fps[name] = fp
		return nil
	})
	if err != nil {
		return fmt.Errorf("replica identity: %w", err)
	}
	return nil
}

func readColumns(ctx context.Context, tx pgx.Tx, nsps, rels []string, fps map[string]*Fingerprint) error {
	rows, err := tx.Query(ctx, `
SELECT r.nsp || '.' || r.rel, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN COALESCE(pg_get_expr(ad.adbin, ad.adrelid), '') ELSE '' END,
       CASE a.attgenerated WHEN 's' THEN 'stored: ' WHEN 'v' THEN 'virtual: ' ELSE '' END
         || CASE WHEN a.attgenerated <> '' THEN pg_get_expr(ad.adbin, ad.adrelid) ELSE '' END,
       CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by default' ELSE '' END,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                    FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                   WHERE co.oid = a.attcollation)
            ELSE '' END`+fingerprintTables+`
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
 ORDER BY 1, a.attnum`, nsps, rels)
	if err != nil {
		return fmt.Errorf("columns: %w", err)
	}
	var table string
	var col ColumnDef
	_, err = pgx.ForEachRow(rows, []any{&table, &col.Name, &col.Type, &col.NotNull, &col.Default, &col.Generated, &col.Identity, &col.Collation}, func() error {
		if fp := fps[table]; fp != nil {
			fp.Columns = append(fp.Columns, col)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("columns: %w", err)
	}
	return nil
}

func readConstraints(ctx context.Context, tx pgx.Tx, nsps, rels []string, fps map[string]*Fingerprint) error {
	rows, err := tx.Query(ctx, `
SELECT r.nsp || '.' || r.rel, co.conname::text, co.contype::text, pg_get_constraintdef(co.oid)`+fingerprintTables+`
  JOIN pg_constraint co ON co.conrelid = c.oid AND co.contype IN ('p', 'u', 'x', 'c', 'f')
 ORDER BY 1, 2`, nsps, rels)
	if err != nil {
		return fmt.Errorf("constraints: %w", err)
	}
	var table, kind string
	var con ConstraintDef
	_, err = pgx.ForEachRow(rows, []any{&table, &con.Name, &kind, &con.Def}, func() error {
		con.Kind = kind[0]
		if fp := fps[table]; fp != nil {
			fp.Constraints = append(fp.Constraints, con)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("constraints: %w", err)
	}
	return nil
}

func readIndexes(ctx context.Context, tx pgx.Tx, nsps, rels []string, fps map[string]*Fingerprint) error {
	rows, err := tx.Query(ctx, `
SELECT r.nsp || '.' || r.rel, ix.relname::text, i.indisunique, pg_get_indexdef(i.indexrelid)`+fingerprintTables+`
  JOIN pg_index i ON i.indrelid = c.oid
  JOIN pg_class ix ON ix.oid = i.indexrelid
 WHERE NOT EXISTS (SELECT 1 FROM pg_constraint co
                    WHERE co.conindid = i.indexrelid AND co.conrelid = c.oid AND co.contype IN ('p', 'u', 'x'))
 ORDER BY 1, 2`, nsps, rels)
	if err != nil {
		return fmt.Errorf("indexes: %w", err)
	}
	var table string
	var idx IndexDef
	_, err = pgx.ForEachRow(rows, []any{&table, &idx.Name, &idx.Unique, &idx.Def}, func() error {
		if fp := fps[table]; fp != nil {
			fp.Indexes = append(fp.Indexes, idx)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("indexes: %w", err)
	}
	return nil
}
