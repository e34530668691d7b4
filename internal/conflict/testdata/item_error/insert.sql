WITH written AS (
 INSERT INTO "public"."item" ("id", "email", "name", "qty")
 SELECT $4::text::integer, $5::text, $6::text, $7::text::integer
  WHERE NOT EXISTS (SELECT FROM "public"."item" pgmesh_t WHERE pgmesh_t."id" = $4::text::integer)
    AND pgmesh.insert_clear('public.item', pg_catalog.jsonb_build_object('id', $4::text::integer), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_1d5e1a7de836edd0aeff46de', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.item', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
