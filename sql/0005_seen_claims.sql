-- 0005_seen_claims: seen claims written inside the apply transaction, and
-- resolve_change retrying on a fresh snapshot.

-- claim_seen announces, in the apply transaction of a remote transaction of
-- <upstream> whose commit time is <until>, that <self> has applied <upstream>
-- up to <until>: the non-transactional message <prefix>/<message> for the
-- peers, and the same claim in this node's own peer_seen. The applier calls
-- it after the transaction's changes (which hold their rows' locks) and
-- before its origin setup and COMMIT, so the message lands in this node's
-- WAL ahead of the commit: a local transaction that commits after the
-- message and touches one of those rows waited for the lock and saw the
-- change, and one that commits before it is not covered by the claim (see
-- internal/apply/seen.go).
--
-- The message must not carry the link's replication origin, or the peers'
-- slots (origin 'none') would filter it with the applied changes: the
-- session origin is released around it and set up again. The origin's
-- per-transaction setup (LSN, commit time) comes after this call.
CREATE FUNCTION pgmesh.claim_seen(origin_name text, prefix text, message text,
                                  self text, upstream text, until timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO pgmesh.peer_seen (peer, origin, seen_until) VALUES (self, upstream, until)
    ON CONFLICT (peer, origin) DO UPDATE SET seen_until = greatest(pgmesh.peer_seen.seen_until, excluded.seen_until);
    PERFORM pg_replication_origin_session_reset();
    PERFORM pg_logical_emit_message(false, prefix, message);
    PERFORM pg_replication_origin_session_setup(origin_name);
END
$$;

-- resolve_change (0003), now run again when the statement returns no row:
-- it found its row deleted by a transaction that committed while it waited
-- for the row lock (see stateCTE in internal/conflict/build.go) and wrote
-- nothing; a new snapshot sees that transaction.
CREATE OR REPLACE FUNCTION pgmesh.resolve_change(name text, statement text, params text[]) RETURNS pgmesh.verdict
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v pgmesh.verdict;
    n bigint;
BEGIN
    IF pg_catalog.current_setting('pgmesh.' || name, true) IS DISTINCT FROM 'prepared' THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements p WHERE p.name = resolve_change.name) THEN
            EXECUTE pg_catalog.format('PREPARE %I (text[]) AS %s', name, statement);
        END IF;
        PERFORM pg_catalog.set_config('pgmesh.' || name, 'prepared', false);
    END IF;
    FOR attempt IN 1..100 LOOP
        EXECUTE pg_catalog.format('EXECUTE %I (%L)', name, params) INTO v.kind, v.resolution;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            RETURN v;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'pgmesh: the row of a remote change kept being deleted concurrently (100 attempts)'
        USING ERRCODE = '40001';
END
$$;
