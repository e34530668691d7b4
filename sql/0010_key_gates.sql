-- 0010_key_gates: a remote insert and a remote delete of a key that is
-- absent here, applied at the same time by two links, are serialized.
--
-- The delete finds no row (the insert has not committed) and leaves only
-- its tombstone; the insert's fast path, which checks that no other node's
-- tombstone of the key exists, cannot see that tombstone either (not
-- committed yet). Both commit: this node keeps a row that the deleting
-- node, which had seen the insert, removed everywhere else, and no
-- statement logged anything. Nothing else serializes them — there is no
-- row to lock; the fallback's advisory lock on (table, key) is taken only
-- by statements that fall back, and the fast path cannot take a lock per
-- key: a large transaction would fill the lock table.
--
-- So the keys of the replicated tables are hashed onto 64 gates (two-key
-- advisory locks 1885826408 / 0..63). A fast insert holds its key's gate in
-- share mode until it commits (at most 64 locks per transaction), taken
-- without waiting; a delete that falls back holds it exclusively, from
-- before its full statement reads anything until it commits. Then, for an
-- insert I and a delete D of the same key applied by different sessions:
--
--   - I holds the gate first: D waits until I has committed (or rolled
--     back), and its full statement, which resolve_change runs on a
--     snapshot taken after the wait, sees I's row and decides on it.
--   - D holds the gate first: I's try fails and I falls back to the full
--     statement, whose per-key advisory lock waits for D (D took it after
--     the gate) and whose fresh snapshot sees D's tombstone.
--   - D had committed when I tried: the try succeeds, and I looks for
--     tombstones on a snapshot taken after the try (insert_clear is
--     VOLATILE, so each of its queries takes a new snapshot), which sees
--     D's. The statement's own snapshot is not enough: it is taken before
--     the try, and D may commit in between.
--
-- In every order the second decides with the first's write in view, as if
-- they had been applied one after the other. A gate shared by two keys only
-- makes a delete wait for an unrelated insert's transaction. A delete that
-- finds its row does not fall back, and a row locks itself; a local insert
-- (an ordinary session) takes no gate: see internal/apply/seen.go.

-- key_gate is the gate of a key: the low 6 bits of the hash that the
-- fallback's per-key lock uses. No SET clause, so that it is inlined.
CREATE OR REPLACE FUNCTION pgmesh.key_gate(table_name text, key jsonb) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (pg_catalog.hashtextextended(table_name || key::text, 0) & 63)::int $$;

-- insert_clear is true when a remote insert of key from remote_node may
-- take the fast path as far as tombstones go: it holds the key's gate in
-- share mode, and no tombstone of the key written by another node exists,
-- as seen after the gate was taken. False when a delete of a key of the
-- same gate holds it: the insert falls back. Called by every fast insert:
-- PL/pgSQL keeps its plan for the session, and there is no SET clause,
-- which would cost a configuration change at every call (the apply
-- session pins search_path; names are schema-qualified).
CREATE OR REPLACE FUNCTION pgmesh.insert_clear(table_name text, key jsonb, remote_node text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885826408, pgmesh.key_gate(insert_clear.table_name, insert_clear.key)) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (SELECT FROM pgmesh.tombstone z
                        WHERE z.table_name = insert_clear.table_name AND z.key = insert_clear.key
                          AND z.node IS DISTINCT FROM insert_clear.remote_node);
END
$$;

-- close_gate holds the gate of key exclusively until the transaction ends,
-- waiting for the transactions whose fast inserts hold it. A delete that
-- falls back calls it before its per-key lock and its full statement.
CREATE OR REPLACE FUNCTION pgmesh.close_gate(table_name text, key jsonb) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_advisory_xact_lock(1885826408, pgmesh.key_gate(table_name, key)) $$;
