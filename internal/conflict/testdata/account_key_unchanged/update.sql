WITH written AS (
 UPDATE "public"."account" pgmesh_t
    SET "id" = $5::text::uuid,
        "tenant" = $6::text::integer,
        "email" = $7::text
  WHERE pgmesh_t."id" = $4::text::uuid
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
    AND ($7::text IS NULL OR (pgmesh_t."email" = $7::text))
    AND (pgmesh_t."tenant" IS NOT DISTINCT FROM $6::text::integer)
    AND ((pgmesh_t."id" = $5::text::uuid))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_4c166bddaa11422962a20446', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.account', pg_catalog.jsonb_build_object('id', $4::text::uuid), false) END AS verdict
         OFFSET 0) r
