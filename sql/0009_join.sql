-- 0009_join: adding a node to a live mesh and removing one (docs/JOIN.md).
-- These tables describe the node they live in; nothing here is replicated.

-- join_state: where this database stands in joining or leaving the mesh.
-- No row: the node was set up by `pgmesh init` with the others, it is
-- ready. Agents run no link into or out of a node whose state is not
-- catching_up or ready, so a half-copied node never applies or ships
-- anything.
--   copying      `pgmesh node add` is copying the source's data; an
--                interrupted copy is started over (attempt + 1)
--   catching_up  the copy is complete and the links resume from the
--                positions in join_upstream; the node still lags
--   ready        every inbound link has applied past join_upstream.target
--   leaving      `pgmesh node remove` is delivering this node's last
--                changes to the survivors
--   removed      no longer part of the mesh
CREATE TABLE pgmesh.join_state (
    singleton       bool PRIMARY KEY DEFAULT true CHECK (singleton),
    node            text NOT NULL,
    source          text NOT NULL,
    state           text NOT NULL CHECK (state IN ('copying', 'catching_up', 'ready', 'leaving', 'removed')),
    attempt         int NOT NULL DEFAULT 1,
    -- The consistent point of the source's slot for this node: the copy's
    -- snapshot holds exactly the source's own transactions committed
    -- before it.
    snapshot_lsn    pg_lsn,
    -- The schema was created from the source's dump (not by the operator),
    -- so a restarted copy may compare it with the source's again.
    schema_restored bool NOT NULL DEFAULT false,
    started_at      timestamptz NOT NULL DEFAULT now(),
    copied_at       timestamptz,
    ready_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    error           text
);

-- join_upstream: per peer U of a joining node, the positions the proof in
-- docs/JOIN.md is about.
CREATE TABLE pgmesh.join_upstream (
    upstream text PRIMARY KEY,
    -- C_U: where the slot U -> this node starts (its consistent point).
    slot_lsn pg_lsn,
    -- P_U: the source's progress for U, read while apply into the source
    -- was paused for the copy's snapshot; NULL when the source had applied
    -- nothing of U. The origin pgmesh_<U> of this node is advanced to it.
    progress pg_lsn,
    -- U's WAL position when the copy was complete: once the link has
    -- applied past it, the node has caught up with U.
    target   pg_lsn
);

-- join_table: copy progress per table, for `pgmesh status` and metrics.
CREATE TABLE pgmesh.join_table (
    table_name  text PRIMARY KEY,
    est_rows    bigint NOT NULL DEFAULT 0,
    est_bytes   bigint NOT NULL DEFAULT 0,
    rows        bigint NOT NULL DEFAULT 0,
    bytes       bigint NOT NULL DEFAULT 0,
    started_at  timestamptz,
    finished_at timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
