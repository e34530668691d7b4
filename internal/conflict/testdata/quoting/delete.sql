WITH written AS (
 DELETE FROM "public"."it's ""odd""" pgmesh_t
  WHERE pgmesh_t."Id" = $4::text::integer
    AND (coalesce((pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin)).roident, pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)) = pg_catalog.pg_replication_origin_oid('pgmesh_' || $2::text)
         OR pgmesh.change_applies(pgmesh_t.xmin, $1::text::timestamptz, $2::text, true))
 RETURNING 1),
tombstone AS (
 INSERT INTO pgmesh.tombstone AS z (table_name, key, deleted_at, xid, node)
 SELECT 'public.it''s "odd"', pg_catalog.jsonb_build_object('Id', $4::text::integer), $1::text::timestamptz, NULL, $2::text
   FROM written
 ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = excluded.deleted_at, xid = NULL, node = excluded.node
  WHERE coalesce(pgmesh.tombstone_time(z.deleted_at, z.xid), '-infinity') < excluded.deleted_at
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_b2dab77e2f37c8a943cdd0d7', ARRAY[$1::text, $2::text, $3::text, $4::text], 'public.it''s "odd"', pg_catalog.jsonb_build_object('Id', $4::text::integer), true) END AS verdict
         OFFSET 0) r
