WITH written AS (
 INSERT INTO "public"."it's ""odd""" ("Id", "na""me")
 SELECT $4::text::integer, $5::text
  WHERE NOT EXISTS (SELECT FROM "public"."it's ""odd""" pgmesh_t WHERE pgmesh_t."Id" = $4::text::integer)
    AND pgmesh.insert_clear('public.it''s "odd"', pg_catalog.jsonb_build_object('Id', $4::text::integer), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_db81263b5399bf162eb6d737', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text], 'public.it''s "odd"', pg_catalog.jsonb_build_object('Id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
