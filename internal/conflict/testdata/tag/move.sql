WITH locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.tag' || (pg_catalog.jsonb_build_object('name', $4::text))::text, 0)), (pg_catalog.hashtextextended('public.tag' || (pg_catalog.jsonb_build_object('name', $5::text))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.tag', pg_catalog.jsonb_build_object('name', $4::text)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_93a5ecd067de7940831c6096', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text]) AS verdict
   FROM locked),
added AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_f0f9aa61918f54abdfe81b28', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $5::text]) AS verdict
   FROM removed)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
