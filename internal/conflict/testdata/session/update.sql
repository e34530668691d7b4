WITH written AS (
 UPDATE "public"."session" pgmesh_t
    SET "started" = $6::text::timestamp with time zone,
        "span" = $7::text::interval,
        "who" = $8::text
  WHERE pgmesh_t."started" = $4::text::timestamp with time zone AND pgmesh_t."span" = $5::text::interval
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
    AND ((pgmesh_t."started" = $6::text::timestamp with time zone AND pgmesh_t."span" = $7::text::interval))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_5b3d64497f7d14e1770ed315', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text], 'public.session', (SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT $4::text::timestamp with time zone AS "started", $5::text::interval AS "span") x), false) END AS verdict
         OFFSET 0) r
