WITH written AS (
 INSERT INTO "public"."ev" ("a", "b", "doc", "at")
 SELECT $4::text::integer, $5::text, $6::text::json, $7::text::timestamp with time zone
  WHERE NOT EXISTS (SELECT FROM pgmesh.tombstone z
                     WHERE z.table_name = 'public.ev' AND z.key = '{}'::jsonb AND NOT pgmesh.orders_after($1::text::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node))
    AND NOT EXISTS (SELECT FROM "public"."ev" pgmesh_u WHERE pgmesh_u."b" = $5::text)
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_73fd208a64bb95ef9b3bb770', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.ev', NULL, false) END AS verdict
         OFFSET 0) r
