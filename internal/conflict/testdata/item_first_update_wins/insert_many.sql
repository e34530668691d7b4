WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_c6, pgmesh_c7, pgmesh_n)),
written AS (
 INSERT INTO "public"."item" ("id", "email", "name", "qty")
 SELECT v.pgmesh_c4::integer, v.pgmesh_c5, v.pgmesh_c6, v.pgmesh_c7::integer FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."item" pgmesh_t WHERE pgmesh_t."id" = v.pgmesh_c4::integer OFFSET 0)
    AND pgmesh.insert_clear('public.item', (SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4::integer AS "id") x), $2::text)
    AND NOT EXISTS (SELECT FROM pgmesh.tombstone z
                     WHERE z.table_name = 'public.item' AND z.key = '{}'::jsonb AND NOT pgmesh.orders_after($1::text::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node) OFFSET 0)
    AND NOT EXISTS (SELECT FROM "public"."item" pgmesh_u WHERE pgmesh_u."email" = v.pgmesh_c5 AND NOT (pgmesh_u."id" = v.pgmesh_c4::integer) OFFSET 0)
 ON CONFLICT ("id") DO NOTHING
 RETURNING "id")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               CASE WHEN (SELECT false FROM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('public.item' || ((SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4::integer AS "id") x))::text, 0))) THEN NULL
                    ELSE pgmesh.resolve_change('pgmesh_full_1046110b8f06506a3746c530', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5, v.pgmesh_c6, v.pgmesh_c7]) END AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."id" = v.pgmesh_c4::integer)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
