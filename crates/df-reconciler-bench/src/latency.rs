//! Batch latency: one in-process pass on its own copy of a seeded database, with the
//! daemon's own per-batch hook (`PassOptions::on_batch`), which the pass calls after every
//! committed batch with that batch transaction's wall time. It runs the core library this
//! benchmark was built with, not `--daemon-bin`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use df_reconciler_core::db;
use df_reconciler_core::pass::{self, PassOptions};
use tokio_util::sync::CancellationToken;

use crate::results::Results;
use crate::server::Server;
use crate::stats::{ms, secs, thousands, Spread};

/// The batch durations the hook reports, in commit order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Duration>>>);

impl Recorder {
    /// The hook for [`PassOptions::on_batch`].
    fn hook(&self) -> Arc<dyn Fn(Duration) + Send + Sync> {
        let sink = self.0.clone();
        Arc::new(move |took| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(took);
        })
    }

    fn take(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// p50, p99 and max of the batch transactions of a pass over a fresh copy of `seed_db`.
pub async fn batch_latency(
    server: &Server,
    seed_db: &str,
    n: u32,
    results: &mut Results,
) -> Result<()> {
    let db = format!("latency_{n}");
    server.fresh_copy(seed_db, &db).await?;
    let cfg = server.config(&db);
    let pool = db::build_pool(&cfg)?;
    let recorder = Recorder::default();
    let options = PassOptions {
        dry_run: false,
        on_batch: Some(recorder.hook()),
        ..PassOptions::default()
    };
    let started = Instant::now();
    let report = pass::run_pass_with(&pool, &cfg, &options, &CancellationToken::new())
        .await
        .map_err(|f| anyhow::anyhow!("in-process pass failed: {}", f.error))?;
    let wall = started.elapsed();
    pool.close();
    drop(pool);
    server.drop_db(&db).await?;
    let durations = recorder.take();
    let label = thousands(n.into());
    let Some(spread) = Spread::of(&durations) else {
        results.notes.push(format!(
            "N = {label}: too few batches ({}) for batch latencies",
            report.batches
        ));
        return Ok(());
    };
    results.line(
        "batch transaction (in-process pass)",
        &label,
        figure(&spread, durations.len(), wall),
        "",
        "",
    );
    Ok(())
}

/// "p50 148 ms, p99 211 ms, max 243 ms over 180 batches; pass 31.20 s".
fn figure(spread: &Spread, batches: usize, wall: Duration) -> String {
    format!(
        "p50 {}, p99 {}, max {} over {batches} batches; pass {}",
        ms(spread.p50),
        ms(spread.p99),
        ms(spread.max),
        secs(wall)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_what_the_hook_is_given() {
        let recorder = Recorder::default();
        let hook = recorder.hook();
        for millis in [120, 95, 210] {
            hook(Duration::from_millis(millis));
        }
        assert_eq!(
            recorder.take(),
            [120, 95, 210].map(Duration::from_millis).to_vec()
        );
        assert!(recorder.take().is_empty());
    }

    #[test]
    fn figure_of_the_batches() {
        let durations: Vec<Duration> = (1..=100).map(|i| Duration::from_millis(i * 2)).collect();
        let spread = Spread::of(&durations).unwrap();
        assert_eq!(
            figure(&spread, durations.len(), Duration::from_millis(31_204)),
            "p50 100 ms, p99 198 ms, max 200 ms over 100 batches; pass 31.20 s"
        );
    }
}
