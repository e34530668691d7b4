WITH locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.account' || (pg_catalog.jsonb_build_object('id', $4::text::uuid))::text, 0)), (pg_catalog.hashtextextended('public.account' || (pg_catalog.jsonb_build_object('id', $5::text::uuid))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.account', pg_catalog.jsonb_build_object('id', $4::text::uuid)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_27ec2dcc3ce59ad2810d9e27', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text]) AS verdict
   FROM locked),
added AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_1987994737e5ee9f20486748', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $5::text, $6::text, $7::text, $8::text]) AS verdict
   FROM removed)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
