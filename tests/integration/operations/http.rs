//! The HTTP endpoints: the pass in /metrics, health and readiness, and a loop that
//! survives a server restart (unready while it is down, alive throughout).

use std::process::Stdio;
use std::time::Duration;

use crate::support::db::df_ids;
use crate::support::harness::{private_cluster, wait_until, TestDb};
use crate::support::process::{daemon, free_port, get, metric, metric_at, Running};
use crate::support::seed::{workflow, DAY};

#[tokio::test]
async fn endpoints_report_health_readiness_and_the_pass_in_metrics() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "50000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    let port = free_port();
    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _d = Running::spawn(&mut cmd);

    wait_until(
        "the first pass removed the instance",
        Duration::from_secs(30),
        || async { df_ids(&c).await.is_empty() },
    )
    .await;
    wait_until(
        "/metrics shows the pass",
        Duration::from_secs(10),
        || async {
            metric_at(
                port,
                "df_reconciler_passes_total{outcome=\"ok\",dry_run=\"false\"}",
            )
            .await
                == Some(1.0)
        },
    )
    .await;
    let (status, body) = get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &body,
            "df_reconciler_instances_removed_total{reason=\"expired\",status=\"completed\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "df_reconciler_engine_children_removed_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &body,
            "df_reconciler_rows_deleted_total{table=\"df.instances\",reason=\"expired\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&body, "df_reconciler_leader"), Some(1.0));
    assert_eq!(
        metric(&body, "df_reconciler_consecutive_failures"),
        Some(0.0)
    );
    assert!(metric(&body, "df_reconciler_last_success_timestamp_seconds").unwrap() > 1.0e9);
    assert!(body.contains("df_reconciler_batch_duration_seconds_bucket"));
    assert!(body.contains("df_reconciler_drift{kind=\"running_without_df_row\"} 0"));
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200);
    assert_eq!(get(port, "/readyz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_survives_a_server_restart_and_recovers_by_itself() {
    let mut cluster = private_cluster().await;
    let db = TestDb::new_in(&cluster).await;
    let port = free_port();
    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__PASS__INTERVAL", "1s")
        .env("DF_RECONCILER__PASS__RETRY_BACKOFF_MAX", "2s")
        .env("DF_RECONCILER__DATABASE__CONNECT_TIMEOUT", "2s")
        .env("DF_RECONCILER__HTTP__READY_MAX_FAILING", "1s")
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut d = Running::spawn(&mut cmd);
    wait_until("ready", Duration::from_secs(30), || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;

    // The throwaway cluster commits asynchronously (synchronous_commit = off): make what
    // the fixture wrote durable before crashing the server.
    db.client().await.batch_execute("CHECKPOINT").await.unwrap();
    tokio::task::block_in_place(|| cluster.stop_immediate()).unwrap();
    wait_until(
        "unready while the server is down",
        Duration::from_secs(30),
        || async { get(port, "/readyz").await.is_some_and(|(s, _)| s == 503) },
    )
    .await;
    assert_eq!(
        get(port, "/healthz").await.unwrap().0,
        200,
        "alive all the same"
    );
    assert!(
        d.0.try_wait().unwrap().is_none(),
        "the daemon keeps running"
    );

    tokio::task::block_in_place(|| cluster.restart()).unwrap();
    let c = db.client().await;
    workflow(
        &c,
        "52000001",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    wait_until(
        "passes resume after the restart",
        Duration::from_secs(60),
        || async { df_ids(&c).await.is_empty() },
    )
    .await;
    wait_until("ready again", Duration::from_secs(30), || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
}
