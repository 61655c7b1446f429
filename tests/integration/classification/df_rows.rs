//! Rows of the classification table for instances that have a df row: expired terminal
//! ones go whole (with or without an engine record) unless their engine root still runs
//! or is between generations; terminal ones within the window and the cap, and live ones,
//! stay (a live one whose engine root ended is reported as drift "df live, engine ended").
//! (An ended root whose descendants still run: [`super::trees`].)

use crate::support::db::{count, df_ids, engine_ids, engine_statuses, exec, rows_of};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, config_without_pruning, pass};
use crate::support::process::{binary, run, text};
use crate::support::seed::{finish_instance, request_cancel, workflow, DAY, HOUR};

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

/// A root LOOP started 40 days ago, cancelled with df.cancel() a moment ago while the engine
/// is between two generations: the df row says cancelled (completed_at NULL), the current
/// execution is ContinuedAsNew (completed_at NULL), its next generation and the
/// CancelInstance item wait in orchestrator_queue. Its terminal_at falls back to
/// created_at, 40 days: expired, but the engine has not ended it.
#[tokio::test]
async fn a_loop_between_generations_cancelled_long_ago_is_kept_unsettled() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "SELECT df_fixture.workflow('c1000001', 'cancelled', 'ContinuedAsNew',
                now() - interval '40 days', now() - interval '1 minute', executions => 40,
                queue_rows => true)",
    )
    .await;
    request_cancel(&c, "c1000001", 30.0).await;
    assert_eq!(
        engine_statuses(&c, "c1000001").await,
        [("c1000001".to_owned(), "ContinuedAsNew".to_owned())]
    );
    let queued = "SELECT count(*) FROM _duroxide.orchestrator_queue
                   WHERE instance_id = 'c1000001'
                     AND (work_item LIKE '{\"ContinueAsNew\"%' OR work_item LIKE '{\"CancelInstance\"%')";
    assert_eq!(
        count(&c, queued).await,
        2,
        "next generation and cancel queued"
    );
    let before = rows_of(&c, "c1000001").await;

    for dry_run in [true, false] {
        let report = pass(&config_without_pruning(&db), dry_run).await;
        assert_eq!(report.skipped_unsettled, 1, "dry run: {dry_run}\n{report}");
        assert_eq!(
            report.instances_removed(),
            0,
            "dry run: {dry_run}\n{report}"
        );
        assert_eq!(
            rows_of(&c, "c1000001").await,
            before,
            "both stores intact (dry run: {dry_run})"
        );
    }

    // The engine processes the cancel: a new generation that ends Failed now. terminal_at
    // is now that completion: within the window, kept.
    finish_instance(&c, "c1000001", "Failed").await;
    assert_eq!(count(&c, queued).await, 0, "the queued items were consumed");
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.skipped_unsettled, 0, "{report}");
    assert_eq!(report.instances_removed(), 0, "{report}");
    assert_eq!(df_ids(&c).await, ["c1000001"]);
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

/// A rolled-back `df.cancel()` leaves a df row running forever while its engine root is
/// Failed (the engine's cancel committed on its own connection). Such rows, and any live df
/// row whose engine root ended (Completed or Failed, not ContinuedAsNew) longer than
/// `orphan_min_age` ago, are drift "df live, engine ended": reported, never deleted.
#[tokio::test]
async fn a_live_df_row_whose_engine_root_ended_is_reported_as_drift_and_kept() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The rolled-back cancel: df running, engine Failed two hours ago.
    workflow(
        &c,
        "e1000001",
        "running",
        Some("Failed"),
        3.0 * HOUR,
        Some(2.0 * HOUR),
        1,
    )
    .await;
    // A pending df row whose engine root completed long ago.
    workflow(
        &c,
        "e1000002",
        "pending",
        Some("Completed"),
        40.0 * DAY,
        Some(39.0 * DAY),
        0,
    )
    .await;
    // Ended, but more recently than orphan_min_age (1h): the df update may be on its way.
    workflow(
        &c,
        "e1000003",
        "running",
        Some("Failed"),
        HOUR,
        Some(600.0),
        0,
    )
    .await;
    // Between generations: live, whatever the age.
    c.execute(
        "SELECT df_fixture.workflow('e1000004', 'running', 'ContinuedAsNew',
                now() - interval '40 days', now() - interval '39 days', executions => 3)",
        &[],
    )
    .await
    .unwrap();
    workflow(
        &c,
        "e1000005",
        "running",
        Some("Running"),
        40.0 * DAY,
        None,
        0,
    )
    .await;
    // Terminal for df too: ordinary, kept (young), not drift.
    workflow(
        &c,
        "e1000006",
        "failed",
        Some("Failed"),
        3.0 * HOUR,
        Some(2.0 * HOUR),
        0,
    )
    .await;
    let all = [
        "e1000001", "e1000002", "e1000003", "e1000004", "e1000005", "e1000006",
    ];

    for dry_run in [true, false] {
        let report = pass(&config_for(&db), dry_run).await;
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            json["df_live_engine_ended"], 2,
            "e1000001 and e1000002 (dry run: {dry_run}): {json}"
        );
        assert!(
            report.to_string().contains("drift: df live, engine ended"),
            "{report}"
        );
        assert_eq!(report.instances_removed(), 0);
        assert_eq!(df_ids(&c).await, all);
        assert_eq!(
            engine_ids(&c)
                .await
                .iter()
                .filter(|id| !id.contains("::"))
                .count(),
            6
        );
    }

    // `check` reports the count as a warning, not a failure.
    let mut cmd = binary();
    cmd.arg("check")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(cmd).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains("2 live df row(s)")),
        "{stdout}"
    );
}
