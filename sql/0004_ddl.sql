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
-- transaction. ddl_run and ddl_apply both run the DDL text through PL/pgSQL
-- EXECUTE, so the origin accepts and refuses what the peers will:
-- transaction control and statements that cannot run in a transaction block
-- (CONCURRENTLY, VACUUM) fail in `pgmesh ddl` before anything is emitted.
-- Captured CONCURRENTLY forms are recorded as not_replicated instead.

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
-- Excluded tables are node-local, so is their DDL.
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
        -- An index belongs to its table (CREATE TABLE … PRIMARY KEY
        -- reports both).
        SELECT coalesce(i.indrelid, c.oid) INTO rel
          FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = objid;
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
-- the excluded) and gives every replicated table the tombstone trigger of
-- conflict.InstallTriggers (same name, function and arguments: the table
-- as "schema.table", then its key columns), or drops it when the table has
-- no key any more. It runs after every DDL: on the origin from the event
-- trigger or ddl_run, on peers from ddl_apply (their event trigger is quiet
-- in apply sessions), so a new table, or one that just got its primary key,
-- is complete on every node.
CREATE FUNCTION pgmesh.ddl_reconcile() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev       text := coalesce(current_setting('pgmesh.in_ddl', true), '');
    tombstones bool := to_regprocedure('pgmesh.record_delete()') IS NOT NULL;
    r          record;
    args       text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'pgmesh')
       OR NOT EXISTS (SELECT 1 FROM pgmesh.replicated_schema) THEN
        -- init has not run (fully) yet: it will set up the publication, and
        -- without the replicated schemas every table would look unwanted.
        RETURN;
    END IF;
    PERFORM set_config('pgmesh.in_ddl', 'on', true);
    FOR r IN
        SELECT c.oid, n.nspname, c.relname,
               EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                        WHERE p.pubname = 'pgmesh' AND pr.prrelid = c.oid) AS published,
               n.nspname IN (SELECT name FROM pgmesh.replicated_schema)
               AND n.nspname <> 'pgmesh'
               AND NOT c.relispartition AND c.relpersistence = 'p'
               AND NOT EXISTS (SELECT 1 FROM pgmesh.replicated_exclude x
                                WHERE x.schema_name = n.nspname AND x.table_name = c.relname) AS wanted,
               (SELECT array_agg(a.attname::text ORDER BY k.ord)
                  FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid
                   AND CASE c.relreplident WHEN 'i' THEN i.indisreplident
                                           WHEN 'n' THEN false
                                           ELSE i.indisprimary END) AS keys,
               (SELECT t.tgargs FROM pg_trigger t
                 WHERE t.tgrelid = c.oid AND t.tgname = 'pgmesh_tombstone' AND NOT t.tgisinternal
                   AND t.tgfoid = to_regprocedure('pgmesh.record_delete()')) AS trigger_args
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p')
         ORDER BY n.nspname, c.relname
    LOOP
        IF r.wanted AND NOT r.published THEN
            EXECUTE format('ALTER PUBLICATION pgmesh ADD TABLE %I.%I', r.nspname, r.relname);
        ELSIF r.published AND NOT r.wanted THEN
            EXECUTE format('ALTER PUBLICATION pgmesh DROP TABLE %I.%I', r.nspname, r.relname);
        END IF;
        CONTINUE WHEN NOT (r.wanted AND tombstones);
        IF r.keys IS NULL THEN
            IF r.trigger_args IS NOT NULL THEN
                EXECUTE format('DROP TRIGGER pgmesh_tombstone ON %I.%I', r.nspname, r.relname);
            END IF;
            CONTINUE;
        END IF;
        args := ARRAY[r.nspname || '.' || r.relname] || r.keys;
        -- tgargs holds each argument followed by a NUL byte.
        IF r.trigger_args IS DISTINCT FROM (SELECT string_agg(convert_to(a, 'UTF8') || '\x00'::bytea, ''::bytea ORDER BY o)
                                              FROM unnest(args) WITH ORDINALITY AS u(a, o)) THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER pgmesh_tombstone AFTER DELETE ON %I.%I FOR EACH ROW EXECUTE FUNCTION pgmesh.record_delete(%s)',
                           r.nspname, r.relname,
                           (SELECT string_agg(quote_literal(a), ', ' ORDER BY o) FROM unnest(args) WITH ORDINALITY AS u(a, o)));
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

-- ddl_statement_count counts the statements of a query string the way the
-- server splits it: semicolons outside string literals ('…', E'…' with
-- backslash escapes, $tag$…$tag$), quoted identifiers, comments (nested
-- /* */) and SQL-standard function bodies (BEGIN ATOMIC … END, with CASE …
-- END inside) end a statement; empty statements do not count.
CREATE FUNCTION pgmesh.ddl_statement_count(q text) RETURNS int
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c       text[] := regexp_split_to_array(q, '');
    n       int := length(q);
    i       int := 1;
    j       int;
    depth   int;
    cnt     int := 0;
    content bool := false;
    atomic  int := 0;
    cases   int := 0;
    word    text;
    prev    text := '';
    tag     text;
BEGIN
    WHILE i <= n LOOP
        IF c[i] = '-' AND i < n AND c[i + 1] = '-' THEN
            WHILE i <= n AND c[i] <> E'\n' LOOP i := i + 1; END LOOP;
        ELSIF c[i] = '/' AND i < n AND c[i + 1] = '*' THEN
            depth := 1;
            i := i + 2;
            WHILE i <= n AND depth > 0 LOOP
                IF c[i] = '/' AND i < n AND c[i + 1] = '*' THEN
                    depth := depth + 1; i := i + 2;
                ELSIF c[i] = '*' AND i < n AND c[i + 1] = '/' THEN
                    depth := depth - 1; i := i + 2;
                ELSE
                    i := i + 1;
                END IF;
            END LOOP;
        ELSIF c[i] = ';' THEN
            IF atomic = 0 THEN
                IF content THEN cnt := cnt + 1; END IF;
                content := false;
            END IF;
            i := i + 1;
        ELSIF c[i] IN (' ', E'\t', E'\n', E'\r', E'\f') THEN
            i := i + 1;
        ELSE
            content := true;
            IF c[i] = '''' THEN
                -- 'it''s' is two literals back to back: same count.
                i := i + 1;
                WHILE i <= n AND c[i] <> '''' LOOP i := i + 1; END LOOP;
                i := i + 1;
            ELSIF c[i] = '"' THEN
                i := i + 1;
                WHILE i <= n AND c[i] <> '"' LOOP i := i + 1; END LOOP;
                i := i + 1;
            ELSIF c[i] = '$' AND i < n AND c[i + 1] !~ '[0-9]' THEN
                j := i + 1;
                WHILE j <= n AND c[j] ~ '[A-Za-z0-9_]' LOOP j := j + 1; END LOOP;
                IF j <= n AND c[j] = '$' THEN
                    tag := array_to_string(c[i:j], '');
                    depth := strpos(substr(q, j + 1), tag);
                    i := CASE WHEN depth = 0 THEN n + 1 ELSE j + depth + length(tag) END;
                ELSE
                    i := i + 1;
                END IF;
            ELSIF c[i] ~ '[A-Za-z_]' THEN
                j := i + 1;
                WHILE j <= n AND c[j] ~ '[A-Za-z0-9_$]' LOOP j := j + 1; END LOOP;
                word := lower(array_to_string(c[i:j - 1], ''));
                i := j;
                IF word = 'e' AND i <= n AND c[i] = '''' THEN
                    i := i + 1;
                    WHILE i <= n AND c[i] <> '''' LOOP
                        i := i + CASE WHEN c[i] = '\' THEN 2 ELSE 1 END;
                    END LOOP;
                    i := i + 1;
                ELSIF word = 'atomic' AND prev = 'begin' THEN
                    atomic := atomic + 1;
                ELSIF word = 'case' AND atomic > 0 THEN
                    cases := cases + 1;
                ELSIF word = 'end' AND atomic > 0 THEN
                    IF cases > 0 THEN cases := cases - 1; ELSE atomic := atomic - 1; END IF;
                END IF;
                prev := word;
            ELSE
                i := i + 1;
            END IF;
        END IF;
    END LOOP;
    IF content THEN
        cnt := cnt + 1;
    END IF;
    RETURN cnt;
END
$$;

-- ddl_capture turns the current top-level statement into a DDL message (or
-- a not_replicated record for CONCURRENTLY forms). One statement fires the
-- event triggers several times (sql_drop then ddl_command_end for ALTER
-- TABLE … DROP COLUMN; once per statement of a multi-statement query
-- string): the statement timestamp and query text identify it, so it is
-- announced once. PostgreSQL gives event triggers the whole query string,
-- not the statement being run, so DDL sent in a query string of several
-- statements is refused: replaying the whole string on the peers would run
-- its other statements (DML, transaction control) a second time. psql sends
-- statements one at a time (but not `psql -c "a; b"`); `pgmesh ddl` takes
-- several statements.
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
    IF pgmesh.ddl_statement_count(q) > 1 THEN
        RAISE EXCEPTION 'pgmesh: cannot replicate % sent in a query string of several statements', p_tag
              USING DETAIL = 'PostgreSQL shows pgmesh the whole query string, not the statement being run.',
                    HINT = 'send the statements one at a time (as psql does with a script), or run them with pgmesh ddl -f FILE';
    END IF;
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
