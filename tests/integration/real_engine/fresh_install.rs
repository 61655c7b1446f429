//! The fresh-install order on the real extension: `CREATE EXTENSION pg_durable`, then at
//! once `df-reconciler run`. The engine's store does not exist until pg_durable's worker
//! has noticed the extension and migrated it (5-10 s); meanwhile `run` stays up, unready,
//! and deletes nothing; then it reconciles without a restart.

use std::process::Stdio;
use std::time::Duration;

use super::{live_deletions, start, wait_status, Engine};
use crate::support::db::{count, exec};
use crate::support::harness::wait_until;
use crate::support::process::{daemon, free_port, get, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_right_after_create_extension_waits_for_the_engine_then_reconciles() {
    let Some(engine) = Engine::start_before_extension().await else {
        return;
    };
    let c = engine.client().await;
    // The worker polls for the extension every 5-10 s; held still here, it cannot win the
    // race against the daemon's first look by chance, so the wait is always exercised.
    let frozen = engine.freeze();
    exec(&c, "CREATE EXTENSION pg_durable").await;
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = daemon(&engine.dsn);
    cmd.arg("run")
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DF_RECONCILER__PASS__INTERVAL", "1s")
        .env("DF_RECONCILER__PASS__RETRY_BACKOFF_MAX", "1s")
        .env("DF_RECONCILER__RETENTION__WINDOW", "1s")
        .env("DF_RECONCILER__RETENTION__ORPHAN_MIN_AGE", "1s")
        .env("DF_RECONCILER__RETENTION__ALLOW_SHORT_RETENTION", "true")
        .stdout(Stdio::null())
        .stderr(log.as_file().try_clone().unwrap());
    let mut d = Running::spawn(&mut cmd);

    let last = std::sync::Mutex::new(None);
    let unready = async {
        wait_until(
            "/readyz 503: the engine's tables are not there yet",
            Duration::from_secs(60),
            || async {
                let answer = get(port, "/readyz").await;
                let found = answer.as_ref().is_some_and(|(s, body)| {
                    // CREATE EXTENSION makes the schema; the worker, its tables.
                    *s == 503 && body.contains("table _duroxide.instances does not exist")
                });
                *last.lock().unwrap() = answer;
                found
            },
        )
        .await
    };
    if tokio::time::timeout(Duration::from_secs(30), unready)
        .await
        .is_err()
    {
        panic!(
            "/readyz said {:?}; the daemon logged:\n{}",
            last.lock().unwrap(),
            std::fs::read_to_string(log.path()).unwrap()
        );
    }
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");

    frozen.thaw();
    wait_until(
        "pg_durable's worker migrated its store",
        Duration::from_secs(60),
        || async { tokio::task::block_in_place(|| engine.real.is_ready()).is_ok() },
    )
    .await;
    engine.install_guards().await;
    // A session opened after the worker is ready (a backend checks that once).
    let c = engine.client().await;
    wait_until("/readyz 200", Duration::from_secs(30), || async {
        get(port, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;

    // Reconciling now: a workflow that completes expires (1 s window) and goes.
    let id = start(&c, "'SELECT 1 AS one'", "fresh-install").await;
    wait_status(&c, &id, "completed", Duration::from_secs(60)).await;
    wait_until(
        "the completed workflow is removed from both stores",
        Duration::from_secs(60),
        || async {
            count(
                &c,
                &format!(
                    "SELECT (SELECT count(*) FROM df.instances WHERE id = '{id}')
                          + (SELECT count(*) FROM _duroxide.instances WHERE instance_id = '{id}')"
                ),
            )
            .await
                == 0
        },
    )
    .await;
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");
    assert!(live_deletions(&c).await.is_empty());
    // Logged once per change of reason (the worker creates its tables one after the
    // other), never once per retry.
    let logged = std::fs::read_to_string(log.path()).unwrap();
    let reasons: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("not reconcilable yet"))
        .filter_map(|l| l.split_once("reason").map(|(_, r)| r))
        .collect();
    assert!(!reasons.is_empty(), "{logged}");
    let distinct: std::collections::BTreeSet<_> = reasons.iter().collect();
    assert_eq!(distinct.len(), reasons.len(), "{logged}");
}
