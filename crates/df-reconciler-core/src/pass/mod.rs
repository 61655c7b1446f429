//! One reconciliation pass.
//!
//! A pass reads the database clock and the hard-cap edge once, then runs three keyset-paged
//! phases, each a loop of batch transactions, a batch of each in turn:
//! 1. expired terminal df rows (with their engine trees and stray queue items);
//! 2. orphan engine roots (with their trees), unless the open-transaction guard cannot see
//!    every transaction that may still commit a df row (then no orphan goes this pass);
//! 3. old generations of the engine instances that stay (`retention.prune_executions`):
//!    executions outside the newest `retention.keep_executions`, ended longer than
//!    `retention.execution_min_age` ago, each with its history.
//!
//! Each batch is ONE transaction: select up to `batch_size` candidates after the watermark,
//! lock them with FOR UPDATE SKIP LOCKED (df rows, then every instance of their engine
//! trees), drop whatever is locked, leased or no longer settled, delete the rest from both
//! stores, commit. The watermark moves past every candidate seen, deleted or skipped, so no
//! candidate is rescanned within a pass and none can starve another. A dry run executes the
//! same selections in READ ONLY transactions and counts instead of deleting.
//!
//! # Layout
//! A file per step, in the order of the batch diagram in docs/ARCHITECTURE.md:
//! - `statements.rs`: every statement of the pass, prepared once on its connection.
//! - `clock.rs`: the database clock, the oldest open transaction, the hard-cap edge.
//! - `phase.rs`: a phase's keyset loop; what a timed-out batch leads to.
//! - `batch.rs`: one batch transaction: limits, fence, audit rows, constraints, commit.
//! - `pacing.rs`: the pause after a batch while the database is at work.
//! - `batch_size.rs`: the batch size a statement timeout halves and clean batches regrow.
//! - `candidates.rs`: the candidate selection and the watermark.
//! - `expired.rs`, `orphans.rs`, `generations.rs`: a batch of phase 1, 2 and 3.
//! - `trees.rs`: expanding, locking and clearing engine trees.
//! - `leases.rs`: the lease-checked deletes, in a savepoint.
//! - `deletes.rs`: the pipelined per-table deletes (or dry-run counts).
//! - `tally.rs`: what a batch did, added to the report once it committed.
//! - `vacuum.rs`: VACUUM hints after a large pass.
//! - `drift.rs`: the drift counts between the stores.
//! - `explain.rs`: `df-reconciler explain`: one instance through the same predicates.

#![warn(missing_docs)]

mod batch;
mod batch_size;
mod candidates;
mod clock;
mod deletes;
mod drift;
mod expired;
pub mod explain;
mod generations;
mod leases;
mod orphans;
mod pacing;
mod phase;
mod statements;
mod tally;
mod trees;
mod vacuum;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::audit;
use crate::config::Config;
use crate::db;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::preflight::{self, Intent};
use crate::report::PassReport;

use batch_size::BatchSize;
pub(crate) use clock::missing_roles;
use clock::PassClock;
use pacing::Pacing;
pub use phase::Watermarks;
use phase::{Cursor, Pass, Phase};
use statements::Statements;
use vacuum::vacuum_hints;

/// A failed pass, with what it had done (committed batches stay committed).
#[derive(Debug)]
pub struct PassFailed {
    /// Why the pass stopped.
    pub error: Error,
    /// The pass's numbers up to the failure, for the log, the metrics and the audit row.
    pub report: PassReport,
}

/// How a pass runs and whom it tells.
#[derive(Clone, Default)]
pub struct PassOptions {
    /// READ ONLY transactions that count what a real pass would delete.
    pub dry_run: bool,
    /// Fed with the pass's report and every batch's wall time; None: nothing recorded.
    pub metrics: Option<Arc<Metrics>>,
    /// Called after every committed batch with its transaction's wall time: the run
    /// loop's watchdog and liveness tick, the benchmark's batch latencies.
    pub on_batch: Option<Arc<dyn Fn(Duration) + Send + Sync>>,
    /// Leave the drift counts out (they read every live row; `pass.drift_interval`).
    pub skip_drift: bool,
    /// Where each phase starts, and where the pass leaves them for the next one: `run`
    /// keeps one across its passes, so a pass cut short by `pass.max_duration` is continued
    /// where it stopped instead of rescanning the same skipped rows. None: every phase
    /// starts at the beginning of the keyset.
    pub resume: Option<Arc<Mutex<Watermarks>>>,
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
                    orphans_held = ?report.orphans_held,
                    engine_children_removed = report.engine_children_removed,
                    generations_pruned = report.generations_pruned,
                    skipped_unsettled = report.skipped_unsettled,
                    skipped_locked = report.skipped_locked,
                    df_live_engine_ended = report.df_live_engine_ended,
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
        Statements::prepare(
            client,
            &verified.schemas,
            &crate::rules::RuleSet::new(&cfg.retention),
            dry_run,
            cfg.database.pooler.statement_mode(),
        ),
    )
    .await?;
    let clock = bounded(
        cfg,
        "reading the clock",
        PassClock::read(client, cfg, &statements),
    )
    .await?;
    report.started_at = humantime::format_rfc3339_millis(clock.db_now).to_string();
    // The open-transaction guard must never be blind: when it cannot see every
    // transaction that may still commit a df row, phase 2 does not run at all (a dry run
    // likewise counts no orphan) and the report says why.
    report.orphans_held = clock.guard.holds();
    report.warnings.extend(clock.guard.warnings());
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
    let deletions_have_rule = match &deletions_schema {
        Some(_) => audit::deletions_have_rule(&***client, &cfg.audit).await?,
        None => false,
    };
    if deletions_schema.is_some() && !deletions_have_rule {
        report.warnings.push(format!(
            "the audit deletions table in schema {:?} has no rule column yet; run `df-reconciler migrate`",
            cfg.audit.schema
        ));
    }
    let mut pass = Pass {
        client,
        cfg,
        options,
        statements,
        clock,
        batch_size: BatchSize::new(cfg.pass.batch_size),
        deadline: cfg.pass.max_duration.map(|d| Instant::now() + d),
        shutdown,
        deletions_schema,
        deletions_have_rule,
        oldest_skipped: None,
        pacing: Pacing::new(cfg.pass.busy_duty_percent),
        report,
    };
    let start = options
        .resume
        .as_ref()
        .map(|cell| cell.lock().map(|w| w.clone()).unwrap_or_default())
        .unwrap_or_default();
    let mut cursors = Cursor::all(&start);
    if !cfg.retention.prune_executions {
        for cursor in cursors.iter_mut().filter(|c| c.phase == Phase::Generations) {
            cursor.exhausted = true;
        }
    }
    if !pass.report.orphans_held.is_empty() {
        info!(held = ?pass.report.orphans_held, "no orphan reclaimed this pass: the open-transaction guard cannot see every transaction");
        for cursor in cursors.iter_mut().filter(|c| c.phase == Phase::Orphans) {
            cursor.exhausted = true;
        }
    }
    let outcome = pass.run_phases(&mut cursors).await;
    if let Some(cell) = &options.resume {
        if let Ok(mut w) = cell.lock() {
            *w = Cursor::resume_point(&cursors);
        }
    }
    let complete = outcome?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_may_take_two_statement_timeouts_and_the_grace() {
        let mut cfg = Config::default();
        cfg.pass.statement_timeout = Duration::from_secs(30);
        assert_eq!(step_deadline(&cfg), Duration::from_secs(65));
        cfg.pass.statement_timeout = Duration::from_millis(250);
        assert_eq!(step_deadline(&cfg), Duration::from_millis(5_500));
    }
}
