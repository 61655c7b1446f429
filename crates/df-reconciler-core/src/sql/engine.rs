//! Statements on the duroxide engine store alone.

use super::{InstanceTable, Store, SupportingIndex};

/// SQL twin of [`crate::policy::has_child_shape`] for a column named `$id`: composed
/// `{parent}::{execution}::{node}`, legacy `sub::{n}` and `…::sub::…`.
pub(crate) const CHILD_SHAPE: &str =
    "($id ~ '::[0-9]+::'::text OR $id LIKE 'sub::%'::text OR $id LIKE '%::sub::%'::text)";

/// The child-shape predicate applied to a column expression.
pub fn child_shape(column: &str) -> String {
    CHILD_SHAPE.replace("$id", column)
}

/// Tables the engine store must have. `sessions` and `_duroxide_migrations` are never
/// written to. Not `_worker_ready`: pg_durable's background worker creates that sentinel
/// the first time it starts, so a fresh install may not have it yet; it is neither required
/// nor ever touched (it has no `instance_id`, so it is no per-instance table either).
pub(crate) const REQUIRED_TABLES: [&str; 10] = [
    "instances",
    "executions",
    "history",
    "orchestrator_queue",
    "worker_queue",
    "instance_locks",
    "kv_store",
    "kv_delta",
    "sessions",
    "_duroxide_migrations",
];

/// Per-instance tables in the order the engine's own delete routine uses, instances last.
/// A batch deletes the leased ones (worker queue, instance locks) first, to learn of leases
/// before anything else goes, and the dispatcher's queue last (`deleted_last`); the engine
/// has no foreign keys between these tables.
/// Preflight refuses to run when the engine has a per-instance table not listed here, so a
/// future engine version cannot make the daemon leave rows behind silently.
pub(crate) const PER_INSTANCE_TABLES: [InstanceTable; 8] = [
    InstanceTable {
        name: "history",
        key: "instance_id",
        locked: false,
        leased: false,
        deleted_last: false,
    },
    InstanceTable {
        name: "executions",
        key: "instance_id",
        locked: false,
        leased: false,
        deleted_last: false,
    },
    InstanceTable {
        name: "orchestrator_queue",
        key: "instance_id",
        locked: false,
        leased: true,
        deleted_last: true,
    },
    InstanceTable {
        name: "worker_queue",
        key: "instance_id",
        locked: false,
        leased: true,
        deleted_last: false,
    },
    InstanceTable {
        name: "instance_locks",
        key: "instance_id",
        locked: false,
        leased: true,
        deleted_last: false,
    },
    InstanceTable {
        name: "kv_delta",
        key: "instance_id",
        locked: false,
        leased: false,
        deleted_last: false,
    },
    InstanceTable {
        name: "kv_store",
        key: "instance_id",
        locked: false,
        leased: false,
        deleted_last: false,
    },
    InstanceTable {
        name: "instances",
        key: "instance_id",
        locked: true,
        leased: false,
        deleted_last: false,
    },
];

/// The queue tables: all a df row that never got an engine record can have there.
pub(crate) const QUEUE_TABLES: [InstanceTable; 2] =
    [PER_INSTANCE_TABLES[2], PER_INSTANCE_TABLES[3]];

/// Engine migrations this version of the daemon was written against.
pub(crate) const KNOWN_MIGRATION_VERSIONS: std::ops::RangeInclusive<i64> = 1..=21;

/// Applied engine migrations, as text so any integer type of `version` reads the same.
pub(crate) const MIGRATION_VERSIONS: &str =
    "SELECT version::text FROM {engine}._duroxide_migrations";

/// Tables of a schema that carry an `instance_id` column. `$1`: schema name.
pub(crate) const TABLES_WITH_INSTANCE_ID: &str = "
    SELECT c.relname::text
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1::text AND c.relkind IN ('r'::\"char\", 'p'::\"char\")
      AND a.attname = 'instance_id'::name AND NOT a.attisdropped
    ORDER BY 1";

/// Every instance of the trees under the given roots (`$1`), following parent_instance_id
/// down, and the trees that may go locked without waiting. UNION (not UNION ALL) makes a
/// cycle in hostile parent links terminate.
///
/// Only trees that look deletable are locked: every member present, its current execution
/// Completed or Failed (a tree is settled only when every member ended), and no member
/// leased (an instance lock or queue item whose `locked_until` is ahead of the database
/// clock). A tree the batch will not delete is never locked, so a dispatcher acknowledging
/// one of its instances never waits for the rest of the batch. For every member the row
/// says whether this batch locked it (`locked`; false also for a row another session
/// holds), its address (ctid, by which the batch deletes it), its current execution's status
/// (read after locking for a locked member, from the snapshot otherwise), whether it has an
/// engine row at all (`present`) and whether it was leased. A given id without an engine row
/// comes back alone, `present` false.
///
/// The status of a locked member is that of the current execution the lock returned.
/// Locking follows a row updated since the statement's snapshot to its newest version;
/// should the engine have moved the instance to a new generation meanwhile, that execution
/// is not in the snapshot and the status reads NULL (unknown: the tree stays). An execution
/// never leaves Completed or Failed, and a member that ended cannot start children, so a
/// tree whose members all read terminal is whole and settled.
macro_rules! trees_then {
    ($lock:literal) => {
        concat!(
            "
    WITH RECURSIVE tree(root_id, instance_id) AS (
        SELECT r.id, r.id FROM pg_catalog.unnest($1::text[]) AS r(id)
      UNION
        -- A probe of the parent index per member (OFFSET 0): as a join, the recursive
        -- step could be planned as a scan of the parent index from its first entry.
        SELECT tree.root_id, child.instance_id
        FROM tree
        CROSS JOIN LATERAL (
            SELECT c.instance_id FROM {engine}.instances c
            WHERE c.parent_instance_id = tree.instance_id
            OFFSET 0) child
    ),
    now_ms(ms) AS (SELECT ",
            now_epoch_ms!(),
            "),
    -- Each member as the snapshot shows it: a primary-key probe per table (OFFSET 0).
    seen AS (
        SELECT tree.root_id, tree.instance_id, e.instance_id IS NOT NULL AS present,
               ex.status,
               EXISTS (SELECT 1 FROM {engine}.instance_locks il
                        WHERE il.instance_id = tree.instance_id AND il.locked_until > now_ms.ms)
            OR EXISTS (SELECT 1 FROM {engine}.orchestrator_queue oq
                        WHERE oq.instance_id = tree.instance_id AND oq.locked_until > now_ms.ms)
            OR EXISTS (SELECT 1 FROM {engine}.worker_queue wq
                        WHERE wq.instance_id = tree.instance_id AND wq.locked_until > now_ms.ms)
               AS leased
        FROM tree CROSS JOIN now_ms
        LEFT JOIN LATERAL (
            SELECT ei.instance_id, ei.current_execution_id FROM {engine}.instances ei
            WHERE ei.instance_id = tree.instance_id OFFSET 0) e ON true
        LEFT JOIN LATERAL (
            SELECT x.status FROM {engine}.executions x
            WHERE x.instance_id = e.instance_id AND x.execution_id = e.current_execution_id
            OFFSET 0) ex ON true
    ),
    deletable AS (
        SELECT root_id FROM seen GROUP BY root_id
        HAVING pg_catalog.bool_and(present AND status IN ('Completed', 'Failed') AND NOT leased)
    ),
    l AS (
        SELECT ei.instance_id, ei.ctid, ei.current_execution_id FROM {engine}.instances ei
        WHERE ei.instance_id IN (SELECT s.instance_id FROM seen s JOIN deletable d USING (root_id))",
            $lock,
            "
    )
    SELECT seen.root_id, seen.instance_id, l.instance_id IS NOT NULL AS locked,
           l.ctid::text AS address,
           CASE WHEN l.instance_id IS NOT NULL THEN cur.status ELSE seen.status END AS status,
           seen.present, seen.leased
    FROM seen
    LEFT JOIN l ON l.instance_id = seen.instance_id
    -- The locked member's current execution, a primary-key probe (OFFSET 0 keeps it one).
    LEFT JOIN LATERAL (
        SELECT ex.status FROM {engine}.executions ex
        WHERE ex.instance_id = l.instance_id AND ex.execution_id = l.current_execution_id
        OFFSET 0) cur ON true"
        )
    };
}

pub(crate) const LOCK_TREES: &str = trees_then!(" FOR UPDATE SKIP LOCKED");

/// The dry-run twin of [`LOCK_TREES`]: a read-only transaction cannot lock; every member
/// of a deletable tree counts as locked.
pub(crate) const READ_TREES: &str = trees_then!(" OFFSET 0");

/// The orphan walk reads terminal executions only (Completed, Failed) and rules out young
/// ones by their completed_at from the index alone, instead of reading every execution of
/// every instance. Named apart from its predecessor `df_reconciler_terminal_executions`,
/// which also covered ContinuedAsNew (the bulk of a looping instance's executions): `check`
/// finds indexes by name, so it asks for this one and `migrate --indexes` creates it; the
/// predecessor still serves the walk until an operator drops it.
pub(crate) const SUPPORTING_INDEXES: [SupportingIndex; 1] = [SupportingIndex {
    name: "df_reconciler_completed_failed_executions",
    store: Store::Engine,
    table: "executions",
    columns: &["instance_id"],
    include: &["execution_id", "completed_at"],
    predicate: "status IN ('Completed', 'Failed')",
    why:
        "every pass reads all engine executions to find orphans instead of the terminal ones alone",
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_tables_are_the_queues() {
        let names: Vec<&str> = QUEUE_TABLES.iter().map(|t| t.name).collect();
        assert_eq!(names, ["orchestrator_queue", "worker_queue"]);
    }

    #[test]
    fn child_shape_sql_names_the_column() {
        let sql = child_shape("ei.instance_id");
        assert!(!sql.contains("$id"));
        assert_eq!(sql.matches("ei.instance_id").count(), 3);
    }
}
