WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_c6, pgmesh_c7, pgmesh_n)),
written AS (
 INSERT INTO "public"."item" ("id", "email", "name", "qty")
 SELECT v.pgmesh_c4::integer, v.pgmesh_c5, v.pgmesh_c6, v.pgmesh_c7::integer FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."item" pgmesh_t WHERE pgmesh_t."id" = v.pgmesh_c4::integer OFFSET 0)
    AND pgmesh.insert_clear('public.item', pg_catalog.jsonb_build_object('id', v.pgmesh_c4::integer), $2::text, $1::text)
    AND NOT EXISTS (SELECT FROM "public"."item" pgmesh_u WHERE pgmesh_u."email" = v.pgmesh_c5 AND NOT (pgmesh_u."id" = v.pgmesh_c4::integer) OFFSET 0)
 ON CONFLICT ("id") DO NOTHING
 RETURNING "id")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               pgmesh.resolve_key('pgmesh_fallback_8fa64dd4c1df9194b7fadad9', ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5, v.pgmesh_c6, v.pgmesh_c7], 'public.item', pg_catalog.jsonb_build_object('id', v.pgmesh_c4::integer), false) AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."id" = v.pgmesh_c4::integer)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
