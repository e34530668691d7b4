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

-- insert_clear (0010) with the truncation check of the fast insert, which
-- was a sub-select of every insert and is now decided once per table and
-- remote transaction: false also when the table's truncation (tombstone key
-- '{}', 0011) orders after the change, committed at remote_time (as the
-- statement received it, text) by remote_node. Once the truncation is found
-- not to, the decision is kept in a setting local to the transaction, for
-- the table, remote_time and remote_node, and the next inserts of the
-- transaction into the table skip the probe. That is exact: every fast
-- insert holds the table's ROW EXCLUSIVE lock, taken before it runs, until
-- its transaction ends, and every writer of a truncation holds a lock that
-- conflicts with it until it commits (a local TRUNCATE, ACCESS EXCLUSIVE,
-- whose trigger records it; a remote one, SHARE: conflict.TruncateLockSQL).
-- So the first probe, made on a snapshot of its own taken after the lock,
-- sees every truncation that will ever be committed before this
-- transaction ends. A truncation pruned meanwhile only makes the decision
-- more true; a rolled-back subtransaction takes the setting with it. The
-- setting's name is a hash of the table name and its value names the
-- table: two tables sharing a name only probe more often.
CREATE OR REPLACE FUNCTION pgmesh.insert_clear(table_name text, key jsonb, remote_node text, remote_time text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    setting text;
    decided text;
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885826408, pgmesh.key_gate(insert_clear.table_name, insert_clear.key)) THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT FROM pgmesh.tombstone z
                WHERE z.table_name = insert_clear.table_name AND z.key = insert_clear.key
                  AND z.node IS DISTINCT FROM insert_clear.remote_node) THEN
        RETURN false;
    END IF;
    setting := 'pgmesh.truncation_' || (pg_catalog.hashtext(insert_clear.table_name) & 1023);
    decided := ARRAY[insert_clear.table_name, insert_clear.remote_time, insert_clear.remote_node]::text;
    IF pg_catalog.current_setting(setting, true) IS NOT DISTINCT FROM decided THEN
        RETURN true;
    END IF;
    IF EXISTS (SELECT FROM pgmesh.tombstone z
                WHERE z.table_name = insert_clear.table_name AND z.key = '{}'::jsonb
                  AND NOT pgmesh.orders_after(insert_clear.remote_time::timestamptz, insert_clear.remote_node,
                                              pgmesh.tombstone_time(z.deleted_at, z.xid), z.node)) THEN
        RETURN false;
    END IF;
    PERFORM pg_catalog.set_config(setting, decided, true);
    RETURN true;
END
$$;
