-- 0007_exact_values: keys rendered the same way in every session, and rows
-- written by `pgmesh repair` attributed to the node they were copied from.

-- to_jsonb_utc (0003) renders a key or row as jsonb independently of every
-- session setting that changes the text of a value inside it: TimeZone and
-- IntervalStyle, and also extra_float_digits (float keys), bytea_output
-- (bytea keys) and lc_monetary (money keys), so that the key a local delete
-- stored equals the key an apply session computes. The apply sessions run
-- with the same values (internal/pg ValueSettings).
CREATE OR REPLACE FUNCTION pgmesh.to_jsonb_utc(anyelement) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET timezone = 'UTC' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C'
AS $$ SELECT to_jsonb($1) $$;

-- record_delete (0003) with the same fixed settings as to_jsonb_utc: it runs
-- in the user's session, whose settings may be anything.
CREATE OR REPLACE FUNCTION pgmesh.record_delete() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC' SET intervalstyle = 'postgres' SET extra_float_digits = 3
SET bytea_output = 'hex' SET lc_monetary = 'C'
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
