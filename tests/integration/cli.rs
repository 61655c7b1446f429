//! The operator contract of the binary: subcommands, exit codes, JSON report, config
//! precedence and errors that name the offending key.

use std::time::Duration;

use crate::support::db::{count, df_ids};
use crate::support::harness::{wait_until, TestDb};
use crate::support::process::{
    binary, exit_within, free_port, get, run, signal, text, toml_file, Running,
};
use crate::support::seed::{workflow, DAY};

#[tokio::test]
async fn invalid_configuration_exits_2_naming_the_key() {
    for (toml, needle) in [
        ("[pass]\nbatch_size = 0\n", "pass.batch_size"),
        ("[retention]\nwindow = \"30m\"\n", "retention.window"),
        ("[retention]\nwindwo = \"30d\"\n", "windwo"),
        ("[pass]\ninterval = \"often\"\n", "interval"),
    ] {
        let file = toml_file(toml);
        let mut cmd = binary();
        cmd.args(["check", "--offline", "--config"])
            .arg(file.path());
        let out = run(cmd).await;
        assert_eq!(out.status.code(), Some(2), "{toml}");
        assert!(
            text(&out.stderr).contains(needle),
            "{toml}: {}",
            text(&out.stderr)
        );
    }
    let mut cmd = binary();
    cmd.args(["check", "--offline", "--config", "/nonexistent/df.toml"]);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("/nonexistent/df.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn environment_overrides_file_and_flags_override_environment() {
    let file = toml_file("[pass]\nbatch_size = 10\n");
    let mut cmd = binary();
    cmd.args(["check", "--offline", "--config"])
        .arg(file.path())
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "0");
    assert_eq!(run(cmd).await.status.code(), Some(2), "env 0 beats file 10");
    let mut cmd = binary();
    cmd.args([
        "check",
        "--offline",
        "--set",
        "pass.batch_size=5",
        "--config",
    ])
    .arg(file.path())
    .env("DF_RECONCILER__PASS__BATCH_SIZE", "0");
    assert_eq!(run(cmd).await.status.code(), Some(0), "flag 5 beats env 0");
}

#[tokio::test]
async fn once_json_prints_one_report_object_and_deletes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "40000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    workflow(&c, "40000002", "failed", Some("Failed"), DAY, Some(DAY), 0).await;

    let mut cmd = binary();
    cmd.args(["once", "--dry-run", "--json"])
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["expired_removed"]["completed"], 1);
    assert_eq!(df_ids(&c).await.len(), 2, "dry run deleted nothing");

    let mut cmd = binary();
    cmd.args(["once", "--json"])
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Logs go to stderr, here a pipe as under systemd or a log shipper: no colour codes.
    assert!(
        text(&out.stderr).contains("pass finished"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "escape codes in logs written to a pipe: {}",
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "dry_run",
        "started_at",
        "duration_ms",
        "expired_removed",
        "capped_removed",
        "orphans_reclaimed",
        "engine_children_removed",
        "rows_deleted",
        "skipped_unsettled",
        "skipped_locked",
        "skipped_abandoned",
        "running_without_df_row",
        "df_rows_without_engine",
        "batches",
        "errors",
    ] {
        assert!(report.get(field).is_some(), "missing {field}");
    }
    assert_eq!(report["rows_deleted"]["_duroxide.instances"], 2);
    assert_eq!(df_ids(&c).await, vec!["40000002"]);
}

#[tokio::test]
async fn check_passes_on_a_good_database_and_names_problems_on_a_bad_one() {
    let db = TestDb::new().await;
    let mut cmd = binary();
    cmd.arg("check")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("_duroxide"));

    db.client()
        .await
        .batch_execute("DROP TABLE df.nodes CASCADE")
        .await
        .unwrap();
    let mut cmd = binary();
    cmd.arg("check")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("table df.nodes does not exist"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn a_failed_pass_exits_non_zero_without_printing_the_password() {
    let mut cmd = binary();
    cmd.args(["once", "--json"])
        .env(
            "DF_RECONCILER__DATABASE__URL",
            "postgres://u:hunter2@127.0.0.1:1/db",
        )
        .env("DF_RECONCILER__DATABASE__CONNECT_TIMEOUT", "2s");
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("127.0.0.1:1"), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["errors"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn run_passes_at_start_and_exits_0_on_sigterm() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "41000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let mut cmd = binary();
    cmd.arg("run")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn)
        .env("DF_RECONCILER__HTTP__LISTEN", "127.0.0.1:0")
        .env("DF_RECONCILER__PASS__INTERVAL", "1h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("run starts");
    wait_until(
        "the first pass ran at start",
        Duration::from_secs(30),
        || async { df_ids(&c).await.is_empty() },
    )
    .await;
    signal(&child, "TERM");
    let exit = exit_within(&mut child, Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn demo_runs_end_to_end_and_removes_its_cluster() {
    let mut cmd = binary();
    cmd.arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("demo starts");
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("DRY RUN"), "{stdout}");
    assert!(stdout.contains("== 2. real pass =="), "{stdout}");
    // Each pass shows once, as its table: no log line repeating the report as JSON.
    let stderr = text(&out.stderr);
    assert_eq!(stdout.matches("DRY RUN").count(), 1, "{stdout}");
    assert!(
        !stdout.contains("\"pass_id\"") && !stderr.contains("\"pass_id\""),
        "{stdout}{stderr}"
    );
    // The demo's cluster folder (named after the demo's pid) is gone.
    let prefix = format!("df-reconciler-pg-{pid}-");
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn run_waits_unready_beside_a_database_it_must_not_touch_while_once_refuses() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "41000002",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    c.batch_execute("DROP TABLE _duroxide.kv_store")
        .await
        .unwrap();
    let mut once = binary();
    once.arg("once")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(once).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("_duroxide.kv_store does not exist"));

    // `run` stays up, unready with the reason, and deletes nothing; SIGTERM ends it.
    let port = free_port();
    let mut cmd = binary();
    cmd.arg("run")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn)
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DF_RECONCILER__PASS__JITTER", "0s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut d = Running::spawn(&mut cmd);
    wait_until(
        "/readyz names the missing table",
        Duration::from_secs(30),
        || async {
            get(port, "/readyz").await.is_some_and(|(status, body)| {
                status == 503 && body.contains("_duroxide.kv_store does not exist")
            })
        },
    )
    .await;
    assert!(d.0.try_wait().unwrap().is_none(), "run stays up");
    assert_eq!(df_ids(&c).await, vec!["41000002"]);
    signal(&d.0, "TERM");
    let exit = exit_within(&mut d.0, Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn check_reports_missing_supporting_indexes_and_migrate_creates_them() {
    let db = TestDb::new().await;
    let check = || {
        let mut cmd = binary();
        cmd.arg("check")
            .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
        cmd
    };
    let out = run(check()).await;
    assert_eq!(out.status.code(), Some(0));
    for index in [
        "df.nodes (instance_id, left_node):",
        "df.instances (id) INCLUDE (status, created_at, completed_at) WHERE status IN",
        "_duroxide.executions (instance_id) INCLUDE (execution_id, completed_at) WHERE status IN ('Completed', 'Failed'):",
        "_duroxide.executions (instance_id, execution_id) WHERE status = 'ContinuedAsNew':",
    ] {
        assert!(
            text(&out.stdout).contains(&format!("missing supporting index on {index}")),
            "{index}: {}",
            text(&out.stdout)
        );
    }

    let mut migrate = binary();
    migrate
        .args(["migrate", "--indexes"])
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(migrate).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let valid = count(
        &db.client().await,
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE c.relname IN ('df_reconciler_nodes_left_node', 'df_reconciler_nodes_right_node',
                              'df_reconciler_terminal_instances',
                              'df_reconciler_completed_failed_executions',
                              'df_reconciler_continued_executions')
            AND i.indisvalid",
    )
    .await;
    assert_eq!(valid, 5);
    let out = run(check()).await;
    assert!(
        !text(&out.stdout).contains("missing supporting index"),
        "{}",
        text(&out.stdout)
    );
}
