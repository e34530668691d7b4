-- 0002_sequences: ids that never collide between nodes (DESIGN.md §7).
-- Written so that running it twice is harmless, because `pgmesh sequences
-- convert` may install it on nodes where `pgmesh init` has not run.

-- The snowflake node id of this database (0..1023), written by
-- `pgmesh sequences convert --strategy snowflake`. singleton makes it a
-- one-row table.
CREATE TABLE IF NOT EXISTS pgmesh.sequence_config (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    node_id   int NOT NULL CHECK (node_id BETWEEN 0 AND 1023)
);

-- The last value `pgmesh check` saw of each sequence, so that the next check
-- can tell the rate at which ids are consumed and how long the headroom
-- lasts. Keyed by name, not oid: it must survive dump and restore.
CREATE TABLE IF NOT EXISTS pgmesh.sequence_sample (
    seq        text PRIMARY KEY,
    value      numeric NOT NULL,
    sampled_at timestamptz NOT NULL
);

-- snowflake_nextval returns the next id of sequence seq on this node:
--   41 bits: milliseconds since 2024-01-01 00:00 UTC (until year 2093)
--   10 bits: pgmesh.sequence_config.node_id
--   12 bits: counter within the millisecond (4096 ids per ms)
-- The sequence itself holds the state (its last value is the last id), since
-- setval is immediately visible to every session and survives rollback,
-- unlike a row in a table. A session-level advisory lock per sequence makes
-- read-compute-setval atomic between sessions without holding anything until
-- the caller's transaction ends (a row lock would serialize all inserting
-- transactions until commit). Ids are therefore unique and strictly
-- increasing per node in the order the calls take the lock.
-- When the 4096 ids of the current millisecond are used up it waits for the
-- next one. When the clock is behind the last id (it went backwards, or the
-- seed set by convert is in the future) it never goes back: it continues
-- from the last id's millisecond and counter, without waiting.
-- The caller needs UPDATE on the sequence (setval), as nextval-based
-- defaults of applications that call setval already do.
CREATE OR REPLACE FUNCTION pgmesh.snowflake_nextval(seq regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    epoch_ms constant bigint := 1704067200000; -- 2024-01-01 00:00:00 UTC
    -- 'pm' in the high half keeps the key away from applications' own
    -- advisory locks on small numbers.
    lock_key bigint := (28781::bigint << 32) | seq::oid::bigint;
    node     int;
    locked   bool := false;
    last     bigint;
    last_ms  bigint;
    now_ms   bigint;
    nextid   bigint;
BEGIN
    SELECT c.node_id INTO node FROM pgmesh.sequence_config c;
    IF node IS NULL THEN
        RAISE EXCEPTION 'pgmesh.snowflake_nextval(%): this node has no snowflake node id', seq
            USING HINT = 'run: pgmesh sequences convert --strategy snowflake';
    END IF;
    BEGIN
        PERFORM pg_advisory_lock(lock_key);
        locked := true;
        LOOP
            now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint - epoch_ms;
            -- NULL until the sequence is first used (or after a RESTART).
            last := coalesce(pg_sequence_last_value(seq), 0);
            last_ms := last >> 22;
            IF now_ms > last_ms THEN
                nextid := (now_ms << 22) | (node::bigint << 12);
            ELSIF (last & 4095) < 4095 THEN
                nextid := (last_ms << 22) | (node::bigint << 12) | ((last & 4095) + 1);
            ELSIF now_ms = last_ms THEN
                -- This millisecond is used up: wait for the next one.
                PERFORM pg_sleep(0.0001);
                CONTINUE;
            ELSE
                -- The clock is behind the last id: keep counting from it.
                nextid := ((last_ms + 1) << 22) | (node::bigint << 12);
            END IF;
            EXIT;
        END LOOP;
        IF nextid >> 22 >= (1::bigint << 41) THEN
            RAISE EXCEPTION 'pgmesh.snowflake_nextval(%): 41-bit millisecond field exhausted', seq;
        END IF;
        PERFORM setval(seq, nextid, true);
        PERFORM pg_advisory_unlock(lock_key);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        -- Session-level advisory locks outlive errors: release it, or every
        -- other session would wait for it until this one disconnects.
        IF locked THEN
            PERFORM pg_advisory_unlock(lock_key);
        END IF;
        RAISE;
    END;
    RETURN nextid;
END
$$;
