//! Every SQL statement of the daemon, as named and commented templates.
//!
//! - `control`: the `df` control plane alone.
//! - [`engine`]: the duroxide engine store alone.
//! - `reconcile`: the set-difference selections that join both stores.
//!
//! Templates name the schemas as `{control}` and `{engine}`; [`Schemas::render`] substitutes
//! the quoted identifiers once per pass. Ids travel as ONE `text[]` parameter per statement,
//! never one bind parameter per id.
//!
//! Names resolve to the catalog and the configured schemas only, whatever the search path
//! (docs/ARCHITECTURE.md, "The search path"): every table is schema-qualified, every
//! function call is `pg_catalog.`-qualified (or the configured schema's), parameters and
//! literals that meet an operator or function are typed, and operators compare operands
//! for which the catalog has an exact match (or are written `OPERATOR(pg_catalog.=)`).
//! Sessions and transactions also pin the search path ([`crate::db::SEARCH_PATH`]).

/// The database clock as epoch milliseconds, the unit of the engine's `locked_until`:
/// a lease is live while `locked_until` is greater.
macro_rules! now_epoch_ms {
    () => {
        "(extract(epoch FROM pg_catalog.clock_timestamp()) * 1000::numeric)::bigint"
    };
}

pub(crate) mod control;
pub mod engine;
pub(crate) mod reconcile;

/// The two schemas of one database (unquoted names; [`Schemas::render`] quotes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schemas {
    /// The df control-plane schema's name (`schemas.control`), unquoted.
    pub control: String,
    /// The engine store's schema name, after resolving `schemas.engine = "auto"`; unquoted.
    pub engine: String,
}

impl Schemas {
    /// Both schema names as configured; [`Schemas::render`] quotes them.
    pub fn new(control: &str, engine: &str) -> Self {
        Self {
            control: control.to_owned(),
            engine: engine.to_owned(),
        }
    }

    /// Every per-instance table of both stores as (schema, table), df first, each store in
    /// its deletion order.
    pub(crate) fn per_instance_tables(&self) -> impl Iterator<Item = (&str, &'static str)> {
        control::PER_INSTANCE_TABLES
            .iter()
            .map(|t| (self.control.as_str(), t.name))
            .chain(
                engine::PER_INSTANCE_TABLES
                    .iter()
                    .map(|t| (self.engine.as_str(), t.name)),
            )
    }

    /// Substitutes `{control}` and `{engine}` with the quoted schema names, and
    /// `{ei_is_child}` and `{ex_is_child}` with the child-shape test of `ei.instance_id`
    /// and `ex.instance_id`.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{control}", &quote_ident(&self.control))
            .replace("{engine}", &quote_ident(&self.engine))
            .replace("{ei_is_child}", &engine::child_shape("ei.instance_id"))
            .replace("{ex_is_child}", &engine::child_shape("ex.instance_id"))
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does, always.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A per-instance table and the column that holds the instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InstanceTable {
    pub name: &'static str,
    pub key: &'static str,
    /// A batch locks these rows (`FOR UPDATE`) before deleting them, and its lock returns
    /// their row addresses: a real pass deletes them by address, see
    /// [`InstanceTable::delete_by_address`].
    pub locked: bool,
    /// Rows carry a dispatcher's or worker's lease (`locked_until`, epoch milliseconds on
    /// the database clock): a real pass reads the leases of the rows it deletes, see
    /// [`InstanceTable::delete_reporting_leases`].
    pub leased: bool,
    /// The engine's dispatcher picks its next row of this table without locking it, then
    /// tries to lock it and, finding it locked, picks the same row again, in a loop: a real
    /// pass deletes these rows in the last statement of its batch, right before COMMIT, so
    /// a dispatcher spins for one statement, not for a whole batch (docs/ARCHITECTURE.md).
    pub deleted_last: bool,
}

impl InstanceTable {
    /// `DELETE` of the rows of the given ids (`$1 text[]`), or the same predicate counted in
    /// a dry run: one definition, so a dry run counts exactly what a real pass deletes.
    /// `= ANY($1)` is one index scan that walks the sorted ids in key order; a join from
    /// `unnest($1)` first copies the ids into a tuplestore and then descends once per id
    /// (20-40% slower per statement). It relies on the generic plans a batch switches to
    /// after its candidates: planned for the actual 1,000 ids, narrow tables were read
    /// whole instead.
    pub(crate) fn statement(&self, schema_placeholder: &str, dry_run: bool) -> String {
        let (table, key) = (self.name, self.key);
        let verb = if dry_run {
            "SELECT pg_catalog.count(*) FROM"
        } else {
            "DELETE FROM"
        };
        format!("{verb} {schema_placeholder}.{table} t WHERE t.{key}::text = ANY($1::text[])")
    }

    /// `DELETE` of the rows of the given ids (`$1 text[]`) that also returns how many it
    /// deleted and the ids among them whose lease had not expired at that moment. The
    /// delete itself is the lease check: it sees the newest committed version of each
    /// row, and waits for one being leased right now.
    pub(crate) fn delete_reporting_leases(&self, schema_placeholder: &str) -> String {
        let (table, key) = (self.name, self.key);
        format!(
            "WITH deleted AS (\
                 DELETE FROM {schema_placeholder}.{table} t WHERE t.{key}::text = ANY($1::text[]) \
                 RETURNING t.{key}::text AS id, t.locked_until) \
             SELECT pg_catalog.count(*), coalesce(pg_catalog.array_agg(DISTINCT deleted.id) FILTER (\
                 WHERE deleted.locked_until > {now_ms}), '{{}}'::text[]) \
             FROM deleted",
            now_ms = now_epoch_ms!()
        )
    }

    /// `DELETE` of the rows of ids `$1` at the row addresses (ctid) `$2` that locking them
    /// returned, pairwise: one heap fetch per row instead of an index probe. A row locked
    /// by this transaction cannot move, so this deletes exactly what [`Self::statement`]
    /// deletes; the id is compared as well, and the caller checks that every pair
    /// matched.
    pub(crate) fn delete_by_address(&self, schema_placeholder: &str) -> String {
        let (table, key) = (self.name, self.key);
        format!(
            "DELETE FROM {schema_placeholder}.{table} t \
             USING ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) \
                 AS u(id, address) \
             WHERE t.ctid = u.address::tid AND t.{key}::text = u.id"
        )
    }
}

/// Which store a table belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// The df control plane (`schemas.control`).
    Control,
    /// The duroxide engine store (`schemas.engine`).
    Engine,
}

/// An index the daemon benefits from but neither pg_durable nor the engine creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupportingIndex {
    /// Index name, so `check` can tell whether it exists and `migrate --indexes` is
    /// idempotent.
    pub name: &'static str,
    /// Which schema the table lives in.
    pub store: Store,
    /// The indexed table, unqualified.
    pub table: &'static str,
    /// Key columns, in order.
    pub columns: &'static [&'static str],
    /// Columns carried in the index so a walk never reads the table.
    pub include: &'static [&'static str],
    /// Partial-index predicate; empty: every row.
    pub predicate: &'static str,
    /// Why it matters, for `check`.
    pub why: &'static str,
}

impl SupportingIndex {
    pub(crate) fn schema<'a>(&self, schemas: &'a Schemas) -> &'a str {
        match self.store {
            Store::Control => &schemas.control,
            Store::Engine => &schemas.engine,
        }
    }

    /// `schema.table (columns) INCLUDE (...) WHERE ...`, for messages.
    pub fn describe(&self, schemas: &Schemas) -> String {
        let mut s = format!(
            "{}.{} ({})",
            self.schema(schemas),
            self.table,
            self.columns.join(", ")
        );
        if !self.include.is_empty() {
            s.push_str(&format!(" INCLUDE ({})", self.include.join(", ")));
        }
        if !self.predicate.is_empty() {
            s.push_str(&format!(" WHERE {}", self.predicate));
        }
        s
    }

    /// `CREATE INDEX CONCURRENTLY`: no write lock on the table, outside any transaction.
    pub(crate) fn create_statement(&self, schemas: &Schemas) -> String {
        let list = |columns: &[&str]| {
            columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {}.{} ({})",
            quote_ident(self.name),
            quote_ident(self.schema(schemas)),
            quote_ident(self.table),
            list(self.columns)
        );
        if !self.include.is_empty() {
            s.push_str(&format!(" INCLUDE ({})", list(self.include)));
        }
        if !self.predicate.is_empty() {
            s.push_str(&format!(" WHERE {}", self.predicate));
        }
        s
    }

    /// Every supporting index of both stores, for `check` and `migrate --indexes`.
    pub(crate) fn all() -> impl Iterator<Item = SupportingIndex> {
        control::SUPPORTING_INDEXES
            .into_iter()
            .chain(engine::SUPPORTING_INDEXES)
    }
}

/// The planner's row estimate of table `$1.$2` (`pg_class.reltuples`; -1 or 0 when never
/// vacuumed or analyzed). No row when the table does not exist.
pub(crate) const TABLE_ROW_ESTIMATE: &str = "
    SELECT c.reltuples
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1::text AND c.relname = $2::text";

/// Whether a supporting index is present: a valid index of `$1.$2` named `$4`, or, when
/// `$5` (a plain index), one whose leading columns are exactly `$3` (an operator's own
/// equivalent counts). The catalog's array equality is polymorphic (`anyarray`), which a
/// look-alike for `text[]` would outmatch: it is named.
pub(crate) const HAS_SUPPORTING_INDEX: &str = "
    SELECT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
        JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1::text AND c.relname = $2::text AND i.indisvalid
          AND (ic.relname = $4::text
               OR ($5::boolean
                   AND (SELECT pg_catalog.array_agg(a.attname::text ORDER BY k.ord)
                          FROM pg_catalog.unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                         WHERE k.ord <= pg_catalog.cardinality($3::text[])::bigint)
                       OPERATOR(pg_catalog.=) $3::text[])))";

/// The connected role's default search path (`reset_val`: what its sessions start with,
/// from ALTER ROLE / ALTER DATABASE settings, before the daemon pins its own), and the
/// role's name for `$user`.
pub(crate) const DEFAULT_SEARCH_PATH: &str = "
    SELECT s.reset_val, CURRENT_USER::text
    FROM pg_catalog.pg_settings s
    WHERE s.name = 'search_path'::text";

/// Of the schemas `$1`, in that order, those that exist, with the roles that may create
/// objects in them: not the connected role, no superuser, not the database's owner (who
/// may set every session's search path anyway); and whether CREATE is granted to PUBLIC.
pub(crate) const SCHEMA_CREATORS: &str = "
    SELECT n.nspname::text,
           ARRAY(SELECT r.rolname::text
                   FROM pg_catalog.pg_roles r
                  WHERE NOT r.rolsuper
                    AND r.rolname <> CURRENT_USER
                    AND r.rolname <> 'pg_database_owner'::name
                    AND r.oid <> (SELECT d.datdba FROM pg_catalog.pg_database d
                                   WHERE d.datname = pg_catalog.current_database())
                    AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE'::text)
                  ORDER BY 1) AS creators,
           EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) acl
                    WHERE acl.grantee = 0::oid AND acl.privilege_type = 'CREATE'::text)
             AS public_create
    FROM pg_catalog.pg_namespace n
    WHERE n.nspname::text = ANY ($1::text[])
    ORDER BY pg_catalog.array_position($1::text[], n.nspname::text)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("df"), "\"df\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let s = Schemas::new("df", "_duroxide");
        assert_eq!(
            s.render("SELECT 1 FROM {control}.instances, {engine}.instances"),
            "SELECT 1 FROM \"df\".instances, \"_duroxide\".instances"
        );
    }

    #[test]
    fn supporting_indexes_are_built_concurrently_in_their_store() {
        let s = Schemas::new("df", "_duroxide");
        let sql: Vec<String> = SupportingIndex::all()
            .map(|i| i.create_statement(&s))
            .collect();
        assert!(sql
            .iter()
            .all(|q| q.starts_with("CREATE INDEX CONCURRENTLY")));
        assert!(sql.iter().any(|q| q.contains("ON \"_duroxide\".\"executions\" (\"instance_id\") INCLUDE (\"execution_id\", \"completed_at\") WHERE status IN")));
        assert!(sql
            .iter()
            .any(|q| q.contains("ON \"df\".\"nodes\" (\"instance_id\", \"left_node\")")));
    }

    #[test]
    fn dry_run_counts_what_a_pass_deletes() {
        let t = InstanceTable {
            name: "history",
            key: "instance_id",
            locked: false,
            leased: false,
            deleted_last: false,
        };
        let delete = t.statement("{engine}", false);
        let count = t.statement("{engine}", true);
        // Same table, same join on the same key: only the verb differs.
        for s in [&delete, &count] {
            assert!(s.contains("{engine}.history t"), "{s}");
            assert!(s.contains("t.instance_id::text = ANY($1::text[])"), "{s}");
        }
        assert!(delete.starts_with("DELETE") && count.starts_with("SELECT pg_catalog.count(*)"));
    }

    #[test]
    fn a_delete_by_address_also_matches_the_id() {
        let t = InstanceTable {
            name: "instances",
            key: "id",
            locked: true,
            leased: false,
            deleted_last: false,
        };
        let s = t.delete_by_address("{control}");
        assert!(s.starts_with("DELETE FROM {control}.instances t"), "{s}");
        assert!(s.contains("t.ctid = u.address::tid"), "{s}");
        assert!(s.contains("t.id::text = u.id"), "{s}");
    }

    #[test]
    fn a_delete_reporting_leases_compares_locked_until_with_the_database_clock() {
        let t = crate::sql::engine::QUEUE_TABLES[0];
        let s = t.delete_reporting_leases("{engine}");
        assert!(s.contains("DELETE FROM {engine}.orchestrator_queue t WHERE t.instance_id::text = ANY($1::text[])"), "{s}");
        assert!(
            s.contains("RETURNING t.instance_id::text AS id, t.locked_until"),
            "{s}"
        );
        assert!(
            s.contains("locked_until > (extract(epoch FROM pg_catalog.clock_timestamp()) * 1000::numeric)::bigint"),
            "{s}"
        );
        assert!(s.contains("'{}'::text[]"), "{s}");
    }
}
