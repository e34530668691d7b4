WITH written AS (
 UPDATE "public"."member" pgmesh_t
    SET "id" = $5::text::integer,
        "team" = $6::text::integer,
        "active" = $7::text::boolean,
        "slot" = $8::text::int4range,
        "seat" = $9::text::integer,
        "code" = $10::text
  WHERE pgmesh_t."id" = $4::text::integer
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
    AND (pgmesh_t."team" IS NOT DISTINCT FROM $6::text::integer AND pgmesh_t."active" IS NOT DISTINCT FROM $7::text::boolean)
    AND (pgmesh_t."team" IS NOT DISTINCT FROM $6::text::integer)
    AND (pgmesh_t."slot" IS NOT DISTINCT FROM $8::text::int4range)
    AND (pgmesh_t."seat" IS NOT DISTINCT FROM $9::text::integer)
    AND (pgmesh_t."code" IS NOT DISTINCT FROM $10::text)
    AND ((pgmesh_t."id" = $5::text::integer))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_ee06ef71ee15522652a81b9e', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text, $10::text], 'public.member', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
