-- 0010_parallel_apply: the ordering of a link's parallel apply sessions
-- (internal/apply, order.go).
--
-- A link applies remote transactions on several connections at once, each
-- under its own replication origin, and commits them in the upstream's
-- commit order. Every remote transaction of an apply session has a number
-- (seq); the session applying it holds the session-level advisory lock
-- (link, seq) from before its first statement until after its COMMIT, also
-- across an in-place retry after a deadlock (a session-level lock survives
-- the rollback). A transaction that must come after another one waits for
-- that lock, a wait the deadlock detector sees, and then checks that the
-- other one did commit: the progress of its origin reached its end LSN. The
-- check matters when the lock was released without a commit, which only the
-- end of the other session does (a killed agent): then the waiter must not
-- commit past it.
--
-- Waits take wait_timeout as their lock_timeout (NULL: none): a wait on a
-- transaction that is itself waiting, through a local transaction, for a
-- row the waiter holds is a cycle the deadlock detector may leave to the
-- same victim again and again; the waiter's timeout breaks it and the
-- applier retries the waiter at once.

-- apply_committed: the transaction that the session with origin <origin>
-- applied up to <end_lsn> has committed.
CREATE OR REPLACE FUNCTION pgmesh.apply_committed(origin text, end_lsn pg_lsn) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(pg_replication_origin_progress(origin, false) >= end_lsn, false) $$;

-- apply_await waits until transaction <seq>, applied under <origin> up to
-- <end_lsn>, has committed. The caller makes sure it has begun (holds its
-- lock), so a free lock means it has ended.
CREATE OR REPLACE FUNCTION pgmesh.apply_await(link int, seq int, origin text, end_lsn pg_lsn, wait_timeout text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved text;
BEGIN
    IF pgmesh.apply_committed(origin, end_lsn) THEN
        RETURN;
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(link, seq) THEN
        IF wait_timeout IS NOT NULL THEN
            saved := current_setting('lock_timeout');
            PERFORM set_config('lock_timeout', wait_timeout, true);
        END IF;
        PERFORM pg_advisory_xact_lock_shared(link, seq);
        IF wait_timeout IS NOT NULL THEN
            PERFORM set_config('lock_timeout', saved, true);
        END IF;
    END IF;
    IF NOT pgmesh.apply_committed(origin, end_lsn) THEN
        RAISE EXCEPTION 'pgmesh: remote transaction % (origin %, end %) ended without committing: its apply session is gone', seq, origin, end_lsn
            USING ERRCODE = '55000';
    END IF;
END
$$;

-- apply_release releases the lock of transaction <seq> (every hold of it:
-- a transaction run again after a deadlock may have taken it twice).
CREATE OR REPLACE FUNCTION pgmesh.apply_release(link int, seq int) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET client_min_messages = error
AS $$
BEGIN
    WHILE pg_advisory_unlock(link, seq) LOOP
    END LOOP;
END
$$;

-- apply_start begins transaction <seq>: it waits until the transaction
-- before it (p_*) has begun or committed — if not yet begun, first for the
-- one its session applies before it (q_*), a wait the deadlock detector
-- sees, else by polling — then takes the lock of <seq>, and releases that
-- of <prev>, the transaction its session committed last, if not yet done:
-- a session that holds its next transaction when it commits one hands the
-- lock over without a moment in which neither is held. It holds no other
-- lock meanwhile, so that waits later in the transaction, on transactions
-- that have begun, are lock waits.
CREATE OR REPLACE FUNCTION pgmesh.apply_start(link int, seq int,
                                              p_seq int, p_origin text, p_end pg_lsn,
                                              q_seq int, q_origin text, q_end pg_lsn,
                                              prev int, wait_timeout text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    saved text := current_setting('lock_timeout');
    deadline timestamptz;
BEGIN
    IF wait_timeout IS NOT NULL THEN
        deadline := clock_timestamp() + wait_timeout::interval;
        PERFORM set_config('lock_timeout', wait_timeout, true);
    END IF;
    WHILE p_seq IS NOT NULL AND NOT pgmesh.apply_committed(p_origin, p_end) LOOP
        -- Session-level probes, released at once: a transaction-level lock
        -- kept on one that has not begun would block its session.
        EXIT WHEN NOT pg_try_advisory_lock_shared(link, p_seq);
        PERFORM pg_advisory_unlock_shared(link, p_seq);
        IF q_seq IS NOT NULL AND NOT pgmesh.apply_committed(q_origin, q_end) THEN
            PERFORM pg_advisory_lock_shared(link, q_seq);
            PERFORM pg_advisory_unlock_shared(link, q_seq);
            q_seq := NULL;
            CONTINUE;
        END IF;
        IF deadline IS NOT NULL AND clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'pgmesh: remote transaction % did not begin within %', p_seq, wait_timeout
                USING ERRCODE = '55P03';
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
    IF wait_timeout IS NOT NULL THEN
        PERFORM set_config('lock_timeout', saved, true);
    END IF;
    PERFORM pg_advisory_lock(link, seq);
    IF prev IS NOT NULL THEN
        PERFORM pgmesh.apply_release(link, prev);
    END IF;
END
$$;

-- apply_commit ends transaction <seq> once its predecessor (p_*) has
-- committed: the seen claim (0005, skipped when claim_message is NULL), a
-- transaction id (a commit record even without changes), and the origin
-- setup for the commit, last because PostgreSQL advances the origin even
-- when the transaction aborts after it. COMMIT follows in the same flight.
CREATE OR REPLACE FUNCTION pgmesh.apply_commit(link int, p_seq int, p_origin text, p_end pg_lsn, wait_timeout text,
                                               end_lsn pg_lsn, commit_time timestamptz,
                                               claim_origin text, claim_prefix text, claim_message text,
                                               claim_self text, claim_upstream text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_seq IS NOT NULL THEN
        PERFORM pgmesh.apply_await(link, p_seq, p_origin, p_end, wait_timeout);
    END IF;
    IF claim_message IS NOT NULL THEN
        PERFORM pgmesh.claim_seen(claim_origin, claim_prefix, claim_message, claim_self, claim_upstream, commit_time);
    END IF;
    PERFORM pg_current_xact_id();
    PERFORM pg_replication_origin_xact_setup(end_lsn, commit_time);
END
$$;
