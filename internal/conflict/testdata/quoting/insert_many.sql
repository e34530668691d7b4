WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_n)),
written AS (
 INSERT INTO "public"."it's ""odd""" ("Id", "na""me")
 SELECT v.pgmesh_c4::integer, v.pgmesh_c5 FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."it's ""odd""" pgmesh_t WHERE pgmesh_t."Id" = v.pgmesh_c4::integer OFFSET 0)
    AND pgmesh.insert_clear('public.it''s "odd"', (SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4::integer AS "Id") x), $2::text)
    AND NOT EXISTS (SELECT FROM pgmesh.tombstone z
                     WHERE z.table_name = 'public.it''s "odd"' AND z.key = '{}'::jsonb AND NOT pgmesh.orders_after($1::text::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node) OFFSET 0)
 ON CONFLICT ("Id") DO NOTHING
 RETURNING "Id")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               CASE WHEN (SELECT false FROM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('public.it''s "odd"' || ((SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4::integer AS "Id") x))::text, 0))) THEN NULL
                    ELSE pgmesh.resolve_change('pgmesh_full_aa97399333ec7891b4cebba8', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5]) END AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."Id" = v.pgmesh_c4::integer)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
