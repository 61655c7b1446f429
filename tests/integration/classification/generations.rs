//! Pruning old generations (`retention.prune_executions`): of every engine instance that
//! stays (a live loop, a terminal instance still retained, their children), the executions
//! outside the newest `retention.keep_executions` that ended longer than
//! `retention.execution_min_age` ago go, each with its history; nothing else does.

use std::time::Duration;

use tokio_postgres::Client;

use crate::support::db::{count, df_ids, engine_ids, exec, violations};
use crate::support::harness::TestDb;
use df_reconciler_core::report::PassReport;

use crate::support::passes::{comparable, config_for, pass};
use crate::support::seed::DAY;

/// A df workflow whose engine root has `executions` generations (the earlier ones
/// ContinuedAsNew), created `created_ago` seconds ago; `finished_ago` None: still running.
async fn looping(c: &Client, id: &str, engine_status: &str, created_ago: f64, executions: i32) {
    let (df_status, finished_ago) = match engine_status {
        "Running" => ("running", None),
        _ => ("completed", Some(created_ago - 60.0)),
    };
    c.execute(
        "SELECT df_fixture.workflow($1, $2, $3, now() - make_interval(secs => $4),
                now() - make_interval(secs => $5), executions => $6)",
        &[
            &id,
            &df_status,
            &engine_status,
            &created_ago,
            &finished_ago,
            &executions,
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding {id}: {e:?}"));
}

/// An engine child of `parent` (a non-root LOOP) with `executions` generations, running.
async fn looping_child(c: &Client, parent: &str, created_ago: f64, executions: i32) -> String {
    let id = format!("{parent}::1::0000000a");
    c.execute(
        "SELECT df_fixture.engine_instance($1, $2, 1, 'pg_durable::orchestration::execute-subtree',
                'Running', now() - make_interval(secs => $3), NULL, $4, false)",
        &[&id, &parent, &created_ago, &executions],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding {id}: {e:?}"));
    id
}

/// A dry run's report next to the real pass's that followed it: the same, but that the
/// dry run's backlog figure still counts what the real pass then pruned.
fn assert_counted_exactly(dry: &PassReport, real: &PassReport) {
    assert_eq!(
        dry.generations_waiting,
        real.generations_pruned + real.generations_waiting
    );
    let dry = PassReport {
        generations_waiting: real.generations_waiting,
        ..comparable(dry)
    };
    assert_eq!(dry, comparable(real), "the dry run counted exactly");
}

/// The execution ids of `id`, in order.
async fn generations(c: &Client, id: &str) -> Vec<i64> {
    c.query(
        "SELECT execution_id FROM _duroxide.executions WHERE instance_id = $1 ORDER BY 1",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn history_rows(c: &Client) -> i64 {
    count(c, "SELECT count(*) FROM _duroxide.history").await
}

fn range(from: i64, to: i64) -> Vec<i64> {
    (from..=to).collect()
}

#[tokio::test]
async fn old_generations_go_with_their_history_and_the_newest_stay() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Old enough: a live root loop, its live looping child, a retained completed loop.
    looping(&c, "0a000001", "Running", 2.0 * DAY, 30).await;
    let child = looping_child(&c, "0a000001", 2.0 * DAY, 25).await;
    looping(&c, "0a000002", "Completed", DAY, 15).await;
    // Too young, or too few generations.
    looping(&c, "0a000003", "Running", 600.0, 20).await;
    looping(&c, "0a000004", "Completed", DAY, 3).await;
    let kv_before = count(&c, "SELECT count(*) FROM _duroxide.kv_store").await;
    let history_before = history_rows(&c).await;
    let mut cfg = config_for(&db);
    // Batches smaller than one instance's backlog: the keyset goes on inside an instance.
    cfg.pass.batch_size = 7;

    let dry = pass(&cfg, true).await;
    assert_eq!(
        history_rows(&c).await,
        history_before,
        "a dry run deletes nothing"
    );
    let report = pass(&cfg, false).await;

    assert_eq!(report.generations_pruned, 20 + 15 + 5);
    assert_eq!(report.generations_skipped, 0);
    assert_eq!(
        report.rows_by_reason.pruned["_duroxide.executions"],
        report.generations_pruned
    );
    // Six history rows per generation in the fixture.
    assert_eq!(report.rows_by_reason.pruned["_duroxide.history"], 6 * 40);
    assert_eq!(history_rows(&c).await, history_before - 6 * 40);
    assert_counted_exactly(&dry, &report);
    assert_eq!(report.instances_removed(), 0);

    assert_eq!(generations(&c, "0a000001").await, range(21, 30));
    assert_eq!(generations(&c, &child).await, range(16, 25));
    assert_eq!(generations(&c, "0a000002").await, range(6, 15));
    assert_eq!(generations(&c, "0a000003").await, range(1, 20));
    assert_eq!(generations(&c, "0a000004").await, range(1, 3));
    // The instances themselves, their df rows and their instance-scoped state stay.
    assert_eq!(
        df_ids(&c).await,
        ["0a000001", "0a000002", "0a000003", "0a000004"]
    );
    assert_eq!(engine_ids(&c).await.len(), 5);
    assert_eq!(
        count(&c, "SELECT count(*) FROM _duroxide.kv_store").await,
        kv_before
    );
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    assert!(report.drift_counted);
    assert_eq!(report.generations_waiting, 0);

    // Idempotent: nothing left to prune.
    let again = pass(&cfg, false).await;
    assert_eq!(again.generations_pruned, 0);
    assert!(again.rows_deleted.is_empty(), "{:?}", again.rows_deleted);
}

/// A ContinuedAsNew generation has no completed_at: it ended when its successor started.
#[tokio::test]
async fn a_continued_generation_ended_when_its_successor_started() {
    let db = TestDb::new().await;
    let c = db.client().await;
    looping(&c, "0a000011", "Running", 2.0 * DAY, 15).await;
    // Generations 3.. started half an hour ago: generation 1 ended two days ago, generation
    // 2 half an hour ago.
    exec(
        &c,
        "UPDATE _duroxide.executions SET started_at = now() - interval '30 minutes'
          WHERE instance_id = '0a000011' AND execution_id >= 3",
    )
    .await;
    let cfg = config_for(&db);

    let report = pass(&cfg, false).await;
    assert_eq!(report.generations_pruned, 1);
    assert_eq!(generations(&c, "0a000011").await, range(2, 15));
    // Four more are outside the newest ten but too young.
    assert_eq!(report.generations_waiting, 0);

    let mut short = cfg.clone();
    short.retention.allow_short_retention = true;
    short.retention.execution_min_age = Duration::from_secs(600);
    let dry = pass(&short, true).await;
    assert_eq!(dry.generations_pruned, 4);
    assert_eq!(pass(&short, false).await.generations_pruned, 4);
    assert_eq!(generations(&c, "0a000011").await, range(6, 15));
}

/// A leased instance's generations wait for a later pass without it waiting for them; a
/// generation a worker queue item still references stays until the item is gone.
#[tokio::test]
async fn leased_instances_and_referenced_generations_wait() {
    let db = TestDb::new().await;
    let c = db.client().await;
    looping(&c, "0a000021", "Running", 2.0 * DAY, 12).await;
    looping(&c, "0a000022", "Running", 2.0 * DAY, 12).await;
    exec(
        &c,
        "INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         VALUES ('0a000021', 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000,
                 (extract(epoch FROM now()) * 1000)::bigint);
         INSERT INTO _duroxide.worker_queue (work_item, visible_at, created_at, instance_id,
                                             execution_id, activity_id)
         VALUES ('{}', now(), now(), '0a000022', 1, 4);",
    )
    .await;
    let cfg = config_for(&db);

    let dry = pass(&cfg, true).await;
    let report = pass(&cfg, false).await;
    assert_counted_exactly(&dry, &report);
    assert_eq!(report.generations_skipped, 2, "the leased instance's two");
    assert_eq!(report.generations_pruned, 1);
    assert_eq!(generations(&c, "0a000021").await, range(1, 12));
    assert_eq!(generations(&c, "0a000022").await, {
        let mut kept = vec![1];
        kept.extend(range(3, 12));
        kept
    });
    assert_eq!(report.generations_waiting, 2, "the leased instance's two");

    exec(
        &c,
        "UPDATE _duroxide.instance_locks SET locked_until = 0;
         DELETE FROM _duroxide.worker_queue;",
    )
    .await;
    let report = pass(&cfg, false).await;
    assert_eq!(report.generations_pruned, 3);
    assert_eq!(generations(&c, "0a000021").await, range(3, 12));
    assert_eq!(generations(&c, "0a000022").await, range(3, 12));
}

/// The current execution stays whatever keep_executions says, a Running execution stays
/// even where it is not the current one, and `prune_executions = false` prunes nothing.
#[tokio::test]
async fn the_current_and_running_executions_stay_and_pruning_can_be_off() {
    let db = TestDb::new().await;
    let c = db.client().await;
    looping(&c, "0a000031", "Running", 2.0 * DAY, 8).await;
    looping(&c, "0a000032", "Completed", DAY, 8).await;
    // Hostile: a non-current execution still Running.
    exec(
        &c,
        "UPDATE _duroxide.executions SET status = 'Running'
          WHERE instance_id = '0a000032' AND execution_id = 4",
    )
    .await;
    let mut off = config_for(&db);
    off.retention.prune_executions = false;
    off.retention.keep_executions = 1;
    let report = pass(&off, false).await;
    assert_eq!(report.generations_pruned, 0);
    assert_eq!(report.generations_waiting, 0);
    assert_eq!(generations(&c, "0a000031").await, range(1, 8));

    let mut one = off.clone();
    one.retention.prune_executions = true;
    let report = pass(&one, false).await;
    assert_eq!(report.generations_pruned, 7 + 6);
    assert_eq!(generations(&c, "0a000031").await, [8]);
    assert_eq!(generations(&c, "0a000032").await, [4, 8]);
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
}

/// An expired instance goes whole in phase 1; pruning never touches what phase 1 takes
/// and never keeps it from going (the report counts it once, as expired).
#[tokio::test]
async fn an_expired_loop_goes_whole_not_pruned() {
    let db = TestDb::new().await;
    let c = db.client().await;
    looping(&c, "0a000041", "Completed", 60.0 * DAY, 20).await;
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.instances_removed(), 1);
    assert_eq!(report.generations_pruned, 0);
    assert!(engine_ids(&c).await.is_empty());
}

/// A generation whose execution row another session holds is skipped, never waited for;
/// the rest of the batch goes, and the held one goes once released.
#[tokio::test]
async fn held_generations_are_skipped_without_waiting() {
    let db = TestDb::new().await;
    let c = db.client().await;
    looping(&c, "0a000051", "Running", 2.0 * DAY, 13).await;
    let holder = db.client().await;
    exec(
        &holder,
        "BEGIN;
         SELECT 1 FROM _duroxide.executions
          WHERE instance_id = '0a000051' AND execution_id = 2 FOR UPDATE;",
    )
    .await;
    let mut cfg = config_for(&db);
    // A pass that waited would hit this and fail; skipping must make it succeed.
    cfg.pass.lock_timeout = Duration::from_secs(30);

    let report = tokio::time::timeout(Duration::from_secs(20), pass(&cfg, false))
        .await
        .expect("the pass never waits on a held generation");
    assert_eq!(report.generations_skipped, 1);
    assert_eq!(report.generations_pruned, 2);
    assert_eq!(generations(&c, "0a000051").await, {
        let mut kept = vec![2];
        kept.extend(range(4, 13));
        kept
    });
    exec(&holder, "COMMIT").await;
    assert_eq!(pass(&cfg, false).await.generations_pruned, 1);
    assert_eq!(generations(&c, "0a000051").await, range(4, 13));
}

/// The generations `explain` says the next pass prunes, per member of `id`'s engine tree.
async fn explained_prunable(cfg: &df_reconciler_core::config::Config, id: &str) -> Vec<i64> {
    let pool = df_reconciler_core::db::build_pool(cfg).expect("pool builds");
    let e = df_reconciler_core::pass::explain::explain(&pool, cfg, id)
        .await
        .expect("explain succeeds")
        .expect("the instance exists");
    pool.close();
    e.engine_tree
        .iter()
        .map(|m| m.prunable_generations.expect("pruning is on"))
        .collect()
}

#[tokio::test]
async fn a_rules_keep_executions_and_min_age_apply_to_its_tree_and_explain_agrees() {
    use df_reconciler_core::rules::RetentionRule;
    let db = TestDb::new().await;
    let c = db.client().await;
    // Rule "keep-two" (2 generations) over a root and its looping child; rule "fast"
    // (1 minute) over a loop whose generations are 10 minutes old; a third loop under the
    // top-level keys (10 generations, 1 hour).
    looping(&c, "0b000001", "Running", 2.0 * DAY, 30).await;
    let child = looping_child(&c, "0b000001", 2.0 * DAY, 25).await;
    looping(&c, "0b000002", "Running", 600.0, 20).await;
    looping(&c, "0b000003", "Running", 2.0 * DAY, 30).await;
    for (id, label) in [
        ("0b000001", "keep-two-a"),
        ("0b000002", "fast-a"),
        ("0b000003", "other"),
    ] {
        exec(
            &c,
            &format!("UPDATE df.instances SET label = '{label}' WHERE id = '{id}'"),
        )
        .await;
    }
    let mut cfg = config_for(&db);
    cfg.retention.allow_short_retention = true;
    cfg.retention.rules = vec![
        RetentionRule {
            name: "keep-two".into(),
            label: Some("keep-two-*".into()),
            keep_executions: Some(2),
            ..RetentionRule::default()
        },
        RetentionRule {
            name: "fast".into(),
            label: Some("fast-*".into()),
            execution_min_age: Some(Duration::from_secs(60)),
            ..RetentionRule::default()
        },
    ];
    cfg.pass.batch_size = 9;

    assert_eq!(explained_prunable(&cfg, "0b000001").await, vec![28, 23]);
    assert_eq!(explained_prunable(&cfg, "0b000002").await, vec![10]);
    assert_eq!(explained_prunable(&cfg, "0b000003").await, vec![20]);
    let dry = pass(&cfg, true).await;
    let report = pass(&cfg, false).await;
    assert_counted_exactly(&dry, &report);

    assert_eq!(report.generations_pruned, 28 + 23 + 10 + 20);
    assert_eq!(generations(&c, "0b000001").await, range(29, 30));
    assert_eq!(generations(&c, &child).await, range(24, 25));
    assert_eq!(generations(&c, "0b000002").await, range(11, 20));
    assert_eq!(generations(&c, "0b000003").await, range(21, 30));
    assert_eq!(report.generations_waiting, 0);
    assert_eq!(explained_prunable(&cfg, "0b000001").await, vec![0, 0]);
    let again = pass(&cfg, false).await;
    assert_eq!(again.generations_pruned, 0, "idempotent");
    assert!(violations(&c).await.is_empty());
}
