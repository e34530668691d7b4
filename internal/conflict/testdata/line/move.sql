WITH locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.line' || ((SELECT to_jsonb(x) FROM (SELECT $4::text::bigint AS "order_id", $5::text::integer AS "line_no") x))::text, 0)), (pg_catalog.hashtextextended('public.line' || ((SELECT to_jsonb(x) FROM (SELECT $6::text::bigint AS "order_id", $7::text::integer AS "line_no") x))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.line', (SELECT to_jsonb(x) FROM (SELECT $4::text::bigint AS "order_id", $5::text::integer AS "line_no") x)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_bd1930c88e8456f0a04fb32c', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text]) AS verdict
   FROM locked),
added AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_a4921639b0a53dba2e4620e8', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $6::text, $7::text, $8::text, $9::text]) AS verdict
   FROM removed)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
