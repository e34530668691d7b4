WITH v AS MATERIALIZED (SELECT * FROM unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS v(pgmesh_c4, pgmesh_c5, pgmesh_c6, pgmesh_n)),
written AS (
 INSERT INTO "public"."session" ("started", "span", "who")
 SELECT v.pgmesh_c4::timestamp with time zone, v.pgmesh_c5::interval, v.pgmesh_c6 FROM v
  WHERE NOT EXISTS (SELECT FROM "public"."session" pgmesh_t WHERE pgmesh_t."started" = v.pgmesh_c4::timestamp with time zone AND pgmesh_t."span" = v.pgmesh_c5::interval OFFSET 0)
    AND pgmesh.insert_clear('public.session', (SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT v.pgmesh_c4::timestamp with time zone AS "started", v.pgmesh_c5::interval AS "span") x), $2::text, $1::text)
 ON CONFLICT ("started", "span") DO NOTHING
 RETURNING "started", "span")
SELECT x.n, (x.v).kind, (x.v).resolution
  FROM (SELECT v.pgmesh_n AS n,
               pgmesh.resolve_key('pgmesh_fallback_b317eeab8727cd6a65a913df', ARRAY[$1::text, $2::text, $3::text, v.pgmesh_c4, v.pgmesh_c5, v.pgmesh_c6], 'public.session', (SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT v.pgmesh_c4::timestamp with time zone AS "started", v.pgmesh_c5::interval AS "span") x), false) AS v
          FROM v
         WHERE NOT EXISTS (SELECT FROM written w WHERE w."started" = v.pgmesh_c4::timestamp with time zone AND w."span" = v.pgmesh_c5::interval)
         OFFSET 0) x
 WHERE (x.v).kind IS NOT NULL
