package conflict

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgmesh/pgmesh/internal/config"
	"github.com/pgmesh/pgmesh/internal/pg"
)

// tableSQL describes a local table for the statement builders: its replica
// identity and its writable columns (not dropped, not generated) with
// their types. constraintsSQL (constraints.go) adds its unique indexes and
// exclusion constraints.
const tableSQL = `
SELECT c.relreplident::text,
	(SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
	   FROM pg_attribute a
	  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
  FROM pg_class c WHERE c.oid = to_regclass($1)`

// LoadTable describes table schema.name of the node q is connected to, with
// every writable column, and the conflict settings of cfg (nil: defaults).
// The applier narrows Columns/Types to the columns the remote rows carry.
func LoadTable(ctx context.Context, q pg.Querier, schema, name string, cfg *config.Config) (Table, error) {
	t := Table{Schema: schema, Name: name}
	var ident string
	var colsJSON, consJSON []byte
	err := q.QueryRow(ctx, tableSQL, pg.Ident(schema, name)).Scan(&ident, &colsJSON)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("describe table %s: it does not exist on this node", t.QualifiedName())
	}
	if err != nil {
		return t, fmt.Errorf("describe table %s: %w", t.QualifiedName(), err)
	}
	if err := q.QueryRow(ctx, constraintsSQL, pg.Ident(schema, name)).Scan(&consJSON); err != nil {
		return t, fmt.Errorf("describe table %s: unique indexes and exclusion constraints: %w", t.QualifiedName(), err)
	}
	var cols []struct{ Name, Type string }
	var cons []catalogConstraint
	if err := json.Unmarshal(nonNull(colsJSON), &cols); err != nil {
		return t, fmt.Errorf("describe table %s: columns: %w", t.QualifiedName(), err)
	}
	if err := json.Unmarshal(nonNull(consJSON), &cons); err != nil {
		return t, fmt.Errorf("describe table %s: unique indexes and exclusion constraints: %w", t.QualifiedName(), err)
	}
	for _, c := range cols {
		t.Columns = append(t.Columns, c.Name)
		t.Types = append(t.Types, c.Type)
	}
	t.FullIdentity = ident == "f"
	for _, cc := range cons {
		if cc.Ident && t.Key == nil {
			for _, e := range cc.Elems {
				t.Key = append(t.Key, e.Column)
			}
			t.KeyDeferrable = cc.Deferrable
			continue
		}
		t.Constraints = append(t.Constraints, cc.constraint())
	}
	if cfg != nil {
		tc := cfg.Conflicts.Tables[t.QualifiedName()]
		t.Policy = cfg.PolicyFor(t.QualifiedName())
		t.DeltaColumns = tc.DeltaColumns
		t.DeleteWins = tc.DeleteWins
	}
	return t, nil
}

func nonNull(b []byte) []byte {
	if b == nil {
		return []byte("[]")
	}
	return b
}
