WITH written AS (
 UPDATE "public"."stock" pgmesh_t
    SET "id" = $5::text::integer,
        "name" = $6::text,
        "qty" = pgmesh_t."qty" + ($7::text::integer - $9::text::integer),
        "price" = $8::text::numeric
  WHERE pgmesh_t."id" = $4::text::integer
    AND ((pgmesh_t."name")::text IS NOT DISTINCT FROM ($6::text)::text AND (pgmesh_t."price")::text IS NOT DISTINCT FROM ($8::text::numeric)::text
         OR (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true)))
    AND ((pgmesh_t."id" = $5::text::integer))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_1d48dbbce6453e919cf10a2a', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text], 'public.stock', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
