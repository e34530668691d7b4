WITH written AS (
 UPDATE "public"."item" pgmesh_t
    SET "id" = $5::text::integer,
        "email" = $6::text,
        "name" = $7::text,
        "qty" = $8::text::integer
  WHERE pgmesh_t."id" = $4::text::integer
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, false))
    AND ($6::text IS NULL OR (pgmesh_t."email" = $6::text))
    AND ((pgmesh_t."id" = $5::text::integer))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_ba205ec9bd6d43733d2a5cb0', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text], 'public.item', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
