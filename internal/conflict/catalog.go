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

// tableSQL describes a local table for the statement builders: its writable
// columns (not dropped, not generated) with their types, its replica
// identity, and its other unique indexes usable for pre-checks (valid,
// immediate, without predicate or expression).
const tableSQL = `
SELECT c.relreplident::text,
	(SELECT json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
	   FROM pg_attribute a
	  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''),
	(SELECT json_agg(json_build_object('ident', CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END,
		'cols', (SELECT json_agg(a.attname ORDER BY k.ord)
		           FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
		           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		          WHERE k.ord <= i.indnkeyatts)) ORDER BY i.indexrelid)
	   FROM pg_index i
	  WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate
	    AND i.indpred IS NULL AND i.indexprs IS NULL)
  FROM pg_class c WHERE c.oid = to_regclass($1)`

// LoadTable describes table schema.name of the node q is connected to, with
// every writable column, and the conflict settings of cfg (nil: defaults).
// The applier narrows Columns/Types to the columns the remote rows carry.
func LoadTable(ctx context.Context, q pg.Querier, schema, name string, cfg *config.Config) (Table, error) {
	t := Table{Schema: schema, Name: name}
	var ident string
	var colsJSON, idxJSON []byte
	err := q.QueryRow(ctx, tableSQL, pg.Ident(schema, name)).Scan(&ident, &colsJSON, &idxJSON)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, fmt.Errorf("describe table %s: it does not exist on this node", t.QualifiedName())
	}
	if err != nil {
		return t, fmt.Errorf("describe table %s: %w", t.QualifiedName(), err)
	}
	var cols []struct{ Name, Type string }
	var idxs []struct {
		Ident bool     `json:"ident"`
		Cols  []string `json:"cols"`
	}
	if err := json.Unmarshal(nonNull(colsJSON), &cols); err != nil {
		return t, fmt.Errorf("describe table %s: columns: %w", t.QualifiedName(), err)
	}
	if err := json.Unmarshal(nonNull(idxJSON), &idxs); err != nil {
		return t, fmt.Errorf("describe table %s: indexes: %w", t.QualifiedName(), err)
	}
	for _, c := range cols {
		t.Columns = append(t.Columns, c.Name)
		t.Types = append(t.Types, c.Type)
	}
	t.FullIdentity = ident == "f"
	for _, ix := range idxs {
		if ix.Ident && t.Key == nil {
			t.Key = ix.Cols
		} else {
			t.Uniques = append(t.Uniques, ix.Cols)
		}
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
