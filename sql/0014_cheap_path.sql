-- 0014_cheap_path: the fast apply statements (internal/conflict) carry as
-- few plan nodes and as little text as they can: PostgreSQL initialises
-- every node of a cached plan at every execution, taken or not, and
-- handles the text of a prepared statement at every execution too; that,
-- not the work, is most of what a remote change costs beyond a plain
-- statement.

-- resolve_key is the fallback of a fast statement: the steps that each
-- were a sub-select of the statement, in one call that only a change the
-- fast path did not write makes. For a table with a key (key not NULL), a
-- delete first closes the key's gate (close_gate, 0010); then the per-key
-- advisory lock (the hash that a move's lock of the key also takes)
-- serializes the changes of a key that meet no row to lock; then
-- resolve_change (0005) runs the full statement, which the session has
-- prepared as name (the statement does not carry its text), on a snapshot
-- taken after both locks: it is VOLATILE, and each of its queries takes a
-- new snapshot. No SET clause, like resolve_change, whose full statements
-- it runs: the apply session pins search_path, and the names here are
-- schema-qualified.
CREATE OR REPLACE FUNCTION pgmesh.resolve_key(name text, params text[],
                                              table_name text, key jsonb, closes_gate boolean)
RETURNS pgmesh.verdict
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF pg_catalog.current_setting('pgmesh.' || resolve_key.name, true) IS DISTINCT FROM 'prepared'
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements p WHERE p.name = resolve_key.name) THEN
        RAISE EXCEPTION 'pgmesh: the full statement % of a change to % is not prepared in this session', resolve_key.name, resolve_key.table_name
            USING ERRCODE = 'invalid_sql_statement_name',
                  HINT = 'a session that runs the statements of internal/conflict prepares their conflict.Fallbacks first';
    END IF;
    IF resolve_key.key IS NOT NULL THEN
        IF resolve_key.closes_gate THEN
            PERFORM pgmesh.close_gate(resolve_key.table_name, resolve_key.key);
        END IF;
        PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(resolve_key.table_name || resolve_key.key::text, 0));
    END IF;
    RETURN pgmesh.resolve_change(resolve_key.name, NULL, resolve_key.params);
END
$$;
