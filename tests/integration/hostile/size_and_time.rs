//! Size and time: an engine tree of 6001 instances and a chain 300 deep, a df graph of
//! 4000 nodes, a commit whose deferred checks outlast the statement timeout, and
//! timestamps in the future.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{bounded_pass, engine_set, rows_exactly, tree_of, YEAR};
use crate::support::db::{count, df_ids, engine_ids, exec, violations};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, config_without_pruning};
use crate::support::seed::{orphan, workflow, DAY};

#[tokio::test]
async fn a_huge_tree_goes_whole_in_one_batch() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // An expired workflow whose engine tree has 3000 sub-orchestrations, each two levels
    // deep (6001 engine instances, ~42,000 rows), and an orphan that is one chain 300
    // levels deep. The df graph is kept small here (see the next test for a big one).
    exec(
        &c,
        "SELECT df_fixture.workflow('5a000001', 'completed', NULL, now() - interval '60 days',
                now() - interval '60 days');
         SELECT df_fixture.engine_tree('5a000001', 'Completed', now() - interval '60 days',
                now() - interval '60 days', 3000, 2, 1, true);
         SELECT df_fixture.orphan_root('5a000002', 'Failed', now() - interval '60 days',
                now() - interval '60 days', children => 1, depth => 300);
         SELECT df_fixture.workflow('5a000003', 'completed', 'Completed', now() - interval '1 day',
                now() - interval '1 day', children => 2);",
    )
    .await;
    assert_eq!(tree_of(&c, "5a000001").await.len(), 6001);
    assert_eq!(tree_of(&c, "5a000002").await.len(), 301);
    let history = count(&c, "SELECT count(*) FROM _duroxide.history").await;
    assert!(violations(&c).await.is_empty());

    // One root per batch: each tree is still one transaction, whatever its size.
    let mut cfg = config_without_pruning(&db);
    cfg.pass.batch_size = 1;
    let began = Instant::now();
    let report = bounded_pass(&cfg).await;
    let took = began.elapsed();

    assert_eq!(df_ids(&c).await, vec!["5a000003"]);
    assert_eq!(engine_set(&c).await, tree_of(&c, "5a000003").await);
    assert_eq!(report.batches, 2, "one batch per tree");
    assert_eq!(report.batches_abandoned, 0);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.engine_children_removed, 6000 + 300);
    assert_eq!(report.rows_deleted["_duroxide.instances"], 6001 + 301);
    assert_eq!(report.rows_deleted["_duroxide.worker_queue"], 6001);
    assert_eq!(
        report.rows_deleted["_duroxide.history"],
        history as u64 - 3 * 6
    );
    assert!(violations(&c).await.is_empty());
    eprintln!("6001 + 301 engine instances deleted in {took:?}");
}

/// A workflow whose df graph is big: 1000 branches two levels deep, 3999 nodes, 2001
/// engine instances.
async fn seed_big_graph(c: &Client, id: &str) {
    c.execute(
        "SELECT df_fixture.workflow($1, 'completed', 'Completed', now() - interval '60 days',
                now() - interval '60 days', children => 1000, depth => 2)",
        &[&id],
    )
    .await
    .unwrap();
}

/// pg_durable has no index on df.nodes (instance_id, left_node) or (instance_id,
/// right_node), the referencing side of the two deferred self-referencing foreign keys: at
/// COMMIT each deleted node's check scans every node of its instance, so deleting one
/// instance costs O(nodes^2) (measured: 1000 branches 3.4 s, 2000 15.5 s, 3000 45 s; with
/// both indexes 3000 branches take 0.6 s).
#[tokio::test]
async fn a_big_df_graph_goes_whole_in_one_batch() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_big_graph(&c, "5d000001").await;
    let nodes = count(&c, "SELECT count(*) FROM df.nodes").await;
    assert!(nodes > 3000, "{nodes}");

    let began = Instant::now();
    let report = bounded_pass(&config_for(&db)).await;
    let took = began.elapsed();

    assert!(df_ids(&c).await.is_empty());
    assert!(engine_ids(&c).await.is_empty());
    assert_eq!(report.batches, 1);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.engine_children_removed, 2000);
    assert_eq!(report.rows_deleted["df.nodes"], nodes as u64);
    assert!(violations(&c).await.is_empty());
    eprintln!("{nodes} nodes of one instance deleted in {took:?}");
}

/// The deferred foreign-key checks run inside COMMIT, and PostgreSQL disarms
/// statement_timeout before it commits: the batch's server-side bound does not cover
/// them. Here a 300 ms statement_timeout does not stop a ~3 s COMMIT. Beyond the
/// client-side bound (2 x statement_timeout + 5 s) the pass fails while the server still
/// commits. `SET CONSTRAINTS ALL IMMEDIATE` as the batch's last statement would run the
/// checks under the timeout.
#[tokio::test]
async fn a_batch_commit_is_bounded_by_the_statement_timeout() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_big_graph(&c, "5e000001").await;
    workflow(
        &c,
        "5e000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let before = rows_exactly(&c, "5e000001").await;
    let tree = tree_of(&c, "5e000001").await;

    let mut cfg = config_for(&db);
    cfg.pass.statement_timeout = Duration::from_millis(300);
    cfg.pass.batch_size = 1;
    let report = bounded_pass(&cfg).await;

    assert_eq!(
        rows_exactly(&c, "5e000001").await,
        before,
        "rolled back whole"
    );
    assert_eq!(tree_of(&c, "5e000001").await, tree);
    assert_eq!(df_ids(&c).await, vec!["5e000001"], "the small one went");
    assert_eq!(report.batches_abandoned, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn timestamps_in_the_future_never_expire() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Created and finished next year.
    workflow(
        &c,
        "5b000001",
        "completed",
        Some("Completed"),
        -YEAR,
        Some(-YEAR - DAY),
        1,
    )
    .await;
    workflow(&c, "5b000002", "cancelled", None, -YEAR, None, 0).await;
    // Created long ago, finished (by the engine's clock) next year.
    workflow(
        &c,
        "5b000003",
        "failed",
        Some("Failed"),
        90.0 * DAY,
        Some(-YEAR),
        0,
    )
    .await;
    // Orphans from the future, and an old one whose completion lies in the future.
    orphan(&c, "5b000004", "Failed", -YEAR, -YEAR, 1).await;
    orphan(&c, "5b000005", "Completed", 90.0 * DAY, -YEAR, 0).await;
    // A row that expires in the ordinary way, and one that is merely young.
    workflow(
        &c,
        "5b000006",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "5b000007",
        "completed",
        Some("Completed"),
        2.0 * DAY,
        Some(2.0 * DAY),
        0,
    )
    .await;
    let future_engine: BTreeSet<String> = engine_set(&c)
        .await
        .into_iter()
        .filter(|id| !id.starts_with("5b000006") && !id.starts_with("5b000007"))
        .collect();

    let report = bounded_pass(&config_for(&db)).await;
    assert_eq!(
        df_ids(&c).await,
        vec!["5b000001", "5b000002", "5b000003", "5b000007"]
    );
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(report.orphans_waiting, 2, "the future orphans wait");
    assert!(violations(&c).await.is_empty());

    // For the hard cap the future is newest: with room for three, the young row from the
    // past is the one over the cap.
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 3;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["5b000001", "5b000002", "5b000003"]);
    assert_eq!(report.capped_removed, 1);
    let mut expected = future_engine;
    expected.retain(|id| !id.starts_with("5b000007"));
    assert_eq!(engine_set(&c).await, expected);
    assert!(violations(&c).await.is_empty());
}
