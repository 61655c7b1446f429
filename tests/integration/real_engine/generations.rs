//! Old generations on the real engine: a root LOOP and a non-root LOOP (a child
//! sub-orchestration) tick every second under the daemon's `run` with
//! `retention.keep_executions = 5` and a 5 s `retention.execution_min_age`. Their
//! executions and history stay bounded, the loops keep iterating (one row per iteration in
//! a table of their own), and `df.instance_executions` / `df.instance_nodes` keep working
//! on them. Without pruning a loop has ~50 generations after these two minutes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{engine_or_skip, live_deletions, start, status};
use crate::support::db::{count, exec};
use crate::support::harness::wait_until;
use crate::support::process::{daemon, exit_within, free_port, metric_at, signal, Running};

/// How long the loops run under the daemon.
const LOOPING: Duration = Duration::from_secs(120);
const KEEP: i64 = 5;
/// The most generations an instance may hold at any moment: the newest KEEP (they span
/// more than the 5 s min-age: an iteration takes ~2.3 s), those that ended since the last
/// 2 s pass began, and slack for a slow pass on a loaded machine (measured: at most 6).
/// Unpruned, a loop passes this within 25 s.
const BOUND: i64 = KEEP + 5;

/// Executions and history rows of every engine instance of `root`'s tree, per instance.
async fn sizes(c: &Client, root: &str) -> Vec<(String, i64, i64)> {
    c.query(
        "SELECT i.instance_id,
                (SELECT count(*) FROM _duroxide.executions e WHERE e.instance_id = i.instance_id),
                (SELECT count(*) FROM _duroxide.history h WHERE h.instance_id = i.instance_id)
           FROM _duroxide.instances i
          WHERE i.instance_id = $1 OR i.instance_id LIKE $1 || '::%'
          ORDER BY 1",
        &[&root],
    )
    .await
    .expect("generation counts")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The most history rows one execution of `root`'s tree has.
async fn largest_execution(c: &Client, root: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT coalesce(max(n), 0) FROM (
                 SELECT count(*) AS n FROM _duroxide.history
                  WHERE instance_id = '{root}' OR instance_id LIKE '{root}::%'
                  GROUP BY instance_id, execution_id) per_execution"
        ),
    )
    .await
}

#[tokio::test]
async fn a_ticking_loop_stays_bounded_under_run_and_keeps_iterating() {
    let engine = engine_or_skip!();
    let c = engine.client().await;

    // On the real engine, the tables with rows keyed by execution are these: history goes
    // with its execution; a worker queue item holds its generation; kv_store names the
    // execution that last wrote an instance-scoped key, and stays.
    let keyed = c
        .query(
            "SELECT table_name::text FROM information_schema.columns
              WHERE table_schema = '_duroxide' AND column_name = 'execution_id' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>();
    assert_eq!(keyed, ["executions", "history", "kv_store", "worker_queue"]);

    exec(
        &c,
        "CREATE TABLE public.root_ticks (at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE public.child_ticks (at timestamptz NOT NULL DEFAULT clock_timestamp());",
    )
    .await;
    let root_loop = start(
        &c,
        "df.loop(df.seq('INSERT INTO public.root_ticks DEFAULT VALUES', df.sleep(1)))",
        "ticking-root",
    )
    .await;
    // Work before the loop makes it a child sub-orchestration, looping on its own.
    let child_loop = start(
        &c,
        "df.seq('SELECT 1 AS setup', df.loop(df.seq('INSERT INTO public.child_ticks DEFAULT VALUES', df.sleep(1))))",
        "ticking-child",
    )
    .await;

    let port = free_port();
    let mut cmd = daemon(&engine.dsn);
    cmd.args(["run"])
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DF_RECONCILER__PASS__INTERVAL", "2s")
        .env("DF_RECONCILER__PASS__DRIFT_INTERVAL", "0s")
        .env(
            "DF_RECONCILER__RETENTION__KEEP_EXECUTIONS",
            KEEP.to_string(),
        )
        .env("DF_RECONCILER__RETENTION__EXECUTION_MIN_AGE", "5s")
        .env("DF_RECONCILER__RETENTION__ALLOW_SHORT_RETENTION", "true")
        .env("DF_RECONCILER__AUDIT__AUTO_MIGRATE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = Running::spawn(&mut cmd);

    let began = Instant::now();
    let mut most = 0i64;
    let mut samples = 0;
    while began.elapsed() < LOOPING {
        tokio::time::sleep(Duration::from_secs(3)).await;
        for id in [&root_loop, &child_loop] {
            for (instance, executions, _) in sizes(&c, id).await {
                assert!(
                    executions <= BOUND,
                    "{instance} holds {executions} generations after {:?}",
                    began.elapsed()
                );
                most = most.max(executions);
            }
        }
        samples += 1;
    }

    // Both loops still run and went on iterating: a row per iteration, as many rows as
    // generations (the root) or close (the child started a step later).
    for (id, ticks) in [(&root_loop, "root_ticks"), (&child_loop, "child_ticks")] {
        assert_eq!(status(&c, id).await.as_deref(), Some("running"), "{id}");
        let before = count(&c, &format!("SELECT count(*) FROM public.{ticks}")).await;
        wait_until("the loop ticks on", Duration::from_secs(60), || async {
            count(&c, &format!("SELECT count(*) FROM public.{ticks}")).await >= before + 2
        })
        .await;
        assert!(
            before >= 30,
            "{id} iterated only {before} times in {LOOPING:?}"
        );
    }
    let root_generation = count(
        &c,
        &format!("SELECT current_execution_id FROM _duroxide.instances WHERE instance_id = '{root_loop}'"),
    )
    .await;
    let root_ticks = count(&c, "SELECT count(*) FROM public.root_ticks").await;
    assert!(
        (root_generation - root_ticks).abs() <= 2,
        "one iteration per generation: generation {root_generation}, {root_ticks} ticks"
    );

    // df.instance_executions lists the newest executions, the current one first, with
    // their events; df.instance_nodes still reads the loop's graph.
    let listed = c
        .query(
            "SELECT execution_id, status, event_count FROM df.instance_executions($1, 100)",
            &[&root_loop],
        )
        .await
        .expect("df.instance_executions on a pruned loop");
    assert!(
        !listed.is_empty() && listed.len() as i64 <= BOUND,
        "{listed:?}"
    );
    let newest: i64 = listed[0].get(0);
    assert!(newest >= root_generation, "{newest} < {root_generation}");
    for row in &listed {
        assert!(
            row.get::<_, i64>(2) > 0,
            "every listed execution has its events"
        );
    }
    for sql in [
        "SELECT count(*) FROM df.instance_nodes($1)",
        "SELECT count(*) FROM df.instance_nodes($1, 3)",
    ] {
        let nodes: i64 = c
            .query_one(sql, &[&root_loop])
            .await
            .unwrap_or_else(|e| panic!("{sql} on a pruned loop: {e:?}"))
            .get(0);
        assert!(nodes >= 3, "{sql}: {nodes} nodes");
    }

    assert!(
        daemon.0.try_wait().expect("the daemon's state").is_none(),
        "the daemon died"
    );
    let pruned = metric_at(port, "df_reconciler_generations_pruned_total")
        .await
        .expect("the metric");
    let failed = metric_at(
        port,
        "df_reconciler_passes_total{outcome=\"failed\",dry_run=\"false\"}",
    )
    .await;
    signal(&daemon.0, "TERM");
    let exit = exit_within(&mut daemon.0, Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit}");

    // Nothing half-pruned: no history, and no worker queue item, without its execution;
    // every instance kept its current execution; no live work deleted.
    let dangling = count(
        &c,
        "SELECT (SELECT count(*) FROM _duroxide.history h WHERE NOT EXISTS (
                    SELECT 1 FROM _duroxide.executions e
                     WHERE e.instance_id = h.instance_id AND e.execution_id = h.execution_id))
              + (SELECT count(*) FROM _duroxide.worker_queue q
                  WHERE q.execution_id IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM _duroxide.executions e
                     WHERE e.instance_id = q.instance_id AND e.execution_id = q.execution_id))
              + (SELECT count(*) FROM _duroxide.instances i WHERE NOT EXISTS (
                    SELECT 1 FROM _duroxide.executions e
                     WHERE e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id))",
    )
    .await;
    assert_eq!(dangling, 0);
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    let audited = count(
        &c,
        "SELECT coalesce(sum(generations_pruned), 0)::bigint FROM df_reconciler.passes",
    )
    .await;
    assert!(pruned > 0.0, "the daemon pruned");
    assert!(
        audited as f64 >= pruned,
        "the audit trail counts every pruned generation: {audited} < {pruned}"
    );
    assert_eq!(failed.unwrap_or(0.0), 0.0, "no pass failed");
    let lines: Vec<String> = engine
        .missing_row_lines()
        .into_iter()
        .filter(|l| l.contains(&root_loop) || l.contains(&child_loop))
        .collect();
    assert!(lines.is_empty(), "{lines:#?}");
    let per_execution = largest_execution(&c, &root_loop).await;
    let history: i64 = sizes(&c, &root_loop).await.iter().map(|s| s.2).sum();
    eprintln!(
        "real_engine: root loop at generation {root_generation}, child loop ticked {} times; \
         at most {most} generations per instance over {samples} samples; {pruned} generations \
         pruned; {history} history rows left on the root (at most {per_execution} per execution)",
        count(&c, "SELECT count(*) FROM public.child_ticks").await
    );
}
