//! Dispatcher leases: a leased instance is skipped without waiting, and its whole tree is
//! put back while the rest of the batch still goes.

use crate::support::db::{df_ids, engine_ids, rows_of, violations};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};
use crate::support::seed::{orphan, workflow, DAY};

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
         INSERT INTO _duroxide.orchestrator_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         VALUES ('0e000002', '{}', now(), now(), 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000);",
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
        "INSERT INTO _duroxide.orchestrator_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         VALUES ('0e100002', '{}', now(), now(), 'old', 0), ('0e100003', '{}', now(), now(), 'old', 0),
                ('0e100004', '{}', now(), now(), 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000);
         INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         VALUES ('0e100002', 'old', 0, 0);
         INSERT INTO _duroxide.worker_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         SELECT instance_id, '{}', now(), now(), 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000
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
