WITH local_row AS MATERIALIZED (
 SELECT true AS found, locked.img, locked.tid, locked.toid,
        ct."timestamp" AS commit_time, pgmesh.origin_node(ct.roident) AS node
   FROM (SELECT pgmesh_l AS img, pgmesh_l.xmin, pgmesh_l.ctid AS tid, pgmesh_l.tableoid AS toid
           FROM "public"."item" pgmesh_l
          WHERE pgmesh_l."id" = $4::integer
          FOR UPDATE OF pgmesh_l) locked,
        LATERAL pg_catalog.pg_xact_commit_timestamp_origin(locked.xmin) ct),
key_json AS MATERIALIZED (SELECT pg_catalog.jsonb_build_object('id', $4::integer) AS key),
local_state AS MATERIALIZED (
 SELECT coalesce(l.found, false) AS present, coalesce(tb.found, false) AS tomb, l.img, l.tid, l.toid,
        CASE WHEN l.found THEN l.commit_time ELSE tb.deleted_at END AS state_time,
        CASE WHEN l.found THEN l.node ELSE tb.node END AS state_node
   FROM (VALUES (1)) one (x)
   LEFT JOIN local_row l ON true
   LEFT JOIN LATERAL (SELECT true AS found, pgmesh.tombstone_time(z.deleted_at, z.xid) AS deleted_at, z.node
                        FROM pgmesh.tombstone z
                       WHERE l.found IS NULL AND z.table_name = 'public.item' AND z.key IN ((SELECT k.key FROM key_json k), '{}'::jsonb)
                         AND (z.key <> '{}'::jsonb OR NOT pgmesh.orders_after($1::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node))
                       ORDER BY pgmesh.tombstone_time(z.deleted_at, z.xid) DESC NULLS LAST
                       LIMIT 1) tb ON true
  WHERE l.found OR NOT EXISTS (SELECT FROM "public"."item" pgmesh_g WHERE pgmesh_g."id" = $4::integer)),
compared AS MATERIALIZED (
 SELECT s.present, s.tomb, s.state_time, s.state_node,
        coalesce(s.state_node = $2::text, false) AS same,
        pgmesh.orders_after($1::timestamptz, $2::text, s.state_time, s.state_node) AS newer
   FROM local_state s),
seen_by_remote AS MATERIALIZED (
 SELECT c.*,
        c.state_time IS NOT NULL AND NOT c.same AND NOT pgmesh.had_seen($2::text, c.state_node, c.state_time) AS unseen,
        false AS inflight
   FROM compared c),
causality AS MATERIALIZED (
 SELECT s.present, s.tomb, s.state_time, s.state_node, s.same, s.newer, s.inflight,
        s.unseen AND NOT s.superseded AS concurrent, s.superseded
   FROM (SELECT s.*,
                s.unseen AND s.state_node IS DISTINCT FROM (SELECT ln.name FROM pgmesh.local_node ln)
                AND pgmesh.had_seen(s.state_node, $2::text, $1::timestamptz) AS superseded
           FROM seen_by_remote s) s),
judgement AS MATERIALIZED (
 SELECT c.*,
        CASE WHEN c.present THEN 'present' WHEN c.tomb AND NOT c.same THEN 'tomb' ELSE 'absent' END AS state,
        CASE WHEN c.present AND c.superseded THEN c.newer
             WHEN c.present THEN c.newer
             WHEN c.tomb AND NOT c.same THEN (CASE WHEN c.same OR c.state_time IS NULL THEN true WHEN c.concurrent THEN c.newer WHEN c.superseded THEN c.newer ELSE c.newer END)
             ELSE true END AS wins
   FROM causality c),
decision AS MATERIALIZED (
 SELECT j.*, j.wins AS applies,
        CASE j.state WHEN 'present' THEN CASE WHEN NOT j.superseded THEN 'insert_exists' END
                     WHEN 'tomb' THEN CASE WHEN j.concurrent OR NOT (j.wins OR j.superseded) THEN 'insert_deleted' END END AS kind,
        j.state = 'present' OR j.concurrent AS loss_is_concurrent,
        false AS raises
   FROM judgement j),
unique_holders AS MATERIALIZED (
 SELECT locked.img, locked.tid, locked.toid,
        ct."timestamp" AS commit_time, pgmesh.origin_node(ct.roident) AS node
   FROM (SELECT pgmesh_u AS img, pgmesh_u.xmin, pgmesh_u.ctid AS tid, pgmesh_u.tableoid AS toid
           FROM "public"."item" pgmesh_u
          WHERE (SELECT d.applies FROM decision d)
            AND ((pgmesh_u."email" = $5::text))
            AND NOT (pgmesh_u."id" = $4::integer)
          FOR UPDATE OF pgmesh_u) locked,
        LATERAL pg_catalog.pg_xact_commit_timestamp_origin(locked.xmin) ct),
unique_verdict AS MATERIALIZED (
 SELECT count(*) > 0 AS hit, coalesce(bool_and(h.newer), true) AS all_newer, coalesce(bool_and(NOT h.newer), true) AS all_older
   FROM (SELECT pgmesh.orders_after($1::timestamptz, $2::text, h.commit_time, h.node) AS newer
           FROM unique_holders h) h),
verdict AS MATERIALIZED (
 SELECT d.*,
        u.hit AS unique_hit, (NOT u.hit OR u.all_newer) AS unique_wins,
        d.applies AND (NOT u.hit OR u.all_newer) AS writes,
        CASE WHEN d.kind IS NULL THEN NULL
             WHEN d.kind = 'delete_missing' THEN 'skip'
             WHEN d.wins AND NOT d.applies THEN 'skip_incomplete'
             WHEN d.wins THEN 'apply_remote'
             WHEN d.loss_is_concurrent THEN 'keep_local'
             ELSE 'keep_local_clock_skew' END AS resolution
   FROM decision d, unique_verdict u),
unique_losers AS (
 DELETE FROM "public"."item" pgmesh_d USING unique_holders h
  WHERE (SELECT v.writes FROM verdict v)
    AND pgmesh_d."id" = (h.img)."id"
 RETURNING 1),
loser_removed AS (
 DELETE FROM "public"."item" pgmesh_r
  WHERE pgmesh_r."id" = $4::integer AND (SELECT v.wins AND v.present AND NOT v.unique_wins FROM verdict v)
 RETURNING 1),
unique_tombstones AS (
 INSERT INTO pgmesh.tombstone AS z (table_name, key, deleted_at, xid, node)
 SELECT 'public.item', pg_catalog.jsonb_build_object('id', (h.img)."id"), h.commit_time, NULL::xid8, h.node
   FROM verdict v, unique_holders h
  WHERE v.writes
 UNION ALL
 SELECT 'public.item', (SELECT k.key FROM key_json k), $1::timestamptz, NULL::xid8, $2::text
   FROM verdict v
  WHERE v.wins AND NOT v.unique_wins
 ON CONFLICT (table_name, key) DO UPDATE SET deleted_at = excluded.deleted_at, xid = NULL, node = excluded.node
  WHERE coalesce(pgmesh.tombstone_time(z.deleted_at, z.xid), '-infinity') < excluded.deleted_at
 RETURNING 1),
updated AS (
 UPDATE "public"."item" pgmesh_t
    SET "email" = $5::text,
        "name" = $6::text,
        "qty" = $7::integer
  WHERE pgmesh_t."id" = $4::integer AND (SELECT v.writes AND v.present FROM verdict v) AND (SELECT count(*) FROM unique_losers) >= 0
 RETURNING 1),
inserted AS (
 INSERT INTO "public"."item" ("id", "email", "name", "qty")
 SELECT $4::integer, $5::text, $6::text, $7::integer
  WHERE (SELECT v.writes AND NOT v.present FROM verdict v) AND (SELECT count(*) FROM unique_losers) >= 0
 RETURNING 1),
logged AS (
 INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, local_row, remote_row, local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn)
 SELECT 'public.item', v.kind, v.resolution, (SELECT k.key FROM key_json k), to_jsonb(s.img), (SELECT to_jsonb(x) FROM (SELECT $4::integer AS "id", $5::text AS "email", $6::text AS "name", $7::integer AS "qty") x),
        v.state_time, $1::timestamptz, v.state_node, $2::text, $3::pg_lsn
   FROM verdict v, local_state s
  WHERE v.kind IS NOT NULL AND (v.unique_wins OR v.present)
 RETURNING 1),
unique_logged AS (
 INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, local_row, remote_row, local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn)
 SELECT 'public.item', 'unique_conflict', CASE WHEN v.unique_wins THEN 'apply_remote' ELSE 'keep_local' END, (SELECT k.key FROM key_json k), to_jsonb(h.img), (SELECT to_jsonb(x) FROM (SELECT $4::integer AS "id", $5::text AS "email", $6::text AS "name", $7::integer AS "qty") x),
        h.commit_time, $1::timestamptz, h.node, $2::text, $3::pg_lsn
   FROM verdict v, unique_holders h
 RETURNING 1)
SELECT CASE WHEN v.unique_hit THEN 'unique_conflict' ELSE v.kind END AS kind,
       CASE WHEN v.unique_hit THEN CASE WHEN v.unique_wins THEN 'apply_remote' ELSE 'keep_local' END ELSE v.resolution END AS resolution
  FROM verdict v
