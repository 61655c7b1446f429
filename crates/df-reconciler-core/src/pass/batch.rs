//! One batch = one transaction: BEGIN, the limits, the look at the database's load and
//! the fence; then the phase's own steps; then the audit rows, the deferred foreign-key checks
//! and COMMIT (a dry run rolls back).

use std::time::Instant;

use deadpool_postgres::Transaction;
use tracing::debug;

use super::candidates::Progress;
use super::clock::PassClock;
use super::deletes::delete_rows;
use super::expired::expired_batch;
use super::generations::generation_batch;
use super::orphans::orphan_batch;
use super::pacing::Load;
use super::phase::{Pass, Phase, Step};
use super::statements::Statements;
use super::tally::BatchTally;
use crate::audit;
use crate::config::Config;
use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::locks;
use crate::rules::RuleSet;

/// What one batch works with: its transaction, the pass's statements and clock, and where
/// the keyset stands.
#[derive(Clone, Copy)]
pub(crate) struct Batch<'a> {
    pub(crate) tx: &'a Transaction<'a>,
    pub(crate) st: &'a Statements,
    pub(crate) clock: &'a PassClock,
    pub(crate) batch_size: u32,
    pub(crate) watermark: Option<&'a str>,
    /// The rules in force, to name a removed instance's rule.
    pub(crate) rules: RuleSet<'a>,
}

impl Pass<'_> {
    pub(crate) async fn batch(
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
        // The limits, the look at the load and the fence do not depend on each other:
        // pipelined, one round trip, the limits first.
        let st = &self.statements;
        let look_at_load = async {
            if !self.pacing.watches_load() {
                return Ok(Load::default());
            }
            let row = tx
                .fetch_one(&st.database_load, &[])
                .await
                .context("looking at the database's load")?;
            Ok::<Load, Error>(Load::from_row(&row))
        };
        let take_fence = async {
            if dry_run {
                return Ok(true);
            }
            Ok::<bool, Error>(
                tx.fetch_one(&st.batch_fence, &[&locks::BATCH_FENCE])
                    .await
                    .context("taking the batch fence")?
                    .get(0),
            )
        };
        let ((), load, fenced_in) = futures_util::future::try_join3(
            set_local_limits(&tx, self.cfg),
            look_at_load,
            take_fence,
        )
        .await?;
        if load.is_busy() {
            debug!(?load, "the database is at work; batches are paced");
        }
        self.pacing.saw(load, Instant::now());
        if !fenced_in {
            tx.rollback().await.context("standing down")?;
            return Ok(Step::Fenced);
        }
        let mut tally = BatchTally::default();
        let batch = Batch {
            tx: &tx,
            st: &self.statements,
            clock: &self.clock,
            batch_size: self.batch_size.get(),
            watermark,
            rules: RuleSet::new(&self.cfg.retention),
        };
        let step = match phase {
            Phase::Expired => expired_batch(batch, progress, &mut tally).await?,
            Phase::Orphans => orphan_batch(batch, progress, &mut tally).await?,
            Phase::Generations => generation_batch(batch, progress, &mut tally).await?,
        };
        if dry_run {
            let last =
                delete_rows(&tx, st, None, &[(&st.delete_last, &tally.deleted_last)]).await?;
            tally.rows.extend(last.rows);
            tx.rollback().await.context("ending a dry-run batch")?;
        } else {
            if let Some(schema) = &self.deletions_schema {
                audit::record_deletions(
                    &tx,
                    schema,
                    self.deletions_have_rule,
                    &self.report.pass_id,
                    &tally.deleted_roots,
                )
                .await?;
            }
            // The df foreign keys are deferred: check them now, under statement_timeout,
            // which PostgreSQL disarms before COMMIT runs deferred triggers. Their checks
            // are cached plans run once per deleted row, generic since the candidates
            // (replanning each under force_custom_plan made this step 5x slower).
            // Pipelined behind them, the dispatcher's queue items, as late as possible: a
            // dispatcher that picks one of them spins until the batch ends. A lease on one
            // taken since the trees were locked rolls the whole batch back (the other
            // tables' rows are gone at the top level, with no savepoint to return to).
            let last = delete_rows(
                &tx,
                st,
                Some(CHECK_DEFERRED_FOREIGN_KEYS),
                &[(&st.delete_last, &tally.deleted_last)],
            )
            .await?;
            if !last.leased.is_empty() {
                tx.rollback()
                    .await
                    .context("rolling back a batch with a leased queue item")?;
                return Ok(Step::LeasedAtCommit);
            }
            tally.rows.extend(last.rows);
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
        tally.apply(phase, &mut self.oldest_skipped, self.report);
        Ok(step)
    }
}

/// Pins the search path for the transaction (a transaction pooler may run it on a server
/// connection that never saw the session's; see [`crate::db::SEARCH_PATH`]), bounds every
/// statement of the transaction, makes the server end it should the daemon
/// vanish mid-batch (its locks must not outlive it), makes PostgreSQL raise an error
/// instead of silently filtering rows should a row-level security policy ever apply, turns
/// JIT and parallel workers off (every statement is index-driven; JIT cost ~10 ms per batch
/// for nothing, and a background daemon must not take the live engine's cores), and
/// prices random reads as cached ones: a batch touches ~1,000 ids by primary key, and at
/// the default random_page_cost of 4 the planner hashed whole tables instead (a 100k-row
/// backlog: root state 152 -> 11 ms, kv_delta delete 32 -> 3 ms; docs/PERFORMANCE.md).
/// The candidate selections are planned for their actual watermark on every execution
/// (custom plans); see [`super::candidates::select_candidates`] for the rest of a batch.
pub(crate) async fn set_local_limits(tx: &Transaction<'_>, cfg: &Config) -> Result<(), Error> {
    tx.batch_execute(&local_limits(cfg))
        .await
        .context("setting batch limits")
}

/// The `SET LOCAL` statements of [`set_local_limits`].
fn local_limits(cfg: &Config) -> String {
    let statement_ms = cfg.pass.statement_timeout.as_millis();
    format!(
        "{}; SET LOCAL statement_timeout = {statement_ms}; SET LOCAL lock_timeout = {};
         SET LOCAL idle_in_transaction_session_timeout = {statement_ms};
         SET LOCAL row_security = off; SET LOCAL jit = off;
         SET LOCAL max_parallel_workers_per_gather = 0;
         SET LOCAL plan_cache_mode = force_custom_plan;
         SET LOCAL random_page_cost = {RANDOM_PAGE_COST}",
        crate::db::SET_LOCAL_SEARCH_PATH,
        cfg.pass.lock_timeout.as_millis()
    )
}

/// Runs the df foreign keys' deferred checks now, where statement_timeout still applies.
const CHECK_DEFERRED_FOREIGN_KEYS: &str = "SET CONSTRAINTS ALL IMMEDIATE";

/// The daemon's own planner cost for a random page read (PostgreSQL's default is 4, meant
/// for spinning disks); set per transaction, never for other sessions.
const RANDOM_PAGE_COST: f64 = 1.1;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_limit_is_local_to_the_transaction() {
        let mut cfg = Config::default();
        cfg.pass.statement_timeout = Duration::from_millis(1500);
        cfg.pass.lock_timeout = Duration::from_secs(2);
        let sql = local_limits(&cfg);
        let settings: Vec<&str> = sql.split(';').map(str::trim).collect();
        assert_eq!(
            settings,
            [
                "SET LOCAL search_path = pg_catalog, pg_temp",
                "SET LOCAL statement_timeout = 1500",
                "SET LOCAL lock_timeout = 2000",
                "SET LOCAL idle_in_transaction_session_timeout = 1500",
                "SET LOCAL row_security = off",
                "SET LOCAL jit = off",
                "SET LOCAL max_parallel_workers_per_gather = 0",
                "SET LOCAL plan_cache_mode = force_custom_plan",
                "SET LOCAL random_page_cost = 1.1",
            ]
        );
    }
}
