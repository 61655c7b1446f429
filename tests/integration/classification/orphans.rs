//! Rows of the classification table for engine records without a df row: old orphans are
//! reclaimed with their trees (never before max(window, orphan_min_age)), young, running
//! and between-generations ones stay, children never go alone, and queue items nobody owns
//! are only reported. (Ended roots whose descendants still run: [`super::trees`].)

use std::time::Duration;

use crate::support::db::{count, engine_ids, engine_statuses, exec, rows_of};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, config_without_pruning, pass};
use crate::support::seed::{orphan, workflow, DAY, HOUR};

#[tokio::test]
async fn old_orphans_of_every_terminal_status_are_reclaimed_with_their_trees() {
    let db = TestDb::new().await;
    let c = db.client().await;
    orphan(&c, "f0000001", "Completed", 40.0 * DAY, 39.0 * DAY, 2).await;
    orphan(&c, "f0000002", "Failed", 40.0 * DAY, 39.0 * DAY, 0).await;
    // A loop that ended: two generations ContinuedAsNew, the current one Completed.
    exec(
        &c,
        "SELECT df_fixture.orphan_root('f0000003', 'Completed', now() - interval '40 days',
                now() - interval '39 days', children => 1, executions => 3)",
    )
    .await;
    workflow(
        &c,
        "f0000004",
        "completed",
        Some("Completed"),
        2.0 * DAY,
        Some(DAY),
        0,
    )
    .await;

    let report = pass(&config_for(&db), false).await;

    for id in ["f0000001", "f0000002", "f0000003"] {
        assert_eq!(rows_of(&c, id).await, 0, "{id}");
    }
    assert_eq!(engine_ids(&c).await, vec!["f0000004"]);
    assert_eq!(report.orphans_reclaimed, 3);
    assert_eq!(report.orphans_by_status.completed, 2);
    assert_eq!(report.orphans_by_status.failed, 1);
    assert_eq!(report.orphans_by_status.continued_as_new, 0);
    assert_eq!(report.engine_children_removed, 3);
}

#[tokio::test]
async fn young_orphans_are_kept_and_do_not_hide_old_ones() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Many young orphans sorting before the old one: it must still be found.
    for i in 0..30 {
        orphan(
            &c,
            &format!("1{i:07x}"),
            "Failed",
            10.0 * 60.0,
            5.0 * 60.0,
            0,
        )
        .await;
    }
    orphan(&c, "ff000001", "Failed", 40.0 * DAY, 40.0 * DAY, 0).await;
    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 4;

    let report = pass(&cfg, false).await;

    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(rows_of(&c, "ff000001").await, 0);
    assert_eq!(engine_ids(&c).await.len(), 30, "young orphans kept");
}

#[tokio::test]
async fn orphan_age_floor_applies_even_with_a_zero_window() {
    let db = TestDb::new().await;
    let c = db.client().await;
    orphan(&c, "0a000001", "Failed", 50.0 * 60.0, 45.0 * 60.0, 0).await;
    orphan(&c, "0a000002", "Failed", 3.0 * HOUR, 2.0 * HOUR, 0).await;
    let mut cfg = config_for(&db);
    cfg.retention.window = Duration::ZERO;
    cfg.retention.allow_short_retention = true;

    let report = pass(&cfg, false).await;

    assert_eq!(
        engine_ids(&c).await,
        vec!["0a000001"],
        "45 min < orphan_min_age 1h"
    );
    assert_eq!(report.orphans_reclaimed, 1);
}

#[tokio::test]
async fn orphans_are_older_than_max_of_window_and_floor() {
    let db = TestDb::new().await;
    let c = db.client().await;
    orphan(&c, "0b000001", "Completed", 20.0 * DAY, 20.0 * DAY, 0).await;
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.orphans_reclaimed, 0, "20 days < 30-day window");
    assert_eq!(engine_ids(&c).await.len(), 1);
}

#[tokio::test]
async fn running_engine_root_without_df_row_is_kept_and_counted() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute(
        "SELECT df_fixture.orphan_root('0c000001', 'Running', now() - interval '90 days', NULL, 1)",
        &[],
    )
    .await
    .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert_eq!(engine_ids(&c).await.len(), 2);
    assert_eq!(report.running_without_df_row, 1);
}

/// A root LOOP whose df row is gone, between two generations (current execution
/// ContinuedAsNew, completed_at NULL, the next generation queued): live, like Running,
/// however long ago its last generation ended (here the engine has not picked up the next
/// one for 35 days).
#[tokio::test]
async fn a_loop_between_generations_without_df_row_is_kept_and_counted_running() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "SELECT df_fixture.orphan_root('0c000002', 'ContinuedAsNew', now() - interval '90 days',
                now() - interval '35 days', children => 1, executions => 30)",
    )
    .await;
    let statuses: Vec<String> = engine_statuses(&c, "0c000002")
        .await
        .into_iter()
        .map(|(_, status)| status)
        .collect();
    assert_eq!(
        statuses,
        ["ContinuedAsNew", "Completed"],
        "the root between generations; the finished generation's child"
    );
    let before = rows_of(&c, "0c000002").await;

    for dry_run in [true, false] {
        let report = pass(&config_without_pruning(&db), dry_run).await;
        assert_eq!(report.orphans_reclaimed, 0, "dry run: {dry_run}\n{report}");
        assert_eq!(
            report.running_without_df_row, 1,
            "dry run: {dry_run}\n{report}"
        );
        assert_eq!(report.orphans_waiting, 0, "dry run: {dry_run}\n{report}");
        assert_eq!(rows_of(&c, "0c000002").await, before, "dry run: {dry_run}");
    }
}

#[tokio::test]
async fn engine_children_are_never_deleted_alone() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // A tree whose root was removed by hand: the child is orphaned but never deleted alone.
    orphan(&c, "0d000001", "Failed", 90.0 * DAY, 90.0 * DAY, 1).await;
    c.batch_execute(
        "DELETE FROM _duroxide.executions WHERE instance_id = '0d000001';
         DELETE FROM _duroxide.history WHERE instance_id = '0d000001';
         DELETE FROM _duroxide.instances WHERE instance_id = '0d000001';",
    )
    .await
    .unwrap();
    // Child-shaped id without a parent link, and a root-shaped id with one.
    orphan(
        &c,
        "0d000002::1::abcdef01",
        "Failed",
        90.0 * DAY,
        90.0 * DAY,
        0,
    )
    .await;
    orphan(&c, "0d000003", "Completed", 90.0 * DAY, 90.0 * DAY, 0).await;
    c.execute(
        "UPDATE _duroxide.instances SET parent_instance_id = 'nowhere' WHERE instance_id = '0d000003'",
        &[],
    )
    .await
    .unwrap();
    // A df row whose expired workflow has a child that is still Running: the child never
    // goes alone, and the root does not go without it (the tree is unsettled).
    workflow(
        &c,
        "0d000004",
        "completed",
        Some("Completed"),
        90.0 * DAY,
        Some(90.0 * DAY),
        1,
    )
    .await;
    c.execute(
        "UPDATE _duroxide.executions SET status = 'Running', completed_at = NULL
          WHERE instance_id LIKE '0d000004::%'",
        &[],
    )
    .await
    .unwrap();
    let before: Vec<String> = engine_ids(&c).await;

    let report = pass(&config_for(&db), false).await;

    assert_eq!(engine_ids(&c).await, before, "no child went alone");
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(report.skipped_unsettled, 1, "0d000004's tree");
    assert_eq!(report.engine_children_removed, 0);
}

#[tokio::test]
async fn queue_items_nobody_owns_are_reported_not_deleted() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute(
        "SELECT df_fixture.queue_only('0f000001', now() - interval '2 hours')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "SELECT df_fixture.queue_only('0f000002', now() - interval '10 minutes')",
        &[],
    )
    .await
    .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert_eq!(
        report.queue_items_without_instance, 1,
        "only the one older than orphan_min_age"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM _duroxide.orchestrator_queue").await,
        2
    );
}
