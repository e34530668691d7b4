WITH written AS (
 UPDATE "public"."stock" pgmesh_t
    SET "id" = $5::text::integer,
        "qty" = pgmesh_t."qty" + ($6::text::integer - $7::text::integer)
  WHERE pgmesh_t."id" = $4::text::integer
    AND ((pgmesh_t."id" = $5::text::integer))
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_3c5adf215e1c4efd13e19ec2', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.stock', pg_catalog.jsonb_build_object('id', $4::text::integer), false) END AS verdict
         OFFSET 0) r
