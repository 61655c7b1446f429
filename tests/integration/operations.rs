//! Operating the daemon: HTTP endpoints and metrics, many replicas, the audit trail,
//! signals (SIGTERM mid-pass, SIGHUP reloads) and a server that goes away and comes back.
//! These run the real binary (`run`, `once`, `migrate`, `history`) as operators would.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::classification::workflow;
use crate::harness::{private_cluster, wait_until, TestDb};
use crate::process::{daemon, exit_within, free_port, get, metric, quiet, signal, Running};
use crate::support::{count, df_ids, violations};

const DAY: f64 = 86_400.0;

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
            get(port, "/metrics").await.is_some_and(|(_, body)| {
                metric(
                    &body,
                    "df_reconciler_passes_total{outcome=\"ok\",dry_run=\"false\"}",
                ) == Some(1.0)
            })
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

#[tokio::test]
async fn three_replicas_finish_the_work_without_errors_or_double_counting() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute("SELECT df_fixture.backlog(3000)", &[])
        .await
        .unwrap();
    let expected = crate::support::pass(&crate::support::config_for(&db), true)
        .await
        .instances_removed();
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
        || async {
            crate::support::pass(&crate::support::config_for(&db), true)
                .await
                .instances_removed()
                == 0
        },
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
    assert_eq!(migrations, 1, "the migration applied once");
}

#[tokio::test]
async fn sigterm_during_a_long_pass_finishes_the_batch_and_exits_0() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute("SELECT df_fixture.backlog(20000)", &[])
        .await
        .unwrap();
    let total = count(&c, "SELECT count(*) FROM df.instances").await;
    let mut migrate = daemon(&db.dsn);
    migrate.arg("migrate");
    assert!(migrate.status().unwrap().success());
    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "20")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut d = Running::spawn(&mut cmd);
    wait_until("the pass is under way", Duration::from_secs(60), || async {
        count(&c, "SELECT count(*) FROM df.instances").await < total - 100
    })
    .await;
    signal(&d.0, "TERM");
    let status = exit_within(&mut d.0, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        count(&c, "SELECT count(*) FROM df.instances").await > 0,
        "it stopped before finishing the backlog"
    );
    assert!(violations(&c).await.is_empty());
    let outcome = crate::support::ids(&c, "SELECT outcome FROM df_reconciler.passes").await;
    assert_eq!(outcome, vec!["stopped"]);
}

#[tokio::test]
async fn sighup_applies_a_good_configuration_and_keeps_the_old_one_on_a_bad_one() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let write = |toml: &str| std::fs::write(&file, toml).unwrap();
    write("[pass]\ninterval = \"1s\"\n[retention]\nwindow = \"90d\"\n");
    workflow(
        &c,
        "51000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let port = free_port();
    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .arg("--config")
        .arg(&file)
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let d = Running::spawn(&mut cmd);
    let passes = || async move {
        get(port, "/metrics")
            .await
            .and_then(|(_, b)| {
                metric(
                    &b,
                    "df_reconciler_passes_total{outcome=\"ok\",dry_run=\"false\"}",
                )
            })
            .unwrap_or(0.0)
    };
    wait_until(
        "two passes under the 90-day window",
        Duration::from_secs(30),
        || async { passes().await >= 2.0 },
    )
    .await;
    assert_eq!(
        df_ids(&c).await,
        vec!["51000001"],
        "60 days < 90-day window"
    );

    // A bad file: rejected, the old configuration (90d) stays in force.
    write("[retention]\nwindow = \"30m\"\n");
    signal(&d.0, "HUP");
    wait_until(
        "the reload is rejected",
        Duration::from_secs(10),
        || async {
            get(port, "/metrics").await.is_some_and(|(_, b)| {
                metric(
                    &b,
                    "df_reconciler_config_reloads_total{outcome=\"rejected\"}",
                ) == Some(1.0)
            })
        },
    )
    .await;
    let after_bad = passes().await;
    wait_until(
        "more passes after the bad reload",
        Duration::from_secs(30),
        || async { passes().await >= after_bad + 2.0 },
    )
    .await;
    assert_eq!(
        df_ids(&c).await,
        vec!["51000001"],
        "still under the old window"
    );

    // A good file: the 30-day window applies from the next pass on.
    write("[pass]\ninterval = \"1s\"\n[retention]\nwindow = \"30d\"\n");
    signal(&d.0, "HUP");
    wait_until(
        "the new window removes the instance",
        Duration::from_secs(30),
        || async { df_ids(&c).await.is_empty() },
    )
    .await;
    let (_, body) = get(port, "/metrics").await.unwrap();
    assert_eq!(
        metric(&body, "df_reconciler_config_reloads_total{outcome=\"ok\"}"),
        Some(1.0)
    );
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

#[tokio::test]
async fn the_audit_trail_records_passes_and_optionally_every_removed_root() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "53000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
    )
    .await;
    workflow(&c, "53000002", "cancelled", None, 60.0 * DAY, None, 0).await;
    c.execute(
        "SELECT df_fixture.orphan_root('53000003', 'Failed', now() - interval '60 days', now() - interval '60 days', 0)",
        &[],
    )
    .await
    .unwrap();
    let mut migrate = daemon(&db.dsn);
    migrate.arg("migrate");
    let out = migrate.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut again = daemon(&db.dsn);
    again.arg("migrate");
    assert!(again.status().unwrap().success(), "migrate is idempotent");

    let mut dry = daemon(&db.dsn);
    dry.args(["once", "--dry-run"]);
    assert!(dry.status().unwrap().success());
    let mut once = daemon(&db.dsn);
    once.args(["once", "--json"])
        .env("DF_RECONCILER__AUDIT__RECORD_DELETIONS", "true");
    let out = once.output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let rows = c
        .query(
            "SELECT pass_id, dry_run, outcome, instances_removed FROM df_reconciler.passes ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].get::<_, bool>(1));
    assert_eq!(
        rows[1].get::<_, String>(0),
        report["pass_id"].as_str().unwrap()
    );
    assert_eq!(rows[1].get::<_, String>(2), "ok");
    assert_eq!(rows[1].get::<_, i64>(3), 3);
    let deletions = crate::support::ids(
        &c,
        "SELECT instance_id || ':' || reason || ':' || status FROM df_reconciler.deletions ORDER BY 1",
    )
    .await;
    assert_eq!(
        deletions,
        vec![
            "53000001:expired:completed",
            "53000002:expired:cancelled",
            "53000003:orphan:Failed"
        ]
    );

    let mut history = daemon(&db.dsn);
    history.args(["history", "--json"]);
    let out = history.output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["pass_id"], report["pass_id"], "newest first");
}

#[tokio::test]
async fn json_logs_carry_the_pass_id_on_every_line_of_a_pass() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "54000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let mut once = daemon(&db.dsn);
    once.args(["once", "--json", "--log-format", "json", "-v"]);
    let out = once.output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pass_id = report["pass_id"].as_str().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    let of_pass: Vec<_> = lines
        .iter()
        .filter(|l| l["target"].as_str().is_some_and(|t| t.contains("pass")))
        .collect();
    assert!(of_pass.len() >= 2, "{lines:?}");
    for line in of_pass {
        assert_eq!(line["span"]["pass_id"], pass_id, "{line}");
    }
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("postgres://"),
        "no DSN in logs"
    );
}

#[tokio::test]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut d = Running::spawn(&mut cmd);

    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let messages = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let stop = text.contains("STOPPING=1");
                    messages.lock().unwrap().push(text);
                    if stop {
                        break;
                    }
                }
            }
        })
    };
    let heard = |what: &'static str| {
        let messages = messages.clone();
        move || {
            let found = messages.lock().unwrap().iter().any(|m| m.contains(what));
            async move { found }
        }
    };
    wait_until("READY=1", Duration::from_secs(30), heard("READY=1")).await;
    wait_until(
        "STATUS with the pass summary",
        Duration::from_secs(30),
        heard("STATUS=last pass"),
    )
    .await;
    wait_until(
        "WATCHDOG=1 while idle",
        Duration::from_secs(10),
        heard("WATCHDOG=1"),
    )
    .await;
    signal(&d.0, "TERM");
    assert_eq!(
        exit_within(&mut d.0, Duration::from_secs(20)).await.code(),
        Some(0)
    );
    wait_until("STOPPING=1", Duration::from_secs(10), heard("STOPPING=1")).await;
    reader.join().unwrap();
}

/// The drift counts read every live row of both stores, so `run` takes them only when the
/// last count is `pass.drift_interval` old, and `once --no-drift` leaves them out; the
/// report (here as recorded in the audit trail) says whether they were taken.
#[tokio::test]
async fn drift_is_counted_once_per_drift_interval_and_left_out_on_request() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.execute(
        "SELECT df_fixture.orphan_root('54000001', 'Running', now() - interval '90 days', NULL, 0)",
        &[],
    )
    .await
    .unwrap();
    let mut migrate = daemon(&db.dsn);
    migrate.arg("migrate");
    assert!(migrate.status().unwrap().success());
    let drift_by_pass = || async {
        c.query(
            "SELECT (report->>'drift_counted')::bool,
                    (report->>'running_without_df_row')::bigint
             FROM df_reconciler.passes ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, bool>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>()
    };

    let mut once = daemon(&db.dsn);
    once.args(["once", "--no-drift"]);
    assert!(once.status().unwrap().success());
    assert_eq!(drift_by_pass().await, vec![(false, 0)]);

    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__PASS__INTERVAL", "200ms")
        .env("DF_RECONCILER__PASS__DRIFT_INTERVAL", "1h");
    quiet(&mut cmd);
    let run = Running::spawn(&mut cmd);
    wait_until("three passes of `run`", Duration::from_secs(30), || async {
        drift_by_pass().await.len() >= 4
    })
    .await;
    drop(run);
    let passes = drift_by_pass().await;
    assert_eq!(passes[1], (true, 1), "the first pass of `run` counts");
    assert!(
        passes[2..].iter().all(|p| *p == (false, 0)),
        "later passes within the hour do not: {passes:?}"
    );

    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__PASS__INTERVAL", "200ms")
        .env("DF_RECONCILER__PASS__DRIFT_INTERVAL", "0s");
    quiet(&mut cmd);
    let seen = passes.len();
    let run = Running::spawn(&mut cmd);
    wait_until("two more passes", Duration::from_secs(30), || async {
        drift_by_pass().await.len() >= seen + 2
    })
    .await;
    drop(run);
    let passes = drift_by_pass().await;
    assert!(
        passes[seen..].iter().all(|p| *p == (true, 1)),
        "drift_interval 0s: every pass counts: {passes:?}"
    );
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
    let mut cfg = crate::support::config_for(&db);
    cfg.pass.batch_size = 2;

    seed("550000").await;
    let quiet_pass = crate::support::pass(&cfg, false).await;
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
    let unpaced = crate::support::pass(&cfg, false).await;
    assert_eq!(unpaced.expired_removed.total(), 6);
    assert_eq!(unpaced.paused_ms, 0, "100% never pauses");

    seed("570000").await;
    cfg.pass.busy_duty_percent = 10;
    let paced = crate::support::pass(&cfg, false).await;
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
