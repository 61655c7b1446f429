//! How old a terminal instance is and how long it may stay: terminal_at from
//! server-controlled columns only, per-status windows, the hard cap, and engine completions
//! recorded slightly before the df row's creation.

use std::time::Duration;

use crate::support::db::{df_ids, engine_ids};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};
use crate::support::seed::{workflow, DAY, HOUR};

#[tokio::test]
async fn terminal_age_comes_from_server_controlled_columns_only() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Failed long after it started: ages from the engine's completed_at, not created_at.
    workflow(
        &c,
        "10000001",
        "failed",
        Some("Failed"),
        90.0 * DAY,
        Some(DAY),
        0,
    )
    .await;
    // Completed: df.completed_at wins over the engine's.
    workflow(
        &c,
        "10000002",
        "completed",
        Some("Completed"),
        90.0 * DAY,
        Some(2.0 * DAY),
        0,
    )
    .await;
    c.execute(
        "UPDATE _duroxide.executions SET completed_at = now() - interval '80 days' WHERE instance_id = '10000002'",
        &[],
    )
    .await
    .unwrap();
    // Cancelled with no completion time anywhere: ages from created_at.
    workflow(
        &c,
        "10000003",
        "cancelled",
        Some("Failed"),
        90.0 * DAY,
        None,
        0,
    )
    .await;
    // A user bumping updated_at does not rejuvenate (or age) anything.
    c.execute(
        "UPDATE df.instances SET updated_at = now() + interval '1 year'",
        &[],
    )
    .await
    .unwrap();

    let report = pass(&config_for(&db), false).await;

    assert_eq!(df_ids(&c).await, vec!["10000001", "10000002"]);
    assert_eq!(report.expired_removed.cancelled, 1);
}

#[tokio::test]
async fn per_status_windows_apply() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "11000001",
        "completed",
        Some("Completed"),
        10.0 * DAY,
        Some(10.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "11000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "11000003",
        "cancelled",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let mut cfg = config_for(&db);
    cfg.retention.completed = Some(Duration::from_secs(7 * 86_400));
    cfg.retention.failed = Some(Duration::from_secs(90 * 86_400));

    let report = pass(&cfg, false).await;

    assert_eq!(df_ids(&c).await, vec!["11000002"]);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.cancelled, 1);
}

#[tokio::test]
async fn hard_cap_keeps_the_newest_terminal_rows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // 15 terminal rows within the window, one hour apart; ids in reverse age order so id
    // order and age order disagree.
    for i in 0..15 {
        let id = format!("12{:06x}", 100 - i);
        workflow(
            &c,
            &id,
            "completed",
            Some("Completed"),
            (i as f64 + 1.0) * HOUR,
            Some(i as f64 * HOUR),
            0,
        )
        .await;
    }
    // Live rows do not count toward the cap.
    workflow(
        &c,
        "12ffffff",
        "running",
        Some("Running"),
        20.0 * DAY,
        None,
        0,
    )
    .await;
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 10;

    let report = pass(&cfg, false).await;

    assert_eq!(report.capped_removed, 5);
    let kept = df_ids(&c).await;
    let expected: Vec<String> = (0..10)
        .map(|i| format!("12{:06x}", 100 - i))
        .chain(["12ffffff".to_string()])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        kept, expected,
        "the ten newest terminal rows and the live one"
    );
    assert_eq!(
        pass(&cfg, false).await.instances_removed(),
        0,
        "cap is stable"
    );
}

#[tokio::test]
async fn hard_cap_zero_keeps_no_settled_terminal_row() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "13000001",
        "completed",
        Some("Completed"),
        HOUR,
        Some(HOUR),
        0,
    )
    .await;
    workflow(&c, "13000002", "failed", Some("Running"), HOUR, None, 0).await;
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 0;
    let report = pass(&cfg, false).await;
    assert_eq!(report.capped_removed, 1);
    assert_eq!(report.skipped_unsettled, 1);
    assert_eq!(df_ids(&c).await, vec!["13000002"]);
}

/// A pass rules rows out from the df row alone, using created_at minus one day as the
/// earliest terminal_at a row without completed_at can have (the engine completes after
/// df.start() commits). Engine completions recorded up to a day before the df row's
/// created_at (clock skew) still expire on time; the age still comes from the engine.
#[tokio::test]
async fn engine_completion_slightly_before_df_creation_still_expires_on_time() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Created 29.7 days ago (inside the window), engine completed 30.2 days ago: expired.
    workflow(
        &c,
        "0f000001",
        "failed",
        Some("Failed"),
        29.7 * DAY,
        Some(30.2 * DAY),
        0,
    )
    .await;
    // Same creation, engine completed 29.5 days ago: inside the window.
    workflow(
        &c,
        "0f000002",
        "failed",
        Some("Failed"),
        29.7 * DAY,
        Some(29.5 * DAY),
        0,
    )
    .await;
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.expired_removed.failed, 1);
    assert_eq!(df_ids(&c).await, vec!["0f000002"]);
    assert_eq!(engine_ids(&c).await, vec!["0f000002"]);
}
