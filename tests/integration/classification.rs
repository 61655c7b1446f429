//! One test per row of the classification table in the specification (reconcile.md), plus
//! the terminal_at and hard-cap rules. Each test seeds a small population with the
//! `df_fixture` functions, runs a pass, and asserts on the database state.

use std::time::Duration;

use tokio_postgres::Client;

use crate::harness::TestDb;
use crate::support::{config_for, count, df_ids, engine_ids, pass, rows_of, violations};

const DAY: f64 = 86_400.0;
const HOUR: f64 = 3_600.0;

/// A whole workflow: df rows, nodes and (unless `engine_status` is None) an engine tree.
/// Ages are seconds before now; `finished` None leaves completion times NULL.
pub async fn workflow(
    c: &Client,
    id: &str,
    df_status: &str,
    engine_status: Option<&str>,
    created_ago: f64,
    finished_ago: Option<f64>,
    children: i32,
) {
    c.execute(
        "SELECT df_fixture.workflow($1, $2, $3, now() - make_interval(secs => $4),
                now() - make_interval(secs => $5), $6)",
        &[
            &id,
            &df_status,
            &engine_status,
            &created_ago,
            &finished_ago,
            &children,
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding workflow {id}: {e:?}"));
}

/// An engine tree with no df row.
pub async fn orphan(
    c: &Client,
    id: &str,
    engine_status: &str,
    created_ago: f64,
    finished_ago: f64,
    children: i32,
) {
    c.execute(
        "SELECT df_fixture.orphan_root($1, $2, now() - make_interval(secs => $3),
                now() - make_interval(secs => $4), $5)",
        &[&id, &engine_status, &created_ago, &finished_ago, &children],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding orphan {id}: {e:?}"));
}

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
        "INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, created_at)
         VALUES ('b0000001', '{\"StartOrchestration\":{}}', now() - interval '40 days')",
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

#[tokio::test]
async fn old_orphans_of_every_terminal_status_are_reclaimed_with_their_trees() {
    let db = TestDb::new().await;
    let c = db.client().await;
    orphan(&c, "f0000001", "Completed", 40.0 * DAY, 39.0 * DAY, 2).await;
    orphan(&c, "f0000002", "Failed", 40.0 * DAY, 39.0 * DAY, 0).await;
    orphan(&c, "f0000003", "ContinuedAsNew", 40.0 * DAY, 39.0 * DAY, 1).await;
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
    assert_eq!(report.orphans_by_status.completed, 1);
    assert_eq!(report.orphans_by_status.failed, 1);
    assert_eq!(report.orphans_by_status.continued_as_new, 1);
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
    // A df row whose expired workflow has a child that is still Running: the whole tree
    // goes with its settled root.
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

    let after = engine_ids(&c).await;
    let expected: Vec<String> = before
        .into_iter()
        .filter(|id| !id.starts_with("0d000004"))
        .collect();
    assert_eq!(after, expected, "only the df-owned tree went, as a whole");
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.engine_children_removed, 1);
}

#[tokio::test]
async fn leased_instances_are_skipped_without_waiting() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "0e000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    orphan(&c, "0e000002", "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
    // Dispatcher leases: an instance lock on the first tree's child, a locked queue item on
    // the orphan.
    c.batch_execute(
        "INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         SELECT instance_id, 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000, (extract(epoch FROM now()) * 1000)::bigint
           FROM _duroxide.instances WHERE instance_id LIKE '0e000001::%';
         INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, lock_token, locked_until)
         VALUES ('0e000002', '{}', 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000);",
    )
    .await
    .unwrap();

    let report = pass(&config_for(&db), false).await;

    assert_eq!(df_ids(&c).await, vec!["0e000001"]);
    assert_eq!(engine_ids(&c).await.len(), 3);
    assert_eq!(report.skipped_locked, 2);

    // Expired leases no longer protect.
    c.batch_execute(
        "UPDATE _duroxide.instance_locks SET locked_until = 0;
         UPDATE _duroxide.orchestrator_queue SET locked_until = 0;",
    )
    .await
    .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.instances_removed(), 2);
    assert_eq!(engine_ids(&c).await.len(), 0);
}

/// A real pass learns of leases from the rows it deletes and rolls those deletes back; the
/// rest of the same batch still goes, and a dry run (which reads leases first) counts the same.
#[tokio::test]
async fn a_lease_puts_back_its_whole_tree_and_the_rest_of_the_batch_still_goes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for id in ["0e100001", "0e100002", "0e100003"] {
        workflow(
            &c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            1,
        )
        .await;
    }
    // No engine record: only its queue items would go.
    workflow(
        &c,
        "0e100004",
        "failed",
        None,
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    // 0e100002: a live lease on its child's worker item, and stale items that the first
    // attempt deletes before it sees the lease; they must come back with the rollback.
    // 0e100004: a live lease on its queue item. 0e100003: only stale items.
    c.batch_execute(
        "INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, lock_token, locked_until)
         VALUES ('0e100002', '{}', 'old', 0), ('0e100003', '{}', 'old', 0),
                ('0e100004', '{}', 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000);
         INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         VALUES ('0e100002', 'old', 0, 0);
         INSERT INTO _duroxide.worker_queue (instance_id, work_item, lock_token, locked_until)
         SELECT instance_id, '{}', 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000
           FROM _duroxide.instances WHERE instance_id LIKE '0e100002::%';",
    )
    .await
    .unwrap();
    let leased_tree_rows = rows_of(&c, "0e100002").await;
    let leased_bare_rows = rows_of(&c, "0e100004").await;

    let dry = pass(&config_for(&db), true).await;
    let report = pass(&config_for(&db), false).await;

    assert_eq!(df_ids(&c).await, vec!["0e100002", "0e100004"]);
    assert_eq!(rows_of(&c, "0e100002").await, leased_tree_rows);
    assert_eq!(rows_of(&c, "0e100004").await, leased_bare_rows);
    assert_eq!(rows_of(&c, "0e100001").await, 0);
    assert_eq!(rows_of(&c, "0e100003").await, 0);
    assert_eq!(report.skipped_locked, 2);
    assert_eq!(report.instances_removed(), 2);
    assert_eq!(report.engine_children_removed, 2);
    assert_eq!(
        report.rows_deleted.get("_duroxide.orchestrator_queue"),
        Some(&1)
    );
    assert_eq!(dry.skipped_locked, report.skipped_locked);
    assert_eq!(dry.instances_removed(), report.instances_removed());
    assert_eq!(dry.rows_deleted, report.rows_deleted);
    assert!(violations(&c).await.is_empty());
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
