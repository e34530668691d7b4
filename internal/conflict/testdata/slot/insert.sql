WITH written AS (
 INSERT INTO "public"."slot" ("id", "v")
 SELECT $4::text::integer, $5::text
  WHERE NOT EXISTS (SELECT FROM "public"."slot" pgmesh_t WHERE pgmesh_t."id" = $4::text::integer)
    AND pgmesh.insert_clear('public.slot', pg_catalog.jsonb_build_object('id', $4::text::integer), $2::text, $1::text)
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_57855a588fc56e2a11f25870', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text], 'public.slot', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
