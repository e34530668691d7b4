WITH written AS (
 UPDATE "public"."tag" pgmesh_t
    SET "name" = $5::text
  WHERE pgmesh_t."name" = $4::text
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
    AND ((pgmesh_t."name" = $5::text))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_8e2e2aca4ef0d6bf99ddf160', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text], 'public.tag', pg_catalog.jsonb_build_object('name', $4::text), false) END AS verdict
         OFFSET 0) r
