WITH written AS (
 INSERT INTO "public"."stock" ("id", "name", "qty", "price")
 SELECT $4::text::integer, $5::text, $6::text::integer, $7::text::numeric
  WHERE NOT EXISTS (SELECT FROM "public"."stock" pgmesh_t WHERE pgmesh_t."id" = $4::text::integer)
    AND pgmesh.insert_clear('public.stock', pg_catalog.jsonb_build_object('id', $4::text::integer), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_0620d8a2532618274074fff8', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.stock', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
