SELECT count(pgmesh.raise_deferred('public.member', c.name, pg_catalog.jsonb_build_object('id', (w.img)."id")))
  FROM (SELECT pgmesh_w AS img, pgmesh_w.tableoid AS toid, pgmesh_w.ctid AS tid
          FROM "public"."member" pgmesh_w
         WHERE (pgmesh_w."id") IN
               (SELECT u."id"::integer
                  FROM unnest($1::text[]) u ("id"))) w
 CROSS JOIN LATERAL (
        SELECT 'member_seat' WHERE EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE pgmesh_u."seat" = (w.img)."seat"
                                                AND NOT (pgmesh_u.tableoid = w.toid AND pgmesh_u.ctid = w.tid))) c (name)
