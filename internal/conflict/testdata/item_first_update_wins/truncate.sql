WITH removed AS MATERIALIZED (
 DELETE FROM "public"."item" pgmesh_t
  WHERE (SELECT c."timestamp" IS NULL OR c."timestamp" < $1::text::timestamptz
                OR (c."timestamp" = $1::text::timestamptz AND pgmesh.orders_after($1::text::timestamptz, $2::text, c."timestamp", pgmesh.origin_node(c.roident)))
           FROM pg_catalog.pg_xact_commit_timestamp_origin(pgmesh_t.xmin) c)
 RETURNING pgmesh_t AS img, pgmesh_t.xmin),
concurrent AS MATERIALIZED (
 SELECT v.img, v.commit_time, v.node
   FROM (SELECT r.img, c."timestamp" AS commit_time, pgmesh.origin_node(c.roident) AS node
           FROM removed r, LATERAL pg_catalog.pg_xact_commit_timestamp_origin(r.xmin) c) v
  WHERE v.commit_time IS NOT NULL AND v.node IS DISTINCT FROM $2::text
    AND NOT pgmesh.had_seen($2::text, v.node, v.commit_time)),
tombstone AS (
 INSERT INTO pgmesh.tombstone AS z (table_name, key, deleted_at, xid, node)
 VALUES ('public.item', '{}'::jsonb, $1::text::timestamptz, NULL, $2::text)
 ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = excluded.deleted_at, xid = NULL, node = excluded.node
  WHERE coalesce(pgmesh.tombstone_time(z.deleted_at, z.xid), '-infinity') < excluded.deleted_at
 RETURNING 1),
logged AS (
 INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, local_row, remote_row, local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn)
 SELECT 'public.item', 'truncate_origin_differs', 'apply_remote', pg_catalog.jsonb_build_object('id', (c.img)."id"), to_jsonb(c.img), NULL,
        c.commit_time, $1::text::timestamptz, c.node, $2::text, $3::text::pg_lsn
   FROM concurrent c
 RETURNING 1)
SELECT (SELECT count(*) FROM removed) AS removed,
       (SELECT count(*) FROM logged) AS logged
