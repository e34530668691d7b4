-- 0001_core: the node's identity and the agent's per-link state.
-- The migration runner creates schema pgmesh and pgmesh.migration itself.
-- Nothing in schema pgmesh is ever published: each node's metadata is local.

-- Which node of which cluster this database is; written by `pgmesh init`.
-- singleton makes it a one-row table.
CREATE TABLE pgmesh.local_node (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster   text NOT NULL,
    name      text NOT NULL
);

-- State of each inbound link (one row per upstream node), written by the
-- agent that applies it, read by `pgmesh status`.
CREATE TABLE pgmesh.link_state (
    upstream         text PRIMARY KEY,
    state            text NOT NULL,
    last_error       text,
    last_commit_lsn  pg_lsn,
    last_commit_time timestamptz,
    applied_txns     bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
