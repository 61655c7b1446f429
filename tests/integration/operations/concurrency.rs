//! Sharing the database: three replicas clear one backlog without errors or double
//! counting, and a pass pauses between batches only while other sessions are active.

use std::process::Stdio;
use std::time::Duration;

use crate::support::db::{count, df_ids, violations};
use crate::support::harness::{wait_until, TestDb};
use crate::support::passes::{config_for, pass, remaining};
use crate::support::process::{daemon, exit_within, signal, Running};
use crate::support::seed::{backlog, workflow, DAY};

#[tokio::test]
async fn three_replicas_finish_the_work_without_errors_or_double_counting() {
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 3000).await;
    let expected = remaining(&db).await;
    assert!(expected > 2000);

    // Two replicas rely on the fence alone, one also on leader election; all three
    // apply the audit migration at start, at the same time.
    let mut replicas = Vec::new();
    for leader_election in ["false", "false", "true"] {
        let mut cmd = daemon(&db.dsn);
        cmd.arg("run")
            .env("DF_RECONCILER__PASS__INTERVAL", "1s")
            .env("DF_RECONCILER__PASS__BATCH_SIZE", "25")
            .env("DF_RECONCILER__PASS__LEADER_ELECTION", leader_election)
            .env("DF_RECONCILER__AUDIT__AUTO_MIGRATE", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        replicas.push(Running::spawn(&mut cmd));
    }
    wait_until(
        "the backlog is cleared",
        Duration::from_secs(120),
        || async { remaining(&db).await == 0 },
    )
    .await;
    for r in &mut replicas {
        signal(&r.0, "TERM");
        let status = exit_within(&mut r.0, Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0));
    }
    assert!(violations(&c).await.is_empty());
    let failed = count(
        &c,
        "SELECT count(*) FROM df_reconciler.passes WHERE outcome = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "no replica saw an error");
    let removed = count(
        &c,
        "SELECT coalesce(sum(instances_removed), 0)::bigint FROM df_reconciler.passes WHERE NOT dry_run",
    )
    .await;
    assert_eq!(
        removed, expected as i64,
        "every instance counted exactly once"
    );
    let migrations = count(&c, "SELECT count(*) FROM df_reconciler.schema_migrations").await;
    assert_eq!(migrations, 3, "each migration applied once");
}

/// While another session runs a statement, a pass pauses between batches so that batches
/// fill at most `pass.busy_duty_percent` of its time; on a quiet database, or at 100%, it
/// never pauses. Either way it removes everything.
#[tokio::test]
async fn passes_pause_between_batches_only_while_other_sessions_are_active() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let seed = |prefix: &'static str| {
        let c = &c;
        async move {
            for i in 0..6 {
                workflow(
                    c,
                    &format!("{prefix}{i:02}"),
                    "completed",
                    Some("Completed"),
                    60.0 * DAY,
                    Some(59.0 * DAY),
                    0,
                )
                .await;
            }
        }
    };
    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 2;

    seed("550000").await;
    let quiet_pass = pass(&cfg, false).await;
    assert_eq!(quiet_pass.expired_removed.total(), 6);
    assert_eq!(quiet_pass.paused_ms, 0, "nobody else is active");

    // Another session runs a long statement for the rest of the test.
    let sleeper = db.client().await;
    let sleeping = tokio::spawn(async move {
        let _ = sleeper.execute("SELECT pg_sleep(60)", &[]).await;
    });
    wait_until(
        "the other session is active",
        Duration::from_secs(10),
        || async {
            count(
                &c,
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND state = 'active'
                AND query LIKE 'SELECT pg_sleep%'",
            )
            .await
                == 1
        },
    )
    .await;

    seed("560000").await;
    cfg.pass.busy_duty_percent = 100;
    let unpaced = pass(&cfg, false).await;
    assert_eq!(unpaced.expired_removed.total(), 6);
    assert_eq!(unpaced.paused_ms, 0, "100% never pauses");

    seed("570000").await;
    cfg.pass.busy_duty_percent = 10;
    let paced = pass(&cfg, false).await;
    assert_eq!(paced.expired_removed.total(), 6);
    assert!(paced.batches >= 3);
    assert!(
        paced.paused_ms > 0 && paced.paused_ms as f64 >= 0.5 * paced.duration_ms as f64,
        "at 10% a busy pass spends most of its time pausing: {} of {} ms",
        paced.paused_ms,
        paced.duration_ms
    );
    assert!(df_ids(&c).await.is_empty());
    sleeping.abort();
}
