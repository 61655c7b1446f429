//! Statements on the duroxide engine store alone.

use super::{InstanceTable, Store, SupportingIndex};

/// SQL twin of [`crate::policy::has_child_shape`] for a column named `$id`: composed
/// `{parent}::{execution}::{node}`, legacy `sub::{n}` and `…::sub::…`.
pub(crate) const CHILD_SHAPE: &str =
    "($id ~ '::[0-9]+::' OR $id LIKE 'sub::%' OR $id LIKE '%::sub::%')";

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
/// A batch deletes the leased ones (queues, instance locks) first, to learn of leases before
/// anything else goes; the engine has no foreign keys between these tables.
/// Preflight refuses to run when the engine has a per-instance table not listed here, so a
/// future engine version cannot make the daemon leave rows behind silently.
pub(crate) const PER_INSTANCE_TABLES: [InstanceTable; 8] = [
    InstanceTable {
        name: "history",
        key: "instance_id",
        locked: false,
        leased: false,
    },
    InstanceTable {
        name: "executions",
        key: "instance_id",
        locked: false,
        leased: false,
    },
    InstanceTable {
        name: "orchestrator_queue",
        key: "instance_id",
        locked: false,
        leased: true,
    },
    InstanceTable {
        name: "worker_queue",
        key: "instance_id",
        locked: false,
        leased: true,
    },
    InstanceTable {
        name: "instance_locks",
        key: "instance_id",
        locked: false,
        leased: true,
    },
    InstanceTable {
        name: "kv_delta",
        key: "instance_id",
        locked: false,
        leased: false,
    },
    InstanceTable {
        name: "kv_store",
        key: "instance_id",
        locked: false,
        leased: false,
    },
    InstanceTable {
        name: "instances",
        key: "instance_id",
        locked: true,
        leased: false,
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
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attname = 'instance_id'
      AND NOT a.attisdropped
    ORDER BY 1";

/// Every instance of the trees under the given roots (`$1`), following parent_instance_id
/// down, each locked without waiting: `locked` is false for a row another session holds (a
/// dispatcher). UNION (not UNION ALL) makes a cycle in hostile parent links terminate.
/// Expanding and locking in one statement saves a round trip and a second lookup per
/// instance in every batch. A locked row also gives its address (ctid), by which the batch
/// deletes it, and its current execution, whose status is read after locking. A given id
/// without an engine row comes back alone, with `present` false.
macro_rules! trees_then {
    ($lock:literal) => {
        concat!(
            "
    WITH RECURSIVE tree(root_id, instance_id) AS (
        -- Every given id, whether or not it has an engine row: the lock below finds the
        -- row, and only an id whose row it did not lock is looked up (`present`).
        SELECT r.id, r.id FROM unnest($1::text[]) AS r(id)
      UNION
        -- A probe of the parent index per member (OFFSET 0): as a join, the recursive
        -- step could be planned as a scan of the parent index from its first entry.
        SELECT tree.root_id, child.instance_id
        FROM tree
        CROSS JOIN LATERAL (
            SELECT c.instance_id FROM {engine}.instances c
            WHERE c.parent_instance_id = tree.instance_id
            OFFSET 0) child
    )
    SELECT tree.root_id, tree.instance_id, l.instance_id IS NOT NULL AS locked,
           l.ctid::text AS address, l.current_execution_id,
           l.instance_id IS NOT NULL
             OR EXISTS (SELECT 1 FROM {engine}.instances e
                        WHERE e.instance_id = tree.instance_id) AS present
    FROM tree
    LEFT JOIN LATERAL (
        SELECT ei.instance_id, ei.ctid, ei.current_execution_id FROM {engine}.instances ei
        WHERE ei.instance_id = tree.instance_id",
            $lock,
            ") l ON true"
        )
    };
}

pub(crate) const LOCK_TREES: &str = trees_then!(" FOR UPDATE SKIP LOCKED");

/// The dry-run twin of [`LOCK_TREES`]: a read-only transaction cannot lock; every instance
/// counts as locked. OFFSET 0 keeps the probe a probe (FOR UPDATE does that in the real
/// one): pulled up into a join, it was planned as a hash join over the whole instances
/// table, 90 ms per batch at 200k instead of 11.
pub(crate) const READ_TREES: &str = trees_then!(" OFFSET 0");

/// Status of the current executions `$2` of roots `$1`, read AFTER the roots' rows were
/// locked (which gave their current_execution_id; locked, it cannot change). For the
/// engine roots of expired df rows, whose df rows this batch holds locked; orphans need
/// [`super::reconcile::ROOT_STATE`], which also looks for a df row.
pub(crate) const ROOT_STATUS: &str = "
    SELECT r.id, ex.status
    FROM unnest($1::text[], $2::bigint[]) AS r(id, execution_id)
    LEFT JOIN {engine}.executions ex
           ON ex.instance_id = r.id AND ex.execution_id = r.execution_id";

/// Ids among `$1` that a dispatcher or worker holds a lease on right now (instance lock or
/// a locked queue item). `locked_until` is epoch milliseconds on the database clock. Read
/// by a dry run, which cannot delete; a real pass reads the leases of the rows as it
/// deletes them ([`super::InstanceTable::delete_reporting_leases`]).
pub(crate) const LEASED: &str = concat!(
    "
    WITH now_ms(ms) AS (SELECT ",
    now_epoch_ms!(),
    ")
    SELECT il.instance_id FROM {engine}.instance_locks il, now_ms
     WHERE il.instance_id = ANY($1::text[]) AND il.locked_until > now_ms.ms
    UNION
    SELECT oq.instance_id FROM {engine}.orchestrator_queue oq, now_ms
     WHERE oq.instance_id = ANY($1::text[]) AND oq.locked_until > now_ms.ms
    UNION
    SELECT wq.instance_id FROM {engine}.worker_queue wq, now_ms
     WHERE wq.instance_id = ANY($1::text[]) AND wq.locked_until > now_ms.ms"
);

/// The orphan walk reads terminal executions only and rules out young ones by their
/// completed_at from the index alone, instead of reading every execution of every instance.
pub(crate) const SUPPORTING_INDEXES: [SupportingIndex; 1] = [SupportingIndex {
    name: "df_reconciler_terminal_executions",
    store: Store::Engine,
    table: "executions",
    columns: &["instance_id"],
    include: &["execution_id", "completed_at"],
    predicate: "status IN ('Completed', 'Failed', 'ContinuedAsNew')",
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
