//! NULLs and unknown values where the rules expect a value: a NULL status, no terminal
//! time at all (even over the hard cap), an engine status the daemon does not know, a
//! current execution that does not exist. Unknown always means keep.

use super::{bounded_pass, engine_set};
use crate::support::db::{count, df_ids, engine_ids, exec, violations};
use crate::support::harness::TestDb;
use crate::support::passes::config_for;
use crate::support::seed::{orphan, workflow, DAY};

#[tokio::test]
async fn null_status_rows_are_never_touched_nor_taken_for_orphans() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // status is nullable in pg_durable (default 'pending', CHECK lets NULL through).
    workflow(
        &c,
        "55000001",
        "completed",
        Some("Completed"),
        400.0 * DAY,
        Some(400.0 * DAY),
        1,
    )
    .await;
    workflow(
        &c,
        "55000002",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        Some(400.0 * DAY),
        0,
    )
    .await;
    workflow(&c, "55000003", "cancelled", None, 400.0 * DAY, None, 0).await;
    workflow(
        &c,
        "55000004",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    exec(
        &c,
        "UPDATE df.instances SET status = NULL WHERE id <> '55000004'",
    )
    .await;
    let before = engine_set(&c).await;

    for hard_cap in [10_000, 0] {
        let mut cfg = config_for(&db);
        cfg.retention.hard_cap = hard_cap;
        let report = bounded_pass(&cfg).await;
        assert_eq!(
            df_ids(&c).await,
            vec!["55000001", "55000002", "55000003"],
            "hard_cap {hard_cap}"
        );
        assert_eq!(
            report.orphans_reclaimed, 0,
            "a NULL-status row still owns its tree"
        );
        assert_eq!(report.running_without_df_row, 0);
        assert_eq!(report.skipped_unsettled + report.skipped_inconsistent, 0);
    }
    let mut expected = before;
    expected.remove("55000004");
    assert_eq!(engine_set(&c).await, expected);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn unknown_terminal_time_is_kept_even_over_the_hard_cap() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // terminal_at = coalesce(df.completed_at, engine completed_at, df.created_at): all NULL.
    workflow(&c, "56000001", "cancelled", None, 400.0 * DAY, None, 0).await;
    workflow(
        &c,
        "56000002",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        None,
        1,
    )
    .await;
    workflow(
        &c,
        "56000003",
        "cancelled",
        Some("Running"),
        400.0 * DAY,
        None,
        0,
    )
    .await;
    // created_at NULL too, but a completion time is known: these age normally.
    workflow(
        &c,
        "56000004",
        "completed",
        Some("Completed"),
        400.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "56000005",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "56000006",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        Some(DAY),
        0,
    )
    .await;
    exec(&c, "UPDATE df.instances SET created_at = NULL").await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM df.instances WHERE completed_at IS NULL AND created_at IS NULL"
        )
        .await,
        5
    );

    let report = bounded_pass(&config_for(&db)).await;
    assert_eq!(
        df_ids(&c).await,
        vec!["56000001", "56000002", "56000003", "56000006"]
    );
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert!(violations(&c).await.is_empty());

    // Unknown counts as newest for the cap: with room for one, the known one goes.
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 1;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["56000001", "56000002", "56000003"]);
    assert_eq!(report.capped_removed, 1);
    // And with no room at all, unknown still means keep.
    cfg.retention.hard_cap = 0;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["56000001", "56000002", "56000003"]);
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(
        engine_ids(&c).await.len(),
        3,
        "56000002, its child, 56000003"
    );
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn unknown_engine_statuses_and_missing_executions_mean_keep() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let old = 60.0 * DAY;
    // Expired df rows whose engine root has a status we do not know, or whose current
    // execution does not exist.
    workflow(
        &c,
        "5c000001",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        1,
    )
    .await;
    workflow(&c, "5c000002", "failed", Some("Failed"), old, Some(old), 0).await;
    // Orphans alike.
    orphan(&c, "5c000003", "Completed", old, old, 1).await;
    orphan(&c, "5c000004", "Failed", old, old, 0).await;
    // A control that goes.
    workflow(
        &c,
        "5c000005",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        0,
    )
    .await;
    exec(
        &c,
        "UPDATE _duroxide.executions SET status = 'Suspended' WHERE instance_id IN ('5c000001', '5c000003');
         UPDATE _duroxide.instances SET current_execution_id = 7 WHERE instance_id IN ('5c000002', '5c000004');",
    )
    .await;
    let before = engine_set(&c).await;

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(df_ids(&c).await, vec!["5c000001", "5c000002"]);
    let mut expected = before;
    expected.remove("5c000005");
    assert_eq!(engine_set(&c).await, expected);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(
        report.skipped_unsettled, 2,
        "unknown engine state of a df-owned root"
    );
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(
        report.running_without_df_row, 0,
        "unknown is not Running either"
    );
    assert!(violations(&c).await.is_empty());
}
