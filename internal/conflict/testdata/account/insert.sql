WITH written AS (
 INSERT INTO "public"."account" ("id", "tenant", "login", "email")
 SELECT $4::text::uuid, $5::text::integer, $6::text, $7::text
  WHERE NOT EXISTS (SELECT FROM "public"."account" pgmesh_t WHERE pgmesh_t."id" = $4::text::uuid)
    AND pgmesh.insert_clear('public.account', pg_catalog.jsonb_build_object('id', $4::text::uuid), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_1987994737e5ee9f20486748', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.account', pg_catalog.jsonb_build_object('id', $4::text::uuid), false) END AS verdict
         OFFSET 0) r
