//! A damaged store: engine children whose parent is gone, cycles of parent links, df rows
//! missing their root node or every node. The pass terminates, takes only trees reachable
//! from a real root, and breaks nothing further.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::{bounded_pass, engine_set, rows_exactly, tree_of, PASS_BOUND};
use crate::support::db::{count, df_ids, exec, violations};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};
use crate::support::seed::{orphan, workflow, DAY};

#[tokio::test]
async fn children_whose_parent_is_gone_are_never_deleted_alone() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // An old orphan tree 3 levels deep whose root was removed by hand: every level left
    // has lost its root; the first level has lost its parent.
    c.execute(
        "SELECT df_fixture.orphan_root('57000001', 'Failed', now() - interval '90 days',
                now() - interval '90 days', children => 2, depth => 3)",
        &[],
    )
    .await
    .unwrap();
    exec(
        &c,
        "DELETE FROM _duroxide.executions WHERE instance_id = '57000001';
         DELETE FROM _duroxide.history WHERE instance_id = '57000001';
         DELETE FROM _duroxide.kv_store WHERE instance_id = '57000001';
         DELETE FROM _duroxide.instances WHERE instance_id = '57000001';",
    )
    .await;
    // An expired df row whose engine root is gone but whose children are still there.
    workflow(
        &c,
        "57000002",
        "completed",
        Some("Completed"),
        90.0 * DAY,
        Some(90.0 * DAY),
        2,
    )
    .await;
    exec(
        &c,
        "DELETE FROM _duroxide.executions WHERE instance_id = '57000002';
         DELETE FROM _duroxide.history WHERE instance_id = '57000002';
         DELETE FROM _duroxide.kv_store WHERE instance_id = '57000002';
         DELETE FROM _duroxide.instances WHERE instance_id = '57000002';",
    )
    .await;
    // A chain whose first level is gone: the root is whole, the two levels below hang in
    // the air.
    c.execute(
        "SELECT df_fixture.orphan_root('57000003', 'Completed', now() - interval '90 days',
                now() - interval '90 days', children => 1, depth => 3)",
        &[],
    )
    .await
    .unwrap();
    let middle: String = c
        .query_one(
            "SELECT instance_id FROM _duroxide.instances WHERE parent_instance_id = '57000003'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for table in ["executions", "history", "kv_store", "instances"] {
        c.execute(
            &format!("DELETE FROM _duroxide.{table} WHERE instance_id = $1"),
            &[&middle],
        )
        .await
        .unwrap();
    }
    let stranded: BTreeSet<String> = engine_set(&c)
        .await
        .into_iter()
        .filter(|id| id != "57000003")
        .collect();
    assert_eq!(
        stranded.len(),
        6 + 2 + 2,
        "57000001's six, 57000002's two, 57000003's lower two"
    );
    let broken_before = violations(&c).await;
    assert!(!broken_before.is_empty(), "the population starts broken");

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(
        engine_set(&c).await,
        stranded,
        "only 57000003 (now a lone root) went"
    );
    assert!(
        df_ids(&c).await.is_empty(),
        "57000002 has no engine record: df rows go alone"
    );
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.engine_children_removed, 0);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(violations(&c).await, broken_before, "nothing new broken");
    assert_eq!(bounded_pass(&config_for(&db)).await.instances_removed(), 0);
    assert_eq!(
        engine_set(&c).await,
        stranded,
        "stranded children stay, pass after pass"
    );
}

/// Points `child`'s parent link at `parent`.
async fn link(c: &Client, child: &str, parent: &str) {
    c.execute(
        "UPDATE _duroxide.instances SET parent_instance_id = $2 WHERE instance_id = $1",
        &[&child, &parent],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn cycles_in_parent_links_end_the_pass_and_only_reachable_trees_go() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let old = 90.0 * DAY;
    // a -> b -> a with no root anywhere, and a self-loop.
    orphan(&c, "58cyc-a", "Failed", old, old, 0).await;
    orphan(&c, "58cyc-b", "Failed", old, old, 0).await;
    link(&c, "58cyc-a", "58cyc-b").await;
    link(&c, "58cyc-b", "58cyc-a").await;
    orphan(&c, "58self", "Completed", old, old, 0).await;
    link(&c, "58self", "58self").await;
    // A real orphan root with a chain below it, and a cycle whose ids claim to belong to
    // it (x -> y -> z -> x). Every instance has ONE parent link and a root has none, so no
    // cycle can be reachable downwards from a root: the tree expansion (UNION, so it would
    // end anyway) takes the root's real descendants and leaves the cycle.
    c.execute(
        "SELECT df_fixture.orphan_root('58000001', 'Failed', now() - interval '90 days',
                now() - interval '90 days', children => 2, depth => 2)",
        &[],
    )
    .await
    .unwrap();
    for n in ["x", "y", "z"] {
        orphan(&c, &format!("58000001::1::{n}"), "Failed", old, old, 0).await;
    }
    link(&c, "58000001::1::x", "58000001::1::z").await;
    link(&c, "58000001::1::y", "58000001::1::x").await;
    link(&c, "58000001::1::z", "58000001::1::y").await;
    // A child hanging below the cycle.
    orphan(&c, "58000001::1::x::1::w", "Failed", old, old, 0).await;
    link(&c, "58000001::1::x::1::w", "58000001::1::x").await;
    // Expired df rows whose engine records sit in cycles: their engine record is not a
    // root, so the df row cannot be deleted without leaving (or guessing) engine rows.
    workflow(
        &c,
        "58000002",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        0,
    )
    .await;
    workflow(&c, "58000003", "failed", Some("Failed"), old, Some(old), 0).await;
    link(&c, "58000002", "58000003").await;
    link(&c, "58000003", "58000002").await;
    workflow(
        &c,
        "58000004",
        "cancelled",
        Some("Failed"),
        old,
        Some(old),
        0,
    )
    .await;
    link(&c, "58000004", "58000004").await;
    let reachable = tree_of(&c, "58000001").await;
    assert_eq!(reachable.len(), 5, "root + 2 branches of 2");
    let everything = engine_set(&c).await;

    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 2;
    let report = bounded_pass(&cfg).await;

    let expected: BTreeSet<String> = everything.difference(&reachable).cloned().collect();
    assert_eq!(
        engine_set(&c).await,
        expected,
        "exactly the reachable tree went"
    );
    assert_eq!(df_ids(&c).await, vec!["58000002", "58000003", "58000004"]);
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.engine_children_removed, 4);
    assert_eq!(report.skipped_inconsistent, 3);
    assert_eq!(report.expired_removed.total(), 0);

    // Dry run and a second pass terminate on the same cycles and change nothing.
    let dry = tokio::time::timeout(PASS_BOUND, pass(&cfg, true))
        .await
        .expect("dry run ends");
    assert_eq!(dry.instances_removed(), 0);
    assert_eq!(dry.skipped_inconsistent, 3);
    assert_eq!(bounded_pass(&cfg).await.instances_removed(), 0);
    assert_eq!(engine_set(&c).await, expected);
}

#[tokio::test]
async fn df_rows_missing_their_root_node_or_every_node_are_handled() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The deferred FK df.instances (id, root_node) -> df.nodes makes such a row impossible
    // to commit: drop it in this database only, found by its shape in pg_catalog.
    let fk: String = c
        .query_one(
            "SELECT conname::text FROM pg_constraint
              WHERE conrelid = 'df.instances'::regclass AND contype = 'f'
                AND confrelid = 'df.nodes'::regclass",
            &[],
        )
        .await
        .expect("the instances -> nodes foreign key exists")
        .get(0);
    exec(
        &c,
        &format!("ALTER TABLE df.instances DROP CONSTRAINT {fk}"),
    )
    .await;
    // Expired, root node gone (the JOIN at ordinal 0; nothing else points at it).
    workflow(
        &c,
        "59000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        2,
    )
    .await;
    // Expired, no node at all.
    workflow(
        &c,
        "59000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    // Live, root node gone.
    workflow(
        &c,
        "59000003",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        2,
    )
    .await;
    exec(
        &c,
        "DELETE FROM df.nodes n USING df.instances d
          WHERE n.instance_id = d.id AND n.id = d.root_node AND d.id IN ('59000001', '59000003');
         DELETE FROM df.nodes WHERE instance_id = '59000002';",
    )
    .await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM df.instances d WHERE NOT EXISTS (
                     SELECT 1 FROM df.nodes n WHERE n.instance_id = d.id AND n.id = d.root_node)"
        )
        .await,
        3
    );

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(df_ids(&c).await, vec!["59000003"]);
    assert_eq!(rows_exactly(&c, "59000001").await, 0);
    assert_eq!(rows_exactly(&c, "59000002").await, 0);
    assert_eq!(tree_of(&c, "59000003").await.len(), 3);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert_eq!(report.engine_children_removed, 2);
    assert!(violations(&c).await.is_empty());
}
