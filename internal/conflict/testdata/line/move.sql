WITH locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.line' || (pg_catalog.jsonb_build_object('order_id', $4::text::bigint, 'line_no', $5::text::integer))::text, 0)), (pg_catalog.hashtextextended('public.line' || (pg_catalog.jsonb_build_object('order_id', $6::text::bigint, 'line_no', $7::text::integer))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.line', pg_catalog.jsonb_build_object('order_id', $4::text::bigint, 'line_no', $5::text::integer)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_4389ddf63007e8405d4ec8e9', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text]) AS verdict
   FROM locked),
added AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_b837668ecc9bb824b336bffd', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $6::text, $7::text, $8::text, $9::text]) AS verdict
   FROM removed)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
