//! One reconciliation pass.
//!
//! A pass reads the database clock and the hard-cap edge once, then runs two keyset-paged
//! phases, each a loop of batch transactions:
//! 1. expired terminal df rows (with their engine trees and stray queue items);
//! 2. orphan engine roots (with their trees).
//!
//! Each batch is ONE transaction: select up to `batch_size` candidates after the watermark,
//! lock them with FOR UPDATE SKIP LOCKED (df rows, then every instance of their engine
//! trees), drop whatever is locked, leased or no longer settled, delete the rest from both
//! stores, commit. The watermark moves past every candidate seen, deleted or skipped, so no
//! candidate is rescanned within a pass and none can starve another. A dry run executes the
//! same selections in READ ONLY transactions and counts instead of deleting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::types::{Timestamp, ToSql};
use tokio_postgres::Statement;

use deadpool_postgres::{Object, Pool, Transaction};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::audit::{self, DeletedRoot};
use crate::config::Config;
use crate::db;
use crate::error::{DbContext, Error};
use crate::locks;
use crate::metrics::Metrics;
use crate::policy::{EngineStatus, TerminalStatus};
use crate::preflight::{self, Intent};
use crate::report::PassReport;
use crate::sql::{control, engine, reconcile, InstanceTable, Schemas};

/// A failed pass, with what it had done (committed batches stay committed).
#[derive(Debug)]
pub struct PassFailed {
    pub error: Error,
    pub report: PassReport,
}

/// How long one sighting of another active session counts as "the database is busy": a
/// sample per batch misses short transactions between two statements, a busy workload is
/// seen again well within this.
const BUSY_MEMORY: Duration = Duration::from_secs(1);

/// After this many clean batches a batch size halved by a timeout doubles again.
const BATCHES_BEFORE_GROWING: u32 = 8;

/// How a pass runs and whom it tells.
#[derive(Clone, Default)]
pub struct PassOptions {
    pub dry_run: bool,
    pub metrics: Option<Arc<Metrics>>,
    /// Called after every committed batch with its transaction's wall time: the run
    /// loop's watchdog and liveness tick, the benchmark's batch latencies.
    pub on_batch: Option<Arc<dyn Fn(Duration) + Send + Sync>>,
    /// Leave the drift counts out (they read every live row; `pass.drift_interval`).
    pub skip_drift: bool,
}

/// Runs one pass: preflight, both phases, drift counts. `shutdown` is honoured between
/// batches, never inside one.
pub async fn run_pass(
    pool: &Pool,
    cfg: &Config,
    dry_run: bool,
    shutdown: &CancellationToken,
) -> Result<PassReport, PassFailed> {
    let options = PassOptions {
        dry_run,
        ..PassOptions::default()
    };
    run_pass_with(pool, cfg, &options, shutdown).await
}

/// [`run_pass`] with metrics and a progress callback. Records the pass in the audit trail
/// when its schema is installed.
pub async fn run_pass_with(
    pool: &Pool,
    cfg: &Config,
    options: &PassOptions,
    shutdown: &CancellationToken,
) -> Result<PassReport, PassFailed> {
    let pass_id = format!("{:016x}", fastrand::u64(..));
    let span = info_span!("pass", pass_id = %pass_id, dry_run = options.dry_run);
    async move {
        let started = Instant::now();
        let mut report = PassReport {
            pass_id,
            dry_run: options.dry_run,
            complete: true,
            ..PassReport::default()
        };
        let result = run_phases(pool, cfg, options, shutdown, &mut report).await;
        report.duration_ms = started.elapsed().as_millis() as u64;
        if let Err(error) = &result {
            report.errors.push(error.to_string());
        }
        let error = result.as_ref().err().map(|e| e.to_string());
        if let Err(e) = record_in_audit(pool, cfg, &report, error.as_deref()).await {
            warn!(error = %e, "could not record the pass in the audit trail");
        }
        if let Some(metrics) = &options.metrics {
            metrics.observe_pass(&report, result.is_err());
        }
        match result {
            Ok(()) => {
                info!(
                    duration_ms = report.duration_ms,
                    expired_removed = report.expired_removed.total(),
                    capped_removed = report.capped_removed,
                    orphans_reclaimed = report.orphans_reclaimed,
                    engine_children_removed = report.engine_children_removed,
                    skipped_unsettled = report.skipped_unsettled,
                    skipped_locked = report.skipped_locked,
                    batches = report.batches,
                    fenced = report.fenced,
                    report = %report.to_json(),
                    "pass finished"
                );
                Ok(report)
            }
            Err(error) => {
                warn!(error = %error, report = %report.to_json(), "pass failed");
                Err(PassFailed { error, report })
            }
        }
    }
    .instrument(span)
    .await
}

/// Writes the passes row when the audit schema exists; a missing schema is not an error
/// (the trail is installed by `migrate`).
async fn record_in_audit(
    pool: &Pool,
    cfg: &Config,
    report: &PassReport,
    error: Option<&str>,
) -> Result<(), Error> {
    let client = pool.get().await.map_err(|e| Error::Pool(e.to_string()))?;
    if !audit::is_installed(&**client, &cfg.audit).await? {
        return Ok(());
    }
    audit::record_pass(
        &**client,
        &cfg.audit,
        report,
        report.outcome(error.is_some()),
        error,
    )
    .await
}

async fn run_phases(
    pool: &Pool,
    cfg: &Config,
    options: &PassOptions,
    shutdown: &CancellationToken,
    report: &mut PassReport,
) -> Result<(), Error> {
    let target = db::describe_target(&db::pg_config(&cfg.database)?);
    let mut client = db::connect(pool, &target).await?;
    let result = run_phases_on(&mut client, cfg, options, shutdown, report).await;
    if matches!(result, Err(Error::ClientTimeout { .. })) {
        // The connection may still be waiting for a reply that will never come: never
        // hand it back to the pool.
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

/// Client-side bound on one step of a pass (a batch, the clock, preflight, drift): the
/// server enforces statement_timeout per statement, but a server or path that stopped
/// answering (a black-holing proxy) never delivers that error.
fn step_deadline(cfg: &Config) -> Duration {
    cfg.pass.statement_timeout * 2 + STEP_GRACE
}

/// Slack on top of two statement timeouts before a step counts as hung.
const STEP_GRACE: Duration = Duration::from_secs(5);

async fn bounded<T>(
    cfg: &Config,
    what: &'static str,
    step: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let limit = step_deadline(cfg);
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or(Err(Error::ClientTimeout { what, after: limit }))
}

async fn run_phases_on(
    client: &mut Object,
    cfg: &Config,
    options: &PassOptions,
    shutdown: &CancellationToken,
    report: &mut PassReport,
) -> Result<(), Error> {
    let dry_run = options.dry_run;
    let intent = if dry_run {
        Intent::DryRun
    } else {
        Intent::Delete
    };
    let verified = bounded(
        cfg,
        "checking the database",
        preflight::verify(&***client, cfg, intent),
    )
    .await?;
    report.warnings.extend(verified.warnings.iter().cloned());
    let statements = bounded(
        cfg,
        "preparing statements",
        Statements::prepare(client, &verified.schemas, dry_run),
    )
    .await?;
    let clock = bounded(
        cfg,
        "reading the clock",
        PassClock::read(client, cfg, &statements),
    )
    .await?;
    report.started_at = humantime::format_rfc3339_millis(clock.db_now).to_string();
    if !verified.sees_all_sessions {
        // Without pg_read_all_stats other sessions' xact_start is hidden: rely on the floor.
        debug!("open-transaction guard limited to visible sessions and prepared transactions");
    }
    let deletions_schema = if cfg.audit.record_deletions && !dry_run {
        if audit::is_installed(&***client, &cfg.audit).await? {
            Some(cfg.audit.schema.clone())
        } else {
            report.warnings.push(format!(
                "audit.record_deletions is on but schema {:?} has no audit tables; run `df-reconciler migrate`",
                cfg.audit.schema
            ));
            None
        }
    } else {
        None
    };
    let mut pass = Pass {
        client,
        cfg,
        options,
        statements,
        clock,
        batch_size: cfg.pass.batch_size,
        clean_batches: 0,
        deadline: cfg.pass.max_duration.map(|d| Instant::now() + d),
        shutdown,
        deletions_schema,
        oldest_skipped: None,
        last_busy: None,
        report,
    };
    let mut complete = true;
    for phase in [Phase::Expired, Phase::Orphans] {
        if !pass.run_phase(phase).await? {
            complete = false;
            break;
        }
    }
    if !dry_run {
        // Advice only: a failure to read the estimates must not fail the pass.
        match bounded(
            cfg,
            "reading table sizes",
            vacuum_hints(pass.client, &verified.schemas, pass.report),
        )
        .await
        {
            Ok(hints) => pass.report.warnings.extend(hints),
            Err(e) => debug!(error = %e, "could not read table sizes for VACUUM hints"),
        }
    }
    if !complete {
        pass.report.complete = false;
        return Ok(());
    }
    if !options.skip_drift {
        bounded(cfg, "counting drift", pass.read_drift()).await?;
    }
    let oldest = pass.oldest_skipped;
    let r = &mut *pass.report;
    r.backlog_eligible = r.instances_skipped();
    r.backlog_oldest_age_s = oldest
        .and_then(|t| pass.clock.db_now.duration_since(t).ok())
        .map(|d| d.as_secs_f64());
    Ok(())
}

/// A pass that removed at least this share of a table's rows (and at least
/// [`VACUUM_HINT_MIN_ROWS`]) says so: autovacuum reclaims the space in time, but after a first
/// large run a manual VACUUM (ANALYZE) gives the planner true sizes at once.
const VACUUM_HINT_SHARE: f64 = 0.2;
const VACUUM_HINT_MIN_ROWS: u64 = 100_000;

/// One warning per table the pass emptied by a large share, from the planner's row
/// estimate taken before the pass (`pg_class.reltuples`; unknown estimates are skipped).
async fn vacuum_hints(
    client: &Object,
    schemas: &Schemas,
    report: &PassReport,
) -> Result<Vec<String>, Error> {
    let mut hints = Vec::new();
    for (schema, table) in schemas.per_instance_tables() {
        let label = format!("{schema}.{table}");
        let removed = report.rows_deleted.get(&label).copied().unwrap_or(0);
        if removed < VACUUM_HINT_MIN_ROWS {
            continue;
        }
        let estimate: Option<f32> = client
            .query_opt(crate::sql::TABLE_ROW_ESTIMATE, &[&schema, &table])
            .await
            .context("reading a table's row estimate")?
            .and_then(|r| r.get(0));
        let Some(before) = estimate.filter(|e| *e > 0.0) else {
            continue;
        };
        if removed as f64 >= VACUUM_HINT_SHARE * f64::from(before) {
            hints.push(format!(
                "removed {removed} rows of {label} (about {:.0}% of its {} estimated rows): autovacuum will reclaim the space; `VACUUM (ANALYZE) {}` now keeps the planner's sizes true",
                100.0 * removed as f64 / f64::from(before),
                before as u64,
                format_args!("{}.{}", crate::sql::quote_ident(schema), crate::sql::quote_ident(table)),
            ));
        }
    }
    Ok(hints)
}

/// One table's DELETE (or, in a dry run, its count) of a batch's rows.
struct TableStatement {
    /// `schema.table`, for the report.
    table: String,
    statement: Statement,
    kind: DeleteKind,
}

/// What a table's statement takes and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteKind {
    /// Ids `$1`; returns the number of rows (a dry run's counts too).
    ById,
    /// Ids `$1` and the locked rows' addresses `$2` (`InstanceTable::delete_by_address`).
    ByAddress,
    /// Ids `$1`; returns the number of rows and the ids among them that were leased
    /// (`InstanceTable::delete_reporting_leases`).
    ReportingLeases,
}

/// A group of tables deleted from for the same ids, in deletion order.
type TableStatements = Vec<TableStatement>;

/// The statements of one pass, rendered for the verified schemas and prepared once on the
/// pass's connection: a batch then costs one round trip per statement, not two (parse,
/// then execute). Dropped, and so closed, with the pass.
struct Statements {
    terminal_count_up_to: Statement,
    batch_fence: Statement,
    other_active_sessions: Statement,
    cap_edge: Statement,
    expired_candidates: Statement,
    orphan_candidates: Statement,
    lock_df_rows: Statement,
    lock_trees: Statement,
    leased: Statement,
    root_state: Statement,
    root_status: Statement,
    drift: Statement,
    /// For df rows, then engine rows, in deletion order. In a dry run each one counts the
    /// rows instead.
    delete_df: TableStatements,
    /// The engine tables whose rows carry leases (queues, instance locks): deleted first.
    delete_engine_leased: TableStatements,
    /// The other engine tables, instances last.
    delete_engine: TableStatements,
    /// The engine's queue tables alone, for df rows that never got an engine record.
    delete_queues: TableStatements,
    dry_run: bool,
}

impl Statements {
    async fn prepare(client: &Object, schemas: &Schemas, dry_run: bool) -> Result<Self, Error> {
        let prepare = |template: &str| {
            let sql = schemas.render(template);
            async move {
                client
                    .prepare(&sql)
                    .await
                    .with_context(|| format!("preparing {}", first_line(&sql)))
            }
        };
        let deletes = |schema: &str, placeholder: &str, tables: &[&InstanceTable]| {
            let jobs: Vec<_> = tables
                .iter()
                .map(|t| {
                    let table = format!("{schema}.{}", t.name);
                    // A dry run locks nothing and read the leases before: it counts by id
                    // (the same rows).
                    let (kind, sql) = if dry_run {
                        (DeleteKind::ById, t.statement(placeholder, true))
                    } else if t.locked {
                        (DeleteKind::ByAddress, t.delete_by_address(placeholder))
                    } else if t.leased {
                        (
                            DeleteKind::ReportingLeases,
                            t.delete_reporting_leases(placeholder),
                        )
                    } else {
                        (DeleteKind::ById, t.statement(placeholder, false))
                    };
                    let statement = prepare(&sql);
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
        let (engine_leased, engine_rest): (Vec<&InstanceTable>, Vec<&InstanceTable>) =
            engine::PER_INSTANCE_TABLES.iter().partition(|t| t.leased);
        Ok(Self {
            terminal_count_up_to: prepare(reconcile::TERMINAL_COUNT_UP_TO).await?,
            batch_fence: prepare(reconcile::TRY_BATCH_FENCE).await?,
            other_active_sessions: prepare(reconcile::OTHER_ACTIVE_SESSIONS).await?,
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
            leased: prepare(engine::LEASED).await?,
            root_state: prepare(reconcile::ROOT_STATE).await?,
            root_status: prepare(engine::ROOT_STATUS).await?,
            drift: prepare(reconcile::DRIFT).await?,
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
                &engine::QUEUE_TABLES.iter().collect::<Vec<_>>(),
            )
            .await?,
            dry_run,
        })
    }
}

/// The first words of a statement, to name it in an error.
fn first_line(sql: &str) -> String {
    sql.split_whitespace().take(8).collect::<Vec<_>>().join(" ")
}

/// Everything fixed at the start of a pass, from the database clock.
#[derive(Debug, Clone)]
struct PassClock {
    db_now: SystemTime,
    /// Cutoff per terminal status (completed, failed, cancelled); None: nothing expires.
    cutoffs: [Option<SystemTime>; 3],
    /// The newest terminal row over the hard cap (terminal_at, id); None: cap not reached.
    cap_edge: Option<(Option<Timestamp<SystemTime>>, String)>,
    orphan_cutoff: Option<SystemTime>,
    /// Orphans must have been created before this (the oldest open transaction).
    orphan_created_before: SystemTime,
    drift_cutoff: Option<SystemTime>,
}

impl PassClock {
    async fn read(client: &mut Object, cfg: &Config, st: &Statements) -> Result<Self, Error> {
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .context("starting the pass")?;
        set_local_limits(&tx, cfg).await?;
        let row = tx
            .query_one(reconcile::PASS_CLOCK, &[])
            .await
            .context("reading the database clock")?;
        let db_now: SystemTime = row.get(0);
        let oldest_open_xact: SystemTime = row.get(1);
        let hard_cap = i64::try_from(cfg.retention.hard_cap).unwrap_or(i64::MAX);
        let terminal_rows: i64 = tx
            .query_one(&st.terminal_count_up_to, &[&hard_cap.saturating_add(1)])
            .await
            .context("counting terminal rows up to the hard cap")?
            .get(0);
        let cap_edge = if terminal_rows <= hard_cap {
            None
        } else {
            tx.query_opt(&st.cap_edge, &[&hard_cap])
                .await
                .context("finding the hard-cap edge")?
                .map(|row| {
                    (
                        row.get::<_, Option<Timestamp<SystemTime>>>(0),
                        row.get::<_, String>(1),
                    )
                })
        };
        tx.commit().await.context("ending the pass setup")?;
        let before = |d: Duration| db_now.checked_sub(d);
        let r = &cfg.retention;
        Ok(Self {
            db_now,
            cutoffs: TerminalStatus::ALL.map(|s| before(r.window_for(s))),
            cap_edge,
            orphan_cutoff: before(r.orphan_age()),
            orphan_created_before: oldest_open_xact.min(db_now),
            drift_cutoff: before(r.orphan_min_age),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Expired,
    Orphans,
}

/// What a batch found, applied to the report only once its transaction committed.
#[derive(Debug, Default)]
struct BatchTally {
    expired: Vec<(TerminalStatus, bool)>,
    orphans: Vec<EngineStatus>,
    children: u64,
    rows: Vec<(String, u64)>,
    skipped_unsettled: u64,
    skipped_locked: u64,
    skipped_inconsistent: u64,
    /// Oldest terminal_at (or orphan age) among candidates the batch left in place.
    oldest_skipped: Option<SystemTime>,
    /// Removed roots, for the opt-in deletions audit table.
    deleted_roots: Vec<DeletedRoot>,
}

impl BatchTally {
    fn skipped_since(&mut self, at: Option<Timestamp<SystemTime>>) {
        let at = match at {
            Some(Timestamp::Value(t)) => Some(t),
            Some(Timestamp::NegInfinity) => Some(SystemTime::UNIX_EPOCH),
            _ => None,
        };
        if let Some(at) = at {
            self.oldest_skipped = Some(self.oldest_skipped.map_or(at, |o| o.min(at)));
        }
    }
}

/// Where a phase stands after a batch.
enum Step {
    /// No candidate after the watermark: the phase is done.
    Exhausted,
    Continue {
        watermark: String,
    },
    /// Another replica holds the batch fence: this pass stands down.
    Fenced,
}

/// Known as soon as a batch has read its candidates, so a batch abandoned after that still
/// moves the watermark.
struct Progress {
    watermark: String,
    candidates: u64,
}

struct Pass<'a> {
    client: &'a mut Object,
    cfg: &'a Config,
    options: &'a PassOptions,
    statements: Statements,
    clock: PassClock,
    batch_size: u32,
    clean_batches: u32,
    deadline: Option<Instant>,
    shutdown: &'a CancellationToken,
    /// Set when removed roots are written to the audit deletions table.
    deletions_schema: Option<String>,
    oldest_skipped: Option<SystemTime>,
    /// When a batch last saw other sessions at work.
    last_busy: Option<Instant>,
    report: &'a mut PassReport,
}

impl Pass<'_> {
    /// Runs a phase to its end. Returns false when it stopped early (shutdown or budget).
    async fn run_phase(&mut self, phase: Phase) -> Result<bool, Error> {
        // None: the phase starts before every id, the empty one included.
        let mut watermark: Option<String> = None;
        loop {
            if self.shutdown.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let mut progress = None;
            let cfg = self.cfg;
            let batch_started = Instant::now();
            let result = bounded(
                cfg,
                "running a batch",
                self.batch(phase, watermark.as_deref(), &mut progress),
            )
            .await;
            match result {
                Ok(Step::Exhausted) => return Ok(true),
                Ok(Step::Fenced) => {
                    info!(
                        "another replica holds the batch fence; standing down until the next pass"
                    );
                    self.report.fenced = true;
                    if let Some(m) = &self.options.metrics {
                        m.fenced.inc();
                    }
                    return Ok(false);
                }
                Ok(Step::Continue { watermark: next }) => {
                    watermark = Some(next);
                    self.report.batches += 1;
                    self.after_clean_batch();
                    self.pace(batch_started.elapsed()).await;
                }
                Err(e) if is_timeout(&e) => {
                    self.report.batches_abandoned += 1;
                    warn!(?phase, batch_size = self.batch_size, error = %e, "batch abandoned, rolled back");
                    let statement_timeout = e.sqlstate() == Some(&SqlState::QUERY_CANCELED);
                    if statement_timeout {
                        if self.batch_size == 1 && progress.is_none() {
                            return Err(e);
                        }
                        self.batch_size = (self.batch_size / 2).max(1);
                        self.clean_batches = 0;
                    }
                    match progress {
                        Some(p) => {
                            self.report.skipped_abandoned += p.candidates;
                            watermark = Some(p.watermark);
                        }
                        None if statement_timeout => {}
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives other sessions the database's cores back: while a batch has seen them at work
    /// within the last [`BUSY_MEMORY`], pauses so that batches fill at most
    /// `pass.busy_duty_percent` of the time. Ends early on shutdown or the pass deadline.
    async fn pace(&mut self, batch: Duration) {
        let percent = self.cfg.pass.busy_duty_percent;
        let busy = self.last_busy.is_some_and(|t| t.elapsed() < BUSY_MEMORY);
        if !busy || percent >= 100 {
            return;
        }
        let mut pause = batch.mul_f64(100.0 / f64::from(percent) - 1.0);
        if let Some(deadline) = self.deadline {
            pause = pause.min(deadline.saturating_duration_since(Instant::now()));
        }
        let started = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.shutdown.cancelled() => {}
        }
        self.report.paused_ms += started.elapsed().as_millis() as u64;
    }

    fn after_clean_batch(&mut self) {
        self.clean_batches += 1;
        if self.batch_size < self.cfg.pass.batch_size
            && self.clean_batches >= BATCHES_BEFORE_GROWING
        {
            self.batch_size = (self.batch_size * 2).min(self.cfg.pass.batch_size);
            self.clean_batches = 0;
        }
    }

    async fn batch(
        &mut self,
        phase: Phase,
        watermark: Option<&str>,
        progress: &mut Option<Progress>,
    ) -> Result<Step, Error> {
        let dry_run = self.options.dry_run;
        let started = Instant::now();
        let tx = self
            .client
            .build_transaction()
            .read_only(dry_run)
            .start()
            .await
            .context("starting a batch")?;
        // The limits, the look at other sessions and the fence do not depend on each
        // other: pipelined, one round trip, the limits first.
        let st = &self.statements;
        let look_for_others = async {
            if self.cfg.pass.busy_duty_percent >= 100 {
                return Ok(0);
            }
            Ok::<i64, Error>(
                tx.query_one(&st.other_active_sessions, &[])
                    .await
                    .context("looking for other active sessions")?
                    .get(0),
            )
        };
        let take_fence = async {
            if dry_run {
                return Ok(true);
            }
            Ok::<bool, Error>(
                tx.query_one(&st.batch_fence, &[&locks::BATCH_FENCE])
                    .await
                    .context("taking the batch fence")?
                    .get(0),
            )
        };
        let ((), others, fenced_in) = futures_util::future::try_join3(
            set_local_limits(&tx, self.cfg),
            look_for_others,
            take_fence,
        )
        .await?;
        if others > 0 {
            self.last_busy = Some(Instant::now());
        }
        if !fenced_in {
            tx.rollback().await.context("standing down")?;
            return Ok(Step::Fenced);
        }
        let mut tally = BatchTally::default();
        let batch = Batch {
            tx: &tx,
            st: &self.statements,
            clock: &self.clock,
            batch_size: self.batch_size,
            watermark,
        };
        let step = match phase {
            Phase::Expired => expired_batch(batch, progress, &mut tally).await?,
            Phase::Orphans => orphan_batch(batch, progress, &mut tally).await?,
        };
        if dry_run {
            tx.rollback().await.context("ending a dry-run batch")?;
        } else {
            if let Some(schema) = &self.deletions_schema {
                audit::record_deletions(&tx, schema, &self.report.pass_id, &tally.deleted_roots)
                    .await?;
            }
            // The df foreign keys are deferred: check them now, under statement_timeout,
            // which PostgreSQL disarms before COMMIT runs deferred triggers. Their checks
            // are cached plans run once per deleted row, generic since the candidates
            // (replanning each under force_custom_plan made this step 5x slower).
            tx.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
                .await
                .context("checking the deleted rows' foreign keys")?;
            tx.commit().await.context("committing a batch")?;
        }
        if matches!(step, Step::Continue { .. }) {
            debug!(
                ?phase,
                ?watermark,
                removed = tally.deleted_roots.len(),
                "batch done"
            );
            let elapsed = started.elapsed();
            if let Some(m) = &self.options.metrics {
                m.observe_batch(elapsed);
            }
            if let Some(on_batch) = &self.options.on_batch {
                on_batch(elapsed);
            }
        }
        self.apply(phase, tally);
        Ok(step)
    }

    fn apply(&mut self, phase: Phase, tally: BatchTally) {
        if let Some(at) = tally.oldest_skipped {
            self.oldest_skipped = Some(self.oldest_skipped.map_or(at, |o| o.min(at)));
        }
        let r = &mut *self.report;
        for (status, window_expired) in tally.expired {
            if window_expired {
                r.expired_removed.add(status, 1);
            } else {
                r.capped_removed += 1;
                r.capped_by_status.add(status, 1);
            }
        }
        for status in tally.orphans {
            r.orphans_reclaimed += 1;
            match status {
                EngineStatus::Completed => r.orphans_by_status.completed += 1,
                EngineStatus::Failed => r.orphans_by_status.failed += 1,
                EngineStatus::ContinuedAsNew => r.orphans_by_status.continued_as_new += 1,
                EngineStatus::Running => {}
            }
        }
        r.engine_children_removed += tally.children;
        for (table, n) in tally.rows {
            r.add_rows(&table, phase == Phase::Orphans, n);
        }
        r.skipped_unsettled += tally.skipped_unsettled;
        r.skipped_locked += tally.skipped_locked;
        r.skipped_inconsistent += tally.skipped_inconsistent;
    }

    async fn read_drift(&mut self) -> Result<(), Error> {
        let tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .context("starting the drift report")?;
        set_local_limits(&tx, self.cfg).await?;
        let row = tx
            .query_one(
                &self.statements.drift,
                &[
                    &self.clock.drift_cutoff,
                    &self.clock.orphan_cutoff,
                    &self.clock.orphan_created_before,
                ],
            )
            .await
            .context("counting drift between the stores")?;
        tx.commit().await.context("ending the drift report")?;
        let count = |i: usize| row.get::<_, i64>(i) as u64;
        self.report.running_without_df_row = count(0);
        self.report.df_rows_without_engine = count(1);
        self.report.queue_items_without_instance = count(2);
        self.report.orphans_waiting = count(3);
        self.report.drift_counted = true;
        Ok(())
    }
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.sqlstate(),
        Some(s) if *s == SqlState::LOCK_NOT_AVAILABLE || *s == SqlState::QUERY_CANCELED
    )
}

/// Bounds every statement of the transaction, makes the server end it should the daemon
/// vanish mid-batch (its locks must not outlive it), makes PostgreSQL raise an error
/// instead of silently filtering rows should a row-level security policy ever apply, turns
/// JIT and parallel workers off (every statement is index-driven; JIT cost ~10 ms per batch
/// for nothing, and a background daemon must not take the live engine's cores), and
/// prices random reads as cached ones: a batch touches ~1,000 ids by primary key, and at
/// the default random_page_cost of 4 the planner hashed whole tables instead (a 100k-row
/// backlog: root state 152 -> 11 ms, kv_delta delete 32 -> 3 ms; docs/PERFORMANCE.md).
/// The candidate selections are planned for their actual watermark on every execution
/// (custom plans); see [`select_candidates`] for the rest of a batch.
async fn set_local_limits(tx: &Transaction<'_>, cfg: &Config) -> Result<(), Error> {
    let statement_ms = cfg.pass.statement_timeout.as_millis();
    let sql = format!(
        "SET LOCAL statement_timeout = {statement_ms}; SET LOCAL lock_timeout = {};
         SET LOCAL idle_in_transaction_session_timeout = {statement_ms};
         SET LOCAL row_security = off; SET LOCAL jit = off;
         SET LOCAL max_parallel_workers_per_gather = 0;
         SET LOCAL plan_cache_mode = force_custom_plan;
         SET LOCAL random_page_cost = {RANDOM_PAGE_COST}",
        cfg.pass.lock_timeout.as_millis()
    );
    tx.batch_execute(&sql).await.context("setting batch limits")
}

/// The daemon's own planner cost for a random page read (PostgreSQL's default is 4, meant
/// for spinning disks); set per transaction, never for other sessions.
const RANDOM_PAGE_COST: f64 = 1.1;

/// What one batch works with: its transaction, the pass's statements and clock, and where
/// the keyset stands.
#[derive(Clone, Copy)]
struct Batch<'a> {
    tx: &'a Transaction<'a>,
    st: &'a Statements,
    clock: &'a PassClock,
    batch_size: u32,
    watermark: Option<&'a str>,
}

/// The watermark after a batch's candidates (their first column is the keyset id, in
/// order), recorded in `progress` at once so an abandoned batch still moves past them.
/// None: no candidate left.
fn advance(rows: &[tokio_postgres::Row], progress: &mut Option<Progress>) -> Option<String> {
    let next: String = rows.last()?.get(0);
    *progress = Some(Progress {
        watermark: next.clone(),
        candidates: rows.len() as u64,
    });
    Some(next)
}

/// Runs a candidate selection, planned for its actual watermark (a generic plan cannot use
/// `$1 IS NULL OR id > $1` as an index bound), and behind it, pipelined, switches the rest
/// of the batch to generic plans: every later statement takes the batch's ids as an array,
/// for which a generic plan probes the index as well (assuming a short array, it keeps
/// `= ANY($1)` an index scan), without planning on every execution.
async fn select_candidates(
    tx: &Transaction<'_>,
    statement: &Statement,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> Result<Vec<tokio_postgres::Row>, Error> {
    let select = async { tx.query(statement, params).await.context(what) };
    let generic_plans = async {
        tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
            .await
            .context("switching to generic plans")
    };
    let (rows, ()) = futures_util::future::try_join(select, generic_plans).await?;
    Ok(rows)
}

fn limit(batch_size: u32) -> i64 {
    i64::from(batch_size)
}

/// Phase 1: the next batch of expired terminal df rows.
async fn expired_batch(
    batch: Batch<'_>,
    progress: &mut Option<Progress>,
    tally: &mut BatchTally,
) -> Result<Step, Error> {
    let Batch {
        tx,
        st,
        clock,
        batch_size,
        watermark,
    } = batch;
    let (edge_at, edge_id) = match &clock.cap_edge {
        Some((at, id)) => (*at, Some(id.as_str())),
        None => (None, None),
    };
    let [cut_completed, cut_failed, cut_cancelled] = clock.cutoffs;
    let rows = select_candidates(
        tx,
        &st.expired_candidates,
        &[
            &watermark,
            &limit(batch_size),
            &cut_completed,
            &cut_failed,
            &cut_cancelled,
            &edge_at,
            &edge_id,
        ],
        "selecting expired instances",
    )
    .await?;
    let Some(next) = advance(&rows, progress) else {
        return Ok(Step::Exhausted);
    };

    // Classify what the selection saw; only settled candidates go on to locking.
    struct Candidate {
        status: TerminalStatus,
        window_expired: bool,
        has_engine_record: bool,
    }
    let terminal_at: BTreeMap<String, Option<Timestamp<SystemTime>>> =
        rows.iter().map(|r| (r.get(0), r.get(6))).collect();
    let mut candidates: BTreeMap<String, Candidate> = BTreeMap::new();
    for row in &rows {
        let id: String = row.get(0);
        let Some(status) = TerminalStatus::parse(row.get::<_, &str>(1)) else {
            continue;
        };
        let has_engine_record: bool = row.get(3);
        let engine_is_root: bool = row.get(4);
        let engine_status: Option<&str> = row.get(5);
        if has_engine_record && !engine_is_root {
            tally.skipped_inconsistent += 1;
        } else if has_engine_record && !engine_status.is_some_and(EngineStatus::is_terminal) {
            tally.skipped_unsettled += 1;
        } else {
            candidates.insert(
                id,
                Candidate {
                    status,
                    window_expired: row.get(2),
                    has_engine_record,
                },
            );
        }
    }
    let ids: Vec<String> = candidates.keys().cloned().collect();
    // Locked df rows and their addresses.
    let locked: HashMap<String, String> = if ids.is_empty() {
        HashMap::new()
    } else {
        tx.query(&st.lock_df_rows, &[&ids])
            .await
            .context("locking expired df rows")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    tally.skipped_locked += (ids.len() - locked.len()) as u64;
    candidates.retain(|id, _| locked.contains_key(id));

    let engine_roots: Vec<String> = candidates
        .iter()
        .filter(|(_, c)| c.has_engine_record)
        .map(|(id, _)| id.clone())
        .collect();
    let bare_ids: Vec<String> = candidates
        .iter()
        .filter(|(_, c)| !c.has_engine_record)
        .map(|(id, _)| id.clone())
        .collect();
    let mut trees = lock_trees(tx, st, &engine_roots, &bare_ids, RootRule::Settled, tally).await?;

    // Engine rows: every instance of the cleared trees. A df row without an engine record
    // takes only the queue items carrying its id: should the engine create its instance
    // meanwhile, that instance is left whole, to be reclaimed later as an orphan.
    if !trees.is_empty() {
        let end_savepoint = delete_unleased(tx, st, &mut trees, tally).await?;
        // df ids to delete: bare rows and rows whose whole tree was cleared.
        let df_rows: Rows = candidates
            .keys()
            .filter(|id| trees.is_deletable(id))
            .map(|id| (id.clone(), locked[id].clone()))
            .collect();
        let deleted = delete_rows(
            tx,
            st,
            end_savepoint,
            &[
                (&st.delete_df, &df_rows),
                (&st.delete_engine, &trees.members()),
            ],
        )
        .await?;
        tally.rows.extend(deleted.rows);
        for (id, _) in &df_rows {
            let c = &candidates[id];
            tally.expired.push((c.status, c.window_expired));
            tally.deleted_roots.push(DeletedRoot {
                instance_id: id.clone(),
                reason: if c.window_expired {
                    "expired"
                } else {
                    "capped"
                },
                status: c.status.as_str().to_owned(),
                terminal_at: terminal_at.get(id).copied().flatten(),
            });
        }
        tally.children += trees.children();
    }
    for (id, at) in &terminal_at {
        if !trees.is_deletable(id) {
            tally.skipped_since(*at);
        }
    }
    Ok(Step::Continue { watermark: next })
}

/// Phase 2: the next batch of orphan engine roots.
async fn orphan_batch(
    batch: Batch<'_>,
    progress: &mut Option<Progress>,
    tally: &mut BatchTally,
) -> Result<Step, Error> {
    let Batch {
        tx,
        st,
        clock,
        batch_size,
        watermark,
    } = batch;
    let rows = select_candidates(
        tx,
        &st.orphan_candidates,
        &[
            &watermark,
            &limit(batch_size),
            &clock.orphan_cutoff,
            &clock.orphan_created_before,
        ],
        "selecting orphan engine roots",
    )
    .await?;
    let Some(next) = advance(&rows, progress) else {
        return Ok(Step::Exhausted);
    };
    let roots: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let aged_from: BTreeMap<String, Option<Timestamp<SystemTime>>> =
        rows.iter().map(|r| (r.get(0), r.get(2))).collect();
    let mut trees = lock_trees(tx, st, &roots, &[], RootRule::Orphan, tally).await?;
    if !trees.is_empty() {
        let end_savepoint = delete_unleased(tx, st, &mut trees, tally).await?;
        let deleted = delete_rows(
            tx,
            st,
            end_savepoint,
            &[(&st.delete_engine, &trees.members())],
        )
        .await?;
        tally.rows.extend(deleted.rows);
        for (id, status) in &trees.root_statuses {
            tally.orphans.push(*status);
            tally.deleted_roots.push(DeletedRoot {
                instance_id: id.clone(),
                reason: "orphan",
                status: format!("{status:?}"),
                terminal_at: aged_from.get(id).copied().flatten(),
            });
        }
        tally.children += trees.children();
    }
    for (id, at) in &aged_from {
        if !trees.is_deletable(id) {
            tally.skipped_since(*at);
        }
    }
    Ok(Step::Continue { watermark: next })
}

/// What a root's state must be, read after locking, for its tree to be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootRule {
    /// A df row's engine root: anything but Running (and a status we know).
    Settled,
    /// An orphan: terminal and still without a df row.
    Orphan,
}

/// Trees cleared for deletion in this batch.
#[derive(Debug, Default)]
struct ClearedTrees {
    /// By root: every engine instance of the tree, root included, with its row address.
    trees: BTreeMap<String, Rows>,
    /// df ids without an engine record whose queue items may go.
    bare: BTreeSet<String>,
    /// The cleared roots' current-execution status.
    root_statuses: BTreeMap<String, EngineStatus>,
}

impl ClearedTrees {
    fn is_empty(&self) -> bool {
        self.trees.is_empty() && self.bare.is_empty()
    }

    /// A cleared root or bare df id.
    fn is_deletable(&self, id: &str) -> bool {
        self.trees.contains_key(id) || self.bare.contains(id)
    }

    /// Every engine instance of the cleared trees.
    fn members(&self) -> Rows {
        self.trees.values().flatten().cloned().collect()
    }

    /// The bare ids, without addresses (queue tables never delete by address).
    fn bare_rows(&self) -> Rows {
        self.bare
            .iter()
            .map(|id| (id.clone(), String::new()))
            .collect()
    }

    fn children(&self) -> u64 {
        self.trees.values().map(|m| m.len() as u64 - 1).sum()
    }

    /// Puts back every tree with a member among `leased`, and every leased bare id.
    /// Returns how many it put back.
    fn put_back_leased(&mut self, leased: &HashSet<String>) -> u64 {
        let before = self.trees.len() + self.bare.len();
        self.trees
            .retain(|_, members| !members.iter().any(|(id, _)| leased.contains(id)));
        self.root_statuses
            .retain(|root, _| self.trees.contains_key(root));
        self.bare.retain(|id| !leased.contains(id));
        (before - self.trees.len() - self.bare.len()) as u64
    }
}

/// Expands `roots` into whole trees, locks every instance without waiting, and clears a
/// tree only when all its instances were locked and the root's state, read after locking,
/// satisfies `rule`. `bare_ids` (df rows without an engine record) are cleared when the
/// engine has not created them meanwhile. Leases: a dry run clears only trees and bare ids
/// none of whose queue items or instance locks is leased; a real pass learns of leases as
/// it deletes ([`delete_unleased`]).
async fn lock_trees(
    tx: &Transaction<'_>,
    st: &Statements,
    roots: &[String],
    bare_ids: &[String],
    rule: RootRule,
    tally: &mut BatchTally,
) -> Result<ClearedTrees, Error> {
    let mut trees: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Members this batch locked: their row address and current execution.
    let mut locked: HashMap<String, (String, Option<i64>)> = HashMap::new();
    // Bare ids are expanded too: an engine record that appeared since selection shows here
    // (and is locked until the batch ends, though never deleted in it).
    let expand: Vec<&String> = roots.iter().chain(bare_ids).collect();
    if !expand.is_empty() {
        for row in tx
            .query(&st.lock_trees, &[&expand])
            .await
            .context("expanding and locking engine trees")?
        {
            if !row.get::<_, bool>(5) {
                // No engine row (a bare df row, or a root gone since selection).
                continue;
            }
            let member: String = row.get(1);
            if row.get::<_, bool>(2) {
                locked.insert(member.clone(), (row.get(3), row.get(4)));
            }
            trees.entry(row.get(0)).or_default().push(member);
        }
        // A tree is one whose root has an engine row; rows found under an id without one
        // (a corrupt parent link to a missing instance) are no tree of this batch's.
        trees.retain(|root, members| members.contains(root));
    }
    // A dry run's leases and the root states are both read after locking and independent
    // of each other: pipelined, one round trip.
    let lease_ids: Vec<&String> = if st.dry_run {
        roots
            .iter()
            .filter_map(|r| trees.get(r))
            .flatten()
            .chain(bare_ids)
            .collect()
    } else {
        Vec::new()
    };
    let read_leases = async {
        if lease_ids.is_empty() {
            return Ok(HashSet::new());
        }
        Ok::<_, Error>(
            tx.query(&st.leased, &[&lease_ids])
                .await
                .context("reading dispatcher leases")?
                .iter()
                .map(|r| r.get(0))
                .collect::<HashSet<String>>(),
        )
    };
    // Roots whose own row is locked, with the current execution the lock read.
    let (state_ids, state_executions): (Vec<&String>, Vec<Option<i64>>) = roots
        .iter()
        .filter_map(|r| locked.get(r).map(|(_, execution)| (r, *execution)))
        .unzip();
    let read_states = async {
        let mut states: BTreeMap<String, (Option<String>, bool)> = BTreeMap::new();
        if !state_ids.is_empty() {
            let statement = match rule {
                RootRule::Settled => &st.root_status,
                RootRule::Orphan => &st.root_state,
            };
            for row in tx
                .query(statement, &[&state_ids, &state_executions])
                .await
                .context("reading engine root state")?
            {
                // Only ROOT_STATE (orphans) looks for a df row; an expired row's root has
                // its df row, locked by this batch.
                let has_df_row = rule == RootRule::Settled || row.get::<_, bool>(2);
                states.insert(row.get(0), (row.get(1), has_df_row));
            }
        }
        Ok::<_, Error>(states)
    };
    let (leased, states) = futures_util::future::try_join(read_leases, read_states).await?;

    let mut cleared = ClearedTrees::default();
    for root in roots {
        let Some(tree) = trees.get(root) else {
            // The engine record vanished since selection (another reconciler?): leave the
            // df row for the next pass rather than guess.
            tally.skipped_locked += 1;
            continue;
        };
        if tree
            .iter()
            .any(|id| !locked.contains_key(id) || leased.contains(id))
        {
            tally.skipped_locked += 1;
            continue;
        }
        let (status, has_df_row) = states
            .get(root)
            .map(|(s, d)| (s.as_deref().and_then(EngineStatus::parse), *d))
            .unwrap_or((None, false));
        let allowed = match (rule, status) {
            (_, None | Some(EngineStatus::Running)) => false,
            (RootRule::Settled, Some(_)) => true,
            (RootRule::Orphan, Some(_)) => !has_df_row,
        };
        if !allowed {
            if rule == RootRule::Settled {
                tally.skipped_unsettled += 1;
            }
            continue;
        }
        cleared.trees.insert(
            root.clone(),
            tree.iter()
                .map(|id| (id.clone(), locked[id].0.clone()))
                .collect(),
        );
        if let Some(s) = status {
            cleared.root_statuses.insert(root.clone(), s);
        }
    }
    for id in bare_ids {
        if trees.contains_key(id) {
            // The engine started it after all: it is not bare any more; next pass decides.
            tally.skipped_unsettled += 1;
        } else if leased.contains(id) {
            tally.skipped_locked += 1;
        } else {
            cleared.bare.insert(id.clone());
        }
    }
    Ok(cleared)
}

/// A batch's rows of one table group: (instance id, row address). The address is the
/// ctid the batch's lock returned, used by tables deleted by address; empty otherwise.
type Rows = Vec<(String, String)>;

/// The savepoint a real batch sets before deleting the rows that carry leases.
const LEASE_SAVEPOINT: &str = "SAVEPOINT before_leased_rows";
const BACK_TO_LEASE_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT before_leased_rows";
const END_LEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT before_leased_rows";

/// Deletes the rows that carry leases (queue items, instance locks) of the cleared trees and
/// bare ids, first and inside a savepoint, reading each row's lease as it goes: the delete
/// is the lease check, so a lease taken after the trees were locked cannot slip through.
/// A tree (or bare id) with a lease not yet expired is put back (`skipped_locked`), the
/// savepoint rolled back and the rest deleted again, until no deleted row was leased.
/// Returns the statement that ends the savepoint, for the batch to send ahead of its other
/// deletes: those must run in the top transaction, as a row it locked and a subtransaction
/// deleted would take a MultiXact each. A dry run read the leases when it locked
/// ([`engine::LEASED`]) and only counts.
async fn delete_unleased(
    tx: &Transaction<'_>,
    st: &Statements,
    cleared: &mut ClearedTrees,
    tally: &mut BatchTally,
) -> Result<Option<&'static str>, Error> {
    let mut prelude = (!st.dry_run).then_some(LEASE_SAVEPOINT);
    loop {
        let deleted = delete_rows(
            tx,
            st,
            prelude,
            &[
                (&st.delete_engine_leased, &cleared.members()),
                (&st.delete_queues, &cleared.bare_rows()),
            ],
        )
        .await?;
        if deleted.leased.is_empty() {
            tally.rows.extend(deleted.rows);
            return Ok((!st.dry_run).then_some(END_LEASE_SAVEPOINT));
        }
        let put_back = cleared.put_back_leased(&deleted.leased);
        if put_back == 0 {
            // Cannot happen: every deleted row carries an id of the batch's. Never loop.
            return Err(Error::Refused(vec![format!(
                "leased rows of {:?} belong to no tree of the batch; the batch is rolled back",
                deleted.leased
            )]));
        }
        tally.skipped_locked += put_back;
        prelude = Some(BACK_TO_LEASE_SAVEPOINT);
    }
}

/// What a group of deletes removed.
#[derive(Debug, Default)]
struct Deleted {
    /// Rows per table, tables with none left out.
    rows: Vec<(String, u64)>,
    /// Ids among the deleted rows whose lease had not expired.
    leased: HashSet<String>,
}

/// Runs `prelude` (a savepoint statement), then each table's DELETE (or, in a dry run, its
/// count) for the rows paired with its group of statements; a group with no rows is left
/// out. The statements are pipelined: sent together, run by the server one after the other
/// in order, in the batch's transaction. A delete by address must match every locked row,
/// or the batch fails (and rolls back) rather than leave part of an instance behind.
async fn delete_rows(
    tx: &Transaction<'_>,
    st: &Statements,
    prelude: Option<&str>,
    groups: &[(&TableStatements, &Rows)],
) -> Result<Deleted, Error> {
    // Unique ids in order, and their addresses in the same order.
    let groups: Vec<(&TableStatements, Vec<&str>, Vec<&str>)> = groups
        .iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(statements, rows)| {
            let unique: BTreeMap<&str, &str> = rows
                .iter()
                .map(|(id, address)| (id.as_str(), address.as_str()))
                .collect();
            let (ids, addresses) = unique.into_iter().unzip();
            (*statements, ids, addresses)
        })
        .collect();
    let prelude = async {
        match prelude {
            Some(sql) => tx
                .batch_execute(sql)
                .await
                .context("moving the batch's savepoint"),
            None => Ok(()),
        }
    };
    let runs = groups.iter().flat_map(|(statements, ids, addresses)| {
        statements.iter().map(move |t| async move {
            let context = || format!("deleting from {}", t.table);
            let (n, leased) = match t.kind {
                _ if st.dry_run => {
                    let n = tx
                        .query_one(&t.statement, &[ids])
                        .await
                        .with_context(|| format!("counting {}", t.table))?
                        .get::<_, i64>(0);
                    (n as u64, Vec::new())
                }
                DeleteKind::ByAddress => {
                    let n = tx
                        .execute(&t.statement, &[ids, addresses])
                        .await
                        .with_context(context)?;
                    if n != ids.len() as u64 {
                        return Err(Error::Refused(vec![format!(
                            "deleting {} locked rows of {} by address removed {n}; the batch is rolled back",
                            ids.len(),
                            t.table
                        )]));
                    }
                    (n, Vec::new())
                }
                DeleteKind::ReportingLeases => {
                    let row = tx
                        .query_one(&t.statement, &[ids])
                        .await
                        .with_context(context)?;
                    (row.get::<_, i64>(0) as u64, row.get::<_, Vec<String>>(1))
                }
                DeleteKind::ById => (
                    tx.execute(&t.statement, &[ids])
                        .await
                        .with_context(context)?,
                    Vec::new(),
                ),
            };
            Ok::<_, Error>((&t.table, n, leased))
        })
    });
    let ((), results) =
        futures_util::future::try_join(prelude, futures_util::future::try_join_all(runs)).await?;
    let mut deleted = Deleted::default();
    for (table, n, leased) in results {
        if n > 0 {
            deleted.rows.push((table.clone(), n));
        }
        deleted.leased.extend(leased);
    }
    Ok(deleted)
}
