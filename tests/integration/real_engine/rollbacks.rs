//! What rolled-back transactions leave behind on the real engine:
//! - `BEGIN; SELECT df.cancel(id); ROLLBACK;`: the engine's cancel was queued over
//!   pg_durable's own connection and commits, the df update rolls back: the df row stays
//!   running forever while the engine instance is Failed. Never deleted; drift.
//! - `BEGIN; SELECT df.start(...); ROLLBACK;`: the df rows vanish, the engine's start item
//!   survives, and ~5 s later the engine fails the orchestration ("not found after 5s"):
//!   an orphan, kept while young, reclaimed whole once old enough.

use std::time::Duration;

use serde_json::json;

use super::{
    age, bystander, completes_normally, engine_or_skip, first_row, live_deletions, pass, result,
    start, status, tree, wait_status,
};
use crate::support::db::rows_of;
use crate::support::harness::wait_until;

const DAY: f64 = 86_400.0;
const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_rolled_back_cancel_is_never_deleted_and_reported_as_drift() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let sleeping = start(
        &c,
        "df.seq(df.sleep(600), 'SELECT 1')",
        "rolled-back-cancel",
    )
    .await;
    wait_status(&c, &sleeping, "running", FINISH).await;
    c.batch_execute(&format!("BEGIN; SELECT df.cancel('{sleeping}'); ROLLBACK;"))
        .await
        .expect("a cancel, rolled back");
    wait_until("the engine ended the instance", FINISH, || async {
        tree(&c, &sleeping).await.first().map(|(_, s)| s.as_str()) == Some("Failed")
    })
    .await;
    assert_eq!(
        status(&c, &sleeping).await.as_deref(),
        Some("running"),
        "the df update rolled back"
    );
    // Ended long ago as far as the engine is concerned (past orphan_min_age, 1 h).
    age(&c, &sleeping, 2.0 * DAY).await;
    let rows = rows_of(&c, &sleeping).await;
    let live = bystander(&c, 5).await;

    // The shortest window, no terminal row retained: a live df row still never goes.
    let mut cfg = engine.short_config(Duration::ZERO);
    cfg.retention.orphan_min_age = Duration::from_secs(3600);
    cfg.retention.hard_cap = 0;
    let report = pass(&cfg).await;

    assert_eq!(rows_of(&c, &sleeping).await, rows, "{report}");
    assert_eq!(report.instances_removed(), 0, "{report}");
    assert_eq!(report.orphans_reclaimed, 0, "a df row owns it: no orphan");
    assert_eq!(status(&c, &sleeping).await.as_deref(), Some("running"));
    completes_normally(&c, &live).await;
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    // Drift "df live, engine ended", reported, never deleted.
    assert_eq!(report.df_live_engine_ended, 1, "{report}");
}

#[tokio::test]
async fn a_rolled_back_start_is_an_orphan_reclaimed_once_old_enough() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    c.batch_execute("BEGIN").await.unwrap();
    let orphan: String = c
        .query_one(
            "SELECT df.start('SELECT 5 AS five', 'rolled-back-start')",
            &[],
        )
        .await
        .expect("df.start in a transaction")
        .get(0);
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(status(&c, &orphan).await, None, "the df rows rolled back");
    // Meanwhile, a workflow that must go on normally.
    let live = start(&c, "df.seq(df.sleep(8), 'SELECT 6 AS six')", "bystander").await;
    wait_until(
        "the engine failed the rolled-back start",
        FINISH,
        || async { tree(&c, &orphan).await.first().map(|(_, s)| s.as_str()) == Some("Failed") },
    )
    .await;
    let output: String = c
        .query_one(
            "SELECT e.output FROM _duroxide.instances i
               JOIN _duroxide.executions e
                 ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
              WHERE i.instance_id = $1",
            &[&orphan],
        )
        .await
        .unwrap()
        .get(0);
    assert!(output.contains("not found"), "{output}");
    let rows = rows_of(&c, &orphan).await;

    // Young (the defaults: retention 30 d, orphan_min_age 1 h): kept.
    let report = pass(&engine.config()).await;
    assert_eq!(rows_of(&c, &orphan).await, rows, "{report}");
    assert_eq!(report.orphans_reclaimed, 0, "{report}");
    assert_eq!(report.orphans_waiting, 1, "{report}");

    // Old enough: the engine's own timestamps past both.
    age(&c, &orphan, 31.0 * DAY).await;
    let report = pass(&engine.config()).await;
    assert_eq!(report.orphans_reclaimed, 1, "{report}");
    assert_eq!(report.orphans_by_status.failed, 1, "{report}");
    assert_eq!(
        rows_of(&c, &orphan).await,
        0,
        "the whole tree, queue items included"
    );

    wait_status(&c, &live, "completed", FINISH).await;
    assert_eq!(
        result(&c, &live).await.map(|r| first_row(&r, "six")),
        Some(json!(6))
    );
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    let errors = engine.errors_about_deleted(&c).await;
    assert!(errors.is_empty(), "{errors:#?}");
}
