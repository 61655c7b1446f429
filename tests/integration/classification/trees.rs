//! The settled rule on whole trees: a root can end while its children still run (a RACE's
//! loser is cancelled after the race returns, a failed root's children after its own
//! completion). Such a tree is unsettled: kept whole, however far past its window or the
//! hard cap, and counted (a df row's) or simply kept (an orphan's), until every member has
//! ended; then it goes whole.

use std::time::Duration;

use crate::support::db::{count, engine_ids, engine_statuses, exec, rows_of, violations};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};
use crate::support::seed::{finish_instance, workflow, DAY};

/// What makes the df rows of [`an_ended_root_with_a_live_child_is_kept_whole_until_every_child_ended`]
/// deletable.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The hard cap alone: 0, every terminal row is over it (default 30-day window).
    Cap,
    /// A window alone: 1 day, the rows ended 2 days ago.
    Window,
}

/// Ids of the live descendants under `root`.
async fn live_members(c: &tokio_postgres::Client, root: &str) -> Vec<String> {
    engine_statuses(c, root)
        .await
        .into_iter()
        .filter(|(_, status)| status != "Completed" && status != "Failed")
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn an_ended_root_with_a_live_child_is_kept_whole_until_every_child_ended() {
    for limit in [Limit::Cap, Limit::Window] {
        let db = TestDb::new().await;
        let c = db.client().await;
        // A RACE that returned: two children, both still Running (the loser being
        // cancelled, a CancelInstance item queued for it).
        exec(
            &c,
            "SELECT df_fixture.workflow('a2000001', 'completed', 'Completed',
                    now() - interval '3 days', now() - interval '2 days', children => 2,
                    child_status => 'Running')",
        )
        .await;
        // A root that failed: its child and grandchild, loops, are between generations.
        exec(
            &c,
            "SELECT df_fixture.workflow('a2000002', 'failed', 'Failed',
                    now() - interval '3 days', now() - interval '2 days', children => 1,
                    depth => 2, child_status => 'ContinuedAsNew')",
        )
        .await;
        // Settled: goes at once.
        workflow(
            &c,
            "a2000003",
            "completed",
            Some("Completed"),
            3.0 * DAY,
            Some(2.0 * DAY),
            1,
        )
        .await;
        let mut cfg = config_for(&db);
        match limit {
            Limit::Cap => cfg.retention.hard_cap = 0,
            Limit::Window => cfg.retention.window = Duration::from_secs(86_400),
        }
        let live_1 = live_members(&c, "a2000001").await;
        let live_2 = live_members(&c, "a2000002").await;
        assert_eq!((live_1.len(), live_2.len()), (2, 2), "{limit:?}");
        let before = [rows_of(&c, "a2000001").await, rows_of(&c, "a2000002").await];

        for dry_run in [true, false] {
            let report = pass(&cfg, dry_run).await;
            assert_eq!(report.skipped_unsettled, 2, "{limit:?} {dry_run}\n{report}");
            assert_eq!(
                report.instances_removed(),
                1,
                "{limit:?} {dry_run}\n{report}"
            );
            assert_eq!(report.engine_children_removed, 1, "{limit:?} {dry_run}");
            assert_eq!(
                [rows_of(&c, "a2000001").await, rows_of(&c, "a2000002").await],
                before,
                "both unsettled trees whole, df rows and engine rows ({limit:?} {dry_run})"
            );
        }
        assert_eq!(rows_of(&c, "a2000003").await, 0, "{limit:?}");

        // One child of each ends: still unsettled.
        finish_instance(&c, &live_1[0], "Completed").await;
        finish_instance(&c, &live_2[1], "Failed").await;
        let report = pass(&cfg, false).await;
        assert_eq!(report.skipped_unsettled, 2, "{limit:?}\n{report}");
        assert_eq!(report.instances_removed(), 0, "{limit:?}\n{report}");

        // Every child ended (the RACE's loser cancelled: Failed): both trees go whole.
        finish_instance(&c, &live_1[1], "Failed").await;
        finish_instance(&c, &live_2[0], "Completed").await;
        let report = pass(&cfg, false).await;
        assert_eq!(report.skipped_unsettled, 0, "{limit:?}\n{report}");
        assert_eq!(report.instances_removed(), 2, "{limit:?}\n{report}");
        assert_eq!(report.engine_children_removed, 4, "{limit:?}\n{report}");
        for id in ["a2000001", "a2000002"] {
            assert_eq!(rows_of(&c, id).await, 0, "{id} {limit:?}");
        }
        assert!(violations(&c).await.is_empty(), "{limit:?}");
    }
}

#[tokio::test]
async fn an_orphan_whose_root_ended_before_its_children_is_kept_until_they_end() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Rolled-back starts long ago whose roots failed with children still running, or
    // between generations; and one whose tree has ended.
    for (id, child) in [("0e000001", "Running"), ("0e000002", "ContinuedAsNew")] {
        c.execute(
            "SELECT df_fixture.orphan_root($1, 'Failed', now() - interval '60 days',
                    now() - interval '59 days', children => 1, depth => 2, child_status => $2)",
            &[&id, &child],
        )
        .await
        .unwrap();
    }
    exec(
        &c,
        "SELECT df_fixture.orphan_root('0e000003', 'Failed', now() - interval '60 days',
                now() - interval '59 days', children => 1, depth => 2)",
    )
    .await;
    let before = engine_ids(&c).await;
    assert_eq!(before.len(), 9);

    for dry_run in [true, false] {
        let report = pass(&config_for(&db), dry_run).await;
        assert_eq!(report.orphans_reclaimed, 1, "dry run: {dry_run}\n{report}");
        assert_eq!(report.engine_children_removed, 2, "dry run: {dry_run}");
        // An unsettled orphan tree is kept, not counted as skipped; its root has ended,
        // so it is no root running without a df row either.
        assert_eq!(report.skipped_unsettled, 0, "dry run: {dry_run}");
        assert_eq!(report.running_without_df_row, 0, "dry run: {dry_run}");
    }
    let kept: Vec<String> = before
        .iter()
        .filter(|id| !id.starts_with("0e000003"))
        .cloned()
        .collect();
    assert_eq!(engine_ids(&c).await, kept, "both unsettled trees whole");

    for id in ["0e000001", "0e000002"] {
        for member in live_members(&c, id).await {
            finish_instance(&c, &member, "Failed").await;
        }
    }
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.orphans_reclaimed, 2, "{report}");
    assert_eq!(report.engine_children_removed, 4, "{report}");
    assert!(engine_ids(&c).await.is_empty());
    assert!(violations(&c).await.is_empty());
}

/// A tree the batch will not delete is never locked, so a dispatcher acknowledging one of
/// its instances does not wait for the rest of the batch: while a batch that deletes a
/// settled tree is held mid-way (a trigger sleeps in its history delete), another session
/// locks the unsettled tree's instances at once (NOWAIT), root and running child alike.
#[tokio::test]
async fn a_tree_the_batch_keeps_is_never_locked_by_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(
        &c,
        "SELECT df_fixture.workflow('a3000001', 'completed', 'Completed',
                now() - interval '40 days', now() - interval '39 days', children => 1,
                child_status => 'Running')",
    )
    .await;
    workflow(
        &c,
        "a3000002",
        "completed",
        Some("Completed"),
        40.0 * DAY,
        Some(39.0 * DAY),
        1,
    )
    .await;
    exec(
        &c,
        "CREATE FUNCTION public.hold_batch() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(4); RETURN NULL; END $$;
         CREATE TRIGGER hold_batch BEFORE DELETE ON _duroxide.history
           FOR EACH STATEMENT EXECUTE FUNCTION public.hold_batch()",
    )
    .await;
    let cfg = config_for(&db);
    let batch = tokio::spawn(async move { pass(&cfg, false).await });
    // The batch is inside its history delete once the trigger sleeps.
    crate::support::harness::wait_until("the batch reaches its history delete", Duration::from_secs(20), || async {
        count(
            &c,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()",
        )
        .await
            == 1
    })
    .await;
    let probe = db.client().await;
    let locked = probe
        .query(
            "SELECT instance_id FROM _duroxide.instances
              WHERE instance_id LIKE 'a3000001%' FOR UPDATE NOWAIT",
            &[],
        )
        .await;
    assert!(
        locked.is_ok(),
        "the kept tree is locked by the batch: {:?}",
        locked.err()
    );
    assert_eq!(locked.unwrap().len(), 2);
    drop(probe);
    let report = batch.await.unwrap();
    assert_eq!(report.skipped_unsettled, 1, "{report}");
    assert_eq!(report.expired_removed.total(), 1, "{report}");
    let left = engine_ids(&c).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|id| id.starts_with("a3000001")), "{left:?}");
    assert!(violations(&c).await.is_empty());
}
