//! Every statement of a pass, rendered for the verified schemas and prepared once.

use deadpool_postgres::Object;

use crate::db::{StatementMode, Stmt};

use crate::error::{DbContext, Error};
use crate::rules::RuleSet;
use crate::sql::{control, engine, reconcile, InstanceTable, Schemas};

/// One table's DELETE (or, in a dry run, its count) of a batch's rows.
pub(crate) struct TableStatement {
    /// `schema.table`, for the report.
    pub(crate) table: String,
    pub(crate) statement: Stmt,
    pub(crate) kind: DeleteKind,
}

/// What a table's statement takes and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteKind {
    /// Ids `$1`; returns the number of rows (a dry run's counts too).
    ById,
    /// Ids `$1` and the locked rows' addresses `$2` (`InstanceTable::delete_by_address`).
    ByAddress,
    /// Ids `$1`; returns the number of rows and the ids among them that were leased
    /// (`InstanceTable::delete_reporting_leases`).
    ReportingLeases,
}

impl DeleteKind {
    /// How a pass deletes from `table`. A dry run locks nothing and read the leases
    /// before: it counts by id (the same rows).
    fn for_table(table: &InstanceTable, dry_run: bool) -> Self {
        if dry_run {
            Self::ById
        } else if table.locked {
            Self::ByAddress
        } else if table.leased {
            Self::ReportingLeases
        } else {
            Self::ById
        }
    }

    /// The statement of this kind for `table` (a count in a dry run).
    fn sql(self, table: &InstanceTable, placeholder: &str, dry_run: bool) -> String {
        match self {
            Self::ById => table.statement(placeholder, dry_run),
            Self::ByAddress => table.delete_by_address(placeholder),
            Self::ReportingLeases => table.delete_reporting_leases(placeholder),
        }
    }
}

/// A group of tables deleted from for the same ids, in deletion order.
pub(crate) type TableStatements = Vec<TableStatement>;

/// The statements of one pass, rendered for the verified schemas and prepared once on the
/// pass's connection: a batch then costs one round trip per statement, not two (parse,
/// then execute). Dropped, and so closed, with the pass.
pub(crate) struct Statements {
    pub(crate) terminal_count_up_to: Stmt,
    pub(crate) batch_fence: Stmt,
    pub(crate) database_load: Stmt,
    pub(crate) cap_edge: Stmt,
    pub(crate) expired_candidates: Stmt,
    pub(crate) orphan_candidates: Stmt,
    pub(crate) lock_df_rows: Stmt,
    pub(crate) lock_trees: Stmt,
    pub(crate) orphans_with_df_row: Stmt,
    pub(crate) drift: Stmt,
    /// Phase 3: the next prunable generations, their lock (a read in a dry run), their
    /// deletes (counts in a dry run) and the backlog count.
    pub(crate) generation_candidates: Stmt,
    pub(crate) lock_generations: Stmt,
    pub(crate) delete_generation_history: Stmt,
    /// None in a dry run: the executions are counted as the rows the lock read.
    pub(crate) delete_generation_executions: Option<Stmt>,
    pub(crate) generations_waiting: Stmt,
    /// `schema.table` of the history and executions tables, for the report.
    pub(crate) generation_tables: [String; 2],
    /// For df rows, then engine rows, in deletion order. In a dry run each one counts the
    /// rows instead.
    pub(crate) delete_df: TableStatements,
    /// The engine tables whose rows carry leases (worker queue, instance locks): deleted
    /// first.
    pub(crate) delete_engine_leased: TableStatements,
    /// The other engine tables, instances last.
    pub(crate) delete_engine: TableStatements,
    /// The engine's worker queue alone, for df rows that never got an engine record.
    pub(crate) delete_queues: TableStatements,
    /// The dispatcher's queue (orchestrator_queue), for every id of the batch: the last
    /// statement before COMMIT (`InstanceTable::deleted_last`), reading leases as it deletes.
    pub(crate) delete_last: TableStatements,
    pub(crate) dry_run: bool,
}

impl Statements {
    pub(crate) async fn prepare(
        client: &Object,
        schemas: &Schemas,
        rules: &RuleSet<'_>,
        dry_run: bool,
        mode: StatementMode,
    ) -> Result<Self, Error> {
        let rule_of_d = rules.rule_of_d("$1", "$2");
        let prepare = |template: &str| {
            let sql = render(schemas, &rule_of_d, template);
            async move {
                Stmt::new(&***client, &sql, mode)
                    .await
                    .with_context(|| format!("preparing {}", first_line(&sql)))
            }
        };
        let deletes = |schema: &str, placeholder: &str, tables: &[&InstanceTable]| {
            let jobs: Vec<_> = tables
                .iter()
                .map(|t| {
                    let table = format!("{schema}.{}", t.name);
                    let kind = DeleteKind::for_table(t, dry_run);
                    let statement = prepare(&kind.sql(t, placeholder, dry_run));
                    async move {
                        Ok::<_, Error>(TableStatement {
                            table,
                            statement: statement.await?,
                            kind,
                        })
                    }
                })
                .collect();
            futures_util::future::try_join_all(jobs)
        };
        let [engine_leased, engine_rest, engine_last] = engine_delete_groups();
        Ok(Self {
            terminal_count_up_to: prepare(reconcile::TERMINAL_COUNT_UP_TO).await?,
            batch_fence: prepare(reconcile::TRY_BATCH_FENCE).await?,
            database_load: prepare(reconcile::DATABASE_LOAD).await?,
            cap_edge: prepare(reconcile::CAP_EDGE).await?,
            expired_candidates: prepare(reconcile::EXPIRED_CANDIDATES).await?,
            orphan_candidates: prepare(reconcile::ORPHAN_CANDIDATES).await?,
            lock_df_rows: prepare(if dry_run {
                control::READ_TERMINAL_ROWS
            } else {
                control::LOCK_TERMINAL_ROWS
            })
            .await?,
            lock_trees: prepare(if dry_run {
                engine::READ_TREES
            } else {
                engine::LOCK_TREES
            })
            .await?,
            orphans_with_df_row: prepare(reconcile::ORPHANS_WITH_DF_ROW).await?,
            drift: prepare(reconcile::DRIFT).await?,
            generation_candidates: prepare(engine::GENERATION_CANDIDATES).await?,
            lock_generations: prepare(if dry_run {
                engine::READ_GENERATIONS
            } else {
                engine::LOCK_GENERATIONS
            })
            .await?,
            delete_generation_history: prepare(if dry_run {
                engine::COUNT_GENERATION_HISTORY
            } else {
                engine::DELETE_GENERATION_HISTORY
            })
            .await?,
            delete_generation_executions: if dry_run {
                None
            } else {
                Some(prepare(engine::DELETE_GENERATION_EXECUTIONS).await?)
            },
            generations_waiting: prepare(engine::GENERATIONS_WAITING).await?,
            generation_tables: engine::GENERATION_TABLES
                .map(|table| format!("{}.{table}", schemas.engine)),
            delete_df: deletes(
                &schemas.control,
                "{control}",
                &control::PER_INSTANCE_TABLES.iter().collect::<Vec<_>>(),
            )
            .await?,
            delete_engine_leased: deletes(&schemas.engine, "{engine}", &engine_leased).await?,
            delete_engine: deletes(&schemas.engine, "{engine}", &engine_rest).await?,
            delete_queues: deletes(
                &schemas.engine,
                "{engine}",
                &engine::QUEUE_TABLES
                    .iter()
                    .filter(|t| !t.deleted_last)
                    .collect::<Vec<_>>(),
            )
            .await?,
            delete_last: deletes(&schemas.engine, "{engine}", &engine_last).await?,
            dry_run,
        })
    }
}

/// `template` for the verified schemas and the rules in force (`{rule_of_d}`, whose
/// label patterns and role OIDs every such statement binds at `$1` and `$2`).
pub(crate) fn render(schemas: &Schemas, rule_of_d: &str, template: &str) -> String {
    schemas.render(template).replace("{rule_of_d}", rule_of_d)
}

/// The engine's per-instance tables in three groups, each in deletion order: those whose
/// rows carry leases (deleted first, in a savepoint), the rest, and those deleted last.
fn engine_delete_groups() -> [Vec<&'static InstanceTable>; 3] {
    let mut groups: [Vec<&'static InstanceTable>; 3] = Default::default();
    for t in &engine::PER_INSTANCE_TABLES {
        let group = match (t.deleted_last, t.leased) {
            (true, _) => 2,
            (false, true) => 0,
            (false, false) => 1,
        };
        groups[group].push(t);
    }
    groups
}

/// The first words of a statement, to name it in an error.
fn first_line(sql: &str) -> String {
    sql.split_whitespace().take(8).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_tables() -> impl Iterator<Item = &'static InstanceTable> {
        control::PER_INSTANCE_TABLES
            .iter()
            .chain(engine::PER_INSTANCE_TABLES.iter())
    }

    #[test]
    fn a_dry_run_counts_every_table_by_id() {
        for t in all_tables() {
            let kind = DeleteKind::for_table(t, true);
            assert_eq!(kind, DeleteKind::ById, "{}", t.name);
            let sql = kind.sql(t, "{engine}", true);
            assert!(
                sql.starts_with("SELECT pg_catalog.count(*) FROM"),
                "{}: {sql}",
                t.name
            );
        }
    }

    #[test]
    fn a_real_pass_deletes_locked_rows_by_address_and_reads_leases_as_it_deletes() {
        let kinds: Vec<(&str, DeleteKind)> = all_tables()
            .map(|t| (t.name, DeleteKind::for_table(t, false)))
            .collect();
        assert_eq!(
            kinds,
            [
                ("nodes", DeleteKind::ById),
                ("instances", DeleteKind::ByAddress),
                ("history", DeleteKind::ById),
                ("executions", DeleteKind::ById),
                ("orchestrator_queue", DeleteKind::ReportingLeases),
                ("worker_queue", DeleteKind::ReportingLeases),
                ("instance_locks", DeleteKind::ReportingLeases),
                ("kv_delta", DeleteKind::ById),
                ("kv_store", DeleteKind::ById),
                ("instances", DeleteKind::ByAddress),
            ]
        );
        for t in all_tables() {
            let sql = DeleteKind::for_table(t, false).sql(t, "{engine}", false);
            let delete = format!("DELETE FROM {{engine}}.{} t", t.name);
            assert!(sql.contains(&delete), "{sql}");
            assert!(!sql.starts_with("SELECT pg_catalog.count(*)"), "{sql}");
        }
    }

    #[test]
    fn leased_engine_tables_go_first_instances_after_and_the_dispatch_queue_last() {
        let [leased, rest, last] = engine_delete_groups();
        let names = |ts: &[&InstanceTable]| ts.iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(&leased), ["worker_queue", "instance_locks"]);
        assert_eq!(rest.last().map(|t| t.name), Some("instances"));
        assert!(rest.iter().all(|t| !t.leased));
        // Still read for leases as it goes, in the batch's last statement.
        assert_eq!(names(&last), ["orchestrator_queue"]);
        assert!(last.iter().all(|t| t.leased));
        assert_eq!(
            leased.len() + rest.len() + last.len(),
            engine::PER_INSTANCE_TABLES.len()
        );
    }

    #[test]
    fn first_line_names_a_statement_by_its_first_eight_words() {
        let sql = "\n    SELECT d.id::text,\n           d.ctid::text\n    FROM df.instances d WHERE d.id = ANY($1) FOR UPDATE";
        assert_eq!(
            first_line(sql),
            "SELECT d.id::text, d.ctid::text FROM df.instances d WHERE d.id"
        );
    }
}
