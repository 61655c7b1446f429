//! Drift between the stores: counted and reported, never deleted.

use super::batch::set_local_limits;
use super::phase::Pass;
use crate::db::Exec;
use crate::error::{DbContext, Error};

impl Pass<'_> {
    pub(crate) async fn read_drift(&mut self) -> Result<(), Error> {
        let tx = self
            .client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .context("starting the drift report")?;
        set_local_limits(&tx, self.cfg).await?;
        let row = tx
            .fetch_one(
                &self.statements.drift,
                &[
                    &self.clock.drift_cutoff,
                    &self.clock.orphan_cutoff,
                    &self.clock.orphan_created_before,
                ],
            )
            .await
            .context("counting drift between the stores")?;
        let generations_waiting = if self.cfg.retention.prune_executions {
            let p = &self.clock.rules;
            tx.fetch_one(
                &self.statements.generations_waiting,
                &[
                    &p.labels,
                    &p.roles,
                    &p.keep_executions,
                    &p.generation_cutoffs,
                ],
            )
            .await
            .context("counting the generations waiting to be pruned")?
            .get::<_, i64>(0) as u64
        } else {
            0
        };
        tx.commit().await.context("ending the drift report")?;
        let count = |i: usize| row.get::<_, i64>(i) as u64;
        self.report.running_without_df_row = count(0);
        self.report.df_rows_without_engine = count(1);
        self.report.queue_items_without_instance = count(2);
        self.report.orphans_waiting = count(3);
        self.report.df_live_engine_ended = count(4);
        self.report.generations_waiting = generations_waiting;
        self.report.drift_counted = true;
        Ok(())
    }
}
