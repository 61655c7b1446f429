//! `explain` against the pass: for an instance of every row of the classification table
//! (and the rules' cap), the verdict `explain` gives is what the next pass then does, and
//! its reason is the row's.

use df_reconciler_core::db;
use df_reconciler_core::pass::explain::{explain, Explanation};
use df_reconciler_core::rules::RetentionRule;

use crate::support::db::{df_ids, engine_ids, exec};
use crate::support::harness::{connect, TestDb};
use crate::support::passes::{config_for, pass};
use crate::support::seed::{orphan, workflow, DAY, HOUR};

async fn explained(cfg: &df_reconciler_core::config::Config, id: &str) -> Option<Explanation> {
    let pool = db::build_pool(cfg).expect("pool builds");
    let e = explain(&pool, cfg, id).await.expect("explain succeeds");
    pool.close();
    e
}

#[tokio::test]
async fn the_verdict_of_every_classification_row_is_what_the_pass_does() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let old = 60.0 * DAY;
    // df terminal, expired, engine root terminal (with a child).
    workflow(
        &c,
        "e0000001",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        1,
    )
    .await;
    // df terminal, expired, no engine record.
    workflow(&c, "e0000002", "failed", None, old, Some(old), 0).await;
    // df terminal, expired, engine root still Running / between generations.
    workflow(&c, "e0000003", "failed", Some("Running"), old, Some(old), 0).await;
    workflow(
        &c,
        "e0000013",
        "cancelled",
        Some("ContinuedAsNew"),
        old,
        Some(old),
        0,
    )
    .await;
    // df terminal, expired, root ended, a descendant still Running.
    exec(
        &c,
        "SELECT df_fixture.workflow('e0000004', 'completed', 'Completed',
                now() - interval '60 days', now() - interval '60 days', children => 2,
                child_status => 'Running')",
    )
    .await;
    // df terminal within window and cap (with a child).
    workflow(
        &c,
        "e0000005",
        "completed",
        Some("Completed"),
        2.0 * DAY,
        Some(2.0 * DAY),
        1,
    )
    .await;
    // df live, any age; df live with its engine root ended long ago.
    workflow(&c, "e0000006", "running", Some("Running"), old, None, 0).await;
    workflow(
        &c,
        "e0000007",
        "running",
        Some("Completed"),
        old,
        Some(old),
        0,
    )
    .await;
    exec(
        &c,
        "UPDATE df.instances SET completed_at = NULL WHERE id = 'e0000007'",
    )
    .await;
    // Orphans: old, young, running.
    orphan(&c, "e0000008", "Completed", old, old, 1).await;
    orphan(&c, "e0000009", "Failed", 0.2 * HOUR, 0.1 * HOUR, 0).await;
    orphan(&c, "e000000a", "Running", old, old, 0).await;
    // Expired but leased by a dispatcher.
    workflow(
        &c,
        "e000000b",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        0,
    )
    .await;
    exec(
        &c,
        "INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         VALUES ('e000000b', 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000,
                 (extract(epoch FROM now()) * 1000)::bigint)",
    )
    .await;
    // Expired, but its engine record is no root (a parent link).
    workflow(&c, "e000000c", "failed", Some("Failed"), old, Some(old), 0).await;
    exec(
        &c,
        "UPDATE _duroxide.instances SET parent_instance_id = 'ffffffff' WHERE instance_id = 'e000000c'",
    )
    .await;
    // A rule's own cap of 1: the older of two young rows goes, the newer stays.
    workflow(
        &c,
        "e000000d",
        "completed",
        Some("Completed"),
        3.0 * DAY,
        Some(3.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "e000000e",
        "completed",
        Some("Completed"),
        1.0 * DAY,
        Some(1.0 * DAY),
        0,
    )
    .await;
    exec(
        &c,
        "UPDATE df.instances SET label = 'cap-me' WHERE id IN ('e000000d', 'e000000e')",
    )
    .await;
    // An orphan created after the oldest open transaction began: held by that transaction.
    let holder = connect(&db.dsn).await;
    exec(&holder, "BEGIN; SELECT pg_catalog.txid_current()").await;
    orphan(&c, "e000000f", "Completed", 0.0, old, 0).await;

    let children = |root: &str| {
        let c = &c;
        let root = root.to_owned();
        async move {
            engine_ids(c)
                .await
                .into_iter()
                .filter(|id| id.starts_with(&format!("{root}::")))
                .collect::<Vec<_>>()
        }
    };
    let removed_child = children("e0000001").await[0].clone();
    let kept_child = children("e0000005").await[0].clone();
    let orphan_child = children("e0000008").await[0].clone();
    let running_child = children("e0000004").await[0].clone();

    let mut cfg = config_for(&db);
    cfg.retention.rules = vec![RetentionRule {
        name: "capme".into(),
        label: Some("cap-*".into()),
        hard_cap: Some(1),
        ..RetentionRule::default()
    }];
    let expected: Vec<(&str, bool, &str)> = vec![
        ("e0000001", true, "expired"),
        (&removed_child, true, "child"),
        ("e0000002", true, "expired"),
        ("e0000003", false, "unsettled"),
        ("e0000013", false, "unsettled"),
        ("e0000004", false, "descendant_running"),
        (&running_child, false, "child"),
        ("e0000005", false, "young"),
        (&kept_child, false, "child"),
        ("e0000006", false, "live"),
        ("e0000007", false, "live_engine_ended"),
        ("e0000008", true, "orphan"),
        (&orphan_child, true, "child"),
        ("e0000009", false, "orphan_young"),
        ("e000000a", false, "orphan_live"),
        ("e000000b", false, "leased"),
        ("e000000c", false, "inconsistent"),
        ("e000000d", true, "capped"),
        ("e000000e", false, "young"),
        ("e000000f", false, "orphan_open_transaction"),
    ];
    let mut verdicts = Vec::new();
    for (id, _, _) in &expected {
        let e = explained(&cfg, id)
            .await
            .unwrap_or_else(|| panic!("{id} not found"));
        verdicts.push((e.instance_id.clone(), e.verdict.removed, e.verdict.reason));
    }
    let wanted: Vec<(String, bool, &str)> = expected
        .iter()
        .map(|(id, removed, reason)| (id.to_string(), *removed, *reason))
        .collect();
    assert_eq!(verdicts, wanted, "explain's verdicts");

    let dry = pass(&cfg, true).await;
    let report = pass(&cfg, false).await;
    let (dfs, engines) = (df_ids(&c).await, engine_ids(&c).await);
    for (id, removed, reason) in &wanted {
        let present = dfs.contains(id) || engines.contains(id);
        assert_eq!(
            present, !removed,
            "{id}: explain said removed = {removed} ({reason}); the pass disagrees\n{report}"
        );
    }
    assert_eq!(
        dry.instances_removed(),
        report.instances_removed(),
        "the dry run agrees too"
    );
    exec(&holder, "ROLLBACK").await;
}

#[tokio::test]
async fn an_id_in_neither_store_is_not_found_and_the_cli_exits_1() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "e1000001",
        "failed",
        Some("Failed"),
        2.0 * DAY,
        Some(2.0 * DAY),
        0,
    )
    .await;
    let cfg = config_for(&db);
    assert!(explained(&cfg, "e1000002").await.is_none());

    use crate::support::process::{daemon, text};
    let out = daemon(&db.dsn)
        .args(["explain", "e1000002"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = daemon(&db.dsn)
        .args(["explain", "e1000001", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verdict"]["removed"], false);
    assert_eq!(json["verdict"]["reason"], "young");
    assert_eq!(json["rule"], "default");
    // A failed df row has no completed_at of its own: the engine root's completion.
    assert_eq!(json["terminal_at_source"], "engine completed_at");
    assert_eq!(json["cap"]["rank"], 1);
    assert_eq!(json["engine_tree"][0]["status"], "Failed");
    let out = daemon(&db.dsn)
        .args(["explain", "e1000001"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("e1000001: KEPT (young)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(df_ids(&c).await, ["e1000001"], "explain deletes nothing");
}
