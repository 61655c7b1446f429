//! Behind a real PgBouncer in transaction mode (Debian's package; 1.18 on Debian 12, which
//! has no `max_prepared_statements`), with `database.pooler = "transaction"`: replicas
//! clear a backlog with no failed pass and nothing deleted twice, also while other
//! clients keep the pooler's few server connections busy; a pooler restart mid-pass
//! leaves every instance whole. Each test skips with one line when PgBouncer is not
//! installed (`.ci/run` installs it).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use df_reconciler_testkit::{pgbouncer_available, ThrowawayPgBouncer};

use crate::support::db::{count, violations};
use crate::support::harness::{connect, shared_cluster, wait_until, TestDb};
use crate::support::passes::remaining;
use crate::support::process::{daemon, exit_within, run, signal, text, Running};
use crate::support::seed::backlog;

/// A PgBouncer in transaction mode in front of the shared cluster, or `None` after
/// printing the skip line.
async fn pgbouncer_or_skip() -> Option<ThrowawayPgBouncer> {
    if let Err(why) = pgbouncer_available() {
        eprintln!("pooler: skipped: {why}");
        return None;
    }
    let cluster = shared_cluster().await;
    Some(
        tokio::task::spawn_blocking(move || cluster.start_pgbouncer())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start PgBouncer: {e}")),
    )
}

/// The daemon through `bouncer` on `db`, in the pooler-safe mode, relying on the fence.
fn through(bouncer: &ThrowawayPgBouncer, db: &TestDb) -> std::process::Command {
    let mut cmd = daemon(&bouncer.dsn(&db.name));
    cmd.env("DF_RECONCILER__DATABASE__POOLER", "transaction")
        .env("DF_RECONCILER__PASS__LEADER_ELECTION", "false")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "40")
        .env("DF_RECONCILER__AUDIT__AUTO_MIGRATE", "true")
        .env("DF_RECONCILER__AUDIT__RECORD_DELETIONS", "true");
    cmd
}

/// Every instance deleted exactly once: the deletions rows are written in the deleting
/// transaction, so they exist exactly for what was deleted.
async fn assert_each_deleted_once(c: &tokio_postgres::Client, expected: u64) {
    let (rows, distinct) = (
        count(c, "SELECT count(*) FROM df_reconciler.deletions").await,
        count(
            c,
            "SELECT count(DISTINCT instance_id) FROM df_reconciler.deletions",
        )
        .await,
    );
    assert_eq!((rows, distinct), (expected as i64, expected as i64));
}

/// Other clients of the same pooler, until the returned flag is set: short transactions
/// and one-statement queries that keep its five server connections changing hands.
fn other_traffic(bouncer: &ThrowawayPgBouncer, db: &TestDb) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for n in 0..6 {
        let (dsn, stop) = (bouncer.dsn(&db.name), stop.clone());
        tokio::spawn(async move {
            let c = connect(&dsn).await;
            while !stop.load(Ordering::Relaxed) {
                let _ = c
                    .batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT")
                    .await;
                let _ = c
                    .query_typed(
                        "SELECT $1::int + 1",
                        &[(&n, tokio_postgres::types::Type::INT4)],
                    )
                    .await;
                if c.is_closed() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    stop
}

/// Runs rounds of three `once` replicas started together until the backlog is gone;
/// every one must succeed. Returns the number of rounds.
async fn once_replicas_until_done(bouncer: &ThrowawayPgBouncer, db: &TestDb) -> usize {
    for round in 1..=40 {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let mut cmd = through(bouncer, db);
                cmd.args(["once", "--json"]);
                run(cmd)
            })
            .collect();
        for out in futures_util::future::join_all(runs).await {
            assert_eq!(
                out.status.code(),
                Some(0),
                "a replica failed in round {round}: {}{}\nPgBouncer: {}",
                text(&out.stdout),
                text(&out.stderr),
                bouncer.log_tail()
            );
        }
        if remaining(db).await == 0 {
            return round;
        }
    }
    panic!("the backlog was not cleared in 40 rounds");
}

/// No pass failed, and the audit trail counts every instance exactly once.
async fn assert_clean(db: &TestDb, expected: u64) {
    let c = db.client().await;
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    let failed = count(
        &c,
        "SELECT count(*) FROM df_reconciler.passes WHERE outcome = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "no pass failed");
    let removed = count(
        &c,
        "SELECT coalesce(sum(instances_removed), 0)::bigint FROM df_reconciler.passes WHERE NOT dry_run",
    )
    .await;
    assert_eq!(
        removed, expected as i64,
        "every instance counted exactly once"
    );
    assert_each_deleted_once(&c, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_replicas_through_a_transaction_pooler_clear_a_backlog() {
    let Some(bouncer) = pgbouncer_or_skip().await else {
        return;
    };
    let db = TestDb::new().await;
    backlog(&db.client().await, 600).await;
    let expected = remaining(&db).await;
    let rounds = once_replicas_until_done(&bouncer, &db).await;
    eprintln!("pooler: backlog of {expected} cleared in {rounds} round(s) of three replicas");
    assert_clean(&db, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_replicas_through_a_busy_transaction_pooler_clear_a_backlog() {
    let Some(bouncer) = pgbouncer_or_skip().await else {
        return;
    };
    let db = TestDb::new().await;
    backlog(&db.client().await, 600).await;
    let expected = remaining(&db).await;
    let stop = other_traffic(&bouncer, &db);
    let rounds = once_replicas_until_done(&bouncer, &db).await;
    stop.store(true, Ordering::Relaxed);
    eprintln!("pooler: busy: backlog of {expected} cleared in {rounds} round(s)");
    assert_clean(&db, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_restart_mid_pass_leaves_every_instance_whole() {
    let Some(mut bouncer) = pgbouncer_or_skip().await else {
        return;
    };
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 3000).await;
    let expected = remaining(&db).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut cmd = through(&bouncer, &db);
        cmd.arg("run")
            .env("DF_RECONCILER__PASS__INTERVAL", "1s")
            .env("DF_RECONCILER__PASS__RETRY_BACKOFF_MAX", "1s")
            .env("DF_RECONCILER__PASS__BATCH_SIZE", "10")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        replicas.push(Running::spawn(&mut cmd));
    }
    wait_until(
        "the passes are under way",
        Duration::from_secs(60),
        || async { remaining(&db).await < expected - 100 },
    )
    .await;
    tokio::task::block_in_place(|| bouncer.restart()).expect("PgBouncer restarts");
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    wait_until(
        "the backlog is cleared after the restart",
        Duration::from_secs(120),
        || async { remaining(&db).await == 0 },
    )
    .await;
    for r in &mut replicas {
        assert!(r.0.try_wait().unwrap().is_none(), "a replica died");
        signal(&r.0, "TERM");
        assert_eq!(
            exit_within(&mut r.0, Duration::from_secs(30)).await.code(),
            Some(0)
        );
    }
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    // Passes cut by the restart failed and were retried (their audit rows may be lost
    // with the connection); the deletions written with each batch count every instance.
    assert_each_deleted_once(&c, expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_through_the_pooler_says_which_mode_is_in_effect_and_why() {
    let Some(bouncer) = pgbouncer_or_skip().await else {
        return;
    };
    let db = TestDb::new().await;
    let mut cmd = through(&bouncer, &db);
    cmd.arg("check")
        .env("DF_RECONCILER__PASS__LEADER_ELECTION", "true");
    let out = run(cmd).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("mode: statements: never prepared by name")
            && stdout.contains("database.pooler = \"transaction\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("mode: leader election: off")
            && stdout.contains("pass.leader_election = true is ignored"),
        "{stdout}"
    );

    // Direct, by default: prepared statements and the leader lock.
    let mut cmd = daemon(&db.dsn);
    cmd.arg("check");
    let stdout = text(&run(cmd).await.stdout);
    assert!(
        stdout.contains("mode: statements: prepared once per pass")
            && stdout.contains("mode: leader election: on"),
        "{stdout}"
    );
}
