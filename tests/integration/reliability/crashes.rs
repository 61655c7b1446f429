//! Crashes mid-pass, of the server (immediate shutdown) and of the daemon (SIGKILL): every
//! instance stays whole and the next pass finishes the work.

use std::time::Duration;

use crate::support::db::{count, violations};
use crate::support::harness::{private_cluster, wait_until, TestDb};
use crate::support::passes::{config_for, pass, remaining};
use crate::support::process::{daemon, quiet, Running};
use crate::support::seed::backlog;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_mid_pass_leaves_every_instance_whole() {
    let mut cluster = private_cluster().await;
    let db = TestDb::new_in(&cluster).await;
    let c = db.client().await;
    backlog(&c, 20000).await;
    // The throwaway cluster commits asynchronously: make the seed durable first.
    c.batch_execute("CHECKPOINT").await.unwrap();
    let total = count(&c, "SELECT count(*) FROM df.instances").await;
    let mut once = daemon(&db.dsn);
    once.arg("once")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "50");
    let mut child = Running::spawn(quiet(&mut once));
    wait_until("the pass is deleting", Duration::from_secs(60), || async {
        count(&c, "SELECT count(*) FROM df.instances").await < total - 500
    })
    .await;

    tokio::task::block_in_place(|| cluster.stop_immediate()).unwrap();
    let status = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    assert_ne!(status.code(), Some(0), "the pass noticed the crash");
    tokio::task::block_in_place(|| cluster.restart()).unwrap();

    let c = db.client().await;
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    let left = count(&c, "SELECT count(*) FROM df.instances").await;
    assert!(left < total, "committed batches survived the crash");
    let report = pass(&config_for(&db), false).await;
    assert!(report.instances_removed() > 0);
    assert_eq!(remaining(&db).await, 0, "the next pass completed the work");
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn a_daemon_killed_mid_pass_leaves_every_instance_whole() {
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 20000).await;
    let total = count(&c, "SELECT count(*) FROM df.instances").await;
    let mut once = daemon(&db.dsn);
    once.arg("once")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "20");
    let mut child = Running::spawn(quiet(&mut once));
    wait_until("the pass is deleting", Duration::from_secs(60), || async {
        count(&c, "SELECT count(*) FROM df.instances").await < total - 200
    })
    .await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    // Its backend notices the closed socket and rolls back; wait until it is gone.
    wait_until("the killed daemon's session ended", Duration::from_secs(30), || async {
        count(
            &c,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'df-reconciler' AND datname = current_database()",
        )
        .await
            == 0
    })
    .await;
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    pass(&config_for(&db), false).await;
    assert_eq!(remaining(&db).await, 0);
    assert!(violations(&c).await.is_empty());
}
