-- 0004_ddl: DDL propagation through the stream (DESIGN.md §6).
--
-- A DDL travels as a transactional logical message (prefix 'pgmesh.ddl')
-- emitted in the transaction that runs it, so each peer executes it at the
-- same point of the origin's stream: DML before it applies to the old
-- schema, DML after it to the new one. Messages come from two places:
--   * `pgmesh ddl` calls pgmesh.ddl_run(sql);
--   * with ddl.capture: auto, the event triggers pgmesh_ddl_capture_end /
--     pgmesh_ddl_capture_drop (created by ddl.Install, not here, because
--     event triggers need a superuser and the capture mode may change)
--     capture DDL typed in psql.
-- Peers execute the message with pgmesh.ddl_apply inside the apply
-- transaction. All three run the DDL text through PL/pgSQL EXECUTE, so every
-- node accepts and refuses the same things: transaction control and
-- statements that cannot run in a transaction block (CONCURRENTLY, VACUUM)
-- fail on the origin before anything is emitted.

-- What this node knows of each DDL: emitted here (status applied, origin_node
-- = this node), applied from a peer's stream, skipped by the operator
-- (`pgmesh ddl skip`), failed (recorded by the agent after the apply
-- transaction rolled back), or not_replicated (captured but impossible to
-- replicate, e.g. CREATE INDEX CONCURRENTLY: run it on every node by hand).
CREATE TABLE pgmesh.ddl_log (
    id          text PRIMARY KEY,
    origin_node text NOT NULL,
    sql         text NOT NULL,
    search_path text NOT NULL DEFAULT '',
    role        text NOT NULL DEFAULT '',
    emitted_at  timestamptz,
    applied_at  timestamptz,
    status      text NOT NULL CHECK (status IN ('applied', 'failed', 'skipped', 'not_replicated')),
    error       text
);
CREATE INDEX ddl_log_emitted_at ON pgmesh.ddl_log (emitted_at);

-- The replicated schemas and excluded tables of the config, written by
-- ddl.Install (init), so that SQL on the node (the event trigger, the
-- publication reconciliation) knows what is replicated.
CREATE TABLE pgmesh.replicated_schema (
    name text PRIMARY KEY
);
CREATE TABLE pgmesh.replicated_exclude (
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    PRIMARY KEY (schema_name, table_name)
);

-- ddl_quiet: no capture in an apply session (the DDL came from a peer and
-- its executor handles it) nor inside pgmesh's own DDL (pgmesh ddl,
-- publication reconciliation), which sets pgmesh.in_ddl.
CREATE FUNCTION pgmesh.ddl_quiet() RETURNS bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_replication_origin_session_is_setup()
        OR coalesce(current_setting('pgmesh.in_ddl', true), '') = 'on'
$$;

-- ddl_in_scope tells whether a DDL command on object (classid, objid) in
-- schema nsp concerns replicated objects. Triggers, rules and policies have
-- no schema of their own: their table's counts. Triggers that call pgmesh
-- functions (tombstones) are pgmesh's per-node machinery, never replicated.
CREATE FUNCTION pgmesh.ddl_in_scope(classid oid, objid oid, nsp text, in_extension bool) RETURNS bool
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel     oid;
    own     bool := false;
BEGIN
    IF in_extension THEN
        RETURN false;
    END IF;
    IF classid = 'pg_trigger'::regclass THEN
        SELECT t.tgrelid, p.pronamespace = 'pgmesh'::regnamespace INTO rel, own
          FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.oid = objid;
    ELSIF classid = 'pg_rewrite'::regclass THEN
        SELECT r.ev_class INTO rel FROM pg_rewrite r WHERE r.oid = objid;
    ELSIF classid = 'pg_policy'::regclass THEN
        SELECT p.polrelid INTO rel FROM pg_policy p WHERE p.oid = objid;
    ELSIF classid = 'pg_class'::regclass THEN
        rel := objid;
    END IF;
    IF own THEN
        RETURN false;
    END IF;
    IF rel IS NOT NULL THEN
        SELECT n.nspname INTO nsp FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pgmesh.replicated_exclude x
                     ON x.schema_name = nsp AND x.table_name = c.relname WHERE c.oid = rel) THEN
            RETURN false;
        END IF;
    END IF;
    RETURN nsp IS NOT NULL AND nsp <> 'pgmesh'
       AND EXISTS (SELECT 1 FROM pgmesh.replicated_schema s WHERE s.name = nsp);
END
$$;

-- ddl_reconcile makes the publication match the replicated tables (the same
-- rule as pg.ReplicatedTables: ordinary and partitioned tables of the
-- replicated schemas, no partitions, no unlogged or temporary ones, minus
-- the excluded) and gives each new table the tombstone trigger when the
-- conflict migration provides pgmesh.install_tombstone_trigger(regclass).
-- It runs after every DDL: on the origin from the event trigger or ddl_run,
-- on peers from ddl_apply (their event trigger is quiet).
CREATE FUNCTION pgmesh.ddl_reconcile() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev text := coalesce(current_setting('pgmesh.in_ddl', true), '');
    r    record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'pgmesh') THEN
        RETURN; -- init has not created it yet; it will list the tables itself
    END IF;
    PERFORM set_config('pgmesh.in_ddl', 'on', true);
    FOR r IN
        SELECT c.oid, n.nspname, c.relname,
               EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                        WHERE p.pubname = 'pgmesh' AND pr.prrelid = c.oid) AS published,
               n.nspname IN (SELECT name FROM pgmesh.replicated_schema)
               AND n.nspname <> 'pgmesh'
               AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
               AND NOT EXISTS (SELECT 1 FROM pgmesh.replicated_exclude x
                                WHERE x.schema_name = n.nspname AND x.table_name = c.relname) AS wanted
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
         ORDER BY n.nspname, c.relname
    LOOP
        IF r.wanted AND NOT r.published THEN
            EXECUTE format('ALTER PUBLICATION pgmesh ADD TABLE %I.%I', r.nspname, r.relname);
            IF to_regprocedure('pgmesh.install_tombstone_trigger(regclass)') IS NOT NULL THEN
                EXECUTE 'SELECT pgmesh.install_tombstone_trigger($1)' USING r.oid::regclass;
            END IF;
        ELSIF r.published AND NOT r.wanted THEN
            EXECUTE format('ALTER PUBLICATION pgmesh DROP TABLE %I.%I', r.nspname, r.relname);
        END IF;
    END LOOP;
    PERFORM set_config('pgmesh.in_ddl', prev, true);
END
$$;

-- ddl_announce records a DDL of this node in ddl_log and, unless it is
-- not_replicated, emits it to the peers. The role and search_path are those
-- the DDL runs with here, so that peers resolve names and own new objects
-- the same way. Returns the DDL id.
CREATE FUNCTION pgmesh.ddl_announce(p_sql text, p_search_path text, p_role text, p_status text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    id     text := gen_random_uuid()::text;
    origin text;
BEGIN
    SELECT name INTO origin FROM pgmesh.local_node;
    IF origin IS NULL THEN
        RAISE EXCEPTION 'pgmesh: this database is not a pgmesh node (pgmesh.local_node is empty)'
              USING HINT = 'run pgmesh init';
    END IF;
    IF p_status = 'applied' THEN
        PERFORM pg_logical_emit_message(true, 'pgmesh.ddl', jsonb_build_object(
            'v', 1, 'id', id, 'origin', origin, 'sql', p_sql,
            'search_path', p_search_path, 'role', p_role, 'emitted_at', now())::text);
    END IF;
    INSERT INTO pgmesh.ddl_log (id, origin_node, sql, search_path, role, emitted_at, applied_at, status)
    VALUES (id, origin, p_sql, p_search_path, p_role, now(), CASE WHEN p_status = 'applied' THEN now() END, p_status);
    RETURN id;
END
$$;

-- ddl_run is `pgmesh ddl`: emit, then run, the DDL in the caller's
-- transaction. The message goes first so that peers execute the DDL before
-- any row the same transaction writes with the new schema. pgmesh.in_ddl
-- keeps the event trigger from capturing the same DDL a second time.
-- No SET clause: the DDL must see the caller's search_path.
CREATE FUNCTION pgmesh.ddl_run(p_sql text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    id text;
BEGIN
    PERFORM pg_catalog.set_config('pgmesh.in_ddl', 'on', true);
    id := pgmesh.ddl_announce(p_sql, pg_catalog.current_setting('search_path'), current_user::text, 'applied');
    EXECUTE p_sql;
    PERFORM pgmesh.ddl_reconcile();
    RETURN id;
END
$$;

-- ddl_apply executes a peer's DDL in the apply transaction (it is called by
-- the Go executor with the message's fields) under the origin's role and
-- search_path, reconciles the publication and records it. A DDL already
-- applied here or skipped by the operator is not executed again; it
-- returns the resulting status.
CREATE FUNCTION pgmesh.ddl_apply(p_id text, p_origin text, p_sql text, p_search_path text, p_role text, p_emitted_at timestamptz) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    prev_path text := pg_catalog.current_setting('search_path');
    prev_role text := pg_catalog.current_setting('role');
    st        text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    SELECT status INTO st FROM pgmesh.ddl_log WHERE id = p_id FOR UPDATE;
    IF st IN ('applied', 'skipped') THEN
        PERFORM set_config('search_path', prev_path, true);
        RETURN st;
    END IF;
    IF p_role <> '' AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
        RAISE EXCEPTION 'role "%" of the DDL does not exist on this node', p_role
              USING HINT = 'create the role here and restart the link, or skip the DDL with pgmesh ddl skip';
    END IF;
    PERFORM set_config('search_path', p_search_path, true);
    IF p_role <> '' THEN
        PERFORM pg_catalog.set_config('role', p_role, true);
    END IF;
    EXECUTE p_sql;
    PERFORM pg_catalog.set_config('role', prev_role, true);
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pgmesh.ddl_reconcile();
    INSERT INTO pgmesh.ddl_log AS l (id, origin_node, sql, search_path, role, emitted_at, applied_at, status)
    VALUES (p_id, p_origin, p_sql, p_search_path, p_role, p_emitted_at, now(), 'applied')
    ON CONFLICT (id) DO UPDATE SET status = 'applied', applied_at = now(), error = NULL;
    PERFORM set_config('search_path', prev_path, true);
    RETURN 'applied';
END
$$;

-- ddl_capture turns the current top-level statement into a DDL message (or
-- a not_replicated record for CONCURRENTLY forms). One statement fires the
-- event triggers several times (sql_drop then ddl_command_end for ALTER
-- TABLE … DROP COLUMN; once per statement of a multi-statement query
-- string): the statement timestamp and query text identify it, so it is
-- announced once. Limitation: PostgreSQL gives event triggers the whole
-- query string, so a multi-statement string is replicated as a whole, at its
-- first DDL (psql sends statements one at a time; `psql -c "a; b"` does not).
CREATE FUNCTION pgmesh.ddl_capture(p_tag text, p_search_path text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q    text := current_query();
    key  text := statement_timestamp()::text || ' ' || md5(current_query());
    usr  text := CASE current_setting('role') WHEN 'none' THEN session_user::text ELSE current_setting('role') END;
    id   text;
BEGIN
    IF coalesce(current_setting('pgmesh.ddl_captured', true), '') = key THEN
        RETURN;
    END IF;
    PERFORM set_config('pgmesh.ddl_captured', key, true);
    IF q ~* '\mconcurrently\M' THEN
        id := pgmesh.ddl_announce(q, p_search_path, usr, 'not_replicated');
        RAISE WARNING 'pgmesh: % CONCURRENTLY is not replicated: it cannot run inside the apply transaction of the other nodes', p_tag
              USING DETAIL = format('recorded as %s (status not_replicated) in pgmesh.ddl_log; pgmesh check lists it', id),
                    HINT = 'run the same statement on every other node of the cluster yourself';
        RETURN;
    END IF;
    PERFORM pgmesh.ddl_announce(q, p_search_path, usr, 'applied');
    PERFORM pgmesh.ddl_reconcile();
END
$$;

-- The event trigger functions run as their owner (a superuser, who created
-- the event triggers): capture must work for any role that may run DDL,
-- while emitting messages, writing ddl_log and altering the publication are
-- reserved. They have no SET clause so as to read the user's search_path,
-- hence every name in them is schema-qualified.
CREATE FUNCTION pgmesh.ddl_capture_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    user_path text := pg_catalog.current_setting('search_path');
    in_scope  bool;
BEGIN
    IF pgmesh.ddl_quiet() THEN
        RETURN;
    END IF;
    SELECT pg_catalog.bool_or(pgmesh.ddl_in_scope(d.classid, d.objid, d.schema_name, d.in_extension))
      INTO in_scope FROM pg_catalog.pg_event_trigger_ddl_commands() d;
    IF in_scope THEN
        PERFORM pgmesh.ddl_capture(tg_tag, user_path);
    END IF;
END
$$;

-- sql_drop sees the dropped objects (already gone from the catalog, so
-- their schema is all there is to go by). original excludes what a drop
-- removes implicitly (a table's indexes, its tombstone trigger).
CREATE FUNCTION pgmesh.ddl_capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    user_path text := pg_catalog.current_setting('search_path');
    in_scope  bool;
BEGIN
    IF pgmesh.ddl_quiet() THEN
        RETURN;
    END IF;
    SELECT pg_catalog.bool_or(pgmesh.ddl_in_scope(0, 0, d.schema_name, false))
      INTO in_scope FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.original AND NOT d.is_temporary;
    IF in_scope THEN
        PERFORM pgmesh.ddl_capture(tg_tag, user_path);
    END IF;
END
$$;

-- Helpers that emit or execute DDL are not for ordinary roles: whoever may
-- call them could make every peer run SQL.
REVOKE EXECUTE ON FUNCTION pgmesh.ddl_announce(text, text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgmesh.ddl_capture(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgmesh.ddl_run(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgmesh.ddl_apply(text, text, text, text, text, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pgmesh.ddl_reconcile() FROM PUBLIC;
