//! The daemon's own audit trail: schema `df_reconciler` (configurable) with a `passes`
//! table and an opt-in `deletions` table, created by `df-reconciler migrate` from the files
//! in the repository's `migrations/` folder.

use deadpool_postgres::Transaction;
use tokio_postgres::GenericClient;

use crate::config::AuditConfig;
use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::locks;
use crate::report::PassReport;
use crate::sql::quote_ident;

/// The migrations, in order: (version, name, SQL with `{audit}` for the schema).
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "audit",
        include_str!("../../../migrations/0001_audit.sql"),
    ),
    (
        2,
        "generations_pruned",
        include_str!("../../../migrations/0002_generations_pruned.sql"),
    ),
    (
        3,
        "deletion_rule",
        include_str!("../../../migrations/0003_deletion_rule.sql"),
    ),
];

/// Applies pending migrations in one transaction under `locks::MIGRATION`, so replicas
/// starting together cannot race. Returns the versions applied now.
pub async fn migrate(
    client: &mut deadpool_postgres::Object,
    cfg: &AuditConfig,
) -> Result<Vec<i32>, Error> {
    let schema = quote_ident(&cfg.schema);
    let tx = client
        .transaction()
        .await
        .context("starting the migration")?;
    tx.batch_execute(crate::db::SET_LOCAL_SEARCH_PATH)
        .await
        .context("pinning the search path")?;
    tx.exec(
        "SELECT pg_catalog.pg_advisory_xact_lock($1::bigint)",
        &[&locks::MIGRATION],
    )
    .await
    .context("taking the migration lock")?;
    // CREATE SCHEMA needs CREATE on the database, even with IF NOT EXISTS and a schema
    // that exists: the shipped role has none, and gets its schema from the role SQL.
    let schema_exists: bool = tx
        .fetch_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1::text)",
            &[&cfg.schema],
        )
        .await
        .context("looking for the audit schema")?
        .get(0);
    if !schema_exists {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .with_context(|| {
                format!(
                    "creating the audit schema {schema} (needs CREATE on the database; or create it for the role: deploy/sql/reconciler-role.sql)"
                )
            })?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT pg_catalog.now())"
    ))
    .await
    .context("creating the audit schema's migrations table")?;
    let applied: Vec<i32> = tx
        .fetch_all(
            &format!("SELECT version FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .context("reading applied migrations")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut now_applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&sql.replace("{audit}", &schema))
            .await
            .with_context(|| format!("applying migration {version} ({name})"))?;
        tx.exec(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[version, name],
        )
        .await
        .context("recording a migration")?;
        now_applied.push(*version);
    }
    tx.commit().await.context("committing the migration")?;
    Ok(now_applied)
}

/// What every command that writes the trail as part of a real pass (`run`, `once`) does
/// first: with `audit.auto_migrate` on, applies pending migrations; otherwise nothing.
/// Dry runs never call it: they need SELECT only.
pub async fn migrate_if_auto(
    client: &mut deadpool_postgres::Object,
    cfg: &AuditConfig,
) -> Result<(), Error> {
    if cfg.auto_migrate {
        let applied = migrate(client, cfg).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, schema = %cfg.schema, "audit migrations applied");
        }
    }
    Ok(())
}

/// Whether the audit tables exist (migrate has run).
pub async fn is_installed(client: &impl GenericClient, cfg: &AuditConfig) -> Result<bool, Error> {
    Ok(client
        .fetch_one(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1::text AND c.relname = 'passes'::name)",
            &[&cfg.schema],
        )
        .await
        .context("looking for the audit schema")?
        .get(0))
}

/// Whether the deletions table has the `rule` column (migration 3): until `migrate` has
/// run, deletions are recorded without it.
pub(crate) async fn deletions_have_rule(
    client: &impl GenericClient,
    cfg: &AuditConfig,
) -> Result<bool, Error> {
    Ok(client
        .fetch_one(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_catalog.pg_attribute a
                 JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1::text AND c.relname = 'deletions'::name
                   AND a.attname = 'rule'::name AND NOT a.attisdropped)",
            &[&cfg.schema],
        )
        .await
        .context("looking for the audit deletions' rule column")?
        .get(0))
}

/// Records a finished pass and applies the audit retention.
pub(crate) async fn record_pass(
    client: &impl GenericClient,
    cfg: &AuditConfig,
    report: &PassReport,
    outcome: &str,
    error: Option<&str>,
) -> Result<(), Error> {
    let schema = quote_ident(&cfg.schema);
    let host = hostname();
    let json: serde_json::Value =
        serde_json::to_value(report).expect("a PassReport always serializes");
    let started: Option<std::time::SystemTime> = humantime::parse_rfc3339(&report.started_at).ok();
    client
        .exec(
            &format!(
                "INSERT INTO {schema}.passes
                   (pass_id, host, started_at, dry_run, outcome, error, instances_removed, rows_deleted,
                    generations_pruned, report)
                 VALUES ($1, $2, coalesce($3, pg_catalog.now()), $4, $5, $6, $7, $8, $9, $10)"
            ),
            &[
                &report.pass_id,
                &host,
                &started,
                &report.dry_run,
                &outcome,
                &error,
                &(report.instances_removed() as i64),
                &(report.rows_deleted.values().sum::<u64>() as i64),
                &(report.generations_pruned as i64),
                &json,
            ],
        )
        .await
        .context("recording the pass in the audit trail")?;
    let retention = cfg.retention.as_secs_f64();
    // Bounded: an audit table that grew while retention was long shrinks over a few passes.
    for (table, column) in [("passes", "started_at"), ("deletions", "deleted_at")] {
        client
            .exec(
                &format!(
                    "DELETE FROM {schema}.{table} WHERE ctid IN (
                         SELECT ctid FROM {schema}.{table}
                          WHERE {column} < pg_catalog.now()
                                           - pg_catalog.make_interval(secs => $1::double precision)
                          LIMIT 10000)"
                ),
                &[&retention],
            )
            .await
            .context("applying the audit retention")?;
    }
    Ok(())
}

/// One removed root, for the opt-in deletions table.
#[derive(Debug, Clone)]
pub struct DeletedRoot {
    /// The root's instance id, shared by both stores.
    pub instance_id: String,
    /// `expired`, `capped` or `orphan`: why it went.
    pub reason: &'static str,
    /// The df status, or for an orphan its root's engine status.
    pub status: String,
    /// When it became terminal (the age the retention was measured from), if known.
    pub terminal_at: Option<tokio_postgres::types::Timestamp<std::time::SystemTime>>,
    /// The retention rule it fell under (`default` for the top-level keys and orphans).
    pub rule: String,
}

/// Writes the batch's removed roots inside the batch transaction: the audit row exists
/// exactly when the deletion committed. `with_rule`: the table has the `rule` column.
pub async fn record_deletions(
    tx: &Transaction<'_>,
    schema: &str,
    with_rule: bool,
    pass_id: &str,
    roots: &[DeletedRoot],
) -> Result<(), Error> {
    if roots.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = roots.iter().map(|r| r.instance_id.as_str()).collect();
    let reasons: Vec<&str> = roots.iter().map(|r| r.reason).collect();
    let statuses: Vec<&str> = roots.iter().map(|r| r.status.as_str()).collect();
    let times: Vec<Option<tokio_postgres::types::Timestamp<std::time::SystemTime>>> =
        roots.iter().map(|r| r.terminal_at).collect();
    if with_rule {
        let rules: Vec<&str> = roots.iter().map(|r| r.rule.as_str()).collect();
        tx.exec(
            &format!(
                "INSERT INTO {}.deletions (pass_id, instance_id, reason, status, terminal_at, rule)
                 SELECT $1::text, * FROM ROWS FROM (
                     pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]),
                     pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::timestamptz[]),
                     pg_catalog.unnest($6::text[]))",
                quote_ident(schema)
            ),
            &[&pass_id, &ids, &reasons, &statuses, &times, &rules],
        )
        .await
        .context("recording deletions in the audit trail")?;
        return Ok(());
    }
    tx.exec(
        &format!(
            "INSERT INTO {}.deletions (pass_id, instance_id, reason, status, terminal_at)
             SELECT $1::text, * FROM ROWS FROM (
                 pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]),
                 pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::timestamptz[]))",
            quote_ident(schema)
        ),
        &[&pass_id, &ids, &reasons, &statuses, &times],
    )
    .await
    .context("recording deletions in the audit trail")?;
    Ok(())
}

/// Recent passes, newest first, for `df-reconciler history`.
pub async fn recent_passes(
    client: &impl GenericClient,
    cfg: &AuditConfig,
    limit: i64,
) -> Result<Vec<PassRow>, Error> {
    let schema = quote_ident(&cfg.schema);
    let rows = client
        .fetch_all(
            &format!(
                "SELECT pass_id, coalesce(host, ''), started_at, finished_at, dry_run, outcome,
                        coalesce(error, ''), instances_removed, rows_deleted, report,
                        generations_pruned
                   FROM {schema}.passes ORDER BY started_at DESC, id DESC LIMIT $1"
            ),
            &[&limit],
        )
        .await
        .context("reading the audit trail")?;
    Ok(rows
        .iter()
        .map(|r| PassRow {
            pass_id: r.get(0),
            host: r.get(1),
            started_at: r.get(2),
            finished_at: r.get(3),
            dry_run: r.get(4),
            outcome: r.get(5),
            error: r.get(6),
            instances_removed: r.get(7),
            rows_deleted: r.get(8),
            report: r.get(9),
            generations_pruned: r.get(10),
        })
        .collect())
}

/// A row of the passes table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PassRow {
    /// The pass's id, also on every log line of that pass.
    pub pass_id: String,
    /// Host name of the replica that ran it; empty when unknown.
    pub host: String,
    /// Database clock at the start of the pass.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: std::time::SystemTime,
    /// Database clock when the row was written, just after the pass.
    #[serde(serialize_with = "rfc3339")]
    pub finished_at: std::time::SystemTime,
    /// Whether the pass only counted what it would delete.
    pub dry_run: bool,
    /// `ok`, `failed`, `fenced` or `stopped`.
    pub outcome: String,
    /// Why the pass failed; empty unless `outcome` is `failed`.
    pub error: String,
    /// Roots removed: expired, capped and orphans together.
    pub instances_removed: i64,
    /// Rows deleted across all tables of both stores.
    pub rows_deleted: i64,
    /// Old generations pruned (engine executions, with their history).
    pub generations_pruned: i64,
    /// The full [`PassReport`], as `once --json` prints it.
    pub report: serde_json::Value,
}

fn rfc3339<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}
