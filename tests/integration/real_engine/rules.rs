//! `[[retention.rules]]` on real instances: a rule keeps one label's failed workflow for a
//! year while the default window removes another label's of the same age; `explain`
//! says so of each before the pass, and the pass then does what it said.

use std::time::Duration;

use df_reconciler_core::db;
use df_reconciler_core::pass::explain::explain;
use df_reconciler_core::rules::{Keep, RetentionRule};

use super::{age, engine_or_skip, live_deletions, pass, start, status, wait_ended};
use crate::support::db::rows_of;

const DAY: f64 = 86_400.0;
const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_rule_keeps_one_labels_failure_while_the_default_removes_anothers() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let billing = start(&c, "'SELECT 1/0 AS boom'", "billing-eu").await;
    let etl = start(&c, "'SELECT 1/0 AS boom'", "etl-nightly").await;
    wait_ended(&c, &billing, "failed", FINISH).await;
    wait_ended(&c, &etl, "failed", FINISH).await;
    age(&c, &billing, 100.0 * DAY).await;
    age(&c, &etl, 100.0 * DAY).await;
    let billing_rows = rows_of(&c, &billing).await;

    let mut cfg = engine.config();
    cfg.retention.window = Duration::from_secs(30 * 86_400);
    cfg.retention.rules = vec![RetentionRule {
        name: "billing".into(),
        label: Some("billing-*".into()),
        failed: Some(Keep::For(Duration::from_secs(365 * 86_400))),
        ..RetentionRule::default()
    }];
    let pool = db::build_pool(&cfg).unwrap();
    let kept = explain(&pool, &cfg, &billing).await.unwrap().unwrap();
    let removed = explain(&pool, &cfg, &etl).await.unwrap().unwrap();
    pool.close();
    assert_eq!(
        (
            kept.rule.as_str(),
            kept.verdict.removed,
            kept.verdict.reason
        ),
        ("billing", false, "young"),
        "{kept}"
    );
    assert_eq!(kept.window.as_deref(), Some("365d"));
    assert_eq!(
        (
            removed.rule.as_str(),
            removed.verdict.removed,
            removed.verdict.reason
        ),
        ("default", true, "expired"),
        "{removed}"
    );
    assert_eq!(removed.engine_tree[0].status.as_deref(), Some("Failed"));

    let report = pass(&cfg).await;

    assert_eq!(report.expired_removed.failed, 1, "{report}");
    assert_eq!(report.removed_by_rule["default"].expired, 1, "{report}");
    assert_eq!(rows_of(&c, &etl).await, 0, "nothing of {etl} in any table");
    assert_eq!(status(&c, &etl).await, None);
    assert_eq!(
        rows_of(&c, &billing).await,
        billing_rows,
        "{billing} untouched"
    );
    assert_eq!(status(&c, &billing).await.as_deref(), Some("failed"));
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    let errors = engine.errors_about_deleted(&c).await;
    assert!(errors.is_empty(), "{errors:#?}");
}
