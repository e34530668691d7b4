WITH written AS (
 INSERT INTO "public"."line" ("order_id", "line_no", "sku", "amount")
 SELECT $4::text::bigint, $5::text::integer, $6::text, $7::text::numeric(12,2)
  WHERE NOT EXISTS (SELECT FROM "public"."line" pgmesh_t WHERE pgmesh_t."order_id" = $4::text::bigint AND pgmesh_t."line_no" = $5::text::integer)
    AND pgmesh.insert_clear('public.line', pg_catalog.jsonb_build_object('order_id', $4::text::bigint, 'line_no', $5::text::integer), $2::text, $1::text)
 ON CONFLICT DO NOTHING
 RETURNING 1)
SELECT (r.verdict).kind, (r.verdict).resolution
  FROM (SELECT CASE WHEN EXISTS (SELECT FROM written) THEN NULL
                    ELSE pgmesh.resolve_key('pgmesh_fallback_b837668ecc9bb824b336bffd', ARRAY[$1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text], 'public.line', pg_catalog.jsonb_build_object('order_id', $4::text::bigint, 'line_no', $5::text::integer), false) END AS verdict
         OFFSET 0) r
