WITH written AS (
 INSERT INTO "public"."session" ("started", "span", "who")
 SELECT $4::text::timestamp with time zone, $5::text::interval, $6::text
  WHERE NOT EXISTS (SELECT FROM "public"."session" pgmesh_t WHERE pgmesh_t."started" = $4::text::timestamp with time zone AND pgmesh_t."span" = $5::text::interval)
    AND pgmesh.insert_clear('public.session', (SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT $4::text::timestamp with time zone AS "started", $5::text::interval AS "span") x), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_b317eeab8727cd6a65a913df', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text], 'public.session', (SELECT pgmesh.to_jsonb_utc(x) FROM (SELECT $4::text::timestamp with time zone AS "started", $5::text::interval AS "span") x), false) END AS verdict
         OFFSET 0) r
