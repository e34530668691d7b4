WITH moved_from AS MATERIALIZED (
 SELECT (pgmesh_l."name")::text AS "name"
   FROM "public"."item" pgmesh_l
  WHERE pgmesh_l."id" = $4::text::integer
  FOR UPDATE OF pgmesh_l),
locked AS MATERIALIZED (
 SELECT count(*) AS n
   FROM (SELECT pg_catalog.pg_advisory_xact_lock(h.h)
           FROM (VALUES (pg_catalog.hashtextextended('public.item' || (pg_catalog.jsonb_build_object('id', $4::text::integer))::text, 0)), (pg_catalog.hashtextextended('public.item' || (pg_catalog.jsonb_build_object('id', $5::text::integer))::text, 0))) h (h)
          WHERE (SELECT true FROM pgmesh.close_gate('public.item', pg_catalog.jsonb_build_object('id', $4::text::integer)))
          ORDER BY h.h) l),
removed AS MATERIALIZED (
 SELECT pgmesh.resolve_change('pgmesh_full_35ccfaa09b5bfad4307dd2c3', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $4::text]) AS verdict
   FROM locked, (SELECT count(*) FROM moved_from) f),
added AS MATERIALIZED (
 SELECT CASE WHEN EXISTS (SELECT FROM moved_from) THEN pgmesh.resolve_change('pgmesh_full_9ea2b3c63535bf8a831d7404', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, $5::text, $6::text, (SELECT f."name" FROM moved_from f), $7::text]) END AS verdict
   FROM removed),
lost AS (
 INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, local_row, remote_row, local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn)
 SELECT 'public.item', 'update_missing', 'skip_incomplete', pg_catalog.jsonb_build_object('id', $5::text::integer), NULL, (SELECT to_jsonb(x) FROM (SELECT $5::text::integer AS "id", $6::text AS "email", $7::text::integer AS "qty") x), NULL, $1::text::timestamptz, NULL, $2::text, $3::text::pg_lsn
  WHERE NOT EXISTS (SELECT FROM moved_from)
 RETURNING 1)
SELECT (v.verdict).kind, (v.verdict).resolution
  FROM (SELECT CASE WHEN (a.verdict).kind IS NOT NULL THEN a.verdict
                    WHEN EXISTS (SELECT FROM lost) THEN ('update_missing', 'skip_incomplete')::pgmesh.verdict
                    ELSE r.verdict END AS verdict
          FROM removed r, added a) v
