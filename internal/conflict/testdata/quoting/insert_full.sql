WITH local_row AS MATERIALIZED (
 SELECT true AS found, locked.img, locked.tid, locked.toid,
        ct."timestamp" AS commit_time, pgmesh.origin_node(ct.roident) AS node
   FROM (SELECT pgmesh_l AS img, pgmesh_l.xmin, pgmesh_l.ctid AS tid, pgmesh_l.tableoid AS toid
           FROM "public"."it's ""odd""" pgmesh_l
          WHERE pgmesh_l."Id" = $4::integer
          FOR UPDATE OF pgmesh_l) locked,
        LATERAL pg_catalog.pg_xact_commit_timestamp_origin(locked.xmin) ct),
key_json AS MATERIALIZED (SELECT pg_catalog.jsonb_build_object('Id', $4::integer) AS key),
local_state AS MATERIALIZED (
 SELECT coalesce(l.found, false) AS present, coalesce(tb.found, false) AS tomb, l.img, l.tid, l.toid,
        CASE WHEN l.found THEN l.commit_time ELSE tb.deleted_at END AS state_time,
        CASE WHEN l.found THEN l.node ELSE tb.node END AS state_node
   FROM (VALUES (1)) one (x)
   LEFT JOIN local_row l ON true
   LEFT JOIN LATERAL (SELECT true AS found, pgmesh.tombstone_time(z.deleted_at, z.xid) AS deleted_at, z.node
                        FROM pgmesh.tombstone z
                       WHERE l.found IS NULL AND z.table_name = 'public.it''s "odd"' AND z.key IN ((SELECT k.key FROM key_json k), '{}'::jsonb)
                         AND (z.key <> '{}'::jsonb OR NOT pgmesh.orders_after($1::timestamptz, $2::text, pgmesh.tombstone_time(z.deleted_at, z.xid), z.node))
                       ORDER BY pgmesh.tombstone_time(z.deleted_at, z.xid) DESC NULLS LAST
                       LIMIT 1) tb ON true
  WHERE l.found OR NOT EXISTS (SELECT FROM "public"."it's ""odd""" pgmesh_g WHERE pgmesh_g."Id" = $4::integer)),
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
verdict AS MATERIALIZED (
 SELECT d.*,
        false AS unique_hit, true AS unique_wins, d.applies AS writes,
        CASE WHEN d.kind IS NULL THEN NULL
             WHEN d.kind = 'delete_missing' THEN 'skip'
             WHEN d.wins AND NOT d.applies THEN 'skip_incomplete'
             WHEN d.wins THEN 'apply_remote'
             WHEN d.loss_is_concurrent THEN 'keep_local'
             ELSE 'keep_local_clock_skew' END AS resolution
   FROM decision d),
updated AS (
 UPDATE "public"."it's ""odd""" pgmesh_t
    SET "na""me" = $5::text
  WHERE pgmesh_t."Id" = $4::integer AND (SELECT v.writes AND v.present FROM verdict v)
 RETURNING 1),
inserted AS (
 INSERT INTO "public"."it's ""odd""" ("Id", "na""me")
 SELECT $4::integer, $5::text
  WHERE (SELECT v.writes AND NOT v.present FROM verdict v)
 RETURNING 1),
logged AS (
 INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, local_row, remote_row, local_commit_time, remote_commit_time, local_origin, remote_origin, remote_lsn)
 SELECT 'public.it''s "odd"', v.kind, v.resolution, (SELECT k.key FROM key_json k), to_jsonb(s.img), (SELECT to_jsonb(x) FROM (SELECT $4::integer AS "Id", $5::text AS "na""me") x),
        v.state_time, $1::timestamptz, v.state_node, $2::text, $3::pg_lsn
   FROM verdict v, local_state s
  WHERE v.kind IS NOT NULL AND (v.unique_wins)
 RETURNING 1)
SELECT v.kind AS kind,
       v.resolution AS resolution
  FROM verdict v
