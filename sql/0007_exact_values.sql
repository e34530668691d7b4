-- 0007_exact_values: rows written by `pgmesh repair` attributed to the node
-- they were copied from.

-- to_jsonb_utc and record_delete render keys under every setting that
-- changes the text of a value: see 0006, where they are redefined.

-- origin_node (0003), which also reads pgmesh_<node>_repair as <node>: the
-- origin `pgmesh repair` writes under when <node>'s apply origin is busy or
-- missing. A repaired row is <node>'s version, copied with its commit time;
-- read as a node of its own, every later change of it from a peer would be
-- taken as concurrent (spurious conflicts, and a divergence under
-- keep_local or first_update_wins). An exact node name still wins, and
-- pgmesh_<node>_<k> (k numeric) is still a parallel apply worker of <node>.
CREATE OR REPLACE FUNCTION pgmesh.origin_node(roident oid) RETURNS text
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
                    AND pg_catalog.substr(o.roname, pg_catalog.length(n.name) + 9) ~ '^([0-9]+|repair)$'
                  ORDER BY pg_catalog.length(n.name) DESC LIMIT 1),
                CASE WHEN pg_catalog.starts_with(o.roname, 'pgmesh_') THEN pg_catalog.substr(o.roname, 8) ELSE o.roname END)
              FROM pg_catalog.pg_replication_origin o WHERE o.roident = origin_node.roident);
END
$$;
