//! Pacing on the real engine: its dispatchers poll the queues in short statements all the
//! time, and an idle engine must cost a pass nothing; an activity at work makes a pass
//! pause between batches.

use std::time::Duration;

use df_reconciler_core::config::Config;

use super::{age, engine_or_skip, live_deletions, pass, start, wait_ended, wait_status, Engine};
use crate::support::db::count;
use crate::support::harness::wait_until;

const DAY: f64 = 86_400.0;
const FINISH: Duration = Duration::from_secs(60);
/// Expired workflows per test; at batch size 1 a pass takes as many batches, each sampling
/// the load once.
const WORKFLOWS: usize = 8;

/// `WORKFLOWS` two-step workflows run to completion and aged two days.
async fn expired_workflows(c: &tokio_postgres::Client) {
    let mut ids = Vec::new();
    for _ in 0..WORKFLOWS {
        ids.push(start(c, "'SELECT 1 AS a' ~> 'SELECT 2 AS b'", "pacing").await);
    }
    for id in &ids {
        wait_ended(c, id, "completed", FINISH).await;
        age(c, id, 2.0 * DAY).await;
    }
}

/// Queue items ready or leased: none once every workflow has ended and the engine has
/// acknowledged its last items.
async fn queued_items(c: &tokio_postgres::Client) -> i64 {
    count(
        c,
        "SELECT (SELECT count(*) FROM _duroxide.orchestrator_queue WHERE visible_at <= now())
              + (SELECT count(*) FROM _duroxide.worker_queue WHERE visible_at <= now())",
    )
    .await
}

/// The workflows' window of a day (they are two days old), one root per batch, and
/// pacing at 10%: a batch seen at work is followed by a pause nine times as long.
fn paced(engine: &Engine) -> Config {
    let mut cfg = engine.config();
    cfg.retention.window = Duration::from_secs(86_400);
    cfg.pass.batch_size = 1;
    cfg.pass.busy_duty_percent = 10;
    cfg
}

#[tokio::test]
async fn a_pass_beside_the_idle_real_engine_never_pauses() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    expired_workflows(&c).await;
    wait_until("the engine's queues are empty", FINISH, || async {
        queued_items(&c).await == 0
    })
    .await;

    let report = pass(&paced(&engine)).await;

    assert_eq!(
        report.expired_removed.completed, WORKFLOWS as u64,
        "{report}"
    );
    assert!(report.batches >= WORKFLOWS as u64, "{report}");
    assert_eq!(
        report.paused_ms, 0,
        "the engine polls, but nothing is at work: {report}"
    );
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_pass_beside_a_running_activity_pauses_between_batches() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    expired_workflows(&c).await;
    // An activity at work for the whole pass: its worker item is leased, its SQL runs.
    let busy = start(&c, "'SELECT pg_sleep(30) AS slept'", "busy").await;
    wait_status(&c, &busy, "running", FINISH).await;
    wait_until("the activity runs", FINISH, || async {
        count(
            &c,
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND state = 'active'
                AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
        )
        .await
            == 1
    })
    .await;

    let report = pass(&paced(&engine)).await;

    assert_eq!(
        report.expired_removed.completed, WORKFLOWS as u64,
        "{report}"
    );
    assert!(
        report.paused_ms > 0 && report.paused_ms as f64 >= 0.5 * report.duration_ms as f64,
        "at 10% a pass beside a running activity mostly pauses: {report}"
    );
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    assert_eq!(
        super::status(&c, &busy).await.as_deref(),
        Some("running"),
        "the live workflow is untouched"
    );
}
