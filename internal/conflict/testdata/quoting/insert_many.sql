WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_n)),
written AS (
 INSERT INTO "public"."it's ""odd""" ("Id", "na""me")
 SELECT v.pgmesh_c4::integer, v.pgmesh_c5 FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."it's ""odd""" pgmesh_t WHERE pgmesh_t."Id" = v.pgmesh_c4::integer OFFSET 0)
    AND pgmesh.insert_clear('public.it''s "odd"', pg_catalog.jsonb_build_object('Id', v.pgmesh_c4::integer), $2::text, $1::text)
 ON CONFLICT ("Id") DO NOTHING
 RETURNING "Id")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               pgmesh.resolve_key('pgmesh_fallback_db81263b5399bf162eb6d737', ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5], 'public.it''s "odd"', pg_catalog.jsonb_build_object('Id', v.pgmesh_c4::integer), false) AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."Id" = v.pgmesh_c4::integer)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
