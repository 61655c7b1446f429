//! `[[retention.rules]]`: the first matching rule's windows and cap apply to an instance;
//! instances matching none (and orphans) keep the top-level keys; a rule with its own cap
//! leaves the global one; label globs and role names are bound, never spliced.

use std::time::Duration;

use df_reconciler_core::error::Error;
use df_reconciler_core::rules::{Keep, RetentionRule};

use crate::support::db::{df_ids, exec, violations};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass, try_pass};
use crate::support::seed::{orphan, workflow, DAY, HOUR};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn rule(name: &str, label: Option<&str>, role: Option<&str>) -> RetentionRule {
    RetentionRule {
        name: name.into(),
        label: label.map(Into::into),
        submitted_by: role.map(Into::into),
        ..RetentionRule::default()
    }
}

/// A failed, ended workflow `ago` seconds old with `label`.
async fn failed(c: &tokio_postgres::Client, id: &str, ago: f64, label: Option<&str>) {
    workflow(c, id, "failed", Some("Failed"), ago, Some(ago), 0).await;
    label_it(c, id, label).await;
}

async fn completed(c: &tokio_postgres::Client, id: &str, ago: f64, label: Option<&str>) {
    workflow(c, id, "completed", Some("Completed"), ago, Some(ago), 0).await;
    label_it(c, id, label).await;
}

async fn label_it(c: &tokio_postgres::Client, id: &str, label: Option<&str>) {
    c.execute(
        "UPDATE df.instances SET label = $2 WHERE id = $1::text",
        &[&id, &label],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rule_keeps_its_failures_while_the_default_window_removes_others() {
    let db = TestDb::new().await;
    let c = db.client().await;
    failed(&c, "a1000001", 100.0 * DAY, Some("billing-eu")).await;
    failed(&c, "a1000002", 100.0 * DAY, Some("etl-nightly")).await;
    failed(&c, "a1000003", 100.0 * DAY, None).await;
    // Health checks go after a day; the same age is well inside the default window.
    completed(&c, "a1000004", 2.0 * DAY, Some("health-db")).await;
    completed(&c, "a1000005", 2.0 * DAY, Some("etl-nightly")).await;
    let mut cfg = config_for(&db);
    cfg.retention.rules = vec![
        RetentionRule {
            failed: Some(Keep::For(YEAR)),
            ..rule("billing", Some("billing-*"), None)
        },
        RetentionRule {
            window: Some(Keep::For(Duration::from_secs(86_400))),
            ..rule("health", Some("health-*"), None)
        },
    ];

    let dry = pass(&cfg, true).await;
    let report = pass(&cfg, false).await;

    assert_eq!(df_ids(&c).await, ["a1000001", "a1000005"]);
    assert_eq!(report.removed_by_rule["default"].expired, 2);
    assert_eq!(report.removed_by_rule["health"].expired, 1);
    assert!(!report.removed_by_rule.contains_key("billing"));
    assert_eq!(
        dry.removed_by_rule, report.removed_by_rule,
        "a dry run counts per rule exactly"
    );
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn the_first_matching_rule_wins() {
    let db = TestDb::new().await;
    let c = db.client().await;
    failed(&c, "a2000001", 10.0 * DAY, Some("billing-health")).await;
    let mut cfg = config_for(&db);
    let short = RetentionRule {
        window: Some(Keep::For(Duration::from_secs(86_400))),
        ..rule("short", Some("*-health"), None)
    };
    let forever = RetentionRule {
        window: Some(Keep::Forever),
        ..rule("forever", Some("billing-*"), None)
    };
    cfg.retention.rules = vec![forever.clone(), short.clone()];
    assert_eq!(pass(&cfg, false).await.instances_removed(), 0);
    assert_eq!(df_ids(&c).await, ["a2000001"]);

    cfg.retention.rules = vec![short, forever];
    let report = pass(&cfg, false).await;
    assert_eq!(report.removed_by_rule["short"].expired, 1);
    assert!(df_ids(&c).await.is_empty());
}

#[tokio::test]
async fn a_rule_with_its_own_cap_leaves_the_global_cap() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Five capped-rule instances and three others, all within their windows.
    for i in 0..5 {
        completed(
            &c,
            &format!("a30000{i:02}"),
            (i as f64 + 1.0) * HOUR,
            Some("hc-ping"),
        )
        .await;
    }
    for i in 0..3 {
        completed(&c, &format!("a31000{i:02}"), (i as f64 + 1.0) * HOUR, None).await;
    }
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 3;
    cfg.retention.rules = vec![RetentionRule {
        hard_cap: Some(2),
        ..rule("hc", Some("hc-*"), None)
    }];

    let report = pass(&cfg, false).await;

    // The rule keeps its two newest; the three others are exactly at the global cap.
    assert_eq!(
        df_ids(&c).await,
        ["a3000000", "a3000001", "a3100000", "a3100001", "a3100002"]
    );
    assert_eq!(report.capped_removed, 3);
    assert_eq!(report.removed_by_rule["hc"].capped, 3);
    assert_eq!(pass(&cfg, false).await.instances_removed(), 0, "stable");

    // A rule without a cap shares the global one with the default.
    completed(&c, "a3200000", 30.0 * HOUR, Some("etl")).await;
    cfg.retention.rules.push(rule("etl", Some("etl"), None));
    let report = pass(&cfg, false).await;
    assert_eq!(report.removed_by_rule["etl"].capped, 1, "{report}");
    assert!(!df_ids(&c).await.contains(&"a3200000".to_owned()));
}

#[tokio::test]
async fn a_rule_matches_the_submitting_role() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let role = format!("{}_billing", db.name);
    exec(&c, &format!("CREATE ROLE \"{role}\" NOLOGIN")).await;
    failed(&c, "a4000001", 100.0 * DAY, None).await;
    failed(&c, "a4000002", 100.0 * DAY, None).await;
    // One transaction: the nodes' foreign key to (id, submitted_by) is deferred.
    exec(
        &c,
        &format!(
            "BEGIN;
             UPDATE df.instances SET submitted_by = '\"{role}\"'::regrole WHERE id = 'a4000001';
             UPDATE df.nodes SET submitted_by = '\"{role}\"'::regrole WHERE instance_id = 'a4000001';
             COMMIT"
        ),
    )
    .await;
    let mut cfg = config_for(&db);
    cfg.retention.rules = vec![RetentionRule {
        failed: Some(Keep::Forever),
        ..rule("billing", None, Some(&role))
    }];

    let report = pass(&cfg, false).await;

    assert_eq!(df_ids(&c).await, ["a4000001"]);
    assert_eq!(report.removed_by_rule["default"].expired, 1);
    exec(&c, "DELETE FROM df.nodes; DELETE FROM df.instances").await;
    exec(&c, &format!("DROP ROLE \"{role}\"")).await;
}

#[tokio::test]
async fn a_rule_naming_no_role_refuses_the_pass() {
    let db = TestDb::new().await;
    let c = db.client().await;
    failed(&c, "a5000001", 100.0 * DAY, None).await;
    let mut cfg = config_for(&db);
    cfg.retention.rules = vec![rule("billing", None, Some("no_such_role_anywhere"))];

    let failure = try_pass(&cfg, false).await.unwrap_err();

    match &failure.error {
        Error::Refused(problems) => assert!(
            problems
                .iter()
                .any(|p| p.contains("\"billing\"") && p.contains("no_such_role_anywhere")),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(
        df_ids(&c).await,
        ["a5000001"],
        "nothing falls through to the default"
    );
}

#[tokio::test]
async fn label_globs_are_bound_and_like_wildcards_match_themselves() {
    let db = TestDb::new().await;
    let c = db.client().await;
    failed(&c, "a6000001", 100.0 * DAY, Some("a_b%'; --x")).await;
    failed(&c, "a6000002", 100.0 * DAY, Some("axbyz'; --x")).await;
    failed(&c, "a6000003", 100.0 * DAY, Some("A_B%'; --x")).await;
    let mut cfg = config_for(&db);
    cfg.retention.rules = vec![RetentionRule {
        window: Some(Keep::Forever),
        ..rule("quoted", Some("a_b%'*"), None)
    }];

    pass(&cfg, false).await;

    // `_` and `%` match only themselves, the quote is data, matching is case-sensitive.
    assert_eq!(df_ids(&c).await, ["a6000001"]);
}

#[tokio::test]
async fn orphans_stay_under_the_top_level_keys() {
    let db = TestDb::new().await;
    let c = db.client().await;
    orphan(&c, "a7000001", "Completed", 40.0 * DAY, 40.0 * DAY, 1).await;
    let mut cfg = config_for(&db);
    // A catch-all rule keeping everything forever does not reach orphans: no label.
    cfg.retention.rules = vec![RetentionRule {
        window: Some(Keep::Forever),
        ..rule("everything", Some("*"), None)
    }];
    let report = pass(&cfg, false).await;
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.removed_by_rule["default"].orphans, 1);
}

#[tokio::test]
async fn check_reports_a_rule_naming_no_role_as_a_problem() {
    use crate::support::process::{daemon, text, toml_file};
    let db = TestDb::new().await;
    let file = toml_file(
        "[[retention.rules]]\nname = \"billing\"\nsubmitted_by = \"no_such_role_anywhere\"\n",
    );
    let out = daemon(&db.dsn)
        .arg("check")
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("retention.rules \"billing\": submitted_by role \"no_such_role_anywhere\" does not exist"),
        "{stdout}"
    );
}
