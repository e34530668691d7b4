WITH locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.session' || ((SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT $4::text::timestamp with time zone AS "started", $5::text::interval AS "span") x))::text, 0)), (pg_catalog.hashtextextended('public.session' || ((SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT $6::text::timestamp with time zone AS "started", $7::text::interval AS "span") x))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.session', (SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT $4::text::timestamp with time zone AS "started", $5::text::interval AS "span") x)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_e45eb132e877f3b5267afcb4', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text]) AS verdict
   FROM locked),
added AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_b317eeab8727cd6a65a913df', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $6::text, $7::text, $8::text]) AS verdict
   FROM removed)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
