//! Sustained load on `run`: memory stays flat and the connections stay within the pool
//! (plus the leader's).

use std::time::{Duration, Instant};

use super::scale;
use crate::support::db::{count, violations};
use crate::support::harness::{wait_until, TestDb};
use crate::support::passes::remaining;
use crate::support::process::{daemon, quiet, signal, Running};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_keeps_memory_flat_and_connections_bounded() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut run = daemon(&db.dsn);
    run.arg("run")
        .env("DF_RECONCILER__PASS__INTERVAL", "300ms")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "50");
    let mut child = Running::spawn(quiet(&mut run));
    let pid = child.0.id();
    let duration = Duration::from_secs(12 * scale());
    let started = Instant::now();
    let mut round = 0i64;
    let mut samples = Vec::new();
    let mut peak_sessions = 0;
    while started.elapsed() < duration {
        round += 1;
        c.execute(
            "SELECT df_fixture.backlog(100, 0.9, 0.05, 10, $1)",
            &[&(round * 1_000)],
        )
        .await
        .unwrap();
        samples.push(rss_kib(pid).expect("the daemon is alive"));
        peak_sessions = peak_sessions.max(
            count(
                &c,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'df-reconciler' AND datname = current_database()",
            )
            .await,
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_until("the daemon catches up", Duration::from_secs(60), || async {
        remaining(&db).await == 0
    })
    .await;
    signal(&child.0, "TERM");
    let exit = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    assert_eq!(exit.code(), Some(0));

    // Pool (2) plus the leader's dedicated connection.
    assert!(peak_sessions <= 3, "{peak_sessions} sessions");
    let warm = samples[samples.len() / 4..samples.len() / 2]
        .iter()
        .max()
        .copied()
        .unwrap();
    let last = *samples.iter().rev().take(4).max().unwrap();
    eprintln!(
        "RSS KiB: warm {warm}, end {last}, {} rounds, peak sessions {peak_sessions}",
        round
    );
    assert!(
        last < warm + 10 * 1024,
        "memory grew from {warm} KiB to {last} KiB"
    );
    assert!(violations(&c).await.is_empty());
}
