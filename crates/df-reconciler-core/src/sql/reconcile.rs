//! The cross-store selections: set differences between `df` and the engine store, computed
//! by anti-joins in the database, never by lists held in memory.
//!
//! Shared vocabulary: `d` is a df.instances row, `ei` the engine instance with the same id,
//! `ex` its current execution. terminal_at = coalesce(d.completed_at, ex.completed_at,
//! d.created_at): server-controlled values only, never the user-writable updated_at.

/// Names terminal_at of every df row `d`. The engine's completed_at is read only where the
/// df row has none: COALESCE evaluates its arguments lazily, so the probe (two primary-key
/// reads) runs for those rows alone. pg_durable sets completed_at on every terminal df
/// row, so the hard-cap edge, which ranks every terminal row, reads the df side only
/// (40,000 rows: 396 -> 36 ms on the real extension).
macro_rules! df_with_engine {
    () => {
        concat!(
            "
    FROM {control}.instances d",
            terminal_at_of_d!()
        )
    };
}

/// [`df_with_engine`]'s terminal_at `t` of the df row `d` already in the FROM list.
macro_rules! terminal_at_of_d {
    () => {
        "
    CROSS JOIN LATERAL (
        SELECT coalesce(
            d.completed_at,
            (SELECT ex.completed_at
             FROM {engine}.instances ei
             JOIN {engine}.executions ex
               ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
             WHERE ei.instance_id = d.id::text),
            d.created_at) AS terminal_at) t"
    };
}

/// The database clock at the start of a pass, and the oldest-open-transaction guard: the
/// start of the oldest transaction another session of this database has open, else now.
/// Run first in the clock's transaction: its read of pg_stat_activity fixes the activity
/// snapshot for the rest of that transaction (see [`ORPHAN_GUARD`]).
pub(crate) const PASS_CLOCK: &str = "
    SELECT pg_catalog.now(),
           coalesce(
               (SELECT pg_catalog.min(a.xact_start) FROM pg_catalog.pg_stat_activity a
                 WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()
                   AND a.xact_start IS NOT NULL),
               pg_catalog.now()) AS oldest_open_xact";

/// Whether the open-transaction guard sees every transaction that may still commit a df
/// row (otherwise no orphan is reclaimed):
/// - `sees_all_sessions`: the role USES pg_read_all_stats's privileges, which is what
///   pg_stat_activity checks (a NOINHERIT member is a MEMBER but not a user of them); a
///   superuser does too;
/// - `hidden_sessions`: other sessions of this database whose transaction start is hidden
///   (a row shown without its details, or a session with `track_activities = off`);
/// - `prepared_transactions`: prepared transactions in this database; their start is
///   unknown (pg_prepared_xacts has only the PREPARE time).
///
/// In the pass it runs right after [`PASS_CLOCK`], in the same transaction: the sessions
/// are those of the same activity snapshot, and prepared transactions are read after it,
/// so a transaction that PREPAREs in between is seen in one or the other.
pub(crate) const ORPHAN_GUARD: &str = "
    SELECT pg_catalog.pg_has_role('pg_read_all_stats'::name, 'USAGE'::text)
             OR coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER), false)
             AS sees_all_sessions,
           (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
             WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()
               AND (a.backend_start IS NULL OR a.state = 'disabled')) AS hidden_sessions,
           (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_xacts p
             WHERE p.database = pg_catalog.current_database()) AS prepared_transactions";

/// Drift "df live, engine ended": pending/running df rows whose engine root's current
/// execution ended (Completed or Failed; ContinuedAsNew is a live instance between
/// generations) before `$1` (now - orphan_min_age), by its completed_at. A rolled-back
/// `df.cancel()` leaves exactly this: the engine's cancel commits on its own connection,
/// the df update rolls back. Reported (`check`, drift), never deleted.
macro_rules! df_live_engine_ended {
    () => {
        "SELECT pg_catalog.count(*)
         FROM {control}.instances d
         JOIN {engine}.instances ei ON ei.instance_id = d.id::text
         JOIN {engine}.executions ex
           ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
        WHERE d.status IN ('pending', 'running')
          AND ex.status IN ('Completed', 'Failed')
          AND ex.completed_at < $1::timestamptz"
    };
}

/// [`DRIFT`]'s "df live, engine ended" count alone, for `check`. `$1`: now - orphan_min_age.
pub(crate) const DF_LIVE_ENGINE_ENDED: &str = df_live_engine_ended!();

/// The batch fence: one batch at a time across replicas (`$1` = `locks::BATCH_FENCE`).
/// Transaction-scoped, so it also works behind a transaction-pooling proxy.
pub(crate) const TRY_BATCH_FENCE: &str = "SELECT pg_catalog.pg_try_advisory_xact_lock($1::bigint)";

/// What a batch reads as load at its start, for pacing (`pass.busy_duty_percent`):
/// - `engine_work`: the engine at work. A queue item that became visible within the last
///   10 seconds (a running engine takes a ready item within one poll, ~0.1 s; older ready
///   items are a stopped engine's, or leftovers of ended instances), or a lease in force on
///   an instance or a queue item (a dispatcher's turn, an activity running). Each probe is
///   one descent of the engine's own indexes on `visible_at`, `lock_token` and
///   `locked_until`. The engine's dispatchers polling empty queues are not work.
/// - `other_sessions`: other client sessions of this database running a statement, or
///   inside a transaction that did something within the last second (short transactions
///   spend most of their time between statements; a session idle in a transaction for
///   longer is not working). pg_durable's own dispatcher, heartbeat and management
///   connections (by `application_name`) are left out: they run short statements all the
///   time, busy or idle, and the engine's work is read from its queues instead. Its
///   connections that run workflow SQL, and every application session, count.
/// - `lock_waits`: sessions of this database waiting for a lock.
/// - `engine_behind`: a queue item not leased that became visible 1 to 10 seconds ago: it
///   has waited for a dispatcher ten times as long as a poll takes, so the engine is not
///   keeping up with its work (its latency grows), and the pass waits for it to catch up.
///
/// Outside a transaction too: a pass re-reads it between batches while the engine is
/// behind.
///
/// A role without pg_read_all_stats sees only its own sessions' states and waits; the
/// engine's work it reads all the same.
pub(crate) const DATABASE_LOAD: &str = concat!(
    "
    SELECT EXISTS (SELECT 1 FROM {engine}.orchestrator_queue q
                    WHERE q.visible_at <= pg_catalog.now()
                      AND q.visible_at > pg_catalog.now() - interval '10 seconds')
           OR EXISTS (SELECT 1 FROM {engine}.worker_queue q
                       WHERE q.visible_at <= pg_catalog.now()
                         AND q.visible_at > pg_catalog.now() - interval '10 seconds')
           OR EXISTS (SELECT 1 FROM {engine}.instance_locks l
                       WHERE l.locked_until > now_ms.ms)
           OR EXISTS (SELECT 1 FROM {engine}.orchestrator_queue q
                       WHERE q.lock_token IS NOT NULL AND q.locked_until > now_ms.ms)
           OR EXISTS (SELECT 1 FROM {engine}.worker_queue q
                       WHERE q.lock_token IS NOT NULL AND q.locked_until > now_ms.ms)
             AS engine_work,
           (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
             WHERE a.datname = pg_catalog.current_database()
               AND a.pid <> pg_catalog.pg_backend_pid()
               AND a.backend_type = 'client backend'
               AND a.application_name NOT IN ('pg_durable:worker:duroxide',
                                               'pg_durable:worker:poll',
                                               'pg_durable:worker:management')
               AND (a.state = 'active'
                    OR (a.state LIKE 'idle in transaction%'
                        AND a.state_change > pg_catalog.clock_timestamp() - interval '1 second')))
             AS other_sessions,
           (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
             WHERE a.datname = pg_catalog.current_database()
               AND a.pid <> pg_catalog.pg_backend_pid()
               AND a.wait_event_type = 'Lock')
             AS lock_waits,
           EXISTS (SELECT 1 FROM {engine}.orchestrator_queue q
                    WHERE q.visible_at <= pg_catalog.now() - interval '1 second'
                      AND q.visible_at > pg_catalog.now() - interval '10 seconds'
                      AND (q.lock_token IS NULL OR q.locked_until <= now_ms.ms))
           OR EXISTS (SELECT 1 FROM {engine}.worker_queue q
                       WHERE q.visible_at <= pg_catalog.now() - interval '1 second'
                         AND q.visible_at > pg_catalog.now() - interval '10 seconds'
                         AND (q.lock_token IS NULL OR q.locked_until <= now_ms.ms))
             AS engine_behind
      FROM (SELECT ",
    now_epoch_ms!(),
    " AS ms) AS now_ms"
);

/// The rule of each df row `d` (see [`crate::rules`]): `r.rule`, its 1-based index into
/// the per-rule arrays. Every statement using it binds the rules' LIKE patterns at `$1`
/// and their role OIDs at `$2`; `{rule_of_d}` is rendered per pass from the rules in
/// force, with positions only. OFFSET 0 evaluates the rule once per row: inlined, every
/// reference below would evaluate it again.
macro_rules! rule_of_d {
    () => {
        "
    CROSS JOIN LATERAL (SELECT {rule_of_d} AS rule, $1::text[] AS labels, $2::oid[] AS roles
                        OFFSET 0) r"
    };
}

/// How many terminal df rows of the rules `$4` there are, counting no further than `$3`:
/// when there are no more than their hard cap, [`CAP_EDGE`] (a join and sort of every
/// terminal row of those rules) is skipped. `$1`, `$2`: see `rule_of_d`.
pub(crate) const TERMINAL_COUNT_UP_TO: &str = concat!(
    "
    SELECT pg_catalog.count(*) FROM (
        SELECT 1 FROM {control}.instances d",
    rule_of_d!(),
    "
        WHERE d.status IN ('completed', 'failed', 'cancelled')
          AND r.rule = ANY ($4::integer[])
        LIMIT $3) AS t"
);

/// The hard-cap edge of the rules `$4` (a rule with its own cap, or the default and every
/// rule without one): the newest of their terminal rows that falls outside their newest
/// `$3` (ordered by terminal_at, then id; unknown terminal_at counts as newest). Every row
/// of those rules at or below the edge is over their cap. No row: the cap is not reached.
/// `$1`, `$2`: see `rule_of_d`.
pub(crate) const CAP_EDGE: &str = concat!(
    "
    SELECT t.terminal_at, d.id::text",
    df_with_engine!(),
    rule_of_d!(),
    "
    WHERE d.status IN ('completed', 'failed', 'cancelled')
      AND r.rule = ANY ($4::integer[])
    ORDER BY t.terminal_at DESC NULLS FIRST, d.id DESC
    OFFSET $3 LIMIT 1"
);

/// A lower bound of terminal_at from the df row alone: completed_at when set (then it IS
/// terminal_at), else created_at minus a day. The engine completes an instance after its df
/// row was created (df.start() writes both in one transaction and the engine only sees it
/// after COMMIT, on the same database clock), so its completed_at, the only other source,
/// is never earlier; the day covers any clock skew. Unknown (-infinity) means "look".
macro_rules! terminal_at_lower_bound {
    () => {
        "coalesce(d.completed_at, d.created_at - interval '1 day', '-infinity')"
    };
}

/// What [`EXPIRED_CANDIDATES`] and [`EXPLAIN_EXPIRED`] share: `d`'s rule `r`, and its
/// cutoff and cap edge `m`. `$5`, `$6`, `$7`: cutoff per rule of completed, failed,
/// cancelled rows (NULL = nothing expires); `$8`, `$9`: cap edge per rule (terminal_at,
/// id; NULL id = cap not reached).
macro_rules! expiry_limits_of_d {
    () => {
        concat!(
            "
    FROM {control}.instances d",
            rule_of_d!(),
            "
    CROSS JOIN LATERAL (
        SELECT CASE d.status WHEN 'completed' THEN ($5::timestamptz[])[r.rule]
                             WHEN 'failed' THEN ($6::timestamptz[])[r.rule]
                             ELSE ($7::timestamptz[])[r.rule] END AS cutoff,
               ($8::timestamptz[])[r.rule] AS edge_at,
               ($9::text[])[r.rule] AS edge_id) m"
        )
    };
}

/// [`EXPLAIN_EXPIRED`]'s rows: [`expiry_limits_of_d`], the engine probe `e` (the root's
/// current execution, and whether the record is a root) and terminal_at `t`.
macro_rules! expired_from {
    () => {
        concat!(
            expiry_limits_of_d!(),
            "
    -- A probe per remaining df row; OFFSET 0 keeps it one. Joined, the planner merged the
    -- engine's ids in order, reading every engine row the df side had ruled out.
    LEFT JOIN LATERAL (
        SELECT ei.instance_id, ex.status, ex.completed_at,
               ei.parent_instance_id IS NULL AND NOT {ei_is_child} AS is_root
        FROM {engine}.instances ei
        LEFT JOIN {engine}.executions ex
               ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
        WHERE ei.instance_id = d.id::text
        OFFSET 0) e ON true
    CROSS JOIN LATERAL (SELECT coalesce(d.completed_at, e.completed_at, d.created_at) AS terminal_at) t"
        )
    };
}

/// The df row alone can be expired: its terminal_at lower bound is before its cutoff or
/// at/below its cap edge. Rules out most rows before the engine probe.
macro_rules! may_be_expired {
    () => {
        concat!(
            "(",
            terminal_at_lower_bound!(),
            " < m.cutoff
           OR (m.edge_id IS NOT NULL
               AND (m.edge_at IS NULL OR ",
            terminal_at_lower_bound!(),
            " <= m.edge_at)))"
        )
    };
}

/// Expired: terminal_at known, and before its rule's cutoff or at/below its rule's cap edge.
macro_rules! is_expired {
    () => {
        "(t.terminal_at IS NOT NULL
      AND (t.terminal_at < m.cutoff
           OR (m.edge_id IS NOT NULL
               AND (m.edge_at IS NULL
                    OR t.terminal_at < m.edge_at
                    OR (t.terminal_at = m.edge_at AND d.id::text <= m.edge_id)))))"
    };
}

/// The columns [`EXPLAIN_EXPIRED`] returns before its own.
macro_rules! expired_columns {
    () => {
        "
    SELECT d.id::text,
           d.status,
           coalesce(t.terminal_at < m.cutoff, false) AS window_expired,
           e.instance_id IS NOT NULL AS has_engine_record,
           coalesce(e.is_root, false) AS engine_is_root,
           e.status AS engine_status,
           t.terminal_at,
           r.rule"
    };
}

/// The next keyset batch of expired terminal df rows after the watermark `$3`, at most `$4`:
/// terminal_at known and before its rule's cutoff for the row's status, or at/below its
/// rule's cap edge (see `expiry_limits_of_d` for `$5`..`$9`, `rule_of_d` for `$1`, `$2`).
/// Columns: id, status, window_expired, terminal_at, rule.
///
/// The df row alone rules out most rows (see `terminal_at_lower_bound`), and the engine is
/// read only for a row without completed_at (see `df_with_engine`): whether the engine
/// record is a root and has ended is read once, by the statement that locks the trees
/// ([`super::engine::LOCK_TREES`]), in its own snapshot. Reading it here too cost a second
/// probe of every root (1,000 roots: 5.3 -> 1 ms per batch on the real extension).
/// With the supporting index `df_reconciler_terminal_instances` and no rules, the walk
/// reads terminal rows from the index alone; a rule's label or role is read from the row.
pub(crate) const EXPIRED_CANDIDATES: &str = concat!(
    "
    SELECT d.id::text,
           d.status,
           coalesce(t.terminal_at < m.cutoff, false) AS window_expired,
           t.terminal_at,
           r.rule",
    expiry_limits_of_d!(),
    terminal_at_of_d!(),
    "
    WHERE ($3::text IS NULL OR d.id::text > $3::text)
      AND d.status IN ('completed', 'failed', 'cancelled')
      AND ",
    may_be_expired!(),
    "
      AND ",
    is_expired!(),
    "
    ORDER BY d.id
    LIMIT $4"
);

/// [`EXPIRED_CANDIDATES`] for the one df row `$3` (`$4` = 1), whether selected or not:
/// `explain`'s view of it, with the same predicates, as a last column `selected`, and
/// what the engine holds for it (the pass reads that when it locks the tree).
pub(crate) const EXPLAIN_EXPIRED: &str = concat!(
    expired_columns!(),
    ",
           d.status IN ('completed', 'failed', 'cancelled') AND ",
    may_be_expired!(),
    " AND ",
    is_expired!(),
    " AS selected,
           m.cutoff, m.edge_at, m.edge_id",
    expired_from!(),
    "
    WHERE d.id::text = $3::text
    LIMIT $4"
);

/// The OID of each role named in `$1` (NULL elements stay NULL; a name that is no role
/// gives NULL), in order: the rules' `submitted_by`, resolved once per pass.
pub(crate) const RULE_ROLES: &str = "
    SELECT ro.oid
    FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS r(name, i)
    LEFT JOIN pg_catalog.pg_roles ro ON ro.rolname = r.name::name
    ORDER BY r.i";

/// An orphan root's instance row `ei` (with its current execution `ex`): a root, created
/// before the oldest open transaction `$4`, aged (completed_at, else updated_at) before
/// `$3`, and without a df row.
macro_rules! orphan_instance {
    () => {
        "ei.parent_instance_id IS NULL
          AND NOT {ei_is_child}
          AND ei.created_at < $4::timestamptz
          AND coalesce(ex.completed_at, ei.updated_at) < $3::timestamptz
          AND NOT EXISTS (SELECT 1 FROM {control}.instances d WHERE d.id::text = ei.instance_id)"
    };
}

/// An orphan root's current execution `ex`: terminal, and not completed after `$3`.
macro_rules! orphan_execution {
    () => {
        "ex.status IN ('Completed', 'Failed')
      AND (ex.completed_at < $3::timestamptz OR ex.completed_at IS NULL)"
    };
}

/// The next keyset batch of orphan engine roots after the watermark `$1`, at most `$2`:
/// roots (no parent AND not child-shaped) with no df row, current execution terminal
/// (Completed or Failed; ContinuedAsNew is a loop between generations, live), aged
/// (completed_at, else updated_at) before `$3`, created before the oldest open transaction
/// `$4`. Young orphans are filtered here, so they cannot hide old ones. Whether the rest of
/// the tree has ended too is read when the batch locks it.
///
/// Walks terminal executions (from the supporting index
/// `df_reconciler_completed_failed_executions` when present; its predicate is this
/// statement's status filter) and rules out young ones by their completed_at, children by
/// their id's shape and df-owned roots by a probe of the df row, before it reads the
/// instance (one probe each).
pub(crate) const ORPHAN_CANDIDATES: &str = concat!(
    "
    SELECT ex.instance_id, ex.status, coalesce(ex.completed_at, ei.updated_at) AS aged_from
    FROM {engine}.executions ex
    CROSS JOIN LATERAL (
        SELECT ei.updated_at
        FROM {engine}.instances ei
        WHERE ei.instance_id = ex.instance_id
          AND ei.current_execution_id = ex.execution_id
          AND ",
    orphan_instance!(),
    "
        OFFSET 0) ei
    WHERE ($1::text IS NULL OR ex.instance_id > $1::text)
      AND ",
    orphan_execution!(),
    "
      -- Ruled out by the execution's own id before the instance is read: a child by its
      -- shape, a root by its df row. Every retained terminal instance passes through this
      -- walk on every pass, nearly all of them children or roots with a df row. The df
      -- ids are bounded by the watermark too (the same rows: ex.instance_id is past it),
      -- so the anti-join, merged in id order, reads them from the watermark on, not from
      -- the first one on every batch (60,000 executions, 40,000 with a df row, on the real
      -- extension: 150-220 ms reading each instance, 65-75 ms probing the df index per
      -- row, 35-40 ms merged).
      AND NOT {ex_is_child}
      AND NOT EXISTS (SELECT 1 FROM {control}.instances d WHERE d.id::text = ex.instance_id
                      AND ($1::text IS NULL OR d.id::text > $1::text))
    ORDER BY ex.instance_id
    LIMIT $2"
);

/// [`ORPHAN_CANDIDATES`]'s predicates for the one engine instance `$1` (`$2` = 1), whether
/// selected or not, with each part apart for `explain`: its current execution's status,
/// aged_from, created_at, whether it is a root, has a df row, is old enough (`$3`), predates
/// the oldest open transaction (`$4`), and `selected`, as the walk would decide.
pub(crate) const EXPLAIN_ORPHAN: &str = concat!(
    "
    SELECT ei.instance_id, ex.status, coalesce(ex.completed_at, ei.updated_at) AS aged_from,
           ei.created_at,
           ei.parent_instance_id IS NULL AND NOT {ei_is_child} AS is_root,
           EXISTS (SELECT 1 FROM {control}.instances d WHERE d.id::text = ei.instance_id) AS has_df_row,
           coalesce(coalesce(ex.completed_at, ei.updated_at) < $3::timestamptz, false) AS aged,
           coalesce(ei.created_at < $4::timestamptz, false) AS predates_open_transactions,
           coalesce(",
    orphan_instance!(),
    "
           AND ",
    orphan_execution!(),
    ", false) AS selected
    FROM {engine}.instances ei
    LEFT JOIN {engine}.executions ex
           ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
    WHERE ei.instance_id = $1::text
    LIMIT $2"
);

/// Every member of the engine tree of `$1` (the root, then descendants by parent link),
/// for `explain`: parent, created_at, current execution (id, status, completed_at), how
/// many executions it has and how many of them are earlier generations that ended
/// (neither current nor Running).
pub(crate) const EXPLAIN_TREE: &str = "
    WITH RECURSIVE tree(instance_id) AS (
        SELECT $1::text
      UNION
        SELECT c.instance_id
        FROM tree JOIN {engine}.instances c ON c.parent_instance_id = tree.instance_id
    )
    SELECT ei.instance_id, ei.parent_instance_id, ei.created_at, ei.current_execution_id,
           ex.status, ex.completed_at,
           (SELECT pg_catalog.count(*) FROM {engine}.executions x
             WHERE x.instance_id = ei.instance_id) AS executions,
           (SELECT pg_catalog.count(*) FROM {engine}.executions x
             WHERE x.instance_id = ei.instance_id
               AND x.execution_id <> ei.current_execution_id
               AND x.status <> 'Running') AS ended_generations
    FROM tree
    JOIN {engine}.instances ei ON ei.instance_id = tree.instance_id
    LEFT JOIN {engine}.executions ex
           ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
    ORDER BY ei.instance_id <> $1::text, ei.instance_id";

/// The top of the parent chain above engine instance `$1` (no parent), for `explain` of
/// a child; none when the chain is broken or loops (then no root takes the child along).
pub(crate) const EXPLAIN_ROOT_OF: &str = "
    WITH RECURSIVE up(instance_id, parent_instance_id, depth) AS (
        SELECT ei.instance_id, ei.parent_instance_id, 0
        FROM {engine}.instances ei WHERE ei.instance_id = $1::text
      UNION ALL
        SELECT p.instance_id, p.parent_instance_id, up.depth + 1
        FROM up JOIN {engine}.instances p ON p.instance_id = up.parent_instance_id
        WHERE up.depth < 1000
    )
    SELECT up.instance_id FROM up WHERE up.parent_instance_id IS NULL LIMIT 1";

/// The rank of df row `$3` among the terminal rows of the rules `$4` (its cap group),
/// newest first, by the order [`CAP_EDGE`] uses: `$5` its terminal_at (NULL: unknown,
/// counted as newest). `$1`, `$2`: see `rule_of_d`.
pub(crate) const EXPLAIN_CAP_RANK: &str = concat!(
    "
    SELECT pg_catalog.count(*) + 1",
    df_with_engine!(),
    rule_of_d!(),
    "
    WHERE d.status IN ('completed', 'failed', 'cancelled')
      AND r.rule = ANY ($4::integer[])
      AND d.id::text <> $3::text
      AND CASE WHEN $5::timestamptz IS NULL
               THEN t.terminal_at IS NULL AND d.id::text > $3::text
               ELSE t.terminal_at IS NULL OR t.terminal_at > $5::timestamptz
                    OR (t.terminal_at = $5::timestamptz AND d.id::text > $3::text) END"
);

/// The df row `$1` as `explain` shows it.
pub(crate) const EXPLAIN_DF_ROW: &str = "
    SELECT d.status, d.label, d.submitted_by::text, d.created_at, d.completed_at, d.updated_at
    FROM {control}.instances d WHERE d.id::text = $1::text";

/// Live leases on `$1` (the members of a tree): dispatcher and worker queue items and
/// instance locks whose `locked_until` (epoch milliseconds, database clock) is ahead.
pub(crate) const EXPLAIN_LEASES: &str = concat!(
    "
    WITH now_ms(ms) AS (SELECT ",
    now_epoch_ms!(),
    ")
    SELECT 'instance_locks' AS source, il.instance_id, il.locked_until - now_ms.ms AS ms_left
      FROM {engine}.instance_locks il, now_ms
     WHERE il.instance_id = ANY ($1::text[]) AND il.locked_until > now_ms.ms
    UNION ALL
    SELECT 'orchestrator_queue', oq.instance_id, oq.locked_until - now_ms.ms
      FROM {engine}.orchestrator_queue oq, now_ms
     WHERE oq.instance_id = ANY ($1::text[]) AND oq.locked_until > now_ms.ms
    UNION ALL
    SELECT 'worker_queue', wq.instance_id, wq.locked_until - now_ms.ms
      FROM {engine}.worker_queue wq, now_ms
     WHERE wq.instance_id = ANY ($1::text[]) AND wq.locked_until > now_ms.ms"
);

/// Orphan roots among `$1` that have a df row, read AFTER their trees were locked: an
/// orphan whose df row appeared meanwhile (a df.start() that committed late) is no orphan.
pub(crate) const ORPHANS_WITH_DF_ROW: &str = "
    SELECT r.id
    FROM pg_catalog.unnest($1::text[]) AS r(id)
    -- Driven from the array: `id = ANY($1)` over 1,000 ids got a parallel seq scan; a
    -- join, not EXISTS, so it is an index probe per root.
    JOIN {control}.instances d ON d.id::text = r.id";

/// Drift between the stores, reported only. `$1`: now - orphan_min_age; `$2`, `$3`: the
/// orphan age cutoff and the oldest open transaction, as in [`ORPHAN_CANDIDATES`].
/// - running_without_df_row: engine roots Running, or between generations
///   (ContinuedAsNew), with no df row.
/// - df_rows_without_engine: pending/running df rows older than `$1` with neither an
///   engine record nor a queue item (the engine will never run them).
/// - queue_items_without_instance: orchestrator items older than `$1` whose id has neither
///   an engine instance nor a df row (a rolled-back start the engine never picked up).
/// - orphans_waiting: terminal orphan roots not yet old enough (or younger than the oldest
///   open transaction); they are reclaimed by a later pass.
/// - df_live_engine_ended: see [`DF_LIVE_ENGINE_ENDED`].
pub(crate) const DRIFT: &str = concat!(
    "
    SELECT
      (SELECT pg_catalog.count(*)
         FROM {engine}.instances ei
         JOIN {engine}.executions ex
           ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
        WHERE ei.parent_instance_id IS NULL AND NOT {ei_is_child}
          AND ex.status IN ('Running', 'ContinuedAsNew')
          AND NOT EXISTS (SELECT 1 FROM {control}.instances d WHERE d.id::text = ei.instance_id)
      ) AS running_without_df_row,
      (SELECT pg_catalog.count(*)
         FROM {control}.instances d
        WHERE d.status IN ('pending', 'running')
          AND d.created_at < $1::timestamptz
          AND NOT EXISTS (SELECT 1 FROM {engine}.instances ei WHERE ei.instance_id = d.id::text)
          AND NOT EXISTS (SELECT 1 FROM {engine}.orchestrator_queue oq WHERE oq.instance_id = d.id::text)
      ) AS df_rows_without_engine,
      (SELECT pg_catalog.count(*)
         FROM {engine}.orchestrator_queue oq
        WHERE oq.created_at < $1::timestamptz
          AND NOT EXISTS (SELECT 1 FROM {engine}.instances ei WHERE ei.instance_id = oq.instance_id)
          AND NOT EXISTS (SELECT 1 FROM {control}.instances d WHERE d.id::text = oq.instance_id)
      ) AS queue_items_without_instance,
      (SELECT pg_catalog.count(*)
         FROM {engine}.instances ei
         JOIN {engine}.executions ex
           ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
        WHERE ei.parent_instance_id IS NULL AND NOT {ei_is_child}
          AND ex.status IN ('Completed', 'Failed')
          AND NOT (coalesce(ex.completed_at, ei.updated_at) < $2::timestamptz
                   AND ei.created_at < $3::timestamptz)
          AND NOT EXISTS (SELECT 1 FROM {control}.instances d WHERE d.id::text = ei.instance_id)
      ) AS orphans_waiting,
      (",
    df_live_engine_ended!(),
    "
      ) AS df_live_engine_ended"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::engine::SUPPORTING_INDEXES;

    #[test]
    fn orphans_are_walked_over_completed_and_failed_executions_only() {
        // The supporting index serves the walk only when the walk's status filter implies
        // the index's predicate; both name the terminal statuses, nothing else.
        let predicate = SUPPORTING_INDEXES[0].predicate;
        assert_eq!(predicate, "status IN ('Completed', 'Failed')");
        assert!(
            ORPHAN_CANDIDATES.contains(&format!("AND ex.{predicate}")),
            "{ORPHAN_CANDIDATES}"
        );
        for statement in [ORPHAN_CANDIDATES, DRIFT] {
            assert!(!statement.contains("'Completed', 'Failed', 'ContinuedAsNew'"));
        }
    }
}
