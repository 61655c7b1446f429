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
/// Only trees that look deletable are locked: the given id an engine root (no parent, no
/// child-shaped id), every member present, its current execution Completed or Failed (a
/// tree is settled only when every member ended), and no member leased (an instance lock
/// or queue item whose `locked_until` is ahead of the database clock). A tree the batch
/// will not delete is never locked, so a dispatcher acknowledging one of its instances
/// never waits for the rest of the batch. For every member the row
/// says whether this batch locked it (`locked`; false also for a row another session
/// holds), its address (ctid, by which the batch deletes it), its current execution's status
/// (read after locking for a locked member, from the snapshot otherwise), whether it has an
/// engine row at all (`present`), whether it was leased and whether it is a root
/// (`is_root`; a df row whose engine record is not one is inconsistent). A given id
/// without an engine row comes back alone, `present` false.
///
/// The status of a locked member is that of the current execution the lock returned.
/// Locking follows a row updated since the statement's snapshot to its newest version;
/// should the engine have moved the instance to a new generation meanwhile, that execution
/// is not in the snapshot and the status reads NULL (unknown: the tree stays). The one
/// snapshot of the statement is also the one `seen` read, so when the lock returned the
/// execution `seen` read, its status is the one `seen` has (no second probe); when it
/// returned another, NULL. An execution never leaves Completed or Failed, and a member
/// that ended cannot start children, so a tree whose members all read terminal is whole
/// and settled.
///
/// The lock reads the members by the row addresses `seen` read, not by a second probe of
/// the primary key (a TID scan: 1,500 members, 17 -> 13.5 ms on the real extension). The
/// addresses are those of row versions the statement's snapshot sees, which no one can
/// prune while it runs; a version updated since is followed to its newest one as above,
/// and a deleted one is not locked.
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
    -- The members with a live lease, as one set: three correlated probes per member cost
    -- a tenth of the statement even with the lease tables empty (1.3 of 10 ms per batch).
    leased AS (
        SELECT il.instance_id FROM {engine}.instance_locks il CROSS JOIN now_ms
        WHERE il.instance_id IN (SELECT instance_id FROM tree) AND il.locked_until > now_ms.ms
      UNION ALL
        SELECT oq.instance_id FROM {engine}.orchestrator_queue oq CROSS JOIN now_ms
        WHERE oq.instance_id IN (SELECT instance_id FROM tree) AND oq.locked_until > now_ms.ms
      UNION ALL
        SELECT wq.instance_id FROM {engine}.worker_queue wq CROSS JOIN now_ms
        WHERE wq.instance_id IN (SELECT instance_id FROM tree) AND wq.locked_until > now_ms.ms
    ),
    -- Each member as the snapshot shows it: one probe of the instance and its current
    -- execution, by primary key (OFFSET 0).
    seen AS (
        SELECT tree.root_id, tree.instance_id, e.instance_id IS NOT NULL AS present,
               e.address, e.current_execution_id, e.status, e.is_root,
               tree.instance_id IN (SELECT instance_id FROM leased) AS leased
        FROM tree
        LEFT JOIN LATERAL (
            SELECT ei.instance_id, ei.ctid AS address, ei.current_execution_id, x.status,
                   -- Asked of the given ids only (a descendant is no root by its link).
                   CASE WHEN tree.instance_id = tree.root_id
                        THEN ei.parent_instance_id IS NULL AND NOT {ei_is_child} END AS is_root
            FROM {engine}.instances ei
            LEFT JOIN {engine}.executions x
                   ON x.instance_id = ei.instance_id AND x.execution_id = ei.current_execution_id
            WHERE ei.instance_id = tree.instance_id OFFSET 0) e ON true
    ),
    deletable AS (
        SELECT root_id FROM seen GROUP BY root_id
        HAVING pg_catalog.bool_and(present AND status IN ('Completed', 'Failed') AND NOT leased
                                   AND (instance_id <> root_id OR is_root))
    ),
    l AS (
        SELECT ei.instance_id, ei.ctid, ei.current_execution_id FROM {engine}.instances ei
        WHERE ei.ctid = ANY (ARRAY(SELECT s.address FROM seen s JOIN deletable d USING (root_id)))",
            $lock,
            "
    )
    SELECT seen.root_id, seen.instance_id, l.instance_id IS NOT NULL AS locked,
           l.ctid::text AS address,
           CASE WHEN l.instance_id IS NULL THEN seen.status
                WHEN l.current_execution_id = seen.current_execution_id THEN seen.status
           END AS status,
           seen.present, seen.leased, coalesce(seen.is_root, false) AS is_root
    FROM seen
    LEFT JOIN l ON l.instance_id = seen.instance_id"
        )
    };
}

pub(crate) const LOCK_TREES: &str = trees_then!(" FOR UPDATE SKIP LOCKED");

/// The dry-run twin of [`LOCK_TREES`]: a read-only transaction cannot lock; every member
/// of a deletable tree counts as locked.
pub(crate) const READ_TREES: &str = trees_then!(" OFFSET 0");

/// The prunable generations of the engine instance `s` (columns `s.instance_id`,
/// `s.current_execution_id`), oldest first, as a lateral subquery `x(execution_id)` that
/// reads only that instance's executions (primary-key range scans). `$after`
/// is an extra condition on `x.execution_id` (the keyset), `$limit` bounds the rows.
///
/// A generation is prunable when all of these hold:
/// - it is not among the newest `keep_last` executions of its instance (the current one
///   counts among them), and it is not the current execution (not even with gaps);
/// - it ended: its status is ContinuedAsNew, Completed or Failed (never Running, never a
///   status we do not know);
/// - it ended before `ended_before`: its completed_at, else when its successor started
///   (a ContinuedAsNew generation has no completed_at; it ended when the next began, and
///   any non-current generation ended at the latest then);
/// - no worker queue item references it: an activity of an old generation is cancelled by
///   the engine when the generation ends and its completion, should one still come, is
///   dropped by the engine as stale; until the item is gone the generation stays, so
///   pruning never removes the execution of work still in flight.
///
/// `keep_last` and `ended_before` come from the lateral `policy`, one row per instance:
/// the `keep_executions` and `now - execution_min_age` of the instance's retention rule,
/// from the per-rule arrays `$keep` (integer[]) and `$ended_before` (timestamptz[]) at
/// the rule index (see [`crate::rules`]; `$1` and `$2` carry the rules' LIKE patterns and
/// role OIDs, as in every statement using `{rule_of_d}`). The rule is that of the df row
/// of the instance's root: the instance itself, or for a child the first part of its
/// composed id (`{root}::{execution}::{node}`). An instance without such a df row (an
/// orphan, a legacy `sub::` child) falls under the top-level keys, the arrays' last
/// element.
macro_rules! prunable_generations {
    ($keep:literal, $ended_before:literal, $after:literal, $limit:literal) => {
        concat!(
            "
    CROSS JOIN LATERAL (
        SELECT (",
            $keep,
            "::integer[])[p.rule]::bigint AS keep_last,
               (",
            $ended_before,
            "::timestamptz[])[p.rule] AS ended_before
        FROM (SELECT coalesce(
                  (SELECT {rule_of_d} FROM {control}.instances d
                    WHERE d.id::text = pg_catalog.split_part(s.instance_id, '::', 1)),
                  pg_catalog.array_length(",
            $keep,
            "::integer[], 1)) AS rule,
                     -- Typed even where no rule reads them (`{rule_of_d}` is then `1`).
                     $1::text[] AS labels, $2::oid[] AS roles) p) policy
    -- The oldest execution kept for its rank: the keep_last-th newest.
    CROSS JOIN LATERAL (
        SELECT k.execution_id FROM {engine}.executions k
        WHERE k.instance_id = s.instance_id
        ORDER BY k.execution_id DESC OFFSET policy.keep_last - 1 LIMIT 1) kept_from
    CROSS JOIN LATERAL (
        SELECT g.execution_id
        FROM {engine}.executions g
        LEFT JOIN LATERAL (
            SELECT n.started_at FROM {engine}.executions n
            WHERE n.instance_id = g.instance_id AND n.execution_id > g.execution_id
            ORDER BY n.execution_id LIMIT 1) next ON true
        WHERE g.instance_id = s.instance_id
          AND g.execution_id < kept_from.execution_id
          AND g.execution_id < s.current_execution_id
          AND g.status IN ('ContinuedAsNew', 'Completed', 'Failed')
          AND coalesce(g.completed_at, next.started_at) < policy.ended_before
          AND NOT EXISTS (SELECT 1 FROM {engine}.worker_queue wq
                           WHERE wq.instance_id = g.instance_id
                             AND wq.execution_id = g.execution_id)
          AND ",
            $after,
            "
        ORDER BY g.execution_id
        LIMIT ",
            $limit,
            ") x"
        )
    };
}

/// One step of the walk of [`GENERATION_CANDIDATES`] at the instance `$at.instance_id`:
/// its instances row (`i`, absent for hostile leftovers: nothing of it is prunable) and its
/// prunable generations, at most `$limit` of them (`c.ids`, oldest first, and how many,
/// `c.k`), so the walk stops once it has found a batch.
macro_rules! generation_walk_step {
    ($at:literal, $limit:literal) => {
        concat!(
            "
        LEFT JOIN LATERAL (
            SELECT ei.current_execution_id FROM {engine}.instances ei
            WHERE ei.instance_id = ",
            $at,
            ".instance_id OFFSET 0) i ON true
        CROSS JOIN LATERAL (
            SELECT pg_catalog.count(*) AS k,
                   pg_catalog.array_agg(x.execution_id ORDER BY x.execution_id) AS ids
            FROM (SELECT ",
            $at,
            ".instance_id, i.current_execution_id) s",
            prunable_generations!(
                "$6",
                "$7",
                "($3::text IS NULL OR s.instance_id > $3::text OR g.execution_id > $4::bigint)",
                $limit
            ),
            ") c"
        )
    };
}

/// The next prunable generations after the keyset position (`$3` instance id, `$4`
/// execution id; `$3` NULL: from the start; `$8` false: past every generation of `$3`), at
/// most `$5` of them, over a window of at most `$5` engine instances (roots and children
/// alike) from `$3` on, so a batch reads a bounded number of instances however few of them
/// have anything to prune. `$1`, `$2`: the rules' LIKE patterns and role OIDs; `$6`:
/// `keep_executions` per rule index; `$7`: now - `execution_min_age` per rule index (NULL:
/// nothing is that old). See `prunable_generations!`.
///
/// The window holds only instances with a ContinuedAsNew execution: the engine starts a new
/// execution of an instance only by continuing it as new, so an instance without one has a
/// single generation. The walk goes from one such instance to the next, a probe of
/// `df_reconciler_continued_executions` each (an instance running no loop costs nothing);
/// without that index each probe reads the executions in between, every execution once per
/// pass.
///
/// The walk collects each instance's prunable generations as it goes and stops once it has
/// `$5` (or has walked `$5` instances), so a batch reads about `$5` generations, never
/// every generation of its window.
///
/// Rows: (instance id, execution id) in keyset order, then one last row with a NULL
/// execution id whose instance id is the walk's last instance (NULL when the walk is
/// empty): where the keyset goes on when the walk held fewer than `$5` prunable
/// generations.
pub(crate) const GENERATION_CANDIDATES: &str = concat!(
    "
    WITH RECURSIVE walk(instance_id, n, taken, ids) AS (
        (SELECT first.instance_id, 1::bigint, c.k, c.ids
           FROM (SELECT x.instance_id FROM {engine}.executions x
                  WHERE x.status = 'ContinuedAsNew'
                    AND ($3::text IS NULL
                         OR (x.instance_id >= $3::text AND (x.instance_id > $3::text OR $8::boolean)))
                  ORDER BY x.instance_id LIMIT 1) first",
    generation_walk_step!("first", "$5::bigint"),
    ")
      UNION ALL
        SELECT nx.instance_id, walk.n + 1, walk.taken + c.k, c.ids
        FROM walk
        CROSS JOIN LATERAL (
            SELECT x.instance_id FROM {engine}.executions x
            WHERE x.status = 'ContinuedAsNew' AND x.instance_id > walk.instance_id
            ORDER BY x.instance_id LIMIT 1) nx",
    generation_walk_step!("nx", "$5::bigint - walk.taken"),
    "
        WHERE walk.n < $5::bigint AND walk.taken < $5::bigint
    )
    SELECT w.instance_id, g.execution_id, 0 AS part
    FROM walk w CROSS JOIN LATERAL pg_catalog.unnest(w.ids) AS g(execution_id)
    UNION ALL
    SELECT pg_catalog.max(w.instance_id), NULL::bigint, 1 FROM walk w
    ORDER BY 3, 1, 2
    LIMIT $5::bigint + 1"
);

/// How many generations are prunable right now, over every engine instance with a
/// ContinuedAsNew execution (the backlog figure of the drift report). `$1`, `$2`, `$3`,
/// `$4`: as `$1`, `$2`, `$6`, `$7` of [`GENERATION_CANDIDATES`].
pub(crate) const GENERATIONS_WAITING: &str = concat!(
    "
    SELECT pg_catalog.count(*)
    FROM (SELECT DISTINCT x.instance_id FROM {engine}.executions x
           WHERE x.status = 'ContinuedAsNew') looping
    JOIN {engine}.instances s ON s.instance_id = looping.instance_id",
    prunable_generations!("$3", "$4", "true", "ALL")
);

/// How many generations of each engine instance in `$5` (text[]) the pruning phase would
/// prune now, for `explain`: the same predicate as [`GENERATIONS_WAITING`] (`$1`..`$4`
/// alike), one row per id.
pub(crate) const PRUNABLE_GENERATIONS_OF: &str = concat!(
    "
    SELECT m.instance_id,
           (SELECT pg_catalog.count(*)
            FROM {engine}.instances s",
    prunable_generations!("$3", "$4", "true", "ALL"),
    "
            WHERE s.instance_id = m.instance_id
              AND EXISTS (SELECT 1 FROM {engine}.executions c
                           WHERE c.instance_id = s.instance_id AND c.status = 'ContinuedAsNew'))
    FROM pg_catalog.unnest($5::text[]) AS m(instance_id)"
);

/// Locks the candidate generations (`$1` instance ids, `$2` execution ids, pairwise) that
/// are still prunable, skipping rows another session holds, and returns (instance id,
/// execution id, row address). Rechecked under the lock: still ended and not the current
/// execution, no worker queue item references it, and its instance is not leased (an
/// instance lock whose `locked_until` is ahead of the database clock: a dispatcher is
/// running a turn of it; its generations wait for a later pass). The age needs no recheck:
/// an ended generation's end never moves, and the keep-count only grows more permissive
/// as new generations start.
macro_rules! generations_then {
    ($lock:literal) => {
        concat!(
            "
    SELECT x.instance_id, x.execution_id, x.ctid::text
    FROM {engine}.executions x
    WHERE (x.instance_id, x.execution_id) IN (
            SELECT c.instance_id, c.execution_id
            FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::bigint[]))
                AS c(instance_id, execution_id))
      AND x.status IN ('ContinuedAsNew', 'Completed', 'Failed')
      AND x.execution_id < (SELECT i.current_execution_id FROM {engine}.instances i
                             WHERE i.instance_id = x.instance_id)
      AND NOT EXISTS (SELECT 1 FROM {engine}.worker_queue wq
                       WHERE wq.instance_id = x.instance_id AND wq.execution_id = x.execution_id)
      AND NOT EXISTS (SELECT 1 FROM {engine}.instance_locks il
                       WHERE il.instance_id = x.instance_id AND il.locked_until > ",
            now_epoch_ms!(),
            ")",
            $lock
        )
    };
}

pub(crate) const LOCK_GENERATIONS: &str = generations_then!(" FOR UPDATE OF x SKIP LOCKED");

/// The dry-run twin of [`LOCK_GENERATIONS`]: the same rows, read without locking.
pub(crate) const READ_GENERATIONS: &str = generations_then!("");

/// The tables whose rows belong to one execution, deleted with it, in this order: its
/// history, then the execution itself (by the address its lock returned). The engine keeps
/// no other per-execution rows: kv_store's `execution_id` names the execution that last
/// wrote an instance-scoped key (the engine's own pruning keeps those rows too), and a
/// worker queue item of a generation keeps that generation (see `prunable_generations!`).
pub(crate) const GENERATION_TABLES: [&str; 2] = ["history", "executions"];

/// History rows of the generations `$1` (instance ids), `$2` (execution ids), pairwise.
macro_rules! generation_history {
    ($verb:literal, $using:literal) => {
        concat!(
            $verb,
            " {engine}.history h ",
            $using,
            " ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::bigint[]))
                AS c(instance_id, execution_id)
             WHERE h.instance_id = c.instance_id AND h.execution_id = c.execution_id"
        )
    };
}

pub(crate) const DELETE_GENERATION_HISTORY: &str = generation_history!("DELETE FROM", "USING");

/// The dry-run twin of [`DELETE_GENERATION_HISTORY`]: the same rows, counted.
pub(crate) const COUNT_GENERATION_HISTORY: &str =
    generation_history!("SELECT pg_catalog.count(*) FROM", ", ");

/// The locked executions `$1` (instance ids), `$2` (execution ids) at the addresses `$3`
/// their lock returned, triple-wise; the caller checks every one matched.
pub(crate) const DELETE_GENERATION_EXECUTIONS: &str = "
    DELETE FROM {engine}.executions x
    USING ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::bigint[]),
                     pg_catalog.unnest($3::text[])) AS c(instance_id, execution_id, address)
    WHERE x.ctid = c.address::tid AND x.instance_id = c.instance_id
      AND x.execution_id = c.execution_id";

/// The orphan walk reads terminal executions only (Completed, Failed) and rules out young
/// ones by their completed_at from the index alone, instead of reading every execution of
/// every instance. Named apart from its predecessor `df_reconciler_terminal_executions`,
/// which also covered ContinuedAsNew (the bulk of a looping instance's executions): `check`
/// finds indexes by name, so it asks for this one and `migrate --indexes` creates it; the
/// predecessor still serves the walk until an operator drops it.
///
/// The pruning walk goes from one instance with a ContinuedAsNew execution to the next
/// ([`GENERATION_CANDIDATES`]): with `df_reconciler_continued_executions` a probe each,
/// so instances that run no loop cost nothing.
pub(crate) const SUPPORTING_INDEXES: [SupportingIndex; 2] = [
    SupportingIndex {
        name: "df_reconciler_completed_failed_executions",
        store: Store::Engine,
        table: "executions",
        columns: &["instance_id"],
        include: &["execution_id", "completed_at"],
        predicate: "status IN ('Completed', 'Failed')",
        why: "every pass reads all engine executions to find orphans instead of the terminal ones alone",
    },
    SupportingIndex {
        name: "df_reconciler_continued_executions",
        store: Store::Engine,
        table: "executions",
        columns: &["instance_id", "execution_id"],
        include: &[],
        predicate: "status = 'ContinuedAsNew'",
        why: "every pass reads all engine executions to find the looping instances whose old generations it prunes",
    },
];

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
