//! Guarantee 3 of reconcile.md, fairness: under any `pass.max_duration` both phases make
//! progress (orphans never wait behind the expired phase), and a pass cut short leaves its
//! place in the keyset to the next one, so a long run of skipped rows cannot hold back the
//! rows behind it forever.

use std::time::Duration;

use crate::support::db::{count, violations};
use crate::support::harness::{wait_until, TestDb};
use crate::support::passes::{config_for, pass};
use crate::support::process::{daemon, quiet, Running};
use crate::support::seed::{orphan, workflow, DAY};

/// `n` expired df rows whose engine roots still run: every pass examines and skips them.
async fn unsettled_run(c: &tokio_postgres::Client, prefix: &str, n: u32) {
    for i in 0..n {
        let id = format!("{prefix}{i:04}");
        workflow(c, &id, "completed", Some("Running"), 60.0 * DAY, None, 0).await;
    }
}

#[tokio::test]
async fn orphans_are_reclaimed_even_when_the_budget_ends_inside_the_expired_phase() {
    let db = TestDb::new().await;
    let c = db.client().await;
    unsettled_run(&c, "5500", 40).await;
    orphan(&c, "ffff0001", "Failed", 60.0 * DAY, 60.0 * DAY, 1).await;
    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 5;
    // Spent before the second batch: only the first round of batches runs.
    cfg.pass.max_duration = Some(Duration::from_millis(1));

    let report = pass(&cfg, false).await;

    assert!(!report.complete, "{report}");
    assert_eq!(report.orphans_reclaimed, 1, "{report}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM _duroxide.instances WHERE instance_id LIKE 'ffff0001%'"
        )
        .await,
        0
    );
    assert_eq!(count(&c, "SELECT count(*) FROM df.instances").await, 40);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn passes_cut_short_continue_where_the_last_one_stopped() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Forty skipped rows first in the keyset, then five that can go.
    unsettled_run(&c, "5600", 40).await;
    for i in 0..5 {
        let id = format!("5699{i:04}");
        workflow(
            &c,
            &id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            0,
        )
        .await;
    }
    let mut run = daemon(&db.dsn);
    run.arg("run")
        .env("DF_RECONCILER__PASS__INTERVAL", "1s")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "5")
        .env("DF_RECONCILER__PASS__MAX_DURATION", "1ms")
        .env("DF_RECONCILER__PASS__BUSY_DUTY_PERCENT", "100");
    let _daemon = Running::spawn(quiet(&mut run));

    // One batch per pass: starting over every pass, the five would never be reached.
    wait_until(
        "the rows behind the skipped ones are removed",
        Duration::from_secs(90),
        || async {
            count(
                &c,
                "SELECT count(*) FROM df.instances WHERE id LIKE '5699%'",
            )
            .await
                == 0
        },
    )
    .await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM df.instances WHERE id LIKE '5600%'"
        )
        .await,
        40,
        "the unsettled rows stay"
    );
    assert!(violations(&c).await.is_empty());
}
