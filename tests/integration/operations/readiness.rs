//! A database the daemon can reach but not reconcile yet (a fresh install whose engine has
//! not migrated its store, a role whose grants come later): `run` stays up, unready, says
//! why once per change (log, /readyz, a metric), deletes nothing, and starts reconciling
//! by itself once preflight passes. `once` and `check` still refuse (exit 3).

use std::process::Stdio;
use std::time::Duration;

use crate::support::db::{df_ids, engine_ids, exec};
use crate::support::harness::{wait_until, TestDb};
use crate::support::process::{daemon, free_port, get, metric_at, Running};
use crate::support::role::role_sql;
use crate::support::seed::{workflow, DAY};

/// An expired instance with one child: what every test here expects to go once the
/// database is reconcilable.
async fn seed_expired(db: &TestDb, id: &str) {
    workflow(
        &db.client().await,
        id,
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
}

/// `run` on `dsn`, retrying every second at most, with its endpoint on `port` and its
/// log (text) in `log`.
fn run_daemon(dsn: &str, port: u16, log: &std::fs::File) -> Running {
    let mut cmd = daemon(dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__PASS__INTERVAL", "1h")
        .env("DF_RECONCILER__PASS__RETRY_BACKOFF_MAX", "1s")
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap());
    Running::spawn(&mut cmd)
}

/// Waits until /readyz answers 503 with a body containing every one of `needles`, and
/// returns the body.
async fn unready_because(port: u16, needles: &[&str]) -> String {
    let matches = |answer: &Option<(u16, String)>| {
        answer
            .as_ref()
            .is_some_and(|(s, body)| *s == 503 && needles.iter().all(|n| body.contains(n)))
    };
    wait_until(
        &format!("/readyz 503 naming {needles:?}"),
        Duration::from_secs(30),
        || async { matches(&get(port, "/readyz").await) },
    )
    .await;
    get(port, "/readyz")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_engine_tables_that_appear_after_start_and_then_reconciles() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_expired(&db, "53000001").await;
    // The engine's store before pg_durable's worker has migrated it: not there at all.
    exec(&c, "ALTER SCHEMA _duroxide RENAME TO _duroxide_not_yet").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = free_port();
    let mut d = run_daemon(&db.dsn, port, log.as_file());

    let body = unready_because(port, &["engine schema", "_duroxide", "does not exist"]).await;
    assert!(body.contains("not reconcilable"), "{body}");
    wait_until(
        "the metric names the missing schema",
        Duration::from_secs(10),
        || async {
            metric_at(
                port,
                "df_reconciler_not_reconcilable{problem=\"schema_missing\"}",
            )
            .await
                == Some(1.0)
        },
    )
    .await;
    assert_eq!(get(port, "/healthz").await.unwrap().0, 200, "alive");
    // Several retries (at most a second apart) go by: still up, still unready, nothing
    // deleted, and the reason logged once, not once per retry.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");
    assert_eq!(get(port, "/readyz").await.unwrap().0, 503);
    assert_eq!(
        df_ids(&c).await,
        vec!["53000001"],
        "nothing deleted meanwhile"
    );
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert_eq!(
        logged
            .lines()
            .filter(|l| l.contains("not reconcilable"))
            .count(),
        1,
        "{logged}"
    );

    // The worker has migrated: the engine's tables are there.
    exec(&c, "ALTER SCHEMA _duroxide_not_yet RENAME TO _duroxide").await;
    wait_until(
        "the expired instance is removed from both stores",
        Duration::from_secs(30),
        || async { df_ids(&c).await.is_empty() && engine_ids(&c).await.is_empty() },
    )
    .await;
    wait_until("ready", Duration::from_secs(10), || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(
        metric_at(
            port,
            "df_reconciler_not_reconcilable{problem=\"schema_missing\"}"
        )
        .await,
        Some(0.0)
    );
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("database reconcilable"), "{logged}");
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_privileges_granted_after_start_and_then_reconciles() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_expired(&db, "53000002").await;
    // The role exists (and may log in) before the DBA has run the role SQL for it.
    let role = format!("{}_late", db.name);
    exec(&c, &format!("CREATE ROLE \"{role}\" LOGIN BYPASSRLS")).await;
    let dsn = db
        .dsn
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = free_port();
    let mut d = run_daemon(&dsn, port, log.as_file());

    unready_because(port, &["not reconcilable", "role lacks"]).await;
    wait_until(
        "the metric names the privilege",
        Duration::from_secs(10),
        || async {
            metric_at(
                port,
                "df_reconciler_not_reconcilable{problem=\"privilege\"}",
            )
            .await
                == Some(1.0)
        },
    )
    .await;
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");
    assert_eq!(
        df_ids(&c).await,
        vec!["53000002"],
        "nothing deleted meanwhile"
    );

    exec(&c, &role_sql(&role, "_duroxide")).await;
    wait_until(
        "the expired instance is removed once the grants are there",
        Duration::from_secs(30),
        || async { df_ids(&c).await.is_empty() && engine_ids(&c).await.is_empty() },
    )
    .await;
    wait_until("ready", Duration::from_secs(10), || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_a_waiting_status_while_the_engine_is_missing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(&c, "ALTER SCHEMA _duroxide RENAME TO _duroxide_not_yet").await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut cmd = daemon(&db.dsn);
    cmd.arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("DF_RECONCILER__PASS__RETRY_BACKOFF_MAX", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _d = Running::spawn(&mut cmd);

    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (messages, stop) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    messages.lock().unwrap().push(text);
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
    // Started (a unit waiting for its engine does not fail its start), and says it does
    // not reconcile yet.
    wait_until("READY=1", Duration::from_secs(30), heard("READY=1")).await;
    wait_until(
        "STATUS saying it is not reconciling",
        Duration::from_secs(30),
        heard("STATUS=not reconciling"),
    )
    .await;
    exec(&c, "ALTER SCHEMA _duroxide_not_yet RENAME TO _duroxide").await;
    wait_until(
        "STATUS with the pass summary once the engine is there",
        Duration::from_secs(30),
        heard("STATUS=last pass"),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
}
