-- 0014_cheap_path: the fast apply statements (internal/conflict) carry as
-- few plan nodes as they can: PostgreSQL initialises every node of a
-- cached plan at every execution, taken or not, and that start-up, not
-- the work, is most of what a remote change costs beyond a plain
-- statement.

-- resolve_key is the fallback of a fast statement of a table with a key:
-- the steps that each were a sub-select of the statement, in one call that
-- only a change the fast path did not write makes. A delete first closes
-- the key's gate (close_gate, 0010); then the per-key advisory lock (the
-- hash that the move statement's lock of the key also takes) serializes
-- the changes of a key that meet no row to lock; then resolve_change runs
-- the full statement on a snapshot taken after both (it is VOLATILE, and
-- so is this function: each query takes a new snapshot). No SET clause,
-- like resolve_change, whose full statements it runs: the apply session
-- pins search_path, and the names here are schema-qualified.
CREATE OR REPLACE FUNCTION pgmesh.resolve_key(name text, statement text, params text[],
                                              table_name text, key jsonb, closes_gate boolean)
RETURNS pgmesh.verdict
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF closes_gate THEN
        PERFORM pgmesh.close_gate(resolve_key.table_name, resolve_key.key);
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(resolve_key.table_name || resolve_key.key::text, 0));
    RETURN pgmesh.resolve_change(resolve_key.name, resolve_key.statement, resolve_key.params);
END
$$;
