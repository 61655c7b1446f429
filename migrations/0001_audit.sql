-- df-reconciler's own audit trail. `{audit}` is replaced by the quoted schema name
-- (audit.schema, default df_reconciler). Applied by `df-reconciler migrate` (or at start
-- with audit.auto_migrate = true) in one transaction under an advisory lock.

-- One row per pass, real or dry run: what it did, from the same report the log and
-- `once --json` show.
CREATE TABLE {audit}.passes (
    id                bigserial PRIMARY KEY,
    pass_id           text        NOT NULL UNIQUE,
    host              text,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL DEFAULT now(),
    dry_run           boolean     NOT NULL,
    outcome           text        NOT NULL CHECK (outcome IN ('ok', 'failed', 'fenced', 'stopped')),
    error             text,
    instances_removed bigint      NOT NULL,
    rows_deleted      bigint      NOT NULL,
    report            jsonb       NOT NULL
);
CREATE INDEX passes_started_at ON {audit}.passes (started_at DESC);

-- Opt-in (audit.record_deletions): one row per removed root, written in the same
-- transaction as the delete, so it exists exactly when the instance is gone.
CREATE TABLE {audit}.deletions (
    pass_id     text        NOT NULL,
    instance_id text        NOT NULL,
    reason      text        NOT NULL CHECK (reason IN ('expired', 'capped', 'orphan')),
    status      text,
    terminal_at timestamptz,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deletions_deleted_at ON {audit}.deletions (deleted_at);
CREATE INDEX deletions_instance_id ON {audit}.deletions (instance_id);
