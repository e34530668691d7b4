package check

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/pgmesh/pgmesh/internal/pg"
)

// moneyProbe is an amount every node formats with its own lc_monetary: the
// text shows the currency symbol, the separators and the number of
// fraction digits, which is everything that gives a stored money value its
// meaning.
const moneyProbe = "-1234567.891"

// moneyNode is what the money check learns from one node.
type moneyNode struct {
	name       string
	lcMonetary string   // lc_monetary of an ordinary session of the pgmesh role
	probe      string   // moneyProbe formatted as money under it
	columns    []string // replicated columns whose values hold money
}

// moneyColumnsSQL finds the columns of the given tables whose type holds
// money: money itself, a domain over it, an array of it, or a composite
// type (a row type) with such a field, at any depth.
const moneyColumnsSQL = `
WITH RECURSIVE m(oid) AS (
    SELECT 'pg_catalog.money'::pg_catalog.regtype::pg_catalog.oid
    UNION
    SELECT t.oid FROM m, pg_catalog.pg_type t
     WHERE t.typbasetype = m.oid OR t.typelem = m.oid
        OR (t.typrelid <> 0 AND t.typrelid IN (SELECT a.attrelid FROM pg_catalog.pg_attribute a
                                                WHERE a.atttypid = m.oid AND a.attnum > 0 AND NOT a.attisdropped)))
SELECT c.shown || '.' || pg_catalog.quote_ident(a.attname)
  FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS c(ident, shown)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.ident::pg_catalog.regclass
 WHERE a.attnum > 0 AND NOT a.attisdropped AND a.atttypid IN (SELECT oid FROM m)
 ORDER BY 1`

// checkMoney fails when replicated tables hold money and the nodes give
// money different meanings. A money value is an integer count of the
// currency's smallest unit; lc_monetary says which currency and how many
// fraction digits. pgmesh transfers the integer exactly (lc_monetary is
// pinned to C on both ends of a link), so nodes whose lc_monetary differ
// show the same row as different amounts (1234 is $12.34 under en_US and
// ¥1,234 under ja_JP). No setting of pgmesh can fix that: only the same
// lc_monetary everywhere, or numeric instead of money.
func checkMoney(ctx context.Context, _ *run, nodes []*Node) ([]Finding, error) {
	var ms []moneyNode
	for _, n := range nodes {
		m := moneyNode{name: n.Name}
		err := n.Conn.QueryRow(ctx, "SELECT pg_catalog.current_setting('lc_monetary'), $1::pg_catalog.numeric::pg_catalog.money::pg_catalog.text", moneyProbe).
			Scan(&m.lcMonetary, &m.probe)
		if err != nil {
			return nil, fmt.Errorf("node %s: format money: %w", n.Name, err)
		}
		idents, shown := make([]string, len(n.Tables)), make([]string, len(n.Tables))
		for i, t := range n.Tables {
			idents[i], shown[i] = pg.Ident(t.Schema, t.Name), t.QualifiedName()
		}
		rows, err := n.Conn.Query(ctx, moneyColumnsSQL, idents, shown)
		if err != nil {
			return nil, fmt.Errorf("node %s: find money columns: %w", n.Name, err)
		}
		for rows.Next() {
			var c string
			if err := rows.Scan(&c); err != nil {
				rows.Close()
				return nil, fmt.Errorf("node %s: find money columns: %w", n.Name, err)
			}
			m.columns = append(m.columns, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("node %s: find money columns: %w", n.Name, err)
		}
		ms = append(ms, m)
	}
	return moneyFindings(ms), nil
}

// moneyFindings decides: nothing to say without money columns; PASS when
// every node formats money alike; else FAIL on every node whose format is
// not the most common one.
func moneyFindings(ms []moneyNode) []Finding {
	var cols []string
	for _, m := range ms {
		for _, c := range m.columns {
			if !slices.Contains(cols, c) {
				cols = append(cols, c)
			}
		}
	}
	if len(cols) == 0 {
		return nil
	}
	slices.Sort(cols)
	shown := strings.Join(cols, ", ")
	if len(cols) > 5 {
		shown = strings.Join(cols[:5], ", ") + fmt.Sprintf(" and %d more", len(cols)-5)
	}
	count := map[string]int{}
	for _, m := range ms {
		count[m.probe]++
	}
	common := ms[0]
	for _, m := range ms {
		if count[m.probe] > count[common.probe] {
			common = m
		}
	}
	if len(count) == 1 {
		return []Finding{{Status: Pass, Check: "money", Object: shown,
			Message: fmt.Sprintf("every node formats money alike (lc_monetary %s: %s)", common.lcMonetary, common.probe)}}
	}
	var formats []string
	for _, m := range ms {
		formats = append(formats, fmt.Sprintf("%s: lc_monetary %s formats %s as %s", m.name, m.lcMonetary, moneyProbe, m.probe))
	}
	var fs []Finding
	for _, m := range ms {
		if m.probe == common.probe {
			continue
		}
		fs = append(fs, Finding{Status: Fail, Node: m.name, Check: "money", Object: shown,
			Message: fmt.Sprintf("money cannot be replicated exactly between these nodes: a money value is an integer count of the currency's smallest unit whose currency and fraction digits come from lc_monetary, and pgmesh copies that integer as it is, so the same row would show different amounts (%s)",
				strings.Join(formats, "; ")),
			Fix: fmt.Sprintf("give every node the same lc_monetary for this database, e.g. ALTER DATABASE … SET lc_monetary = %s (new sessions; also in postgresql.conf so that every role gets it), or store amounts as numeric: ALTER TABLE … ALTER COLUMN … TYPE numeric(20, 2) USING …::numeric",
				pg.QuoteLiteral(common.lcMonetary))})
	}
	return fs
}
