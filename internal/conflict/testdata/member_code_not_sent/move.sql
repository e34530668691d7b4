WITH locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.member' || (pg_catalog.jsonb_build_object('id', $4::text::integer))::text, 0)), (pg_catalog.hashtextextended('public.member' || (pg_catalog.jsonb_build_object('id', $5::text::integer))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.member', pg_catalog.jsonb_build_object('id', $4::text::integer)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_41c749b9c20842527f8b69ea', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text]) AS verdict
   FROM locked),
added AS MATERIALIZED (
 SELECT pgmesh.resolve_guarded('pgmesh_full_e7396fb455b577ba6a436a89', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $5::text, $6::text, $7::text, $8::text, $9::text, $10::text, $11::text], 'public.member', pg_catalog.jsonb_build_object('id', $5::text::integer), (SELECT to_jsonb(x) FROM (SELECT $5::text::integer AS "id", $6::text AS "email", $7::text::integer AS "team", $8::text::boolean AS "active", $9::text AS "nick", $10::text::int4range AS "slot", $11::text::integer AS "seat") x), false) AS verdict
   FROM removed)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
