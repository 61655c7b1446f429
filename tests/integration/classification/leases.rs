//! Dispatcher leases: a leased instance is skipped without waiting, and its whole tree is
//! put back while the rest of the batch still goes.

use crate::support::db::{count, df_ids, engine_ids, rows_of, violations, PER_INSTANCE_TABLES};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};
use crate::support::seed::{orphan, workflow, DAY};

#[tokio::test]
async fn leased_instances_are_skipped_without_waiting() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "0e000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    orphan(&c, "0e000002", "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
    // Dispatcher leases: an instance lock on the first tree's child, a locked queue item on
    // the orphan.
    c.batch_execute(
        "INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         SELECT instance_id, 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000, (extract(epoch FROM now()) * 1000)::bigint
           FROM _duroxide.instances WHERE instance_id LIKE '0e000001::%';
         INSERT INTO _duroxide.orchestrator_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         VALUES ('0e000002', '{}', now(), now(), 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000);",
    )
    .await
    .unwrap();

    let report = pass(&config_for(&db), false).await;

    assert_eq!(df_ids(&c).await, vec!["0e000001"]);
    assert_eq!(engine_ids(&c).await.len(), 3);
    assert_eq!(report.skipped_locked, 2);

    // Expired leases no longer protect.
    c.batch_execute(
        "UPDATE _duroxide.instance_locks SET locked_until = 0;
         UPDATE _duroxide.orchestrator_queue SET locked_until = 0;",
    )
    .await
    .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.instances_removed(), 2);
    assert_eq!(engine_ids(&c).await.len(), 0);
}

/// A real pass learns of leases from the rows it deletes and rolls those deletes back; the
/// rest of the same batch still goes, and a dry run (which reads leases first) counts the same.
#[tokio::test]
async fn a_lease_puts_back_its_whole_tree_and_the_rest_of_the_batch_still_goes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for id in ["0e100001", "0e100002", "0e100003"] {
        workflow(
            &c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            1,
        )
        .await;
    }
    // No engine record: only its queue items would go.
    workflow(
        &c,
        "0e100004",
        "failed",
        None,
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    // 0e100002: a live lease on its child's worker item, and stale items that the first
    // attempt deletes before it sees the lease; they must come back with the rollback.
    // 0e100004: a live lease on its queue item. 0e100003: only stale items.
    c.batch_execute(
        "INSERT INTO _duroxide.orchestrator_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         VALUES ('0e100002', '{}', now(), now(), 'old', 0), ('0e100003', '{}', now(), now(), 'old', 0),
                ('0e100004', '{}', now(), now(), 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000);
         INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         VALUES ('0e100002', 'old', 0, 0);
         INSERT INTO _duroxide.worker_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         SELECT instance_id, '{}', now(), now(), 'tok', (extract(epoch FROM now()) * 1000)::bigint + 600000
           FROM _duroxide.instances WHERE instance_id LIKE '0e100002::%';",
    )
    .await
    .unwrap();
    let leased_tree_rows = rows_of(&c, "0e100002").await;
    let leased_bare_rows = rows_of(&c, "0e100004").await;

    let dry = pass(&config_for(&db), true).await;
    let report = pass(&config_for(&db), false).await;

    assert_eq!(df_ids(&c).await, vec!["0e100002", "0e100004"]);
    assert_eq!(rows_of(&c, "0e100002").await, leased_tree_rows);
    assert_eq!(rows_of(&c, "0e100004").await, leased_bare_rows);
    assert_eq!(rows_of(&c, "0e100001").await, 0);
    assert_eq!(rows_of(&c, "0e100003").await, 0);
    assert_eq!(report.skipped_locked, 2);
    assert_eq!(report.instances_removed(), 2);
    assert_eq!(report.engine_children_removed, 2);
    assert_eq!(
        report.rows_deleted.get("_duroxide.orchestrator_queue"),
        Some(&1)
    );
    assert_eq!(dry.skipped_locked, report.skipped_locked);
    assert_eq!(dry.instances_removed(), report.instances_removed());
    assert_eq!(dry.rows_deleted, report.rows_deleted);
    assert!(violations(&c).await.is_empty());
}

/// Three expired workflows with children, queue items (stale leases) on every member, and
/// an instance lock on each root: what a batch deletes from every table.
async fn seed_with_queue_items(c: &tokio_postgres::Client, ids: &[&str]) {
    for id in ids {
        workflow(
            c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            1,
        )
        .await;
    }
    c.execute(
        "INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, visible_at, created_at)
         SELECT instance_id, '{}', now(), now() FROM _duroxide.instances
          WHERE split_part(instance_id, '::', 1) = ANY($1);
         ",
        &[&ids],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO _duroxide.worker_queue
                (instance_id, work_item, visible_at, created_at, lock_token, locked_until)
         SELECT instance_id, '{}', now(), now(), 'old', 0 FROM _duroxide.instances
          WHERE split_part(instance_id, '::', 1) = ANY($1)",
        &[&ids],
    )
    .await
    .unwrap();
}

/// The engine's dispatcher picks the oldest visible orchestrator_queue item without locking
/// it, then retries in a loop while that row is locked: measured on the real engine, a
/// batch holding a deleted item made a dispatcher spin and a new workflow wait 5.5 s
/// instead of under 1 s. So every batch deletes those items in its last statement, after
/// every other table's rows, right before COMMIT. Statement triggers log the order.
#[tokio::test]
async fn the_dispatchers_queue_items_go_in_the_batchs_last_statement() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_with_queue_items(&c, &["0e300001", "0e300002", "0e300003"]).await;
    let mut log = String::from(
        "CREATE SCHEMA test_log;
         CREATE SEQUENCE test_log.step;
         CREATE TABLE test_log.deletes (tab text, tx xid8, step bigint, n bigint);
         GRANT USAGE ON SCHEMA test_log TO PUBLIC;
         GRANT INSERT ON test_log.deletes TO PUBLIC;
         GRANT USAGE ON SEQUENCE test_log.step TO PUBLIC;
         CREATE FUNCTION test_log.deleted() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO test_log.deletes
           SELECT TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, pg_current_xact_id(),
                  nextval('test_log.step'), count(*) FROM gone;
           RETURN NULL;
         END $$;",
    );
    for table in PER_INSTANCE_TABLES {
        log.push_str(&format!(
            "CREATE TRIGGER test_log AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone
             FOR EACH STATEMENT EXECUTE FUNCTION test_log.deleted();"
        ));
    }
    c.batch_execute(&log).await.unwrap();

    let report = pass(&config_for(&db), false).await;

    assert_eq!(report.instances_removed(), 3);
    assert!(df_ids(&c).await.is_empty());
    for id in ["0e300001", "0e300002", "0e300003"] {
        assert_eq!(rows_of(&c, id).await, 0, "{id}");
    }
    // Per transaction that deleted queue items: the step of that statement, and the last
    // step of any other table that lost rows.
    let order = c
        .query(
            "SELECT tx::text,
                    max(step) FILTER (WHERE tab = '_duroxide.orchestrator_queue' AND n > 0),
                    max(step) FILTER (WHERE tab <> '_duroxide.orchestrator_queue' AND n > 0),
                    sum(n) FILTER (WHERE tab = '_duroxide.orchestrator_queue')::bigint
               FROM test_log.deletes GROUP BY tx",
            &[],
        )
        .await
        .unwrap();
    let mut queue_items = 0;
    for row in &order {
        let (tx, last_queue, last_other): (String, Option<i64>, Option<i64>) =
            (row.get(0), row.get(1), row.get(2));
        queue_items += row.get::<_, Option<i64>>(3).unwrap_or(0);
        if let (Some(queue), Some(other)) = (last_queue, last_other) {
            assert!(
                queue > other,
                "transaction {tx}: orchestrator_queue deleted at step {queue}, before another table at step {other}"
            );
        }
    }
    assert_eq!(
        queue_items, 6,
        "every member's queue item, in committed batches"
    );
}

/// A lease a dispatcher takes on a queue item after the batch locked its trees (simulated by
/// a trigger that leases 0e400002's item as its instance row goes) is seen by the batch's
/// last statement: the whole batch rolls back, nothing of it is deleted, and the next pass
/// puts only the leased tree back.
#[tokio::test]
async fn a_lease_taken_before_commit_rolls_the_whole_batch_back() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let ids = ["0e400001", "0e400002", "0e400003"];
    seed_with_queue_items(&c, &ids).await;
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for id in ids {
            v.push(rows_of(&c, id).await);
        }
        v
    };
    c.batch_execute(
        "CREATE FUNCTION public.test_late_lease() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF OLD.instance_id = '0e400002' THEN
             UPDATE _duroxide.orchestrator_queue
                SET lock_token = 'late',
                    locked_until = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 600000
              WHERE instance_id = OLD.instance_id;
           END IF;
           RETURN OLD;
         END $$;
         CREATE TRIGGER test_late_lease BEFORE DELETE ON _duroxide.instances
         FOR EACH ROW EXECUTE FUNCTION public.test_late_lease();",
    )
    .await
    .unwrap();

    let report = pass(&config_for(&db), false).await;

    assert_eq!(report.instances_removed(), 0);
    assert_eq!(report.batches_abandoned, 1);
    assert_eq!(report.skipped_abandoned, 3);
    for (id, rows) in ids.iter().zip(&before) {
        assert_eq!(rows_of(&c, id).await, *rows, "{id} is whole");
    }
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM _duroxide.orchestrator_queue WHERE lock_token = 'late'"
        )
        .await,
        0,
        "the trigger's lease rolled back with the batch"
    );

    // Now the dispatcher holds the lease for real: its tree is put back, the rest goes.
    c.batch_execute(
        "DROP TRIGGER test_late_lease ON _duroxide.instances;
         UPDATE _duroxide.orchestrator_queue SET lock_token = 'tok',
                locked_until = (extract(epoch FROM now()) * 1000)::bigint + 600000
          WHERE instance_id = '0e400002';",
    )
    .await
    .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.instances_removed(), 2);
    assert_eq!(report.skipped_locked, 1);
    assert_eq!(df_ids(&c).await, vec!["0e400002"]);
    assert_eq!(rows_of(&c, "0e400002").await, before[1]);
    assert!(violations(&c).await.is_empty());
}
