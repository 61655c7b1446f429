//! Rows of the classification table for instances that have a df row: expired terminal
//! ones go whole (with or without an engine record) unless their engine root still runs;
//! terminal ones within the window and the cap, and live ones, stay.

use crate::support::db::{df_ids, engine_ids, rows_of};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};
use crate::support::seed::{workflow, DAY};

#[tokio::test]
async fn expired_terminal_with_terminal_engine_root_goes_entirely() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "a0000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        2,
    )
    .await;
    workflow(
        &c,
        "a0000002",
        "failed",
        Some("Failed"),
        45.0 * DAY,
        Some(44.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "a0000003",
        "completed",
        Some("Completed"),
        2.0 * DAY,
        Some(DAY),
        1,
    )
    .await;
    assert!(
        rows_of(&c, "a0000001").await > 5,
        "fixture wrote a whole workflow"
    );

    let report = pass(&config_for(&db), false).await;

    assert_eq!(
        rows_of(&c, "a0000001").await,
        0,
        "df rows, nodes, whole engine tree gone"
    );
    assert_eq!(rows_of(&c, "a0000002").await, 0);
    assert_eq!(df_ids(&c).await, vec!["a0000003"]);
    assert!(engine_ids(&c)
        .await
        .iter()
        .all(|id| id.starts_with("a0000003")));
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert_eq!(report.engine_children_removed, 2);
    assert_eq!(report.rows_deleted["df.instances"], 2);
    assert_eq!(report.rows_deleted["_duroxide.instances"], 4);
}

#[tokio::test]
async fn expired_terminal_without_engine_record_takes_its_queue_items() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(&c, "b0000001", "cancelled", None, 40.0 * DAY, None, 0).await;
    c.execute(
        "INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, visible_at, created_at)
         VALUES ('b0000001', '{\"StartOrchestration\":{}}', now() - interval '40 days',
                 now() - interval '40 days')",
        &[],
    )
    .await
    .unwrap();

    let report = pass(&config_for(&db), false).await;

    assert_eq!(rows_of(&c, "b0000001").await, 0);
    assert_eq!(report.expired_removed.cancelled, 1);
    assert_eq!(report.rows_deleted["_duroxide.orchestrator_queue"], 1);
}

#[tokio::test]
async fn expired_terminal_with_running_engine_root_is_skipped_not_half_deleted() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // df turned terminal before the engine did: the engine root still runs.
    workflow(
        &c,
        "c0000001",
        "failed",
        Some("Running"),
        60.0 * DAY,
        None,
        1,
    )
    .await;
    let before = rows_of(&c, "c0000001").await;

    let report = pass(&config_for(&db), false).await;

    assert_eq!(
        rows_of(&c, "c0000001").await,
        before,
        "nothing of it deleted"
    );
    assert_eq!(report.skipped_unsettled, 1);
    assert_eq!(report.instances_removed(), 0);
}

#[tokio::test]
async fn terminal_within_window_and_cap_is_kept() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for (i, status) in ["completed", "failed", "cancelled"].iter().enumerate() {
        let engine = if *status == "completed" {
            "Completed"
        } else {
            "Failed"
        };
        workflow(
            &c,
            &format!("d000000{i}"),
            status,
            Some(engine),
            29.0 * DAY,
            Some(29.0 * DAY),
            1,
        )
        .await;
    }
    let report = pass(&config_for(&db), false).await;
    assert_eq!(df_ids(&c).await.len(), 3);
    assert_eq!(engine_ids(&c).await.len(), 6);
    assert_eq!(report.instances_removed(), 0);
}

#[tokio::test]
async fn live_df_rows_are_never_deleted_and_missing_engine_records_are_reported() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "e0000001",
        "running",
        Some("Running"),
        400.0 * DAY,
        None,
        1,
    )
    .await;
    workflow(&c, "e0000002", "pending", None, 400.0 * DAY, None, 0).await;
    // A live df row whose engine root already finished: still live for df, kept.
    workflow(
        &c,
        "e0000003",
        "running",
        Some("Completed"),
        400.0 * DAY,
        Some(399.0 * DAY),
        0,
    )
    .await;

    let report = pass(&config_for(&db), false).await;

    assert_eq!(df_ids(&c).await, vec!["e0000001", "e0000002", "e0000003"]);
    assert_eq!(engine_ids(&c).await.len(), 3);
    assert_eq!(
        report.df_rows_without_engine, 1,
        "e0000002: no engine record, no queue item"
    );
    assert_eq!(report.instances_removed(), 0);
}
