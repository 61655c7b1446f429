//! Pacing against real load, on the imitation of both stores: the engine's pollers and a
//! backlog's old queue items are no load; fresh engine work, a lease in force and a
//! session waiting for a lock are, and an engine behind its work makes a pass wait until
//! it has caught up. An application's own statements are load too
//! ([`super::concurrency`]).

use std::time::Duration;

use df_reconciler_core::config::Config;
use df_reconciler_core::report::PassReport;
use tokio_postgres::Client;

use crate::support::db::{count, exec};
use crate::support::harness::{wait_until, TestDb};
use crate::support::passes::{config_for, pass};
use crate::support::seed::{backlog, workflow, DAY};

/// A live instance the tests give work to; the passes never touch it.
const LIVE: &str = "5a000001";

/// Six expired workflows with ids `{prefix}00..05`: three batches or more at batch size 2.
async fn seed_expired(c: &Client, prefix: &str) {
    for i in 0..6 {
        workflow(
            c,
            &format!("{prefix}{i:02}"),
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(59.0 * DAY),
            0,
        )
        .await;
    }
}

/// Batch size 2, batches at most 10% of the time while the database is at work.
fn paced(db: &TestDb) -> Config {
    let mut cfg = config_for(db);
    cfg.pass.batch_size = 2;
    cfg.pass.busy_duty_percent = 10;
    cfg
}

/// A pass over six fresh expired workflows.
async fn paced_pass(db: &TestDb, c: &Client, prefix: &str) -> PassReport {
    seed_expired(c, prefix).await;
    let report = pass(&paced(db), false).await;
    assert_eq!(report.expired_removed.total(), 6, "{report}");
    report
}

fn assert_mostly_paused(report: &PassReport, why: &str) {
    assert!(
        report.paused_ms > 0 && report.paused_ms as f64 >= 0.5 * report.duration_ms as f64,
        "{why}: at 10% a busy pass spends most of its time pausing: {report}"
    );
}

/// A session named as one of pg_durable's engine connections.
async fn engine_session(db: &TestDb, application_name: &str) -> Client {
    let c = db.client().await;
    c.batch_execute(&format!("SET application_name = '{application_name}'"))
        .await
        .expect("naming the session");
    c
}

/// Active sessions of this database running a statement that contains `marker`.
async fn running(c: &Client, marker: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND state = 'active'
            AND pid <> pg_backend_pid() AND position($1 in query) > 0",
        &[&marker],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

#[tokio::test]
async fn an_engine_polling_its_queues_and_old_queue_items_cost_a_pass_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // A backlog's queue items: ready for days (running instances' activities, stale timers)
    // and future timers. No running engine leaves a ready item waiting for days.
    backlog(&c, 300).await;
    let ready_for_days = count(
        &c,
        "SELECT count(*) FROM _duroxide.worker_queue WHERE visible_at < now() - interval '1 day'",
    )
    .await;
    assert!(ready_for_days > 0, "the backlog has old ready items");
    // The engine's dispatcher, caught in the middle of a poll for the whole pass: what the
    // former rule (any active session) read as load.
    let dispatcher = engine_session(&db, "pg_durable:worker:duroxide").await;
    let polling = tokio::spawn(async move {
        let _ = dispatcher
            .execute("SELECT pg_sleep(60) AS dispatcher_poll", &[])
            .await;
    });
    wait_until("the dispatcher polls", Duration::from_secs(10), || async {
        running(&c, "dispatcher_poll").await == 1
    })
    .await;

    let report = pass(&paced(&db), false).await;
    assert!(report.instances_removed() > 100, "{report}");
    assert!(report.batches > 50, "{report}");
    assert_eq!(report.paused_ms, 0, "an idle engine is no load: {report}");
    polling.abort();
}

#[tokio::test]
async fn fresh_engine_work_and_leases_in_force_make_a_pass_pause() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(&c, LIVE, "running", Some("Running"), 60.0, None, 0).await;
    assert_eq!(
        paced_pass(&db, &c, "5b0000").await.paused_ms,
        0,
        "a live instance waiting on nothing is no load"
    );

    // An item the engine has yet to take: a cancellation just requested.
    exec(&c, &format!("SELECT df_fixture.request_cancel('{LIVE}')")).await;
    assert_mostly_paused(&paced_pass(&db, &c, "5c0000").await, "a ready item");
    exec(
        &c,
        &format!("DELETE FROM _duroxide.orchestrator_queue WHERE instance_id = '{LIVE}'"),
    )
    .await;

    // A dispatcher's turn on the instance: its lock, in force for a minute.
    exec(
        &c,
        &format!("SELECT df_fixture.lock_instance('{LIVE}', interval '1 minute')"),
    )
    .await;
    assert_mostly_paused(&paced_pass(&db, &c, "5d0000").await, "an instance lock");
    exec(
        &c,
        &format!("DELETE FROM _duroxide.instance_locks WHERE instance_id = '{LIVE}'"),
    )
    .await;

    // An activity at work: an old item leased by a worker, in force for a minute.
    exec(
        &c,
        &format!(
            "INSERT INTO _duroxide.worker_queue
                 (work_item, visible_at, created_at, instance_id, execution_id, activity_id,
                  lock_token, locked_until)
             VALUES ('{{}}', now() - interval '1 hour', now() - interval '1 hour', '{LIVE}', 1, 9,
                     'worker-lease',
                     (extract(epoch FROM now() + interval '1 minute') * 1000)::bigint)"
        ),
    )
    .await;
    assert_mostly_paused(&paced_pass(&db, &c, "5e0000").await, "a leased worker item");
    exec(
        &c,
        "DELETE FROM _duroxide.worker_queue WHERE lock_token = 'worker-lease'",
    )
    .await;

    assert_eq!(
        paced_pass(&db, &c, "5f0000").await.paused_ms,
        0,
        "quiet again once the work is done"
    );
}

#[tokio::test]
async fn a_session_waiting_for_a_lock_makes_a_pass_pause() {
    let db = TestDb::new().await;
    let c = db.client().await;
    exec(&c, "CREATE TABLE public.contended (id int)").await;
    // Both sessions named as the engine's, whose activity alone is no load: the wait is.
    let holder = engine_session(&db, "pg_durable:worker:management").await;
    holder
        .batch_execute("BEGIN; LOCK TABLE public.contended IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("taking the lock");
    let waiter = engine_session(&db, "pg_durable:worker:duroxide").await;
    let waiting = tokio::spawn(async move {
        let _ = waiter
            .execute("SELECT count(*) AS lock_waiter FROM public.contended", &[])
            .await;
    });
    wait_until(
        "the other session waits",
        Duration::from_secs(10),
        || async {
            count(
                &c,
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE '%lock_waiter%'",
            )
            .await
                == 1
        },
    )
    .await;
    // The holder's last statement is over a second old: idle in a transaction, not working.
    wait_until("the holder is idle", Duration::from_secs(10), || async {
        count(
            &c,
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND state = 'idle in transaction'
                AND state_change < clock_timestamp() - interval '1 second'",
        )
        .await
            == 1
    })
    .await;

    assert_mostly_paused(&paced_pass(&db, &c, "5a1000").await, "a lock wait");
    holder.batch_execute("ROLLBACK").await.expect("releasing");
    waiting.await.expect("the waiter ends");
}

#[tokio::test]
async fn a_pass_waits_for_an_engine_behind_its_work_to_catch_up() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(&c, LIVE, "running", Some("Running"), 60.0, None, 0).await;
    seed_expired(&c, "5b1000").await;
    // A cancellation that has waited two seconds for a dispatcher: the engine is behind.
    c.execute(
        "SELECT df_fixture.request_cancel($1, now() - interval '2 seconds')",
        &[&LIVE],
    )
    .await
    .expect("queueing the item");
    // The engine catches up (takes the item) a second and a half later.
    let engine = db.client().await;
    let catching_up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        engine
            .execute(
                "DELETE FROM _duroxide.orchestrator_queue WHERE instance_id = $1",
                &[&LIVE],
            )
            .await
            .expect("taking the item");
    });

    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 2;
    let report = pass(&cfg, false).await;
    catching_up.await.expect("the engine caught up");
    assert_eq!(report.expired_removed.total(), 6, "{report}");
    assert!(
        report.paused_ms >= 1000,
        "the pass waited for the engine, not just its duty cycle: {report}"
    );
}
