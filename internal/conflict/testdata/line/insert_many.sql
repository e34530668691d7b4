WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_c6, pgmesh_c7, pgmesh_n)),
written AS (
 INSERT INTO "public"."line" ("order_id", "line_no", "sku", "amount")
 SELECT v.pgmesh_c4::bigint, v.pgmesh_c5::integer, v.pgmesh_c6, v.pgmesh_c7::numeric(12,2) FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."line" pgmesh_t WHERE pgmesh_t."order_id" = v.pgmesh_c4::bigint AND pgmesh_t."line_no" = v.pgmesh_c5::integer OFFSET 0)
    AND pgmesh.insert_clear('public.line', pg_catalog.jsonb_build_object('order_id', v.pgmesh_c4::bigint, 'line_no', v.pgmesh_c5::integer), $2::text, $1::text)
 ON CONFLICT ("order_id", "line_no") DO NOTHING
 RETURNING "order_id", "line_no")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               pgmesh.resolve_key('pgmesh_fallback_b837668ecc9bb824b336bffd', ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5, v.pgmesh_c6, v.pgmesh_c7], 'public.line', pg_catalog.jsonb_build_object('order_id', v.pgmesh_c4::bigint, 'line_no', v.pgmesh_c5::integer), false) AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."order_id" = v.pgmesh_c4::bigint AND w."line_no" = v.pgmesh_c5::integer)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
