//! Users writing what their column grants allow: a terminal row flipped back to running
//! (committed or still in flight), a live row flipped to terminal while its engine root
//! runs, `updated_at` anywhere in time, and inserted completion times of +-infinity.

use std::time::{Duration, Instant};

use super::{
    bounded_pass, engine_set, ordinary_user, rows_exactly, session_as, tree_of, workflow_of,
};
use crate::support::db::{df_ids, engine_ids, exec, ids, violations};
use crate::support::harness::TestDb;
use crate::support::passes::config_for;
use crate::support::seed::{DAY, HOUR};

#[tokio::test]
async fn a_terminal_row_flipped_back_to_running_is_live_again() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "flipper").await;
    workflow_of(
        &c,
        "50000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "50000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "50000003",
        "cancelled",
        None,
        60.0 * DAY,
        None,
        0,
        1,
        &user,
    )
    .await;
    let before = engine_set(&c).await;

    // The user's own session, through the column grant: every expired row back to running.
    let u = session_as(&db, &user).await;
    let flipped = u
        .execute("UPDATE df.instances SET status = 'running'", &[])
        .await
        .expect("status is user-writable");
    assert_eq!(flipped, 3, "the user sees and flips their own rows");

    let report = bounded_pass(&config_for(&db)).await;
    assert_eq!(df_ids(&c).await, vec!["50000001", "50000002", "50000003"]);
    assert_eq!(
        engine_set(&c).await,
        before,
        "engine trees of live rows kept"
    );
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(
        report.orphans_reclaimed, 0,
        "a live df row's tree is no orphan"
    );
    assert_eq!(
        report.df_rows_without_engine, 1,
        "50000003 is running for df with no engine record nor queue item: drift"
    );
    assert!(violations(&c).await.is_empty());

    // Flipped back to terminal, the same rows expire again (terminal_at never came from
    // the user-writable columns) and go whole.
    u.execute("UPDATE df.instances SET status = 'failed'", &[])
        .await
        .unwrap();
    let report = bounded_pass(&config_for(&db)).await;
    assert!(df_ids(&c).await.is_empty());
    assert!(engine_ids(&c).await.is_empty());
    assert_eq!(report.expired_removed.failed, 3);
    assert_eq!(report.engine_children_removed, 1);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn a_status_flip_in_flight_is_skipped_without_waiting_and_then_honoured() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "inflight").await;
    for id in ["51000001", "51000002"] {
        workflow_of(
            &c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(59.0 * DAY),
            1,
            1,
            &user,
        )
        .await;
    }
    // The user's transaction is open: one row flipped to running, the other's updated_at
    // bumped. Both rows are locked by it.
    let u = session_as(&db, &user).await;
    exec(
        &u,
        "BEGIN;
         UPDATE df.instances SET status = 'running' WHERE id = '51000001';
         UPDATE df.instances SET updated_at = 'infinity' WHERE id = '51000002';",
    )
    .await;

    let mut cfg = config_for(&db);
    cfg.pass.lock_timeout = Duration::from_millis(500);
    let began = Instant::now();
    let report = bounded_pass(&cfg).await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the pass never waits on a user's row lock: {:?}",
        began.elapsed()
    );
    assert_eq!(report.skipped_locked, 2);
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(df_ids(&c).await.len(), 2);
    assert_eq!(engine_ids(&c).await.len(), 4);

    exec(&u, "COMMIT").await;
    let report = bounded_pass(&cfg).await;
    assert_eq!(
        df_ids(&c).await,
        vec!["51000001"],
        "the committed flip is honoured"
    );
    assert!(engine_ids(&c)
        .await
        .iter()
        .all(|id| id.starts_with("51000001")));
    assert_eq!(
        report.expired_removed.completed, 1,
        "updated_at changed nothing"
    );
    assert_eq!(report.skipped_locked, 0);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn a_live_row_flipped_to_terminal_while_its_engine_root_runs_is_unsettled() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "early").await;
    // Old and young running workflows whose engine roots still run, and one whose engine
    // root finished long ago.
    workflow_of(
        &c,
        "52000001",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        2,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "52000002",
        "running",
        Some("Running"),
        HOUR,
        None,
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "52000003",
        "running",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
        1,
        &user,
    )
    .await;
    let u = session_as(&db, &user).await;
    exec(
        &u,
        "UPDATE df.instances SET status = 'completed';
         UPDATE df.instances SET status = 'cancelled' WHERE id = '52000002';",
    )
    .await;
    let before_1 = rows_exactly(&c, "52000001").await;

    let report = bounded_pass(&config_for(&db)).await;

    // 52000001: terminal for df, 60 days old by created_at (no completion time anywhere),
    // but its engine root runs: skipped and counted, not one row of it deleted.
    assert_eq!(rows_exactly(&c, "52000001").await, before_1);
    assert_eq!(tree_of(&c, "52000001").await.len(), 3);
    assert_eq!(report.skipped_unsettled, 1);
    // 52000002: young, not a candidate at all.
    assert!(df_ids(&c).await.contains(&"52000002".to_string()));
    // 52000003: the spec trusts df's status: terminal, settled, aged by the engine's
    // completed_at: deleted whole.
    assert_eq!(rows_exactly(&c, "52000003").await, 0);
    assert!(tree_of(&c, "52000003").await.is_empty());
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.engine_children_removed, 1);
    assert_eq!(
        report.running_without_df_row, 0,
        "the running roots have df rows"
    );
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn updated_at_anywhere_in_time_changes_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "clock").await;
    // Expired ones.
    workflow_of(
        &c,
        "53000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000003",
        "cancelled",
        None,
        60.0 * DAY,
        None,
        0,
        1,
        &user,
    )
    .await;
    // Young or live ones.
    workflow_of(
        &c,
        "53000004",
        "completed",
        Some("Completed"),
        DAY,
        Some(DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000005",
        "failed",
        Some("Failed"),
        2.0 * DAY,
        Some(DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000006",
        "running",
        Some("Running"),
        400.0 * DAY,
        None,
        1,
        1,
        &user,
    )
    .await;
    let u = session_as(&db, &user).await;
    // Expired rows made to look brand new (or newer than time), young ones ancient.
    exec(
        &u,
        "UPDATE df.instances SET updated_at = 'infinity' WHERE id = '53000001';
         UPDATE df.instances SET updated_at = '294276-12-31 23:59:59+00' WHERE id = '53000002';
         UPDATE df.instances SET updated_at = now() + interval '1000 years' WHERE id = '53000003';
         UPDATE df.instances SET updated_at = '-infinity' WHERE id = '53000004';
         UPDATE df.instances SET updated_at = '4713-01-01 00:00:00+00 BC' WHERE id = '53000005';
         UPDATE df.instances SET updated_at = '-infinity' WHERE id = '53000006';",
    )
    .await;

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(df_ids(&c).await, vec!["53000004", "53000005", "53000006"]);
    for id in ["53000001", "53000002", "53000003"] {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id}");
    }
    assert_eq!(
        engine_ids(&c).await.len(),
        4,
        "53000004, 53000005, 53000006 and its child"
    );
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert_eq!(report.expired_removed.cancelled, 1);
    assert_eq!(report.capped_removed, 0);
    assert!(violations(&c).await.is_empty());
}

/// Terminal rows whose completion time is infinitely old or infinitely new. Users cannot
/// write `completed_at` (not in df.grant_usage's grants), but the worker writes whatever
/// its clock says and an install restored from elsewhere may hold anything.
async fn seed_infinite_completion_times(db: &TestDb) {
    let c = db.client().await;
    let user = ordinary_user(db, "inserter").await;
    for (id, age) in [
        ("54000001", 60.0 * DAY),
        ("54000002", 60.0 * DAY),
        ("54000003", DAY),
        ("54000004", 2.0 * DAY),
    ] {
        workflow_of(
            &c,
            id,
            "completed",
            Some("Completed"),
            age,
            Some(age),
            0,
            1,
            &user,
        )
        .await;
    }
    // As superuser: no ordinary role may write completed_at.
    exec(
        &c,
        "UPDATE df.instances SET completed_at = '-infinity' WHERE id IN ('54000001', '54000003');
         UPDATE df.instances SET completed_at = 'infinity' WHERE id IN ('54000002', '54000004');",
    )
    .await;
}

#[tokio::test]
async fn infinite_completion_times_expire_or_stay_by_the_window() {
    let db = TestDb::new().await;
    seed_infinite_completion_times(&db).await;
    let c = db.client().await;

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(
        df_ids(&c).await,
        vec!["54000002", "54000004"],
        "+infinity never expires"
    );
    assert_eq!(
        report.expired_removed.completed, 2,
        "-infinity is older than any window"
    );
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn infinite_completion_times_at_the_hard_cap_edge() {
    let db = TestDb::new().await;
    seed_infinite_completion_times(&db).await;
    let c = db.client().await;
    // Newest first: 54000004, 54000002 (+infinity), then 54000003, 54000001 (-infinity).
    // With a cap of 2 the edge row, which the pass reads and binds as a parameter of
    // every batch, is a -infinity one. (The rows beyond it are older than any window, so
    // they count as expired, not capped.)
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 2;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["54000002", "54000004"]);
    assert_eq!(report.expired_removed.completed, 2);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn infinite_completion_times_in_the_deletions_audit() {
    let db = TestDb::new().await;
    seed_infinite_completion_times(&db).await;
    let c = db.client().await;
    let mut cfg = config_for(&db);
    cfg.audit.record_deletions = true;
    {
        let pool = df_reconciler_core::db::build_pool(&cfg).unwrap();
        let mut client = pool.get().await.unwrap();
        df_reconciler_core::audit::migrate(&mut client, &cfg.audit)
            .await
            .expect("migrate");
    }

    let report = bounded_pass(&cfg).await;

    assert_eq!(report.expired_removed.completed, 2);
    assert_eq!(df_ids(&c).await, vec!["54000002", "54000004"]);
    let recorded = ids(
        &c,
        "SELECT instance_id || ' ' || terminal_at::text FROM df_reconciler.deletions ORDER BY 1",
    )
    .await;
    assert_eq!(recorded, vec!["54000001 -infinity", "54000003 -infinity"]);
}
