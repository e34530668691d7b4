-- 0012_parallel_apply: the ordering of a link's parallel apply sessions
-- (internal/apply, order.go).
--
-- A link applies remote transactions on several connections at once, each
-- under its own replication origin, and commits them in the upstream's
-- commit order. Every remote transaction of an apply session has a number
-- (seq); the session applying it holds the session-level advisory lock
-- (link, seq) from its BEGIN until right after its own COMMIT, also across
-- an in-place retry after a deadlock (a session-level lock survives the
-- rollback). A transaction that must come after another one waits for that
-- lock, a wait the deadlock detector sees, and then checks that the other
-- one did commit: its row of apply_progress (below) reached its end LSN. The check
-- matters when the lock was released without a commit, which only the end of
-- the other session does (a killed agent): then the waiter must not commit
-- past it.
--
-- Waits end after wait_timeout (NULL: never) with a lock timeout, and at
-- once with a deadlock error when the transaction waited for waits for
-- the waiter through other sessions (apply_wait_lock): the waiter is the
-- victim, and the applier runs it again at once.

-- apply_progress: the end LSN of the last remote transaction committed
-- under each of a link's origins, written in that transaction. The origin's
-- own progress is not enough: PostgreSQL 16+ advances a session's origin to
-- the LSN given to pg_replication_origin_xact_setup also when the
-- transaction then aborts (RecordTransactionAbort), and an apply session
-- can abort right after its origin setup when the agent is killed while the
-- flight holding the COMMIT is still being sent. The origin would then
-- claim a transaction that is not there: resumed after, the link would
-- skip it for good, and another session of the link would commit past it.
-- This row commits with the data or not at all. A link origin with no row
-- (created before this table) reads its origin's progress, as before.
CREATE TABLE pgmesh.apply_progress (
    origin  text PRIMARY KEY,
    end_lsn pg_lsn NOT NULL
);

INSERT INTO pgmesh.apply_progress
SELECT o.roname, pg_catalog.pg_replication_origin_progress(o.roname, false)
  FROM pg_catalog.pg_replication_origin o
 WHERE o.roname ~ '^pgmesh_[a-z][a-z0-9_]*$' AND o.roname !~ '_repair$'
   AND pg_catalog.pg_replication_origin_progress(o.roname, false) IS NOT NULL;

-- note_applied records, in the applying transaction, that it commits the
-- remote transaction ending at <end_lsn> under <origin>. Called once per
-- remote transaction: no SET clause (its names are schema-qualified, and
-- apply sessions pin search_path).
CREATE OR REPLACE FUNCTION pgmesh.note_applied(origin text, end_lsn pg_lsn) RETURNS void
LANGUAGE sql VOLATILE
AS $$
INSERT INTO pgmesh.apply_progress (origin, end_lsn) VALUES (note_applied.origin, note_applied.end_lsn)
ON CONFLICT (origin) DO UPDATE SET end_lsn = EXCLUDED.end_lsn
$$;

-- origin_applied: how far the link origin <origin> has applied, committed
-- (with <flush>, also durable): its row of apply_progress, bounded by the
-- origin's progress, which pg_replication_origin_progress(…, true) flushes
-- (the row's commit record is at or before the origin's last advance).
CREATE OR REPLACE FUNCTION pgmesh.origin_applied(origin text, flush boolean) RETURNS pg_lsn
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT CASE WHEN p.end_lsn IS NULL THEN pg_replication_origin_progress(origin_applied.origin, origin_applied.flush)
            ELSE least(pg_replication_origin_progress(origin_applied.origin, origin_applied.flush), p.end_lsn) END
  FROM (SELECT 1) one LEFT JOIN pgmesh.apply_progress p ON p.origin = origin_applied.origin
$$;

-- apply_committed: the transaction that the session with origin <origin>
-- applied up to <end_lsn> has committed, and its changes are visible. Read
-- from its row of apply_progress alone, which becomes visible with them: the
-- origin's own progress moves when the commit record is written, before the
-- transaction is visible (and on PostgreSQL 16+ also on an abort), so a
-- waiter that went on then would judge its changes on a snapshot without
-- the other's, and could commit before the other is visible. Every
-- transaction waited for is applied in the waiter's run, by a session that
-- writes that row.
CREATE OR REPLACE FUNCTION pgmesh.apply_committed(origin text, end_lsn pg_lsn) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT coalesce((SELECT p.end_lsn >= apply_committed.end_lsn
                   FROM pgmesh.apply_progress p WHERE p.origin = apply_committed.origin), false)
$$;

-- Each apply session also holds its gate, a session-level advisory lock on
-- a bigint key of its own, at every moment but the one in which it begins a
-- transaction (apply_begin). A wait for a transaction that has not begun is
-- a wait for its session's gate: the deadlock detector sees it as a wait
-- for that session, whatever the session is busy with (an earlier
-- transaction waiting for a local one, say), and the waiter wakes each time
-- the session begins a transaction.

-- apply_gate takes the session's gate, and first its life lock: the
-- bigint key <gate> - 65536, which the session holds until it ends (or
-- DISCARD ALL), never released on its own. A gate found open belongs to a
-- session that is beginning a transaction this very moment, or that failed
-- in the middle of it and takes the gate again before it runs anything
-- else, or that is gone; only in the last case is its life lock free
-- (apply_await). A session takes its gate again after such a failure with
-- this function: the life lock is then held once more, which is harmless.
CREATE OR REPLACE FUNCTION pgmesh.apply_gate(gate bigint) RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_advisory_lock(gate - 65536); SELECT pg_advisory_lock(gate) $$;

-- apply_begin begins transaction <seq> on the session whose gate is
-- <gate>: the transaction's lock, the lock of <prev> (the transaction the
-- session committed just before, when its release was left to this one)
-- released, then the gate opened and closed again.
CREATE OR REPLACE FUNCTION pgmesh.apply_begin(link int, seq int, gate bigint, prev int) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_lock(link, seq);
    IF prev IS NOT NULL THEN
        PERFORM pgmesh.apply_release(link, prev);
    END IF;
    PERFORM pg_advisory_unlock(gate);
    PERFORM pg_advisory_lock(gate);
END
$$;

-- apply_blockers are the sessions that the sessions <pids> wait for,
-- directly or through others (pg_blocking_pids), <pids> themselves only
-- when one of them closes a cycle.
CREATE OR REPLACE FUNCTION pgmesh.apply_blockers(pids int[]) RETURNS int[]
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    reached int[] := '{}';
    frontier int[] := pids;
    found int[];
BEGIN
    FOR i IN 1..16 LOOP
        SELECT array_agg(DISTINCT b) INTO found
          FROM unnest(frontier) f, unnest(pg_blocking_pids(f)) b
         WHERE b <> ALL (reached);
        EXIT WHEN found IS NULL;
        reached := reached || found;
        frontier := found;
    END LOOP;
    RETURN reached;
END
$$;

-- apply_waits_for_me: one of the sessions <holders> waits for this one,
-- directly or through others: a deadlock, whatever the sessions in it are.
-- Through a local transaction, which a serial apply would not have
-- blocked, this transaction must be the victim. Through apply sessions
-- alone it spans several links (within a link every wait is for an
-- earlier transaction, which never waits for a later one), and nobody
-- else may ever see it: the waits of apply_wait_lock are steps shorter
-- than deadlock_timeout, and the server's detector runs once per wait,
-- after deadlock_timeout, in a session that waits for a row; the cycle
-- may close after that moment (a row wait begun before the others).
CREATE OR REPLACE FUNCTION pgmesh.apply_waits_for_me(holders int[]) RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_backend_pid() = ANY (pgmesh.apply_blockers(holders)) $$;

-- apply_wait_lock waits for the advisory lock (link, seq) in share mode
-- until the transaction ends, or, with <gate>, for that session-level lock
-- (released at once) for one step at most. The wait goes in steps of
-- 100 ms, each a lock wait the other sessions' deadlock detectors see;
-- between two, a cycle through this session (apply_waits_for_me) ends the
-- wait with a deadlock error: this transaction, which the applier runs
-- again at once, is the victim, and not a local one. The server's own
-- detector would run once per wait, after deadlock_timeout,
-- in whichever session of the cycle waited longest, often a local one
-- that follows a lock order of its own and never deadlocks with a serial
-- apply. Past <deadline> the wait ends with a lock timeout.
CREATE OR REPLACE FUNCTION pgmesh.apply_wait_lock(link int, seq int, gate bigint, deadline timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
SET client_min_messages = error
AS $$
DECLARE
    holders int[];
BEGIN
    LOOP
        BEGIN
            IF gate IS NULL THEN
                PERFORM pg_advisory_xact_lock_shared(link, seq);
            ELSE
                PERFORM pg_advisory_lock_shared(gate);
                PERFORM pg_advisory_unlock_shared(gate);
            END IF;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            -- A lock granted in the instant the timeout struck stays
            -- granted (the server keeps a grant it finds on its way out of
            -- the wait), and a session-level one survives the error: a
            -- share of the gate kept so would stop its session from ever
            -- closing its gate again (it waits in apply_begin for this
            -- session, which waits for it). This session takes the gate
            -- in share mode nowhere else, so every hold it has is that one.
            IF gate IS NOT NULL THEN
                WHILE pg_advisory_unlock_shared(gate) LOOP
                END LOOP;
            END IF;
        END;
        SELECT array_agg(l.pid) INTO holders
          FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'
           AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
           AND CASE WHEN gate IS NULL
                    THEN l.classid = link::oid AND l.objid = (seq::bigint & 4294967295)::oid AND l.objsubid = 2
                    ELSE l.classid = ((gate >> 32) & 4294967295)::oid AND l.objid = (gate & 4294967295)::oid AND l.objsubid = 1 END;
        IF holders IS NOT NULL AND pgmesh.apply_waits_for_me(holders) THEN
            RAISE EXCEPTION 'pgmesh: deadlock: the remote transaction this one commits after waits for it through other sessions'
                USING ERRCODE = '40P01',
                      DETAIL = (SELECT string_agg(pg_catalog.format('pid %s (%s) waits for %s (%s %s): %s', a.pid, a.application_name,
                                                                    pg_blocking_pids(a.pid), a.wait_event_type, a.wait_event, left(a.query, 120)), '; ')
                                  FROM pg_stat_activity a
                                 WHERE a.pid = ANY (holders) OR a.pid = pg_backend_pid()
                                    OR a.pid IN (SELECT unnest(pg_blocking_pids(h)) FROM unnest(holders) h));
        END IF;
        IF deadline IS NOT NULL AND clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'pgmesh: waited too long for remote transaction % to commit', seq
                USING ERRCODE = '55P03';
        END IF;
        -- A gate is released for a moment only, and this session is out of
        -- the lock's queue between two steps: the session it waits for may
        -- have begun the transaction meanwhile, and would hold its gate
        -- until its next one. The caller (apply_await) looks again.
        IF gate IS NOT NULL THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;

-- apply_await waits until transaction <seq>, applied under <origin> up to
-- <end_lsn> by the session whose gate is <gate>, has committed: a wait for
-- its lock once it has begun, for its session's gate before.
CREATE OR REPLACE FUNCTION pgmesh.apply_await(link int, seq int, origin text, end_lsn pg_lsn, gate bigint,
                                              wait_timeout text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + wait_timeout::interval;
BEGIN
    LOOP
        EXIT WHEN pgmesh.apply_committed(origin, end_lsn);
        -- Session-level probe, released at once: a lock kept on a
        -- transaction that has not begun would block its session.
        IF NOT pg_try_advisory_lock_shared(link, seq) THEN
            PERFORM pgmesh.apply_wait_lock(link, seq, NULL, deadline);
            IF NOT pgmesh.apply_committed(origin, end_lsn) THEN
                RAISE EXCEPTION 'pgmesh: remote transaction % (origin %, end %) ended without committing: its apply session is gone', seq, origin, end_lsn
                    USING ERRCODE = '55000';
            END IF;
            EXIT;
        END IF;
        PERFORM pg_advisory_unlock_shared(link, seq);
        IF pg_try_advisory_lock_shared(gate) THEN
            -- The gate is open: its session is beginning a transaction
            -- this very moment, or takes its gate again after a failure
            -- (both a matter of moments, however long the server takes
            -- to schedule it), or is gone: then its life lock is free.
            PERFORM pg_advisory_unlock_shared(gate);
            IF pg_try_advisory_lock_shared(gate - 65536) THEN
                PERFORM pg_advisory_unlock_shared(gate - 65536);
                RAISE EXCEPTION 'pgmesh: the apply session of remote transaction % (origin %) is gone', seq, origin
                    USING ERRCODE = '55000';
            END IF;
            IF clock_timestamp() > deadline THEN
                RAISE EXCEPTION 'pgmesh: waited too long for remote transaction % to commit', seq
                    USING ERRCODE = '55P03';
            END IF;
            PERFORM pg_sleep(0.001);
        ELSE
            PERFORM pgmesh.apply_wait_lock(NULL, NULL, gate, deadline);
        END IF;
    END LOOP;
END
$$;

-- apply_release releases the lock of transaction <seq> (every hold of it:
-- a transaction run again after a deadlock takes it again).
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

-- apply_commit ends transaction <seq> once its predecessor (p_*) has
-- committed: the seen claim (0005, skipped when claim_message is NULL), a
-- transaction id (a commit record even without changes), its row of
-- apply_progress (under <self_origin>, the session's origin), and the origin
-- setup for the commit, last because PostgreSQL advances the origin even
-- when the transaction aborts after it. COMMIT follows in the same flight.
CREATE OR REPLACE FUNCTION pgmesh.apply_commit(link int, p_seq int, p_origin text, p_end pg_lsn, p_gate bigint,
                                               wait_timeout text, end_lsn pg_lsn, commit_time timestamptz,
                                               claim_origin text, claim_prefix text, claim_message text,
                                               claim_self text, claim_upstream text, self_origin text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_seq IS NOT NULL THEN
        PERFORM pgmesh.apply_await(link, p_seq, p_origin, p_end, p_gate, wait_timeout);
    END IF;
    IF claim_message IS NOT NULL THEN
        PERFORM pgmesh.claim_seen(claim_origin, claim_prefix, claim_message, claim_self, claim_upstream, commit_time);
    END IF;
    PERFORM pg_current_xact_id();
    PERFORM pgmesh.note_applied(self_origin, end_lsn);
    PERFORM pg_replication_origin_xact_setup(end_lsn, commit_time);
END
$$;
