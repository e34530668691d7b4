SELECT count(pgmesh.raise_deferred('public.slot', c.name, pg_catalog.jsonb_build_object('id', (w.img)."id")))
  FROM (SELECT pgmesh_w AS img, pgmesh_w.tableoid AS toid, pgmesh_w.ctid AS tid
          FROM "public"."slot" pgmesh_w
         WHERE (pgmesh_w."id") IN
               (SELECT u."id"::integer
                  FROM unnest($1::text[]) u ("id"))) w
 CROSS JOIN LATERAL (
        SELECT 'the key' WHERE EXISTS (SELECT FROM "public"."slot" pgmesh_u WHERE pgmesh_u."id" = (w.img)."id"
                                                AND NOT (pgmesh_u.tableoid = w.toid AND pgmesh_u.ctid = w.tid))) c (name)
