//! A live engine-like workload (callers starting workflows that commit late or roll back,
//! an engine finishing them, a dispatcher holding leases) against an aggressive
//! reconciler, with triggers that make any forbidden deletion abort its batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::scale;
use crate::support::db::{count, violations};
use crate::support::harness::{connect, TestDb};
use crate::support::passes::{config_for, try_pass};
use crate::support::seed::backlog;

/// SQL run once per test database: triggers that make any forbidden deletion abort the
/// reconciler's batch, a log of every engine instance it deleted, and a log of leased
/// instance locks it deleted. A pass learns of leases from the rows it deletes and rolls
/// such a delete back, so only a committed one is a violation: its log row commits with
/// it or not at all.
const GUARDS: &str = r#"
CREATE SCHEMA test_guard;
CREATE TABLE test_guard.deleted_engine (instance_id text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE test_guard.deleted_leased (instance_id text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION test_guard.df_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status IS NULL OR OLD.status NOT IN ('completed', 'failed', 'cancelled') THEN
    RAISE EXCEPTION 'GUARD: live df row % (%) deleted', OLD.id, OLD.status;
  END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON df.instances FOR EACH ROW EXECUTE FUNCTION test_guard.df_delete();
CREATE FUNCTION test_guard.execution_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status IN ('Running', 'ContinuedAsNew') AND EXISTS (
       SELECT 1 FROM _duroxide.instances i
        WHERE i.instance_id = OLD.instance_id
          AND i.current_execution_id = OLD.execution_id) THEN
    RAISE EXCEPTION 'GUARD: live engine instance % (%) deleted', OLD.instance_id, OLD.status;
  END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON _duroxide.executions FOR EACH ROW EXECUTE FUNCTION test_guard.execution_delete();
CREATE FUNCTION test_guard.lease_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.locked_until > (extract(epoch FROM clock_timestamp()) * 1000)::bigint THEN
    INSERT INTO test_guard.deleted_leased (instance_id) VALUES (OLD.instance_id);
  END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON _duroxide.instance_locks FOR EACH ROW EXECUTE FUNCTION test_guard.lease_delete();
CREATE FUNCTION test_guard.instance_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO test_guard.deleted_engine (instance_id) VALUES (OLD.instance_id);
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON _duroxide.instances FOR EACH ROW EXECUTE FUNCTION test_guard.instance_delete();
"#;

/// What the workload saw go wrong on its side.
#[derive(Default)]
struct WorkloadHealth {
    transactions: AtomicU64,
    lock_timeouts: AtomicU64,
    deadlocks: AtomicU64,
    other_errors: AtomicU64,
    slowest_ms: AtomicU64,
}

impl WorkloadHealth {
    fn record(&self, started: Instant, result: Result<(), tokio_postgres::Error>) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.slowest_ms
            .fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Err(e) = result {
            let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
            match code.as_str() {
                "55P03" => self.lock_timeouts.fetch_add(1, Ordering::Relaxed),
                "40P01" => self.deadlocks.fetch_add(1, Ordering::Relaxed),
                _ => {
                    eprintln!("workload error: {e:?}");
                    self.other_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

fn hex_id() -> String {
    format!("{:08x}", fastrand_u32())
}

fn fastrand_u32() -> u32 {
    // A tiny xorshift seeded from the clock: the test needs spread, not quality.
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    ));
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 16) as u32
    })
}

/// Starts workflows like df.start(): df rows in the caller's transaction, the engine item
/// on a separate auto-committing connection; commits at once, commits late, or rolls back.
async fn starter(dsn: String, stop: Arc<AtomicBool>, health: Arc<WorkloadHealth>) {
    let caller = connect(&dsn).await;
    let engine = connect(&dsn).await;
    caller
        .batch_execute("SET lock_timeout = '3s'")
        .await
        .unwrap();
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = hex_id();
        let started = Instant::now();
        let result = async {
            caller.batch_execute("BEGIN").await?;
            caller
                .execute(
                    "SELECT df_fixture.workflow($1, 'pending', NULL, clock_timestamp(), NULL, 0)",
                    &[&id],
                )
                .await?;
            engine
                .execute(
                    "INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, visible_at, created_at)
                     VALUES ($1, '{\"StartOrchestration\":{}}', clock_timestamp(), clock_timestamp())",
                    &[&id],
                )
                .await?;
            match n % 5 {
                0 => {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    caller.batch_execute("COMMIT").await
                }
                1 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    caller.batch_execute("ROLLBACK").await
                }
                _ => caller.batch_execute("COMMIT").await,
            }
        }
        .await;
        if result.is_err() {
            let _ = caller.batch_execute("ROLLBACK").await;
        }
        health.record(started, result);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The engine: picks up start items, runs orchestrations (with a child), and finishes them,
/// writing df first and the engine second as pg_durable does. Starts whose df row never
/// appears end Failed: the rolled-back-start orphans.
async fn engine(dsn: String, stop: Arc<AtomicBool>, health: Arc<WorkloadHealth>) {
    let c = connect(&dsn).await;
    c.batch_execute("SET lock_timeout = '3s'").await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = async {
            // Pick up one start item.
            let picked = c
                .query(
                    "DELETE FROM _duroxide.orchestrator_queue WHERE id = (
                        SELECT id FROM _duroxide.orchestrator_queue
                         WHERE work_item LIKE '%StartOrchestration%'
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING instance_id",
                    &[],
                )
                .await?;
            for row in picked {
                let id: String = row.get(0);
                c.execute(
                    "SELECT df_fixture.orphan_root($1, 'Running', clock_timestamp(), NULL, 1)",
                    &[&id],
                )
                .await?;
                c.execute(
                    "UPDATE df.instances SET status = 'running' WHERE id = $1 AND status = 'pending'",
                    &[&id],
                )
                .await?;
            }
            // Finish one orchestration that has run a little while: df first, then engine.
            let due = c
                .query(
                    "SELECT i.instance_id, EXISTS (SELECT 1 FROM df.instances d WHERE d.id = i.instance_id)
                       FROM _duroxide.instances i
                       JOIN _duroxide.executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                      WHERE i.parent_instance_id IS NULL AND e.status = 'Running'
                        AND i.created_at < clock_timestamp() - interval '300 milliseconds'
                      ORDER BY i.created_at LIMIT 1",
                    &[],
                )
                .await?;
            for row in due {
                let id: String = row.get(0);
                let has_df: bool = row.get(1);
                let failed = !has_df || fastrand_u32().is_multiple_of(4);
                if has_df {
                    c.execute(
                        "UPDATE df.instances SET status = $2,
                                completed_at = CASE WHEN $2 = 'completed' THEN clock_timestamp() END
                          WHERE id = $1",
                        &[&id, &if failed { "failed" } else { "completed" }],
                    )
                    .await?;
                }
                c.execute(
                    "UPDATE _duroxide.executions e SET status = $2, completed_at = clock_timestamp()
                       FROM _duroxide.instances i
                      WHERE i.instance_id = e.instance_id AND e.execution_id = i.current_execution_id
                        AND (i.instance_id = $1 OR i.parent_instance_id = $1)",
                    &[&id, &if failed { "Failed" } else { "Completed" }],
                )
                .await?;
                c.execute(
                    "UPDATE _duroxide.instances SET updated_at = clock_timestamp()
                      WHERE instance_id = $1 OR parent_instance_id = $1",
                    &[&id],
                )
                .await?;
            }
            Ok(())
        }
        .await;
        health.record(started, result);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A dispatcher holding leases and row locks on instances, finished or not.
async fn locker(dsn: String, stop: Arc<AtomicBool>, health: Arc<WorkloadHealth>) {
    let c = connect(&dsn).await;
    c.batch_execute("SET lock_timeout = '3s'").await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result = async {
            c.batch_execute("BEGIN").await?;
            let rows = c
                .query(
                    "SELECT instance_id FROM _duroxide.instances WHERE parent_instance_id IS NULL
                      ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[],
                )
                .await?;
            for row in &rows {
                let id: String = row.get(0);
                c.execute(
                    "INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
                     VALUES ($1, 'w', (extract(epoch FROM clock_timestamp()) * 1000)::bigint + 400,
                             (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                     ON CONFLICT (instance_id) DO UPDATE SET locked_until = EXCLUDED.locked_until",
                    &[&id],
                )
                .await?;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            c.batch_execute("COMMIT").await
        }
        .await;
        if result.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        health.record(started, result);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_engine_never_loses_live_unsettled_leased_or_still_owned_work() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(GUARDS).await.unwrap();
    // Something old to reclaim from the start, next to the live traffic.
    backlog(&c, 2000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let health = Arc::new(WorkloadHealth::default());
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(starter(
            db.dsn.clone(),
            stop.clone(),
            health.clone(),
        )));
    }
    tasks.push(tokio::spawn(engine(
        db.dsn.clone(),
        stop.clone(),
        health.clone(),
    )));
    tasks.push(tokio::spawn(locker(
        db.dsn.clone(),
        stop.clone(),
        health.clone(),
    )));

    // An aggressive reconciler: everything terminal expires at once and orphans need no
    // age; only settledness, locks, leases and the open-transaction guard protect.
    let mut cfg = config_for(&db);
    cfg.retention.window = Duration::ZERO;
    cfg.retention.orphan_min_age = Duration::ZERO;
    cfg.retention.allow_short_retention = true;
    cfg.pass.batch_size = 25;
    // No pacing: the reconciler meets the workload at full pressure (the harder case for
    // the guarantees), and the work it must get done in the window stays fixed.
    cfg.pass.busy_duty_percent = 100;
    let until = Instant::now() + Duration::from_secs(12 * scale());
    let mut passes = 0;
    let mut removed = 0;
    while Instant::now() < until {
        match try_pass(&cfg, false).await {
            Ok(r) => removed += r.instances_removed(),
            Err(f) => panic!(
                "pass failed under the live workload: {}\n{}",
                f.error, f.report
            ),
        }
        passes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    assert!(
        passes > 5 && removed > 1000,
        "the reconciler did real work: {passes} passes, {removed} removed"
    );
    assert!(health.transactions.load(Ordering::Relaxed) > 50);
    assert_eq!(health.deadlocks.load(Ordering::Relaxed), 0, "no deadlock");
    assert_eq!(
        health.lock_timeouts.load(Ordering::Relaxed),
        0,
        "the workload never waited out a lock"
    );
    assert_eq!(health.other_errors.load(Ordering::Relaxed), 0);
    let slowest = health.slowest_ms.load(Ordering::Relaxed);
    assert!(
        slowest < 2_000 + 1_000,
        "slowest workload transaction {slowest} ms"
    );
    // No engine record was taken from a df row that exists now (a start committed late).
    let stolen = count(
        &c,
        "SELECT count(*) FROM test_guard.deleted_engine g JOIN df.instances d ON d.id = g.instance_id",
    )
    .await;
    assert_eq!(
        stolen, 0,
        "an engine record of a committed start was reclaimed"
    );
    let leased = count(&c, "SELECT count(*) FROM test_guard.deleted_leased").await;
    assert_eq!(
        leased, 0,
        "a committed batch deleted a leased instance lock"
    );
    assert!(
        violations(&c).await.is_empty(),
        "{:?}",
        violations(&c).await
    );
    eprintln!(
        "live workload: {passes} passes, {removed} removed, {} workload transactions, slowest {slowest} ms",
        health.transactions.load(Ordering::Relaxed)
    );
}
