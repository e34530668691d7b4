-- 0013_dead_letter: a remote transaction that can never apply here (a CHECK
-- constraint, a trigger error, a missing table) is moved out of its link's
-- way by the operator (`pgmesh skip`) without being lost: every change of
-- it, with the row images the upstream sent, goes into pgmesh.dead_letter
-- on the downstream, in the same local transaction that records the link's
-- progress past it. `pgmesh skipped replay` applies it later through the
-- conflict rules.

-- blocked is the transaction the link into this node fails on (the agent's
-- BlockedTxn as JSON), NULL when none: what `pgmesh skip` reads, so that a
-- skip names exactly the transaction the operator saw.
ALTER TABLE pgmesh.link_state ADD COLUMN IF NOT EXISTS blocked jsonb;

-- skip_request is the operator's order to move one transaction of the link
-- from upstream aside, identified by the LSN of its commit record upstream.
-- The link's next session diverts the transaction with exactly that commit
-- LSN, and only it; a request left behind by a transaction that then
-- applied (its cause was fixed) matches nothing the link will receive.
CREATE TABLE IF NOT EXISTS pgmesh.skip_request (
    upstream     text PRIMARY KEY,
    commit_lsn   pg_lsn NOT NULL,
    error        text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL DEFAULT current_user
);

-- dead_letter holds the skipped transactions. changes is the transaction
-- as pgmesh received it: a JSON array of {op, table, relation, old, new,
-- unchanged} (values in PostgreSQL's text format, NULL as null, unchanged
-- TOAST values named in unchanged) and of {message, prefix, content} for a
-- DDL message it carried.
CREATE TABLE IF NOT EXISTS pgmesh.dead_letter (
    id            bigserial PRIMARY KEY,
    upstream      text NOT NULL,
    commit_lsn    pg_lsn NOT NULL,
    xid           bigint,
    commit_time   timestamptz NOT NULL,
    error         text,
    changes       jsonb NOT NULL,
    skipped_at    timestamptz NOT NULL DEFAULT now(),
    skipped_by    text,
    replayed_at   timestamptz,
    replayed_by   text,
    UNIQUE (upstream, commit_lsn)
);
