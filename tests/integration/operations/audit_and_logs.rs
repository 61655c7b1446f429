//! What a pass leaves behind for operators: the audit trail (passes, optionally every
//! removed root) read back by `history`, JSON logs carrying the pass id, and drift counts
//! taken once per `pass.drift_interval`.

use std::time::Duration;

use crate::support::db::ids;
use crate::support::harness::{wait_until, TestDb};
use crate::support::process::{daemon, quiet, toml_file, Running};
use crate::support::seed::{workflow, DAY};

/// Each removed root's audit row names the retention rule it fell under, and the pass's
/// report counts removals per rule.
#[tokio::test]
async fn the_audit_trail_names_the_rule_of_every_removed_root() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for id in ["53200001", "53200002"] {
        workflow(
            &c,
            id,
            "failed",
            Some("Failed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            0,
        )
        .await;
    }
    c.execute(
        "UPDATE df.instances SET label = 'billing-eu' WHERE id = '53200001'",
        &[],
    )
    .await
    .unwrap();
    let config = toml_file(
        "[audit]\nrecord_deletions = true\nauto_migrate = true\n\
         [[retention.rules]]\nname = \"billing\"\nlabel = \"billing-*\"\nfailed = \"7d\"\n",
    );
    let mut once = daemon(&db.dsn);
    once.args(["once", "--json", "--config"]).arg(config.path());
    let out = once.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deletions = ids(
        &c,
        "SELECT instance_id || ':' || rule FROM df_reconciler.deletions ORDER BY 1",
    )
    .await;
    assert_eq!(deletions, ["53200001:billing", "53200002:default"]);
    let by_rule = ids(
        &c,
        "SELECT r.key || ':' || (r.value->>'expired')
           FROM df_reconciler.passes p, jsonb_each(p.report->'removed_by_rule') r ORDER BY 1",
    )
    .await;
    assert_eq!(by_rule, ["billing:1", "default:1"]);
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
    let deletions = ids(
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

/// `audit.auto_migrate = true`: a real `once` creates the trail before the pass that
/// writes it (and records its deletions); a dry run, which needs SELECT only, does not.
#[tokio::test]
async fn once_with_auto_migrate_creates_the_trail_it_writes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(&c, "53100001", "cancelled", None, 60.0 * DAY, None, 0).await;
    let trail_exists = || async {
        c.query_one(
            "SELECT to_regclass('df_reconciler.passes') IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    };

    let mut dry = daemon(&db.dsn);
    dry.args(["once", "--dry-run"])
        .env("DF_RECONCILER__AUDIT__AUTO_MIGRATE", "true");
    assert!(dry.status().unwrap().success());
    assert!(!trail_exists().await, "a dry run never migrates");

    let mut once = daemon(&db.dsn);
    once.args(["once", "--json"])
        .env("DF_RECONCILER__AUDIT__AUTO_MIGRATE", "true")
        .env("DF_RECONCILER__AUDIT__RECORD_DELETIONS", "true");
    let out = once.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(trail_exists().await);
    let passes = ids(&c, "SELECT outcome FROM df_reconciler.passes").await;
    assert_eq!(passes, vec!["ok"]);
    let deletions = ids(
        &c,
        "SELECT instance_id || ':' || reason FROM df_reconciler.deletions",
    )
    .await;
    assert_eq!(deletions, vec!["53100001:expired"]);
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
