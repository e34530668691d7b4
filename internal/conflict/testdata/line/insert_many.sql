WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_c6, pgmesh_c7, pgmesh_n)),
written AS (
 INSERT INTO "public"."line" ("order_id", "line_no", "sku", "amount")
 SELECT v.pgmesh_c4::bigint, v.pgmesh_c5::integer, v.pgmesh_c6, v.pgmesh_c7::numeric(12,2) FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."line" pgmesh_t WHERE pgmesh_t."order_id" = v.pgmesh_c4::bigint AND pgmesh_t."line_no" = v.pgmesh_c5::integer OFFSET 0)
    AND pgmesh.insert_clear('public.line', (SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4::bigint AS "order_id", v.pgmesh_c5::integer AS "line_no") x), $2::text)
    AND NOT EXISTS (SELECT FROM pgmesh.tombstone z
                     WHERE z.table_name = 'public.line' AND z.key = '{}'::jsonb AND NOT pgmesh.orders_after($1::text::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node) OFFSET 0)
 ON CONFLICT ("order_id", "line_no") DO NOTHING
 RETURNING "order_id", "line_no")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               CASE WHEN (SELECT false FROM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('public.line' || ((SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4::bigint AS "order_id", v.pgmesh_c5::integer AS "line_no") x))::text, 0))) THEN NULL
                    ELSE pgmesh.resolve_change('pgmesh_full_a4921639b0a53dba2e4620e8', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5, v.pgmesh_c6, v.pgmesh_c7]) END AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."order_id" = v.pgmesh_c4::bigint AND w."line_no" = v.pgmesh_c5::integer)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
