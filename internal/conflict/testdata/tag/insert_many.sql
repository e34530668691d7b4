WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_n)),
written AS (
 INSERT INTO "public"."tag" ("name")
 SELECT v.pgmesh_c4 FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."tag" pgmesh_t WHERE pgmesh_t."name" = v.pgmesh_c4 OFFSET 0)
    AND pgmesh.insert_clear('public.tag', pg_catalog.jsonb_build_object('name', v.pgmesh_c4), $2::text, $1::text)
 ON CONFLICT ("name") DO NOTHING
 RETURNING "name")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               pgmesh.resolve_key('pgmesh_fallback_f0f9aa61918f54abdfe81b28', ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4], 'public.tag', pg_catalog.jsonb_build_object('name', v.pgmesh_c4), false) AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."name" = v.pgmesh_c4)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
