WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_n)),
written AS (
 INSERT INTO "public"."tag" ("name")
 SELECT v.pgmesh_c4 FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."tag" pgmesh_t WHERE pgmesh_t."name" = v.pgmesh_c4 OFFSET 0)
    AND pgmesh.insert_clear('public.tag', (SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4 AS "name") x), $2::text)
    AND NOT EXISTS (SELECT FROM pgmesh.tombstone z
                     WHERE z.table_name = 'public.tag' AND z.key = '{}'::jsonb AND NOT pgmesh.orders_after($1::text::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node) OFFSET 0)
 ON CONFLICT ("name") DO NOTHING
 RETURNING "name")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               CASE WHEN (SELECT false FROM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('public.tag' || ((SELECT to_jsonb(x) FROM (SELECT v.pgmesh_c4 AS "name") x))::text, 0))) THEN NULL
                    ELSE pgmesh.resolve_change('pgmesh_full_f1a7275ac0443a0500286e0a', $pgmesh$ …the full statement: <op>_full.sql with parameters ($1[n])::type… $pgmesh$, ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4]) END AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."name" = v.pgmesh_c4)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
