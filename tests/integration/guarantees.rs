//! The guarantees of reconcile.md: atomic bounded batches, idempotence, dry-run fidelity,
//! no waiting on locks, the open-transaction guard, and atomicity when the connection dies.

use std::time::Duration;

use tokio_postgres::Client;

use crate::support::db::{count, df_ids, engine_ids, violations};
use crate::support::harness::{wait_until, TestDb};
use crate::support::passes::{comparable, config_for, config_without_pruning, pass, try_pass};
use crate::support::seed::{backlog, orphan, workflow, DAY};

async fn mixed_population(c: &Client) {
    workflow(
        c,
        "20000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        2,
    )
    .await;
    workflow(
        c,
        "20000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        0,
    )
    .await;
    workflow(c, "20000003", "cancelled", None, 60.0 * DAY, None, 0).await;
    workflow(
        c,
        "20000004",
        "failed",
        Some("Running"),
        60.0 * DAY,
        None,
        0,
    )
    .await;
    workflow(
        c,
        "20000005",
        "completed",
        Some("Completed"),
        DAY,
        Some(DAY),
        1,
    )
    .await;
    workflow(
        c,
        "20000006",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        1,
    )
    .await;
    orphan(c, "20000007", "Failed", 60.0 * DAY, 60.0 * DAY, 1).await;
    orphan(c, "20000008", "Completed", 60.0, 30.0, 0).await;
}

/// Row counts of every table of both stores.
async fn table_counts(c: &Client) -> Vec<i64> {
    let mut tables = crate::support::db::PER_INSTANCE_TABLES.to_vec();
    tables.extend([
        "_duroxide.sessions",
        "_duroxide._duroxide_migrations",
        "_duroxide._worker_ready",
    ]);
    crate::support::db::table_counts(c, &tables).await
}

#[tokio::test]
async fn dry_run_reports_exactly_what_a_pass_deletes_and_writes_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    mixed_population(&c).await;
    let before = table_counts(&c).await;
    let cfg = config_for(&db);

    let dry = pass(&cfg, true).await;
    assert!(dry.dry_run);
    assert_eq!(table_counts(&c).await, before, "a dry run writes nothing");

    let real = pass(&cfg, false).await;
    assert_eq!(comparable(&dry), comparable(&real));
    assert_eq!(real.instances_removed(), 4);
    let removed: i64 = real.rows_deleted.values().map(|n| *n as i64).sum();
    let after: i64 = table_counts(&c).await.iter().sum();
    assert_eq!(
        before.iter().sum::<i64>() - after,
        removed,
        "rows_deleted adds up"
    );
}

#[tokio::test]
async fn a_second_pass_deletes_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    mixed_population(&c).await;
    let cfg = config_for(&db);
    let first = pass(&cfg, false).await;
    assert!(first.instances_removed() > 0);
    let survivors = (df_ids(&c).await, engine_ids(&c).await);

    let second = pass(&cfg, false).await;

    assert_eq!(second.instances_removed(), 0);
    assert!(second.rows_deleted.is_empty());
    assert_eq!((df_ids(&c).await, engine_ids(&c).await), survivors);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn never_touches_sessions_migrations_or_the_readiness_sentinel() {
    let db = TestDb::new().await;
    let c = db.client().await;
    mixed_population(&c).await;
    let fixed = |counts: Vec<i64>| counts[10..].to_vec();
    let before = fixed(table_counts(&c).await);
    pass(&config_for(&db), false).await;
    assert_eq!(fixed(table_counts(&c).await), before);
}

#[tokio::test]
async fn small_batches_clear_a_backlog_in_keyset_order() {
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 500).await;
    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 7;
    let dry = pass(&cfg, true).await;

    let report = pass(&cfg, false).await;

    assert!(report.instances_removed() > 300, "{report}");
    assert!(report.batches >= report.instances_removed() / 7);
    assert_eq!(
        comparable(&dry).expired_removed,
        comparable(&report).expired_removed
    );
    assert_eq!(pass(&cfg, false).await.instances_removed(), 0);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn rows_locked_by_other_sessions_are_skipped_without_waiting() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "21000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    workflow(
        &c,
        "21000002",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    orphan(&c, "21000003", "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
    workflow(
        &c,
        "21000004",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    // The live engine: a transaction holding row locks on a df row, on an engine child and
    // on an orphan root.
    let holder = db.client().await;
    holder
        .batch_execute(
            "BEGIN;
             SELECT 1 FROM df.instances WHERE id = '21000002' FOR UPDATE;
             SELECT 1 FROM _duroxide.instances WHERE instance_id LIKE '21000001::%' FOR UPDATE;
             SELECT 1 FROM _duroxide.instances WHERE instance_id = '21000003' FOR UPDATE;",
        )
        .await
        .unwrap();
    let mut cfg = config_for(&db);
    // A pass that waited would hit this and fail; skipping must make it succeed.
    cfg.pass.lock_timeout = Duration::from_secs(30);

    let report = tokio::time::timeout(Duration::from_secs(20), pass(&cfg, false))
        .await
        .expect("the pass never waits on a held lock");

    assert_eq!(report.skipped_locked, 3);
    assert_eq!(report.instances_removed(), 1);
    assert_eq!(df_ids(&c).await, vec!["21000001", "21000002"]);
    holder.batch_execute("COMMIT").await.unwrap();
    let report = pass(&cfg, false).await;
    assert_eq!(report.instances_removed(), 3);
    assert!(df_ids(&c).await.is_empty());
}

#[tokio::test]
async fn an_open_transaction_protects_the_engine_records_it_may_still_own() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut cfg = config_for(&db);
    cfg.retention.window = Duration::ZERO;
    cfg.retention.orphan_min_age = Duration::ZERO;
    cfg.retention.allow_short_retention = true;
    // An in-flight df.start(): the caller's transaction inserted the df row and is still
    // open; the engine, on its own connection, already ran and failed the orchestration.
    let caller = db.client().await;
    caller.batch_execute("BEGIN").await.unwrap();
    caller
        .execute(
            "SELECT df_fixture.workflow('22000001', 'failed', NULL, clock_timestamp(), NULL, 0)",
            &[],
        )
        .await
        .unwrap();
    orphan(&c, "22000001", "Failed", 0.0, 0.0, 0).await;
    // An older orphan created before the caller's transaction began is fair game.
    orphan(&c, "22000002", "Failed", DAY, DAY, 0).await;
    c.execute(
        "UPDATE _duroxide.instances SET created_at = now() - interval '1 day' WHERE instance_id = '22000002'",
        &[],
    )
    .await
    .unwrap();

    let report = pass(&cfg, false).await;

    assert_eq!(
        engine_ids(&c).await,
        vec!["22000001"],
        "the in-flight start keeps its engine record"
    );
    assert_eq!(report.orphans_reclaimed, 1);

    caller.batch_execute("COMMIT").await.unwrap();
    assert_eq!(df_ids(&c).await, vec!["22000001"]);
    // Now the df row exists: the instance is a normal terminal workflow, not an orphan.
    let report = pass(&cfg, false).await;
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(report.expired_removed.failed, 1);
    assert!(engine_ids(&c).await.is_empty());
    assert!(df_ids(&c).await.is_empty());
}

#[tokio::test]
async fn a_killed_connection_leaves_every_instance_whole_and_the_next_pass_finishes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 20000).await;
    let total = count(&c, "SELECT count(*) FROM df.instances").await;
    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 50;
    cfg.database.application_name = "df-reconciler-victim".into();

    let pass_task = tokio::spawn({
        let cfg = cfg.clone();
        async move { try_pass(&cfg, false).await }
    });
    // Kill the reconciler's backend once it has committed some batches, mid-pass.
    wait_until(
        "some batches committed",
        Duration::from_secs(60),
        || async { count(&c, "SELECT count(*) FROM df.instances").await < total - 200 },
    )
    .await;
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'df-reconciler-victim'",
        &[],
    )
    .await
    .unwrap();
    let result = pass_task.await.unwrap();
    assert!(result.is_err(), "the pass notices its connection died");
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );

    let report = pass(&cfg, false).await;
    assert!(report.instances_removed() > 0);
    assert_eq!(pass(&cfg, true).await.instances_removed(), 0);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn a_1ms_statement_timeout_never_half_deletes_and_a_normal_one_then_finishes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "23000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let mut cfg = config_for(&db);
    cfg.pass.statement_timeout = Duration::from_millis(1);
    // Each statement of the pass times out at 1 ms only sometimes; the pass must either
    // succeed or fail with a clear error, never half-delete.
    let _ = try_pass(&cfg, false).await;
    assert!(violations(&c).await.is_empty());
    cfg.pass.statement_timeout = Duration::from_secs(30);
    pass(&cfg, false).await;
    assert!(df_ids(&c).await.is_empty());
}

#[tokio::test]
async fn a_prepared_transaction_protects_like_an_open_one() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut cfg = config_for(&db);
    cfg.retention.window = Duration::ZERO;
    cfg.retention.orphan_min_age = Duration::ZERO;
    cfg.retention.allow_short_retention = true;
    let gid = format!("{}_start", db.name);
    let caller = db.client().await;
    caller
        .batch_execute(&format!(
            "BEGIN;
             SELECT df_fixture.workflow('24000001', 'failed', NULL, clock_timestamp(), NULL, 0);
             PREPARE TRANSACTION '{gid}';"
        ))
        .await
        .unwrap();
    orphan(&c, "24000001", "Failed", 0.0, 0.0, 0).await;

    let report = pass(&cfg, false).await;
    assert_eq!(
        report.orphans_reclaimed, 0,
        "the prepared start may still commit"
    );
    assert_eq!(engine_ids(&c).await, vec!["24000001"]);

    c.batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .unwrap();
    let report = pass(&cfg, false).await;
    assert_eq!(report.expired_removed.failed, 1);
    assert!(engine_ids(&c).await.is_empty());
}

/// pg_prepared_xacts has only a prepared transaction's PREPARE time, not its start: a
/// df.start() inside it may have had its engine record created (and failed) BEFORE the
/// PREPARE. So while any prepared transaction exists in the database, no orphan at all is
/// reclaimed (the expired phase still runs), and the report says why.
#[tokio::test]
async fn a_prepared_transaction_holds_back_every_orphan_even_those_created_before_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut cfg = config_for(&db);
    cfg.retention.window = Duration::ZERO;
    cfg.retention.orphan_min_age = Duration::ZERO;
    cfg.retention.allow_short_retention = true;
    // An unrelated old orphan and an expired workflow.
    orphan(&c, "25000002", "Failed", DAY, DAY, 0).await;
    c.execute(
        "UPDATE _duroxide.instances SET created_at = now() - interval '1 day' WHERE instance_id = '25000002'",
        &[],
    )
    .await
    .unwrap();
    workflow(&c, "25000003", "failed", Some("Failed"), DAY, Some(DAY), 0).await;
    // df.start() in the caller's transaction; the engine, on its own connection, creates
    // and fails the orchestration; only then does the caller PREPARE.
    let gid = format!("{}_early", db.name);
    let caller = db.client().await;
    caller
        .batch_execute(
            "BEGIN;
             SELECT df_fixture.workflow('25000001', 'failed', NULL, clock_timestamp(), NULL, 0);",
        )
        .await
        .unwrap();
    orphan(&c, "25000001", "Failed", 0.0, 0.0, 0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller
        .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .await
        .unwrap();

    for dry_run in [true, false] {
        let report = pass(&cfg, dry_run).await;
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            json["orphans_held"],
            serde_json::json!(["prepared_transactions"]),
            "dry run {dry_run}: {json}"
        );
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("prepared transaction")),
            "{:?}",
            report.warnings
        );
        assert_eq!(
            report.orphans_reclaimed, 0,
            "dry run {dry_run}: the prepared start may still commit"
        );
        assert_eq!(
            report.expired_removed.failed, 1,
            "the expired phase still runs"
        );
    }
    assert_eq!(engine_ids(&c).await, vec!["25000001", "25000002"]);

    c.batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .unwrap();
    let report = pass(&cfg, false).await;
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["orphans_held"], serde_json::json!([]), "{json}");
    assert_eq!(
        report.expired_removed.failed, 1,
        "25000001 has its df row now"
    );
    assert_eq!(report.orphans_reclaimed, 1, "25000002");
    assert!(engine_ids(&c).await.is_empty());
}

/// A session running with `track_activities = off` shows pg_stat_activity no transaction
/// start (state `disabled`), even to a superuser: a df.start() in it would be invisible to
/// the guard, so no orphan is reclaimed while such a session exists.
#[tokio::test]
async fn a_session_hiding_its_transaction_start_holds_back_every_orphan() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut cfg = config_for(&db);
    cfg.retention.window = Duration::ZERO;
    cfg.retention.orphan_min_age = Duration::ZERO;
    cfg.retention.allow_short_retention = true;
    let caller = db.client().await;
    caller
        .batch_execute("SET track_activities = off")
        .await
        .unwrap();
    caller.batch_execute("BEGIN").await.unwrap();
    caller
        .execute(
            "SELECT df_fixture.workflow('26000001', 'failed', NULL, clock_timestamp(), NULL, 0)",
            &[],
        )
        .await
        .unwrap();
    orphan(&c, "26000001", "Failed", 0.0, 0.0, 0).await;

    for dry_run in [true, false] {
        let report = pass(&cfg, dry_run).await;
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            json["orphans_held"],
            serde_json::json!(["hidden_sessions"]),
            "dry run {dry_run}: {json}"
        );
        assert_eq!(report.orphans_reclaimed, 0, "dry run {dry_run}");
    }
    assert_eq!(engine_ids(&c).await, vec!["26000001"]);

    caller.batch_execute("COMMIT").await.unwrap();
    drop(caller);
    wait_until(
        "the caller's session is gone",
        Duration::from_secs(10),
        || async {
            count(
                &c,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state = 'disabled'",
            )
            .await
                == 0
        },
    )
    .await;
    let report = pass(&cfg, false).await;
    assert_eq!(report.expired_removed.failed, 1, "a normal workflow now");
    assert!(engine_ids(&c).await.is_empty());
}

/// A batch whose statement times out is rolled back and the next ones run at half the
/// size; after `BATCHES_BEFORE_GROWING` (8) clean batches the size doubles back to
/// `pass.batch_size`. The timed-out batch's candidates are left whole for the next pass.
#[tokio::test]
async fn a_timed_out_batch_halves_the_batch_size_and_clean_batches_restore_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "SELECT df_fixture.workflow(to_hex(x'25000000'::int + i), 'completed', 'Completed',
                                    now() - interval '60 days', now() - interval '59 days', 0)
         FROM generate_series(0, 599) AS i;
         -- Deleting the first candidate's df row outlasts any statement_timeout.
         CREATE FUNCTION public.slow_delete() RETURNS trigger LANGUAGE plpgsql
             AS $$ BEGIN PERFORM pg_sleep(60); RETURN OLD; END $$;
         CREATE TRIGGER slow_delete BEFORE DELETE ON df.instances
             FOR EACH ROW WHEN (OLD.id = '25000000') EXECUTE FUNCTION public.slow_delete();",
    )
    .await
    .unwrap();
    let mut cfg = config_without_pruning(&db);
    cfg.pass.batch_size = 40;
    cfg.pass.statement_timeout = Duration::from_secs(1);

    let report = pass(&cfg, false).await;
    assert_eq!(report.batches_abandoned, 1);
    assert_eq!(report.skipped_abandoned, 40);
    assert_eq!(report.skipped_locked, 0);
    // 600 candidates: 40 abandoned, then 8 clean batches of 20 and 10 of 40.
    assert_eq!(report.expired_removed.completed, 560);
    assert_eq!(
        report.batches, 18,
        "8 batches at half size, then back to 40 (never shrunk: 14; never grown: 28)"
    );
    let left = df_ids(&c).await;
    assert_eq!(left.len(), 40, "the abandoned batch is rolled back whole");
    assert_eq!(left.first().map(String::as_str), Some("25000000"));
    assert_eq!(left.last().map(String::as_str), Some("25000027"));
    assert!(violations(&c).await.is_empty());

    c.batch_execute("DROP TRIGGER slow_delete ON df.instances")
        .await
        .unwrap();
    let report = pass(&cfg, false).await;
    assert_eq!(report.expired_removed.completed, 40);
    assert!(df_ids(&c).await.is_empty());
    assert!(engine_ids(&c).await.is_empty());
}
