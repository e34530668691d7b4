-- 0006_security: pgmesh under a role that is not a superuser, application
-- roles without any grant on schema pgmesh, and DDL that replays on the
-- peers with its issuer's privileges and nothing more (README, Security).
--
-- The functions that run inside other roles' sessions are SECURITY DEFINER
-- (they run as pgmesh's role, the owner of this schema) with one narrow job
-- each, and pin search_path so that nothing a user creates can shadow what
-- they call:
--   record_delete       the tombstone of a row the session deleted
--   snowflake_nextval   the next id of a sequence converted to snowflake
--   ddl_capture_end/drop  capture of DDL (called by the event triggers)
-- Every other function of the schema is for pgmesh's own sessions only: the
-- migration runner revokes EXECUTE on all of them from PUBLIC after every
-- migration (internal/setup, publicFunctions).

-- The statement key of a captured DDL (transaction, statement start, query
-- text), so that one statement firing the event triggers several times is
-- announced once. It lives in ddl_log, which no ordinary role can write:
-- a session setting would let any session mark a DDL as captured already.
ALTER TABLE pgmesh.ddl_log ADD COLUMN statement_key text;
CREATE INDEX ddl_log_statement_key ON pgmesh.ddl_log (statement_key) WHERE statement_key IS NOT NULL;

-- record_delete (0003), now SECURITY DEFINER: application roles have no
-- grant on pgmesh.tombstone. Only pgmesh creates this trigger (EXECUTE,
-- needed to create a trigger, is not granted to PUBLIC; a trigger fires
-- without it), and it refuses to run for another table than the one its
-- first argument names, so no trigger can write a tombstone for a row of a
-- table other than the one a row was deleted from.
--
-- The key is rendered as apply sessions render it, whatever the deleting
-- session's settings: every setting that changes the text of a value is
-- pinned, with the values apply sessions run with (internal/pg
-- ValueSettings): a float key under extra_float_digits = 0, a bytea key
-- under bytea_output = escape, a money key under another lc_monetary…
-- would make a tombstone nobody finds.
CREATE OR REPLACE FUNCTION pgmesh.record_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC' SET intervalstyle = 'postgres' SET datestyle = 'ISO, YMD'
SET extra_float_digits = 3 SET bytea_output = 'hex' SET lc_monetary = 'C'
AS $$
DECLARE
    img jsonb;
    k   jsonb;
BEGIN
    IF TG_ARGV[0] IS DISTINCT FROM TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
       AND TG_ARGV[0] IS DISTINCT FROM (SELECT n.nspname || '.' || c.relname
                                          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                         WHERE c.oid = pg_partition_root(TG_RELID)) THEN
        RAISE EXCEPTION 'pgmesh.record_delete: trigger % on %.% names table %', TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0];
    END IF;
    img := to_jsonb(OLD);
    SELECT jsonb_object_agg(col, img -> col) INTO k FROM unnest(TG_ARGV[1:]) AS col;
    INSERT INTO pgmesh.tombstone AS t (table_name, key, deleted_at, xid, node)
    VALUES (TG_ARGV[0], k, NULL, pg_current_xact_id(),
            (SELECT ln.name FROM pgmesh.local_node ln))
    ON CONFLICT (table_name, key) DO UPDATE
       SET deleted_at = NULL, xid = excluded.xid, node = excluded.node
     WHERE coalesce(pgmesh.tombstone_time(t.deleted_at, t.xid), '-infinity') <= statement_timestamp();
    RETURN NULL;
END
$$;

-- to_jsonb_utc (0003) with the same settings as record_delete.
CREATE OR REPLACE FUNCTION pgmesh.to_jsonb_utc(anyelement) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC' SET intervalstyle = 'postgres' SET datestyle = 'ISO, YMD'
SET extra_float_digits = 3 SET bytea_output = 'hex' SET lc_monetary = 'C'
AS $$ SELECT to_jsonb($1) $$;

-- snowflake_nextval (0002), now SECURITY DEFINER: application roles read
-- neither pgmesh.sequence_config nor may they setval. Its one job is to
-- advance, by one snowflake id, a sequence that a column default feeds
-- through this very function; any other sequence is refused, so that it
-- cannot be used to move a sequence of the step or range strategy (or any
-- other) that the caller has no right to touch.
CREATE OR REPLACE FUNCTION pgmesh.snowflake_nextval(seq regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER
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
    IF NOT EXISTS (
        SELECT FROM pg_depend s
          JOIN pg_depend f ON f.classid = s.classid AND f.objid = s.objid
         WHERE s.classid = 'pg_attrdef'::regclass
           AND s.refclassid = 'pg_class'::regclass AND s.refobjid = seq
           AND f.refclassid = 'pg_proc'::regclass
           AND f.refobjid = 'pgmesh.snowflake_nextval(regclass)'::regprocedure) THEN
        RAISE EXCEPTION 'pgmesh.snowflake_nextval(%): no column default calls it for this sequence', seq
            USING HINT = 'run: pgmesh sequences convert --strategy snowflake';
    END IF;
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

-- is_pgmesh_session: the session logged in as pgmesh's role (the owner of
-- this schema) or as a superuser. session_user cannot be changed by SET
-- ROLE, so an ordinary role cannot pass for pgmesh.
CREATE FUNCTION pgmesh.is_pgmesh_session() RETURNS bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.oid = (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'pgmesh') OR r.rolsuper
      FROM pg_roles r WHERE r.rolname = session_user
$$;

-- ddl_quiet (0004): no capture in an apply session (the DDL came from a
-- peer) nor inside pgmesh's own DDL (pgmesh ddl, sequences convert,
-- publication reconciliation), which sets pgmesh.in_ddl. The setting counts
-- only in pgmesh's own sessions: in any other, setting it changes nothing.
CREATE OR REPLACE FUNCTION pgmesh.ddl_quiet() RETURNS bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_replication_origin_session_is_setup()
        OR (coalesce(current_setting('pgmesh.in_ddl', true), '') = 'on' AND pgmesh.is_pgmesh_session())
$$;

-- sql_tokens splits SQL text into tokens the way the server's lexer does,
-- as far as pgmesh needs to judge a captured statement: words lowercased
-- (keywords and unquoted names), "name for a quoted identifier (its raw
-- text after the quote), 'text for a string constant (raw, quotes doubled
-- as written), $ for a dollar-quoted string, 0 for a number, and every other
-- character on its own (";" ends a statement). Comments (nested /* */ too)
-- and white space are dropped. It scans bytes (get_byte is O(1)), so that
-- long function bodies cost linear time.
CREATE FUNCTION pgmesh.sql_tokens(q text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b     bytea := convert_to(q, 'UTF8');
    n     int := length(b);
    i     int := 0;
    j     int;
    c     int;
    d     int;
    depth int;
    esc   bool;
    tag   bytea;
    p     int;
    out   text[] := '{}';
BEGIN
    WHILE i < n LOOP
        c := get_byte(b, i);
        d := CASE WHEN i + 1 < n THEN get_byte(b, i + 1) ELSE 0 END;
        IF c IN (32, 9, 10, 11, 12, 13) THEN
            i := i + 1;
        ELSIF c = 45 AND d = 45 THEN -- -- comment
            p := position('\x0a'::bytea IN substring(b FROM i + 1));
            i := CASE WHEN p = 0 THEN n ELSE i + p END;
        ELSIF c = 47 AND d = 42 THEN -- /* comment */, nested
            depth := 1;
            i := i + 2;
            WHILE i < n AND depth > 0 LOOP
                c := get_byte(b, i);
                d := CASE WHEN i + 1 < n THEN get_byte(b, i + 1) ELSE 0 END;
                IF c = 47 AND d = 42 THEN
                    depth := depth + 1; i := i + 2;
                ELSIF c = 42 AND d = 47 THEN
                    depth := depth - 1; i := i + 2;
                ELSE
                    i := i + 1;
                END IF;
            END LOOP;
        ELSIF c = 39 OR (c IN (69, 101) AND d = 39) THEN -- 'text' or E'text'
            esc := c <> 39;
            i := i + CASE WHEN esc THEN 2 ELSE 1 END;
            j := i;
            WHILE i < n LOOP
                c := get_byte(b, i);
                IF esc AND c = 92 THEN
                    i := i + 2;
                ELSIF c = 39 AND i + 1 < n AND get_byte(b, i + 1) = 39 THEN
                    i := i + 2;
                ELSIF c = 39 THEN
                    EXIT;
                ELSE
                    i := i + 1;
                END IF;
            END LOOP;
            out := out || ('''' || convert_from(substring(b FROM j + 1 FOR least(i, n) - j), 'UTF8'));
            i := i + 1;
        ELSIF c = 34 THEN -- "identifier"
            i := i + 1;
            j := i;
            WHILE i < n LOOP
                c := get_byte(b, i);
                IF c = 34 AND i + 1 < n AND get_byte(b, i + 1) = 34 THEN
                    i := i + 2;
                ELSIF c = 34 THEN
                    EXIT;
                ELSE
                    i := i + 1;
                END IF;
            END LOOP;
            out := out || ('"' || convert_from(substring(b FROM j + 1 FOR least(i, n) - j), 'UTF8'));
            i := i + 1;
        ELSIF c = 36 AND (d = 36 OR d = 95 OR (d | 32) BETWEEN 97 AND 122 OR d >= 128) THEN -- $tag$…$tag$
            j := i + 1;
            WHILE j < n AND get_byte(b, j) <> 36 AND (get_byte(b, j) = 95 OR (get_byte(b, j) | 32) BETWEEN 97 AND 122
                                                     OR get_byte(b, j) BETWEEN 48 AND 57 OR get_byte(b, j) >= 128) LOOP
                j := j + 1;
            END LOOP;
            IF j < n AND get_byte(b, j) = 36 THEN
                tag := substring(b FROM i + 1 FOR j - i + 1);
                p := position(tag IN substring(b FROM j + 2));
                i := CASE WHEN p = 0 THEN n ELSE j + 1 + p - 1 + length(tag) END;
                out := out || '$'::text;
            ELSE
                out := out || '$'::text;
                i := i + 1;
            END IF;
        ELSIF c = 95 OR (c | 32) BETWEEN 97 AND 122 OR c >= 128 THEN -- word
            j := i;
            WHILE i < n AND (get_byte(b, i) IN (95, 36) OR (get_byte(b, i) | 32) BETWEEN 97 AND 122
                             OR get_byte(b, i) BETWEEN 48 AND 57 OR get_byte(b, i) >= 128) LOOP
                i := i + 1;
            END LOOP;
            out := out || lower(convert_from(substring(b FROM j + 1 FOR i - j), 'UTF8'));
        ELSIF c BETWEEN 48 AND 57 OR (c = 46 AND d BETWEEN 48 AND 57) THEN -- number
            WHILE i < n AND (get_byte(b, i) BETWEEN 48 AND 57 OR get_byte(b, i) IN (46, 95)
                             OR (get_byte(b, i) | 32) BETWEEN 97 AND 122) LOOP
                i := i + 1;
            END LOOP;
            out := out || '0'::text;
        ELSE
            out := out || chr(c);
            i := i + 1;
        END IF;
    END LOOP;
    RETURN out;
END
$$;

-- sql_statements splits tokens into statements at ";" (outside the body of
-- a BEGIN ATOMIC … END function, with CASE … END inside it) and returns
-- each non-empty statement's tokens as one row.
CREATE FUNCTION pgmesh.sql_statements(toks text[]) RETURNS SETOF text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cur    text[] := '{}';
    atomic int := 0;
    cases  int := 0;
    prev   text := '';
    t      text;
BEGIN
    FOREACH t IN ARRAY toks LOOP
        IF t = ';' AND atomic = 0 THEN
            IF cardinality(cur) > 0 THEN
                RETURN NEXT cur;
            END IF;
            cur := '{}';
            prev := '';
            CONTINUE;
        END IF;
        IF t = 'atomic' AND prev = 'begin' THEN
            atomic := atomic + 1;
        ELSIF t = 'case' AND atomic > 0 THEN
            cases := cases + 1;
        ELSIF t = 'end' AND atomic > 0 THEN
            IF cases > 0 THEN cases := cases - 1; ELSE atomic := atomic - 1; END IF;
        END IF;
        cur := cur || t;
        prev := t;
    END LOOP;
    IF cardinality(cur) > 0 THEN
        RETURN NEXT cur;
    END IF;
END
$$;

-- ddl_statement_count (0004) on the new lexer.
CREATE OR REPLACE FUNCTION pgmesh.ddl_statement_count(q text) RETURNS int
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*)::int FROM pgmesh.sql_statements(pgmesh.sql_tokens(q))
$$;

-- ddl_is_top_level tells whether the statement (its tokens) is itself the
-- DDL command PostgreSQL reports with tag, and not a statement that ran it
-- (DO, CALL, SELECT f(), EXPLAIN ANALYZE …): the words of the tag must
-- begin the statement, once the optional words that the tag leaves out are
-- dropped (OR REPLACE, TEMP, UNLOGGED, UNIQUE, CONCURRENTLY…).
CREATE FUNCTION pgmesh.ddl_is_top_level(toks text[], tag text) RETURNS bool
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    words text[] := string_to_array(lower(tag), ' ');
    head  text[] := '{}';
    t     text;
    k     int := 0;
BEGIN
    FOREACH t IN ARRAY toks LOOP
        k := k + 1;
        EXIT WHEN cardinality(head) >= cardinality(words) + 3 OR k > 12;
        CONTINUE WHEN head[1] = 'create' AND (
                 t IN ('temp', 'temporary', 'unlogged', 'global', 'local', 'unique', 'recursive', 'trusted', 'procedural', 'default')
              OR (t = 'or' AND toks[k + 1] = 'replace') OR (t = 'replace' AND toks[k - 1] = 'or')
              OR (t = 'constraint' AND toks[k + 1] = 'trigger'));
        head := head || t;
    END LOOP;
    RETURN head[1:cardinality(words)] = words;
END
$$;

-- ddl_adds_unsafe_column finds a column that an ALTER TABLE … ADD of this
-- statement fills, in the rows that exist, with a value each node computes
-- for itself: a default that is not immutable (now(), random(),
-- gen_random_uuid(), nextval() of serial), an identity, or a time literal
-- that depends on the moment ('now', 'today'…). Replayed on every node, the
-- same ADD COLUMN would give the same rows different values. Returns
-- "table.column", NULL when there is none. A column counts when this
-- transaction wrote its catalog row and the statement adds something.
CREATE FUNCTION pgmesh.ddl_adds_unsafe_column(toks text[], rel oid) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    adds   bool := false;
    moment bool;
    k      int;
    r      record;
BEGIN
    FOR k IN 1 .. cardinality(toks) - 1 LOOP
        IF toks[k] = 'add' AND toks[k + 1] NOT IN ('constraint', 'primary', 'unique', 'check', 'foreign', 'exclude') THEN
            adds := true;
        END IF;
    END LOOP;
    IF NOT adds THEN
        RETURN NULL;
    END IF;
    moment := EXISTS (SELECT FROM unnest(toks) t
                       WHERE left(t, 1) = '''' AND lower(btrim(substr(t, 2))) IN ('now', 'today', 'tomorrow', 'yesterday'));
    FOR r IN
        SELECT a.attname, a.attidentity, a.attgenerated, d.adbin::text AS expr
          FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
           AND a.xmin = pg_current_xact_id()::xid
    LOOP
        IF r.attgenerated <> '' THEN
            CONTINUE; -- computed from the row itself: the same on every node
        END IF;
        IF r.attidentity <> '' OR (r.expr IS NOT NULL AND (
                 moment
              OR r.expr ~ '\{(SQLVALUEFUNCTION|NEXTVALUEEXPR|CURRENTOFEXPR) '
              OR EXISTS (SELECT FROM regexp_matches(r.expr, ':(?:funcid|opfuncid) (\d+)', 'g') m
                           JOIN pg_proc p ON p.oid = m[1]::oid WHERE p.provolatile <> 'i')
              OR EXISTS (SELECT FROM regexp_matches(r.expr, ':opno (\d+)', 'g') m
                           JOIN pg_operator o ON o.oid = m[1]::oid
                           JOIN pg_proc p ON p.oid = o.oprcode WHERE p.provolatile <> 'i'))) THEN
            RETURN rel::regclass::text || '.' || quote_ident(r.attname);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- untrusted_code lists the functions that would run inside pgmesh's apply
-- sessions, with pgmesh's privileges, when a change is applied to one of
-- rels (or a partition of one): functions of triggers and rules that fire
-- under session_replication_role = replica (ENABLE ALWAYS / REPLICA), of
-- CHECK constraints, column defaults, generated columns, index expressions
-- and predicates, partition keys, row security policies and the domains of
-- the columns, and the functions behind the operators they use. A function
-- is trusted when it is SECURITY DEFINER (it runs as its owner and cannot
-- change role) or owned by a superuser. Any other would let the role that
-- owns it act as pgmesh on this node (a function of pgmesh's own role,
-- the owner of schema pgmesh, is pgmesh's code): `check` FAILs on it, the capture
-- event trigger refuses DDL that creates it, and the applier refuses to
-- apply to such a table.
CREATE FUNCTION pgmesh.untrusted_code(rels oid[])
RETURNS TABLE (rel regclass, func regprocedure, owner name, via text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
WITH RECURSIVE
targets AS MATERIALIZED (
    -- pg_partition_tree has no row for a table that is not partitioned.
    SELECT r AS root, r AS rel FROM unnest(rels) r
    UNION
    SELECT r, t.relid FROM unnest(rels) r, LATERAL pg_partition_tree(r::regclass) t
),
doms AS (
    SELECT DISTINCT tg.root, a.atttypid AS typ
      FROM targets tg JOIN pg_attribute a ON a.attrelid = tg.rel AND a.attnum > 0 AND NOT a.attisdropped
      JOIN pg_type t ON t.oid = a.atttypid AND t.typtype = 'd'
    UNION
    SELECT d.root, t.typbasetype FROM doms d JOIN pg_type t ON t.oid = d.typ
     WHERE t.typbasetype <> 0 AND EXISTS (SELECT FROM pg_type b WHERE b.oid = t.typbasetype AND b.typtype = 'd')
),
objs AS MATERIALIZED (
    SELECT tg.root, 'pg_trigger'::regclass AS classid, t.oid AS objid,
           format('trigger %I on %s (enabled %s)', t.tgname, t.tgrelid::regclass,
                  CASE t.tgenabled WHEN 'A' THEN 'always' ELSE 'replica' END) AS via
      FROM targets tg JOIN pg_trigger t ON t.tgrelid = tg.rel
     WHERE t.tgenabled IN ('A', 'R') AND NOT t.tgisinternal
    UNION ALL
    SELECT tg.root, 'pg_rewrite'::regclass, r.oid, format('rule %I on %s', r.rulename, r.ev_class::regclass)
      FROM targets tg JOIN pg_rewrite r ON r.ev_class = tg.rel
     WHERE r.ev_enabled IN ('A', 'R') AND r.rulename <> '_RETURN'
    UNION ALL
    SELECT tg.root, 'pg_constraint'::regclass, c.oid, format('constraint %I on %s', c.conname, c.conrelid::regclass)
      FROM targets tg JOIN pg_constraint c ON c.conrelid = tg.rel
    UNION ALL
    SELECT tg.root, 'pg_attrdef'::regclass, d.oid, format('default of %s.%I', d.adrelid::regclass, a.attname)
      FROM targets tg JOIN pg_attrdef d ON d.adrelid = tg.rel
      JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
    UNION ALL
    SELECT tg.root, 'pg_class'::regclass, i.indexrelid, format('index %s', i.indexrelid::regclass)
      FROM targets tg JOIN pg_index i ON i.indrelid = tg.rel
    UNION ALL
    SELECT tg.root, 'pg_class'::regclass, tg.rel, format('partition key of %s', tg.rel::regclass)
      FROM targets tg
    UNION ALL
    SELECT tg.root, 'pg_policy'::regclass, p.oid, format('policy %I on %s', p.polname, p.polrelid::regclass)
      FROM targets tg JOIN pg_policy p ON p.polrelid = tg.rel
    UNION ALL
    SELECT d.root, 'pg_constraint'::regclass, c.oid, format('constraint %I of domain %s', c.conname, c.contypid::regtype)
      FROM doms d JOIN pg_constraint c ON c.contypid = d.typ
    UNION ALL
    SELECT d.root, 'pg_type'::regclass, d.typ, format('default of domain %s', d.typ::regtype)
      FROM doms d
),
-- MATERIALIZED: inlined, funcs would run once per row of pg_proc.
funcs AS MATERIALIZED (
    SELECT o.root, t.tgfoid AS fn, o.via
      FROM objs o JOIN pg_trigger t ON o.classid = 'pg_trigger'::regclass AND t.oid = o.objid
    UNION ALL
    SELECT o.root, coalesce(op.oprcode::oid, dep.refobjid), o.via
      FROM objs o
      JOIN pg_depend dep ON dep.classid = o.classid AND dep.objid = o.objid
      LEFT JOIN pg_operator op ON dep.refclassid = 'pg_operator'::regclass AND op.oid = dep.refobjid
     WHERE dep.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
)
SELECT DISTINCT f.root::regclass, p.oid::regprocedure, r.rolname, f.via
  FROM funcs f
  JOIN pg_proc p ON p.oid = f.fn
  JOIN pg_roles r ON r.oid = p.proowner
 WHERE NOT p.prosecdef AND NOT r.rolsuper
   AND p.proowner <> (SELECT n.nspowner FROM pg_namespace n WHERE n.nspname = 'pgmesh')
 ORDER BY 1, 2, 4
$$;

-- untrusted_code_error raises the error that names the first untrusted
-- function of rels, if any, for the capture trigger and the applier.
CREATE FUNCTION pgmesh.check_untrusted_code(rels oid[]) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
BEGIN
    SELECT * INTO u FROM pgmesh.untrusted_code(rels) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgmesh: function % (owner %) would run with pgmesh''s privileges when pgmesh applies changes to table % (%)',
              u.func, u.owner, u.rel, u.via
              USING ERRCODE = '42501',
                    DETAIL = 'Code that runs while pgmesh applies replicated changes must not run as pgmesh: its owner could act with pgmesh''s rights.',
                    HINT = format('make it run as its owner: ALTER FUNCTION %s SECURITY DEFINER; (or have a superuser own it)', u.func);
    END IF;
END
$$;

-- replicated_tables are the tables the publication ships (ddl_reconcile's
-- rule), for the capture trigger's checks.
CREATE FUNCTION pgmesh.replicated_tables() RETURNS oid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(array_agg(pr.prrelid), '{}')
      FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
     WHERE p.pubname = 'pgmesh'
$$;

-- ddl_capture (0004), with every check that keeps a replayed DDL from doing
-- on the peers anything but what the statement itself does:
--   * the statement must be the DDL command itself, sent alone: not a DO
--     block, CALL, SELECT of a function or anything else that ran it (the
--     peers would replay the whole statement with its side effects), not
--     one of several statements in one query string;
--   * CREATE TABLE AS / SELECT INTO write rows each node would compute for
--     itself: refused;
--   * CONCURRENTLY forms cannot run in the apply transaction: recorded as
--     not_replicated, with a WARNING (decided from the statement's words,
--     so that a string constant that says "concurrently" is ordinary DDL);
--   * a statement that names a temporary object of this session would fail
--     on the peers, which do not have it: refused;
--   * ADD COLUMN that fills the existing rows with node-dependent values:
--     refused, with the safe procedure;
--   * the peers replay the DDL as its issuer, which pgmesh's role must be
--     able to SET ROLE to (and whose tables it must be able to publish):
--     refused otherwise, rather than stopping every peer's link later.
-- It runs as pgmesh (the event trigger functions are SECURITY DEFINER).
CREATE OR REPLACE FUNCTION pgmesh.ddl_capture(p_tag text, p_search_path text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    q      text := current_query();
    key    text := pg_current_xact_id()::text || ' ' || statement_timestamp()::text || ' ' || md5(current_query());
    usr    text := CASE current_setting('role') WHEN 'none' THEN session_user::text ELSE current_setting('role') END;
    toks   text[];
    temps  text[];
    bad    text;
    member text := CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END;
    r      record;
BEGIN
    IF EXISTS (SELECT FROM pgmesh.ddl_log l WHERE l.statement_key = key) THEN
        RETURN;
    END IF;
    toks := pgmesh.sql_tokens(q);
    IF (SELECT count(*) FROM pgmesh.sql_statements(toks)) > 1 THEN
        RAISE EXCEPTION 'pgmesh: cannot replicate % sent in a query string of several statements', p_tag
              USING DETAIL = 'PostgreSQL shows pgmesh the whole query string, not the statement being run.',
                    HINT = 'send the statements one at a time (as psql does with a script), or run them with pgmesh ddl -f FILE';
    END IF;
    SELECT s INTO toks FROM pgmesh.sql_statements(toks) s LIMIT 1;
    IF p_tag IN ('CREATE TABLE AS', 'SELECT INTO') THEN
        RAISE EXCEPTION 'pgmesh: cannot replicate %: it writes rows that each node would compute from its own data', p_tag
              USING HINT = 'create the table with CREATE TABLE, then fill it with INSERT … SELECT on one node: the rows replicate';
    END IF;
    IF NOT pgmesh.ddl_is_top_level(coalesce(toks, '{}'), p_tag) THEN
        RAISE EXCEPTION 'pgmesh: cannot replicate % run from inside another statement (%)', p_tag,
                        coalesce(upper(toks[1]), 'empty')
              USING DETAIL = 'Only a DDL statement sent on its own is replicated: the peers would replay the whole statement (a DO block, CALL, a function call) with its side effects.',
                    HINT = 'run the DDL as a plain statement, or in a schema pgmesh does not replicate';
    END IF;
    IF 'concurrently' = ANY (toks) THEN
        PERFORM pgmesh.ddl_announce(q, p_search_path, usr, 'not_replicated', key);
        RAISE WARNING 'pgmesh: % CONCURRENTLY is not replicated: it cannot run inside the apply transaction of the other nodes', p_tag
              USING HINT = 'run the same statement on every other node of the cluster yourself; pgmesh check lists it';
        RETURN;
    END IF;
    SELECT array_agg(c.relname::text) INTO temps
      FROM pg_class c WHERE c.relnamespace = pg_my_temp_schema();
    SELECT t INTO bad FROM unnest(toks) t
     WHERE t = ANY (temps) OR substr(t, 2) = ANY (temps) AND left(t, 1) = '"' LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'pgmesh: cannot replicate % that names %, a temporary table of this session', p_tag, ltrim(bad, '"')
              USING DETAIL = 'The other nodes do not have this session''s temporary objects: the DDL would fail there.',
                    HINT = 'run the DDL in a session without temporary tables of that name';
    END IF;
    FOR r IN SELECT DISTINCT d.objid FROM pg_event_trigger_ddl_commands() d
              WHERE d.classid = 'pg_class'::regclass AND d.command_tag = 'ALTER TABLE' LOOP
        bad := pgmesh.ddl_adds_unsafe_column(toks, r.objid);
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'pgmesh: cannot replicate ADD COLUMN of % with a value computed on each node', bad
                  USING DETAIL = 'Each node would fill the existing rows with its own value (a default that is not immutable, an identity or serial, or a time such as ''now'').',
                        HINT = 'add the column without a default (or with a constant one), then ALTER TABLE … ALTER COLUMN … SET DEFAULT … for new rows, then UPDATE the existing rows on one node: the values replicate';
        END IF;
    END LOOP;
    IF NOT pg_has_role(current_user, usr, member) THEN
        RAISE EXCEPTION 'pgmesh: cannot replicate % by role %: pgmesh''s role % may not act as it', p_tag, usr, current_user
              USING DETAIL = 'The other nodes replay a DDL as the role that ran it, and publish the tables it creates.',
                    HINT = format('as a superuser, on every node: GRANT %I TO %I; or run the DDL as a role pgmesh may act as (SET ROLE …)', usr, current_user);
    END IF;
    PERFORM pgmesh.ddl_announce(q, p_search_path, usr, 'applied', key);
    PERFORM pgmesh.ddl_reconcile();
END
$$;

-- ddl_value_settings are the issuer's settings that change how the text of
-- a value reads (a literal in the DDL: a date default under DMY, an
-- interval under sql_standard…): the peers replay the DDL under them, not
-- under the apply session's pinned ones (internal/pg ValueSettings).
CREATE FUNCTION pgmesh.ddl_value_settings() RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_object_agg(s.name, current_setting(s.name))
      FROM unnest(ARRAY['DateStyle', 'IntervalStyle', 'TimeZone', 'extra_float_digits', 'bytea_output',
                        'lc_monetary', 'standard_conforming_strings', 'xmloption', 'array_nulls']) AS s(name)
$$;

-- ddl_announce (0004), with the statement key of a captured DDL (NULL for
-- pgmesh ddl) and the issuer's value settings in the message (v 2).
CREATE FUNCTION pgmesh.ddl_announce(p_sql text, p_search_path text, p_role text, p_status text, p_key text) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id   text := gen_random_uuid()::text;
    origin text;
BEGIN
    SELECT ln.name INTO origin FROM pgmesh.local_node ln;
    IF origin IS NULL THEN
        RAISE EXCEPTION 'pgmesh: this database is not a pgmesh node (pgmesh.local_node is empty)'
              USING HINT = 'run pgmesh init';
    END IF;
    IF p_status = 'applied' THEN
        PERFORM pg_logical_emit_message(true, 'pgmesh.ddl', jsonb_build_object(
            'v', 2, 'id', v_id, 'origin', origin, 'sql', p_sql,
            'search_path', p_search_path, 'role', p_role, 'emitted_at', now(),
            'settings', pgmesh.ddl_value_settings())::text);
    END IF;
    INSERT INTO pgmesh.ddl_log (id, origin_node, sql, search_path, role, emitted_at, applied_at, status, statement_key)
    VALUES (v_id, origin, p_sql, p_search_path, p_role, now(), CASE WHEN p_status = 'applied' THEN now() END, p_status, p_key);
    RETURN v_id;
END
$$;

-- ddl_guard runs after every DDL on the node, replicated or not, captured
-- or quiet: a DDL that makes code run in pgmesh's apply sessions with
-- pgmesh's privileges (see untrusted_code) is refused, whatever schema it
-- touched (ALTER FUNCTION … SECURITY INVOKER of a function a replicated
-- table's trigger calls, a new CHECK constraint…).
CREATE FUNCTION pgmesh.ddl_guard() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pgmesh.check_untrusted_code(pgmesh.replicated_tables());
END
$$;

-- The event trigger functions run as pgmesh's role (SECURITY DEFINER):
-- capture must work for every role that may run DDL, while emitting
-- messages, writing ddl_log and altering the publication are pgmesh's. They
-- read the issuer's search_path first (it is replicated with the DDL), then
-- pin it for everything else, and restore it at the end: a SET clause would
-- hide the issuer's value. Until the pin, they call nothing by an
-- unqualified name and declare only pg_catalog types.
CREATE OR REPLACE FUNCTION pgmesh.ddl_capture_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    user_path pg_catalog.text;
    in_scope  pg_catalog.bool;
BEGIN
    user_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM pgmesh.ddl_guard();
    IF NOT pgmesh.ddl_quiet() THEN
        SELECT bool_or(pgmesh.ddl_in_scope(d.classid, d.objid, d.schema_name, d.in_extension))
          INTO in_scope FROM pg_event_trigger_ddl_commands() d;
        IF in_scope THEN
            PERFORM pgmesh.ddl_capture(tg_tag, user_path);
        END IF;
    END IF;
    PERFORM pg_catalog.set_config('search_path', user_path, true);
END
$$;

CREATE OR REPLACE FUNCTION pgmesh.ddl_capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
DECLARE
    user_path pg_catalog.text;
    in_scope  pg_catalog.bool;
BEGIN
    user_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF NOT pgmesh.ddl_quiet() THEN
        SELECT bool_or(pgmesh.ddl_in_scope(0, 0, d.schema_name, false))
          INTO in_scope FROM pg_event_trigger_dropped_objects() d
         WHERE d.original AND NOT d.is_temporary;
        IF in_scope THEN
            PERFORM pgmesh.ddl_capture(tg_tag, user_path);
        END IF;
    END IF;
    PERFORM pg_catalog.set_config('search_path', user_path, true);
END
$$;

-- ddl_reconcile (0004) marks its own DDL with pgmesh.in_ddl, which counts
-- in pgmesh's sessions only (ddl_quiet). In the capture trigger it runs in
-- the issuer's session, where the marker does not count: the publication
-- and trigger changes it makes are not in scope of capture anyway (no
-- schema; pgmesh's own trigger).

-- ddl_apply (0004) replays a peer's DDL as its issuer, with nothing more
-- than the issuer's privileges: the text runs inside a SECURITY DEFINER
-- function that the issuer owns, created for the moment in this session's
-- temporary schema. Inside it no SET ROLE, RESET ROLE or SET SESSION
-- AUTHORIZATION is possible, so the DDL cannot turn back into pgmesh's
-- session user. session_replication_role is origin during the replay, as it
-- was where the DDL ran. The issuer needs the TEMPORARY privilege on the
-- database (PUBLIC has it by default).
CREATE FUNCTION pgmesh.ddl_apply(p_id text, p_origin text, p_sql text, p_search_path text, p_role text, p_emitted_at timestamptz,
                                  p_settings jsonb) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    st     text;
    who    text := CASE WHEN p_role = '' THEN session_user::text ELSE p_role END;
    member text := CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END;
    prev   text := current_setting('session_replication_role');
    setup  text := '';
    s      record;
BEGIN
    SELECT l.status INTO st FROM pgmesh.ddl_log l WHERE l.id = p_id FOR UPDATE;
    IF st IN ('applied', 'skipped') THEN
        RETURN st;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = who) THEN
        RAISE EXCEPTION 'role "%" of the DDL does not exist on this node', who
              USING HINT = 'create the role here and restart the link, or skip the DDL with pgmesh ddl skip';
    END IF;
    IF NOT pg_has_role(session_user, who, member) THEN
        RAISE EXCEPTION 'pgmesh''s role % may not act as role %, which ran the DDL', session_user, who
              USING HINT = format('as a superuser: GRANT %I TO %I; then restart the link, or skip the DDL with pgmesh ddl skip', who, session_user);
    END IF;
    -- The issuer's value settings: only those ddl_value_settings sends.
    FOR s IN SELECT e.key, e.value FROM jsonb_each_text(coalesce(p_settings, '{}')) e
              WHERE e.key IN (SELECT jsonb_object_keys(pgmesh.ddl_value_settings())) LOOP
        setup := setup || format('PERFORM pg_catalog.set_config(%L, %L, true); ', s.key, s.value);
    END LOOP;
    PERFORM set_config('role', who, true);
    EXECUTE format('CREATE FUNCTION pg_temp.pgmesh_replay() RETURNS void LANGUAGE plpgsql SECURITY DEFINER AS %L',
                   format('BEGIN PERFORM pg_catalog.set_config(''search_path'', %L, true); %s EXECUTE %L; END', p_search_path, setup, p_sql));
    PERFORM set_config('role', 'none', true);
    PERFORM set_config('session_replication_role', 'origin', true);
    PERFORM pg_temp.pgmesh_replay();
    -- The settings the replay made last until this function returns (its
    -- SET clause opens a level that ends with it): restore them for the
    -- rest of the function.
    PERFORM set_config('session_replication_role', prev, true);
    PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM set_config('role', who, true);
    DROP FUNCTION pg_temp.pgmesh_replay();
    PERFORM set_config('role', 'none', true);
    PERFORM pgmesh.ddl_reconcile();
    INSERT INTO pgmesh.ddl_log AS l (id, origin_node, sql, search_path, role, emitted_at, applied_at, status)
    VALUES (p_id, p_origin, p_sql, p_search_path, p_role, p_emitted_at, now(), 'applied')
    ON CONFLICT (id) DO UPDATE SET status = 'applied', applied_at = now(), error = NULL;
    RETURN 'applied';
END
$$;

-- ddl_apply (0004)'s signature, for a message without settings (v 1).
CREATE OR REPLACE FUNCTION pgmesh.ddl_apply(p_id text, p_origin text, p_sql text, p_search_path text, p_role text, p_emitted_at timestamptz) RETURNS text
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgmesh.ddl_apply(p_id, p_origin, p_sql, p_search_path, p_role, p_emitted_at, NULL) $$;

-- ddl_run (0004) with the role to run the DDL as (`pgmesh ddl --role`):
-- the objects it creates belong to that role on every node, and the peers
-- replay it as that role. pgmesh's role must be able to SET ROLE to it.
-- The search_path is the caller's (pgmesh ddl --search-path), so there is
-- no SET clause: every name here is schema-qualified.
CREATE FUNCTION pgmesh.ddl_run(p_sql text, p_role text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_id pg_catalog.text;
    who  pg_catalog.text := CASE WHEN p_role IS NULL OR p_role OPERATOR(pg_catalog.=) '' THEN current_user::pg_catalog.text ELSE p_role END;
    prev pg_catalog.text := pg_catalog.current_setting('role');
BEGIN
    PERFORM pg_catalog.set_config('pgmesh.in_ddl', 'on', true);
    v_id := pgmesh.ddl_announce(p_sql, pg_catalog.current_setting('search_path'), who, 'applied', NULL);
    PERFORM pg_catalog.set_config('role', who, true);
    EXECUTE p_sql;
    PERFORM pg_catalog.set_config('role', prev, true);
    PERFORM pgmesh.ddl_reconcile();
    RETURN v_id;
END
$$;
