WITH written AS (
 UPDATE "public"."it's ""odd""" pgmesh_t
    SET "Id" = $5::text::integer,
        "na""me" = $6::text
  WHERE pgmesh_t."Id" = $4::text::integer
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
    AND ((pgmesh_t."Id" = $5::text::integer))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_99838e9f7904daf2f1c6eee8', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text], 'public.it''s "odd"', pg_catalog.jsonb_build_object('Id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
