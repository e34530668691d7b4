-- 0011_keys: a key change and a TRUNCATE leave tombstones like a delete
-- (README, Conflicts).
--
-- A local UPDATE that moves a row to another key removes the old key: a
-- concurrent change of the old key elsewhere must meet a tombstone here, or
-- it would bring the old key back on this node only. A TRUNCATE removes
-- every row: its tombstone has the key '{}' (no real key is an empty
-- object) and stands for every key of the table older than it. The apply
-- statements (internal/conflict) read both.

-- record_delete (0006) also for an UPDATE that changed the key (trigger
-- pgmesh_tombstone_key: the old key's tombstone) and for TRUNCATE (trigger
-- pgmesh_truncate, FOR EACH STATEMENT: the table's tombstone, key '{}').
-- Still SECURITY DEFINER with one job, the tombstone of what the session
-- removed; still refusing a table other than its own, with every setting
-- that changes the text of a key pinned.
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
    IF TG_OP = 'TRUNCATE' THEN
        k := '{}';
    ELSE
        img := to_jsonb(OLD);
        SELECT jsonb_object_agg(col, img -> col) INTO k FROM unnest(TG_ARGV[1:]) AS col;
        IF TG_OP = 'UPDATE' THEN
            -- The trigger's WHEN clause lets only key changes through;
            -- an update that kept its key removed nothing.
            img := to_jsonb(NEW);
            IF k = (SELECT jsonb_object_agg(col, img -> col) FROM unnest(TG_ARGV[1:]) AS col) THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    INSERT INTO pgmesh.tombstone AS t (table_name, key, deleted_at, xid, node)
    VALUES (TG_ARGV[0], k, NULL, pg_current_xact_id(),
            (SELECT ln.name FROM pgmesh.local_node ln))
    ON CONFLICT (table_name, key) DO UPDATE
       SET deleted_at = NULL, xid = excluded.xid, node = excluded.node
     WHERE coalesce(pgmesh.tombstone_time(t.deleted_at, t.xid), '-infinity') <= statement_timestamp();
    RETURN NULL;
END
$$;

-- tombstone_triggers makes the triggers that record_delete runs from on a
-- replicated table what they should be, and returns the names of those it
-- created, replaced or dropped. The arguments of each are the table as
-- "schema.table", then its key columns (keys): pgmesh_truncate (AFTER
-- TRUNCATE, every table), pgmesh_tombstone (AFTER DELETE) and
-- pgmesh_tombstone_key (AFTER UPDATE OF the key columns, when one changed),
-- the last two only on a table with a key: rows without key have no
-- identity to remember. A trigger that exists with the same arguments is
-- left alone. Both ddl_reconcile and `pgmesh init` (internal/conflict
-- InstallTriggers) call it, so the two never differ.
CREATE FUNCTION pgmesh.tombstone_triggers(rel regclass, keys text[]) RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nsp     text;
    tbl     text;
    changed text[] := '{}';
    t       record;
BEGIN
    SELECT n.nspname, c.relname INTO nsp, tbl
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
    keys := nullif(keys, '{}');
    FOR t IN
        WITH a AS (SELECT ARRAY[nsp || '.' || tbl] || coalesce(keys, '{}') AS args),
        want AS (
            SELECT 'pgmesh_truncate' AS tg, ARRAY[nsp || '.' || tbl] AS args,
                   format('CREATE OR REPLACE TRIGGER pgmesh_truncate AFTER TRUNCATE ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION pgmesh.record_delete(%L)',
                          nsp, tbl, nsp || '.' || tbl) AS ddl
            UNION ALL
            SELECT 'pgmesh_tombstone', a.args,
                   format('CREATE OR REPLACE TRIGGER pgmesh_tombstone AFTER DELETE ON %I.%I FOR EACH ROW EXECUTE FUNCTION pgmesh.record_delete(%s)',
                          nsp, tbl, (SELECT string_agg(quote_literal(x), ', ' ORDER BY o) FROM unnest(a.args) WITH ORDINALITY u(x, o)))
              FROM a WHERE keys IS NOT NULL
            UNION ALL
            SELECT 'pgmesh_tombstone_key', a.args,
                   format('CREATE OR REPLACE TRIGGER pgmesh_tombstone_key AFTER UPDATE OF %s ON %I.%I FOR EACH ROW WHEN (%s) EXECUTE FUNCTION pgmesh.record_delete(%s)',
                          (SELECT string_agg(quote_ident(k), ', ' ORDER BY o) FROM unnest(keys) WITH ORDINALITY u(k, o)),
                          nsp, tbl,
                          (SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', k), ' OR ' ORDER BY o) FROM unnest(keys) WITH ORDINALITY u(k, o)),
                          (SELECT string_agg(quote_literal(x), ', ' ORDER BY o) FROM unnest(a.args) WITH ORDINALITY u(x, o)))
              FROM a WHERE keys IS NOT NULL)
        SELECT n.tg, w.ddl,
               -- tgargs holds each argument followed by a NUL byte.
               (SELECT string_agg(convert_to(x, 'UTF8') || '\x00'::bytea, ''::bytea ORDER BY o)
                  FROM unnest(w.args) WITH ORDINALITY AS u(x, o)) AS want_args,
               (SELECT g.tgargs FROM pg_trigger g
                 WHERE g.tgrelid = rel AND g.tgname = n.tg AND NOT g.tgisinternal AND g.tgparentid = 0) AS have_args
          FROM unnest(ARRAY['pgmesh_truncate', 'pgmesh_tombstone', 'pgmesh_tombstone_key']) n(tg)
          LEFT JOIN want w ON w.tg = n.tg
    LOOP
        IF t.ddl IS NULL AND t.have_args IS NOT NULL THEN
            EXECUTE format('DROP TRIGGER %I ON %I.%I', t.tg, nsp, tbl);
            changed := changed || t.tg;
        ELSIF t.ddl IS NOT NULL AND t.have_args IS DISTINCT FROM t.want_args THEN
            EXECUTE t.ddl;
            changed := changed || t.tg;
        END IF;
    END LOOP;
    RETURN changed;
END
$$;

-- ddl_reconcile (0004) with the tombstone triggers of tombstone_triggers.
CREATE OR REPLACE FUNCTION pgmesh.ddl_reconcile() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev       text := coalesce(current_setting('pgmesh.in_ddl', true), '');
    tombstones bool := to_regprocedure('pgmesh.record_delete()') IS NOT NULL;
    r          record;
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
                                           ELSE i.indisprimary END) AS keys
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
        PERFORM pgmesh.tombstone_triggers(r.oid, r.keys);
    END LOOP;
    PERFORM set_config('pgmesh.in_ddl', prev, true);
END
$$;

-- resolve_guarded is resolve_change (0005) for a change whose statement
-- cannot check every unique index or exclusion constraint of its table
-- before it writes (internal/conflict: one that reads a column the
-- upstream does not send, whose new value only the column default knows).
-- A violation of one of them is then caught here, on the rare path only
-- (a subtransaction per call): the change is skipped and logged as a
-- unique_conflict with both sides — the remote row, and as the local side
-- the constraint and PostgreSQL's description of the existing key — so
-- that the link goes on; under policy error (raises) it stops the link
-- with the same description instead.
CREATE FUNCTION pgmesh.resolve_guarded(name text, statement text, params text[],
                                       p_table text, p_key jsonb, p_remote_row jsonb, raises boolean)
RETURNS pgmesh.verdict
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    con    text;
    detail text;
BEGIN
    BEGIN
        RETURN pgmesh.resolve_change(name, statement, params);
    EXCEPTION WHEN unique_violation OR exclusion_violation THEN
        GET STACKED DIAGNOSTICS con = CONSTRAINT_NAME, detail = PG_EXCEPTION_DETAIL;
    END;
    IF raises THEN
        RAISE EXCEPTION 'pgmesh: conflict unique_conflict on table % key % (constraint %: %) and the table''s conflict policy is error',
            p_table, p_key, con, detail
            USING ERRCODE = 'P0001',
                  HINT = 'fix the row on this node (so that the remote change applies cleanly) or change the policy in pgmesh.yaml, then restart the link';
    END IF;
    INSERT INTO pgmesh.conflict_log (table_name, kind, resolution, key, local_row, remote_row,
                                     remote_commit_time, remote_origin, remote_lsn)
    VALUES (p_table, 'unique_conflict', 'keep_local', p_key, jsonb_build_object('constraint', con, 'existing', detail), p_remote_row,
            params[1]::timestamptz, params[2], params[3]::pg_lsn);
    RETURN ROW('unique_conflict', 'keep_local')::pgmesh.verdict;
END
$$;

-- raise_deferred stops a remote transaction whose row breaks a deferrable
-- unique index or exclusion constraint at its end (internal/conflict
-- DeferredCheckSQL): PostgreSQL does not check such constraints in the
-- apply session (replica role: they are triggers). SQLSTATE 23505 tells
-- the applier to apply the transaction again with the constraint decided
-- row by row, as a unique_conflict.
CREATE FUNCTION pgmesh.raise_deferred(table_name text, constraint_name text, key jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pgmesh: row % of table % conflicts with another row under deferrable % at the end of the remote transaction',
        key, table_name, constraint_name
        USING ERRCODE = 'unique_violation',
              DETAIL = 'A row the upstream had seen still holds the value: the change that moved it has not arrived here.',
              HINT = 'pgmesh applies the transaction again with the constraint decided row by row (unique_conflict)';
END
$$;
