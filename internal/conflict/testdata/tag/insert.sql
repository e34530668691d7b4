WITH written AS (
 INSERT INTO "public"."tag" ("name")
 SELECT $4::text
  WHERE NOT EXISTS (SELECT FROM "public"."tag" pgmesh_t WHERE pgmesh_t."name" = $4::text)
    AND pgmesh.insert_clear('public.tag', pg_catalog.jsonb_build_object('name', $4::text), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_f0f9aa61918f54abdfe81b28', ARRAY[$1::text, $2::text, $3::text, $4::text], 'public.tag', pg_catalog.jsonb_build_object('name', $4::text), false) END AS verdict
         OFFSET 0) r
