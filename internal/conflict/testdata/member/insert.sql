WITH written AS (
 INSERT INTO "public"."member" ("id", "email", "team", "active", "nick", "slot", "seat", "code")
 SELECT $4::text::integer, $5::text, $6::text::integer, $7::text::boolean, $8::text, $9::text::int4range, $10::text::integer, $11::text
  WHERE NOT EXISTS (SELECT FROM "public"."member" pgmesh_t WHERE pgmesh_t."id" = $4::text::integer)
    AND pgmesh.insert_clear('public.member', pg_catalog.jsonb_build_object('id', $4::text::integer), $2::text, $1::text)
    AND NOT EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE (lower(email)) = (SELECT lower(email) FROM (SELECT $5::text AS "email") pgmesh_n) AND NOT (pgmesh_u."id" = $4::text::integer))
    AND NOT EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE (active) AND (SELECT (active) FROM (SELECT $6::text::integer AS "team", $7::text::boolean AS "active") pgmesh_n) AND pgmesh_u."team" = $6::text::integer AND NOT (pgmesh_u."id" = $4::text::integer))
    AND NOT EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE (pgmesh_u."team" = $6::text::integer OR (pgmesh_u."team" IS NULL AND $6::text::integer IS NULL)) AND (pgmesh_u."nick" = $8::text OR (pgmesh_u."nick" IS NULL AND $8::text IS NULL)) AND NOT (pgmesh_u."id" = $4::text::integer))
    AND NOT EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE pgmesh_u."slot" OPERATOR(pg_catalog.&&) $9::text::int4range AND NOT (pgmesh_u."id" = $4::text::integer))
    AND NOT EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE pgmesh_u."seat" = $10::text::integer AND NOT (pgmesh_u."id" = $4::text::integer))
    AND NOT EXISTS (SELECT FROM "public"."member" pgmesh_u WHERE pgmesh_u."code" COLLATE pg_catalog."POSIX" = $11::text COLLATE pg_catalog."POSIX" AND NOT (pgmesh_u."id" = $4::text::integer))
 ON CONFLICT ("id") DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_44f5cdf4581bc3b3f4440bbe', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text, $10::text, $11::text], 'public.member', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
