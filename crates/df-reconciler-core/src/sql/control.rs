//! Statements on the `df` control plane alone.

use super::{InstanceTable, Store, SupportingIndex};

/// Tables of the control plane, checked by preflight. Per-instance ones are in
/// [`PER_INSTANCE_TABLES`].
pub(crate) const REQUIRED_TABLES: [&str; 2] = ["instances", "nodes"];

/// Per-instance tables in deletion order. The foreign keys between them are DEFERRABLE
/// INITIALLY DEFERRED and checked at COMMIT, so nodes and instance go in one transaction.
pub(crate) const PER_INSTANCE_TABLES: [InstanceTable; 2] = [
    InstanceTable {
        name: "nodes",
        key: "instance_id",
        locked: false,
        leased: false,
        deleted_last: false,
    },
    InstanceTable {
        name: "instances",
        key: "id",
        locked: true,
        leased: false,
        deleted_last: false,
    },
];

/// Locks the batch's df rows that are still terminal. A row locked by another session (a
/// user updating it, another reconciler) is skipped, never waited for; a row that stopped
/// being terminal drops out because FOR UPDATE re-checks the WHERE clause on the newest
/// version. `$1`: ids.
pub(crate) const LOCK_TERMINAL_ROWS: &str = "
    SELECT d.id::text, d.ctid::text
    FROM {control}.instances d
    WHERE d.id::text = ANY($1::text[]) AND d.status IN ('completed', 'failed', 'cancelled')
    FOR UPDATE OF d SKIP LOCKED";

/// The dry-run twin of [`LOCK_TERMINAL_ROWS`]: a read-only transaction cannot lock.
pub(crate) const READ_TERMINAL_ROWS: &str = "
    SELECT d.id::text, d.ctid::text
    FROM {control}.instances d
    WHERE d.id::text = ANY($1::text[]) AND d.status IN ('completed', 'failed', 'cancelled')";

/// Whether the connected role sees every df row whatever the row-level security policies
/// say: superuser, BYPASSRLS, or owner of a table whose RLS is not FORCEd (or RLS off).
/// `$1`: schema name, `$2`: table name. No row when the table does not exist.
pub(crate) const RLS_EXEMPTION: &str = "
    SELECT NOT c.relrowsecurity
        OR r.rolsuper
        OR r.rolbypassrls
        OR (pg_catalog.pg_has_role(c.relowner, 'USAGE'::text) AND NOT c.relforcerowsecurity)
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_roles r ON r.rolname = CURRENT_USER
    WHERE n.nspname = $1::text AND c.relname = $2::text";

/// Asks pg_durable where the engine store lives; only run when the function exists.
pub(crate) const ENGINE_SCHEMA_FUNCTION: &str = "SELECT {control}.duroxide_schema()::text";

/// Whether the role may use schema `$1`, or the schema does not exist (reported apart).
pub(crate) const USAGE_OR_NO_SCHEMA: &str = "
    SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1::text)
        OR pg_catalog.has_schema_privilege($1::text, 'USAGE'::text)";

/// Whether `{control}.duroxide_schema()` exists. `$1`: control schema name.
pub(crate) const HAS_ENGINE_SCHEMA_FUNCTION: &str = "
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = $1::text AND p.proname = 'duroxide_schema'::name AND p.pronargs = 0::int2)";

/// Whether the in-database reconcile of pg_durable is still on (`check` warns).
pub(crate) const IN_DATABASE_RECONCILE_INTERVAL: &str =
    "SELECT pg_catalog.current_setting('pg_durable.reconcile_interval'::text, true)";

/// df.nodes references itself through (instance_id, left_node) and (instance_id,
/// right_node), deferred; without an index on the referencing side, the COMMIT that
/// deletes one instance checks every deleted node against every node of that instance:
/// quadratic in the size of the graph (minutes for a graph of ~10,000 nodes). The partial
/// index on terminal rows lets a pass walk them (and count them against the hard cap) from
/// the index alone instead of reading every df row: an idle pass over 1M df rows.
pub(crate) const SUPPORTING_INDEXES: [SupportingIndex; 3] = [
    SupportingIndex {
        name: "df_reconciler_nodes_left_node",
        store: Store::Control,
        table: "nodes",
        columns: &["instance_id", "left_node"],
        include: &[],
        predicate: "",
        why: "deleting large graphs checks the left_node foreign key without an index",
    },
    SupportingIndex {
        name: "df_reconciler_nodes_right_node",
        store: Store::Control,
        table: "nodes",
        columns: &["instance_id", "right_node"],
        include: &[],
        predicate: "",
        why: "deleting large graphs checks the right_node foreign key without an index",
    },
    SupportingIndex {
        name: "df_reconciler_terminal_instances",
        store: Store::Control,
        table: "instances",
        columns: &["id"],
        include: &["status", "created_at", "completed_at"],
        predicate: "status IN ('completed', 'failed', 'cancelled')",
        why: "every pass reads all df rows to find the expired ones instead of the terminal ones alone",
    },
];
