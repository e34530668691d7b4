WITH written AS (
 UPDATE "public"."line" pgmesh_t
    SET "order_id" = $6::text::bigint,
        "line_no" = $7::text::integer,
        "sku" = $8::text,
        "amount" = $9::text::numeric(12,2)
  WHERE pgmesh_t."order_id" = $4::text::bigint AND pgmesh_t."line_no" = $5::text::integer
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
    AND ((pgmesh_t."order_id" = $6::text::bigint AND pgmesh_t."line_no" = $7::text::integer))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_028cc14e53313d54035b31d6', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text], 'public.line', pg_catalog.jsonb_build_object('order_id', $4::text::bigint, 'line_no', $5::text::integer), false) END AS verdict
         OFFSET 0) r
