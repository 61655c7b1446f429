//! An engine-like workload for the impact measurement: a few tasks, each on its own
//! connection, running short transactions in a paced loop the way pg_durable and the
//! duroxide dispatchers do, and timing each transaction (BEGIN to end of COMMIT):
//!
//! 1. start: a df row and its root node, the engine instance, its execution, two history
//!    events and a StartOrchestration item;
//! 2. lock: take the instance's dispatcher lock (instance_locks) and write kv_store;
//! 3. dequeue: lease the oldest visible orchestrator item, FOR UPDATE SKIP LOCKED;
//! 4. ack: delete the leased item, append a history event, release the instance lock;
//! 5. complete: set the df row, its node and the engine execution to completed.
//!
//! Ids are `a0000000 + task << 24 + counter`, far from the benchmark seed's `f…` ids.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Lock,
    Dequeue,
    Ack,
    Complete,
}

pub const OPS: [Op; 5] = [Op::Start, Op::Lock, Op::Dequeue, Op::Ack, Op::Complete];

#[derive(Debug, Default)]
pub struct Samples {
    pub all: Vec<Duration>,
    pub by_op: Vec<(Op, Duration)>,
    pub errors: u64,
}

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.all.extend(other.all);
        self.by_op.extend(other.by_op);
        self.errors += other.errors;
    }

    pub fn of(&self, op: Op) -> Vec<Duration> {
        self.by_op
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, d)| *d)
            .collect()
    }
}

/// Runs `tasks` workers until `stop` fires. `round` separates the ids of successive runs
/// on the same database. `pause` is each worker's think time between transactions.
pub async fn run(
    clients: Vec<Client>,
    round: u32,
    pause: Duration,
    stop: CancellationToken,
) -> Result<Samples> {
    let tasks = clients.len() as u32;
    let mut handles = Vec::new();
    for (task, client) in clients.into_iter().enumerate() {
        let stop = stop.clone();
        // 96 id blocks of 2^24 between a0000000 and ffffffff.
        let block = (round * tasks + task as u32) % 80;
        let base = 0xa000_0000u32 + (block << 24);
        handles.push(tokio::spawn(async move {
            worker(client, base, pause, stop).await
        }));
    }
    let mut samples = Samples::default();
    for h in handles {
        samples.merge(h.await.context("workload task panicked")??);
    }
    Ok(samples)
}

async fn worker(
    mut client: Client,
    base: u32,
    pause: Duration,
    stop: CancellationToken,
) -> Result<Samples> {
    let mut samples = Samples::default();
    let mut counter: u32 = 0;
    let mut leased: Option<i64> = None;
    'outer: loop {
        let id = format!("{:08x}", base + counter);
        counter += 1;
        for op in OPS {
            if stop.is_cancelled() {
                break 'outer;
            }
            let started = Instant::now();
            let result = match op {
                Op::Start => start(&mut client, &id).await,
                Op::Lock => lock(&mut client, &id).await,
                Op::Dequeue => dequeue(&mut client).await.map(|l| leased = l),
                Op::Ack => ack(&mut client, &id, leased.take()).await,
                Op::Complete => complete(&mut client, &id).await,
            };
            let took = started.elapsed();
            match result {
                Ok(()) => {
                    samples.all.push(took);
                    samples.by_op.push((op, took));
                }
                Err(e) => {
                    samples.errors += 1;
                    if samples.errors <= 3 {
                        eprintln!("  workload {op:?} failed: {e:#}");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => break 'outer,
            }
        }
    }
    Ok(samples)
}

const ORCHESTRATION: &str = "pg_durable::orchestration::execute-function-graph";

async fn start(client: &mut Client, id: &str) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO df.instances (id, root_node, status, submitted_by, database)
         VALUES ($1, '00000000', 'running', current_user::regrole, current_database())",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO df.nodes (id, instance_id, node_type, query, result_name, status,
                               submitted_by, database)
         VALUES ('00000000', $1, 'SQL', 'SELECT 1', 'r0', 'running', current_user::regrole,
                 current_database())",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO _duroxide.instances (instance_id, orchestration_name, orchestration_version,
                                          current_execution_id, created_at, updated_at)
         VALUES ($1, $2, '1.0.0', 1, now(), now())",
        &[&id, &ORCHESTRATION],
    )
    .await?;
    tx.execute(
        "INSERT INTO _duroxide.executions (instance_id, execution_id, status, started_at)
         VALUES ($1, 1, 'Running', now())",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO _duroxide.history (instance_id, execution_id, event_id, event_type, event_data,
                                        created_at)
         VALUES ($1, 1, 1, 'OrchestrationStarted', '{\"kind\":\"OrchestrationStarted\"}', now()),
                ($1, 1, 2, 'ActivityScheduled', '{\"kind\":\"ActivityScheduled\"}', now())",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO _duroxide.orchestrator_queue (instance_id, work_item, visible_at, created_at)
         VALUES ($1, '{\"StartOrchestration\":{}}', now(), now())",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn lock(client: &mut Client, id: &str) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO _duroxide.instance_locks (instance_id, lock_token, locked_until, locked_at)
         SELECT $1, 'bench', ms + 30000, ms
         FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) t
         ON CONFLICT (instance_id) DO UPDATE
            SET lock_token = EXCLUDED.lock_token, locked_until = EXCLUDED.locked_until,
                locked_at = EXCLUDED.locked_at",
        &[&id],
    )
    .await?;
    tx.execute(
        "INSERT INTO _duroxide.kv_store (instance_id, key, value, execution_id, last_updated_at_ms)
         VALUES ($1, 'pg_durable.progress', '{\"completed_nodes\":0}', 1, 0)
         ON CONFLICT (instance_id, key) DO UPDATE SET value = EXCLUDED.value",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Leases the oldest visible, unleased orchestrator item (any instance's).
async fn dequeue(client: &mut Client) -> Result<Option<i64>> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "WITH now_ms(ms) AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
             UPDATE _duroxide.orchestrator_queue q
                SET lock_token = 'bench', locked_until = now_ms.ms + 30000,
                    attempt_count = q.attempt_count + 1
               FROM now_ms
              WHERE q.id = (SELECT id FROM _duroxide.orchestrator_queue, now_ms
                             WHERE visible_at <= now()
                               AND (locked_until IS NULL OR locked_until < now_ms.ms)
                             ORDER BY visible_at, id
                             LIMIT 1
                             FOR UPDATE SKIP LOCKED)
             RETURNING q.id",
            &[],
        )
        .await?;
    tx.commit().await?;
    Ok(row.map(|r| r.get(0)))
}

async fn ack(client: &mut Client, id: &str, leased: Option<i64>) -> Result<()> {
    let tx = client.transaction().await?;
    if let Some(item) = leased {
        tx.execute(
            "DELETE FROM _duroxide.orchestrator_queue WHERE id = $1",
            &[&item],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO _duroxide.history (instance_id, execution_id, event_id, event_type, event_data,
                                        created_at)
         VALUES ($1, 1, 3, 'ActivityCompleted', '{\"kind\":\"ActivityCompleted\"}', now())",
        &[&id],
    )
    .await?;
    tx.execute(
        "DELETE FROM _duroxide.instance_locks WHERE instance_id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn complete(client: &mut Client, id: &str) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE df.instances SET status = 'completed', completed_at = now(), updated_at = now()
          WHERE id = $1",
        &[&id],
    )
    .await?;
    tx.execute(
        "UPDATE df.nodes SET status = 'completed', result = '{\"rows_affected\": 1}',
                updated_at = now()
          WHERE instance_id = $1",
        &[&id],
    )
    .await?;
    tx.execute(
        "UPDATE _duroxide.executions SET status = 'Completed', completed_at = now(),
                output = '{\"rows_affected\":1}'
          WHERE instance_id = $1 AND execution_id = 1",
        &[&id],
    )
    .await?;
    tx.execute(
        "UPDATE _duroxide.instances SET updated_at = now() WHERE instance_id = $1",
        &[&id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
