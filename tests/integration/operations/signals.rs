//! Signals and the service manager: SIGTERM mid-pass finishes the batch and exits 0, SIGHUP
//! applies a good configuration and keeps the old one on a bad one, and systemd hears
//! READY, STATUS, WATCHDOG and STOPPING.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::db::{count, df_ids, ids, violations};
use crate::support::harness::{wait_until, TestDb};
use crate::support::process::{daemon, exit_within, free_port, metric_at, signal, Running};
use crate::support::seed::{backlog, workflow, DAY};

#[tokio::test]
async fn sigterm_during_a_long_pass_finishes_the_batch_and_exits_0() {
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 20000).await;
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
    let outcome = ids(&c, "SELECT outcome FROM df_reconciler.passes").await;
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
    let (d, port) = run_with_metrics(&db.dsn, &file);
    let passes = || ok_passes(port);
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
            metric_at(
                port,
                "df_reconciler_config_reloads_total{outcome=\"rejected\"}",
            )
            .await
                == Some(1.0)
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
    assert_eq!(
        metric_at(port, "df_reconciler_config_reloads_total{outcome=\"ok\"}").await,
        Some(1.0)
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

#[tokio::test]
async fn sighup_applies_new_rules_and_keeps_the_old_ones_on_an_invalid_file() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let write = |toml: &str| std::fs::write(&file, toml).unwrap();
    let rules = |failed: &str, second: &str| {
        format!(
            "[pass]\ninterval = \"1s\"\n[retention]\nwindow = \"30d\"\n\
             [[retention.rules]]\nname = \"billing\"\nlabel = \"billing-*\"\nfailed = \"{failed}\"\n\
             [[retention.rules]]\nname = \"{second}\"\nlabel = \"etl\"\n"
        )
    };
    write(&rules("forever", "etl"));
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
    c.execute(
        "UPDATE df.instances SET label = 'billing-eu' WHERE id = '52000001'",
        &[],
    )
    .await
    .unwrap();
    let (d, port) = run_with_metrics(&db.dsn, &file);
    let passes = || ok_passes(port);
    wait_until(
        "two passes under the billing rule",
        Duration::from_secs(30),
        || async { passes().await >= 2.0 },
    )
    .await;
    assert_eq!(df_ids(&c).await, ["52000001"], "kept forever by its rule");

    // Duplicate rule names: rejected, the old rules stay in force.
    write(&rules("7d", "billing"));
    signal(&d.0, "HUP");
    wait_until(
        "the reload is rejected",
        Duration::from_secs(10),
        || async {
            metric_at(
                port,
                "df_reconciler_config_reloads_total{outcome=\"rejected\"}",
            )
            .await
                == Some(1.0)
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
    assert_eq!(df_ids(&c).await, ["52000001"], "still under the old rule");

    // A good file: the rule's new 7-day window applies from the next pass on.
    write(&rules("7d", "etl"));
    signal(&d.0, "HUP");
    wait_until(
        "the new rule removes the instance",
        Duration::from_secs(30),
        || async { df_ids(&c).await.is_empty() },
    )
    .await;
    wait_until(
        "the removal is counted under the rule",
        Duration::from_secs(10),
        || async {
            metric_at(
                port,
                "df_reconciler_rule_instances_removed_total{rule=\"billing\",reason=\"expired\"}",
            )
            .await
                == Some(1.0)
        },
    )
    .await;
}

/// `run` with the config `file` and its /metrics on a free port: the daemon and the port.
fn run_with_metrics(dsn: &str, file: &std::path::Path) -> (Running, u16) {
    let port = free_port();
    let mut cmd = daemon(dsn);
    cmd.arg("run")
        .arg("--config")
        .arg(file)
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (Running::spawn(&mut cmd), port)
}

/// Real passes that ended well so far, from /metrics (0 before it answers).
async fn ok_passes(port: u16) -> f64 {
    metric_at(
        port,
        "df_reconciler_passes_total{outcome=\"ok\",dry_run=\"false\"}",
    )
    .await
    .unwrap_or(0.0)
}
