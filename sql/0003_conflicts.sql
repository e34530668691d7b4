-- 0003_conflicts: conflict resolution (DESIGN.md §5, issue 3).
-- The apply statements built by internal/conflict read and write these
-- objects inside the one statement that applies each remote change.

-- The nodes of the cluster in config order; rank 1 (first in the config)
-- wins ties of commit time. Written by `pgmesh init` (conflict.SyncNodes).
CREATE TABLE pgmesh.node (
    name text PRIMARY KEY,
    rank int  NOT NULL UNIQUE
);

-- origin_node names the node that wrote a row, from the origin id of its
-- commit-timestamp data: 0 is this node; pgmesh_<node> is <node>, and so is
-- pgmesh_<node>_<k> (a parallel apply worker of that link) when <node> is a
-- known node. An exact node name wins over a suffix reading, so that nodes
-- "a" and "a_1" stay distinct. Any other origin is reported by its name
-- (without the pgmesh_ prefix); NULL when the origin id is unknown (dropped)
-- or NULL (frozen row). PL/pgSQL because it keeps its query plans for the
-- session (an SQL function with sub-selects is planned at every statement
-- that calls it); no SET clause, which would cost a configuration change at
-- every call: names are schema-qualified instead.
CREATE FUNCTION pgmesh.origin_node(roident oid) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    IF roident IS NULL THEN
        RETURN NULL;
    ELSIF roident = 0 THEN
        RETURN (SELECT ln.name FROM pgmesh.local_node ln);
    END IF;
    RETURN (SELECT coalesce(
                (SELECT n.name FROM pgmesh.node n WHERE o.roname = 'pgmesh_' || n.name),
                (SELECT n.name FROM pgmesh.node n
                  WHERE pg_catalog.starts_with(o.roname, 'pgmesh_' || n.name || '_')
                    AND pg_catalog.substr(o.roname, pg_catalog.length(n.name) + 9) ~ '^[0-9]+$'
                  ORDER BY pg_catalog.length(n.name) DESC LIMIT 1),
                CASE WHEN pg_catalog.starts_with(o.roname, 'pgmesh_') THEN pg_catalog.substr(o.roname, 8) ELSE o.roname END)
              FROM pg_catalog.pg_replication_origin o WHERE o.roident = origin_node.roident);
END
$$;

-- Every row image that lost a conflict, on the node that detected it. Not
-- replicated (schema pgmesh is never published); pruned by age.
CREATE TABLE pgmesh.conflict_log (
    id                 bigserial PRIMARY KEY,
    detected_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_name         text NOT NULL,          -- schema.table
    kind               text NOT NULL,          -- insert_exists, update_origin_differs…
    resolution         text NOT NULL,          -- apply_remote, keep_local…
    key                jsonb,
    local_row          jsonb,
    remote_row         jsonb,
    local_commit_time  timestamptz,
    remote_commit_time timestamptz,
    local_origin       text,                   -- node names
    remote_origin      text,
    remote_lsn         pg_lsn
);
CREATE INDEX conflict_log_detected_at ON pgmesh.conflict_log (detected_at);

-- The newest delete of each key. Remote deletes carry their commit time in
-- deleted_at; local deletes (trigger pgmesh.record_delete) carry their
-- transaction id, whose commit time is only known after commit: see
-- tombstone_time. node is the node that deleted.
CREATE TABLE pgmesh.tombstone (
    table_name text NOT NULL,
    key        jsonb NOT NULL,
    deleted_at timestamptz,
    xid        xid8,
    node       text,
    PRIMARY KEY (table_name, key)
);

-- to_jsonb_utc renders a key or row as jsonb independently of the session's
-- TimeZone and IntervalStyle, so that the key a local delete stored (in a
-- user session) equals the key an apply session computes.
CREATE FUNCTION pgmesh.to_jsonb_utc(anyelement) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET timezone = 'UTC' SET intervalstyle = 'postgres'
AS $$ SELECT to_jsonb($1) $$;

-- tombstone_time is the commit time of a tombstone's delete: deleted_at, or
-- the commit timestamp of the local deleting transaction. xid8 → xid drops
-- the epoch, so an xid more than 2^31 transactions old could alias a newer
-- transaction; such a tombstone is reported as unknown (NULL = oldest), as
-- PostgreSQL itself no longer keeps commit timestamps that old.
-- It is VOLATILE like pg_xact_commit_timestamp and has no SET clause so
-- that the planner inlines it.
CREATE FUNCTION pgmesh.tombstone_time(deleted_at timestamptz, x xid8) RETURNS timestamptz
LANGUAGE sql VOLATILE
AS $$
    SELECT CASE
        WHEN deleted_at IS NOT NULL THEN deleted_at
        WHEN x IS NULL THEN NULL
        WHEN x::text::numeric < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::numeric - 2000000000 THEN NULL
        ELSE pg_catalog.pg_xact_commit_timestamp(x::xid)
    END
$$;

-- record_delete stores a tombstone for every local delete of a replicated
-- table. TG_ARGV[0] is the table as "schema.table" (for a partitioned table
-- the root, which is what peers replicate, not the partition the trigger
-- fires on), the other arguments are the key columns. It runs AFTER DELETE FOR EACH ROW in
-- ordinary sessions only: apply sessions run with session_replication_role
-- = replica, where ordinary triggers do not fire (the applier writes remote
-- tombstones itself, with the remote commit time). A tombstone from a remote
-- delete stamped in the future (clock skew) is not overwritten.
CREATE FUNCTION pgmesh.record_delete() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC' SET intervalstyle = 'postgres'
AS $$
DECLARE
    img jsonb := to_jsonb(OLD);
    k   jsonb;
BEGIN
    SELECT jsonb_object_agg(col, img -> col) INTO k FROM unnest(TG_ARGV[1:]) AS col;
    INSERT INTO pgmesh.tombstone AS t (table_name, key, deleted_at, xid, node)
    VALUES (TG_ARGV[0], k, NULL, pg_current_xact_id(),
            (SELECT ln.name FROM pgmesh.local_node ln))
    ON CONFLICT (table_name, key) DO UPDATE
       SET deleted_at = NULL, xid = excluded.xid, node = excluded.node
     WHERE coalesce(pgmesh.tombstone_time(t.deleted_at, t.xid), '-infinity') <= statement_timestamp();
    RETURN NULL;
END
$$;

-- peer_seen: node <peer> had applied every change of <origin> committed up to
-- seen_until (commit times as <origin> stamped them). The applier upserts it
-- from the peer's "pgmesh.seen" messages, which the peer emits into its own
-- WAL after applying; so for any change of <peer> applied after the upsert,
-- <peer> had seen at least that much when it committed the change. A local
-- row written by <origin> at T is concurrent with a change from <peer> iff
-- T > seen_until (no row: never seen). The value only grows.
CREATE TABLE pgmesh.peer_seen (
    peer       text NOT NULL,
    origin     text NOT NULL,
    seen_until timestamptz NOT NULL,
    PRIMARY KEY (peer, origin)
);

-- raise_conflict stops the apply statement under policy `error`.
CREATE FUNCTION pgmesh.raise_conflict(table_name text, kind text, key jsonb,
                                      local_origin text, remote_origin text) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    RAISE EXCEPTION 'pgmesh: conflict % on table % key % (local row from %, remote change from %) and the table''s conflict policy is error',
        kind, table_name, key, coalesce(local_origin, 'unknown'), coalesce(remote_origin, 'unknown')
        USING ERRCODE = 'P0001',
              HINT = 'fix the row on this node (so that the remote change applies cleanly) or change the policy in pgmesh.yaml, then restart the link';
END
$$;

-- change_applies is the fast path's verdict (internal/conflict, fast.go) on
-- the local row version written by transaction xmin, for a change of
-- remote_node committed at remote_time: true when the full apply statement
-- would apply the change without a conflict — the row's commit time is
-- unknown, or it was written by remote_node, or remote_node had seen it
-- (peer_seen) and the change orders after it or the policy does not order
-- causal changes (newer_wins false). False sends the change to the full
-- statement, which decides and logs. The order is the full statement's:
-- commit time, then the node first in the config, then the name. PL/pgSQL
-- keeps its plans for the session.
CREATE FUNCTION pgmesh.change_applies(xmin xid, remote_time timestamptz, remote_node text, newer_wins boolean)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    local_time timestamptz;
    local_roident oid;
    local_node text;
BEGIN
    SELECT c."timestamp", c.roident INTO local_time, local_roident
      FROM pg_catalog.pg_xact_commit_timestamp_origin(change_applies.xmin) c;
    IF local_time IS NULL THEN
        RETURN true;
    END IF;
    local_node := pgmesh.origin_node(local_roident);
    IF local_node = remote_node THEN
        RETURN true;
    END IF;
    IF local_time > coalesce((SELECT p.seen_until FROM pgmesh.peer_seen p
                               WHERE p.peer = remote_node AND p.origin = local_node), '-infinity') THEN
        RETURN false; -- concurrent
    END IF;
    RETURN NOT newer_wins
        OR remote_time > local_time
        OR (remote_time = local_time
            AND (coalesce((SELECT n.rank FROM pgmesh.node n WHERE n.name = remote_node), 2147483647), remote_node)
              < (coalesce((SELECT n.rank FROM pgmesh.node n WHERE n.name = local_node), 2147483647), coalesce(local_node, '')));
END
$$;

-- The result row of every apply statement.
CREATE TYPE pgmesh.verdict AS (kind text, resolution text);

-- resolve_change runs the full apply statement of a change (internal/conflict,
-- build.go) whose fast path did not apply: statement takes its parameters
-- as $1, the array of every parameter of the change as text. It runs for
-- conflicts, missing rows and new unique values only, but then as often as
-- they come (a partition that heals), so the statement is prepared once per
-- session as name and its plan kept like any prepared statement's. The
-- session setting pgmesh.<name> remembers that it was prepared, as looking
-- it up in pg_prepared_statements copies the text of every prepared
-- statement; the setting is rolled back with an aborted transaction, the
-- prepared statement is not, hence the look-up then. DISCARD ALL drops
-- both.
CREATE FUNCTION pgmesh.resolve_change(name text, statement text, params text[]) RETURNS pgmesh.verdict
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v pgmesh.verdict;
BEGIN
    IF pg_catalog.current_setting('pgmesh.' || name, true) IS DISTINCT FROM 'prepared' THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements p WHERE p.name = resolve_change.name) THEN
            EXECUTE pg_catalog.format('PREPARE %I (text[]) AS %s', name, statement);
        END IF;
        PERFORM pg_catalog.set_config('pgmesh.' || name, 'prepared', false);
    END IF;
    EXECUTE pg_catalog.format('EXECUTE %I (%L)', name, params) INTO v.kind, v.resolution;
    RETURN v;
END
$$;

-- prune_conflict_log deletes log rows older than retention; returns the count.
CREATE FUNCTION pgmesh.prune_conflict_log(retention interval) RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    WITH d AS (DELETE FROM pgmesh.conflict_log WHERE detected_at < now() - retention RETURNING 1)
    SELECT count(*) FROM d
$$;

-- prune_tombstones deletes tombstones older than retention that every peer
-- has seen. Why both: a tombstone exists to beat a change that is still on
-- its way: an update concurrent with the delete (committed on a peer before
-- that peer applied the delete) can arrive any time until that peer has
-- applied the delete — a peer that is down or partitioned may send such an
-- update days later. Once every peer's seen_until for the deleting node is
-- past the delete, each peer has applied it, so anything they send later is
-- causally after the delete (their row is gone, so they can only re-insert,
-- which a missing tombstone does not hurt). A peer without a peer_seen row
-- for that origin has not been heard from: its tombstones stay. The
-- retention window covers peers whose messages are still in flight and
-- keeps tombstones readable for diagnosis. Local tombstones whose
-- transaction never got a commit time (unknown) are kept until the window
-- and the peers allow it like any other: an unknown time counts as oldest.
CREATE FUNCTION pgmesh.prune_tombstones(retention interval) RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    WITH d AS (
        DELETE FROM pgmesh.tombstone t
         WHERE coalesce(pgmesh.tombstone_time(t.deleted_at, t.xid), '-infinity') < now() - retention
           AND NOT EXISTS (
                SELECT 1 FROM pgmesh.node n
                 WHERE n.name IS DISTINCT FROM t.node
                   AND n.name IS DISTINCT FROM (SELECT ln.name FROM pgmesh.local_node ln)
                   AND coalesce((SELECT s.seen_until >= coalesce(pgmesh.tombstone_time(t.deleted_at, t.xid), '-infinity')
                                   FROM pgmesh.peer_seen s
                                  WHERE s.peer = n.name AND s.origin = t.node), false) = false)
        RETURNING 1)
    SELECT count(*) FROM d
$$;
