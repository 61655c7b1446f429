-- Old generations pruned by a pass (retention.prune_executions): engine executions, each
-- with its history, of instances that stay. Their rows are in rows_deleted and, per table,
-- in report->'rows_by_reason'->'pruned'. `{audit}` is the quoted audit schema.
ALTER TABLE {audit}.passes
    ADD COLUMN generations_pruned bigint NOT NULL DEFAULT 0;
