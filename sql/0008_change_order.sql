-- 0008_change_order: the two rules every conflict decision rests on — the
-- order of changes and what a peer had seen — as one function each, which
-- the full apply statements (internal/conflict/templates) and the fast
-- path's pgmesh.change_applies both call.
--
-- PL/pgSQL, like origin_node, because it keeps its query plans for the
-- session, where an SQL function with sub-selects is not inlined and is
-- planned again at every statement that calls it. No SET clause, which
-- would cost a configuration change at every call: names are
-- schema-qualified instead.

-- orders_after is "the change committed at change_time by change_node
-- orders after the version committed at version_time by version_node":
-- the later commit time wins; at equal times the node first in the config
-- (lower rank in pgmesh.node; unknown nodes last, in name order). A version
-- of unknown time (frozen row, commit timestamp no longer kept, a row
-- written earlier in the same remote transaction) is the oldest. The plain
-- comparisons come first so that only ties read pgmesh.node.
CREATE OR REPLACE FUNCTION pgmesh.orders_after(change_time timestamptz, change_node text,
                                               version_time timestamptz, version_node text)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF version_time IS NULL THEN
        RETURN true;
    ELSIF change_time IS NULL THEN
        RETURN NULL;
    ELSIF change_time <> version_time THEN
        RETURN change_time > version_time;
    END IF;
    RETURN (coalesce((SELECT n.rank FROM pgmesh.node n WHERE n.name = change_node), 2147483647), change_node)
         < (coalesce((SELECT n.rank FROM pgmesh.node n WHERE n.name = version_node), 2147483647), coalesce(version_node, ''));
END
$$;

-- had_seen is "peer had applied every change of origin committed up to
-- commit_time" by what pgmesh.peer_seen says (no row: nothing seen). A
-- version written by origin at commit_time is concurrent with a change of
-- peer iff NOT had_seen(peer, origin, commit_time).
CREATE OR REPLACE FUNCTION pgmesh.had_seen(peer text, origin text, commit_time timestamptz)
RETURNS boolean
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN commit_time <= coalesce((SELECT p.seen_until FROM pgmesh.peer_seen p
                                     WHERE p.peer = had_seen.peer AND p.origin = had_seen.origin), '-infinity');
END
$$;

-- change_applies (0003) in terms of the two rules above; what it decides is
-- unchanged: true when the full apply statement would apply the change
-- without a conflict — the row's commit time is unknown, or it was written
-- by remote_node, or remote_node had seen it and the change orders after it
-- or the policy does not order causal changes (newer_wins false). False
-- sends the change to the full statement, which decides and logs.
CREATE OR REPLACE FUNCTION pgmesh.change_applies(xmin xid, remote_time timestamptz, remote_node text, newer_wins boolean)
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
    IF NOT pgmesh.had_seen(remote_node, local_node, local_time) THEN
        RETURN false; -- concurrent
    END IF;
    RETURN NOT newer_wins OR pgmesh.orders_after(remote_time, remote_node, local_time, local_node);
END
$$;
