//! Real impact: start-to-completion latency of real pg_durable workflows, a steady stream
//! of two-step workflows, without a pass and while `df-reconciler once` clears a backlog
//! beside them, on a throwaway cluster with pg_durable's engine running. Runs only where
//! the extension is installed; says so and skips otherwise.
//!
//! Latency is the server's own: `df.instances.completed_at - created_at` (created_at is
//! the start of the `df.start()` transaction, completed_at is written by the engine).
//!
//! The backlog is made of real workflows: a few templates are run to completion by the
//! engine (two-step and JOIN, which has children), then their rows in both stores are
//! copied under new ids and aged 60 days. The engine never looks at an ended instance
//! again, so the copies cost it nothing until the pass removes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use df_reconciler_core::preflight;
use df_reconciler_core::sql::Schemas;
use df_reconciler_testkit::{real_extension_available, RealEngine};
use tokio_postgres::{Client, NoTls};

use crate::daemon::Daemon;
use crate::results::{holds, Results};
use crate::stats::{median, ms, secs, thousands, Spread};
use crate::Args;

/// The workflow of the steady workload and of most templates.
const TWO_STEP: &str = "'SELECT 1 AS a' ~> 'SELECT 2 AS b'";
/// A template with two children.
const JOIN: &str = "df.join('SELECT 1 AS a', 'SELECT 2 AS b') |=> 'j' ~> 'SELECT 3 AS c'";
/// Templates: this many two-step workflows and JOINs.
const TEMPLATES: [(&str, u32); 2] = [(TWO_STEP, 6), (JOIN, 2)];
/// The target: workflows' p99 during a pass at most this many times their p99 without
/// (median of the rounds).
const TARGET: f64 = 1.2;
/// How long a workflow may take before the run gives up on it.
const COMPLETION_DEADLINE: Duration = Duration::from_secs(120);

/// Copies of the templates under ids `c0000000 + n`, aged 60 days, in both stores. Every
/// per-instance table is copied generically (`to_jsonb` of the row, ids and times
/// replaced), so the copies have whatever the real engine wrote. Rows are written in id
/// order, each instance's together, as an engine writes them over an instance's life:
/// copied in join order, one instance's history spread over as many pages as it has
/// rows, and a pass read ten times more pages than on a real store.
const CLONE_TEMPLATES: &str = "
CREATE TEMP TABLE clone_map ON COMMIT DROP AS
  SELECT t.id AS old_id,
         pg_catalog.to_hex(3221225472 + k * t.n + t.j) AS new_id
    FROM (SELECT id::text, (row_number() OVER (ORDER BY id) - 1)::bigint AS j,
                 count(*) OVER ()::bigint AS n
            FROM df.instances WHERE label = 'bench-template') t,
         generate_series(0, $1::bigint - 1) AS k;
CREATE TEMP TABLE clone_ids ON COMMIT DROP AS
  SELECT e.instance_id AS old_id, m.new_id || substr(e.instance_id, 9) AS new_id
    FROM _duroxide.instances e JOIN clone_map m ON left(e.instance_id, 8) = m.old_id;
INSERT INTO df.instances
  SELECT (jsonb_populate_record(NULL::df.instances, to_jsonb(i) || jsonb_build_object(
           'id', m.new_id, 'label', 'bench-backlog', 'created_at', now() - interval '60 days',
           'updated_at', now() - interval '60 days', 'completed_at', now() - interval '60 days'))).*
    FROM df.instances i JOIN clone_map m ON m.old_id = i.id::text ORDER BY m.new_id;
INSERT INTO df.nodes
  SELECT (jsonb_populate_record(NULL::df.nodes, to_jsonb(x) || jsonb_build_object(
           'instance_id', m.new_id))).*
    FROM df.nodes x JOIN clone_map m ON m.old_id = x.instance_id::text
    ORDER BY m.new_id, x.id;
INSERT INTO _duroxide.instances
  SELECT (jsonb_populate_record(NULL::_duroxide.instances, to_jsonb(x) || jsonb_build_object(
           'instance_id', c.new_id,
           'parent_instance_id', left(c.new_id, 8) || substr(x.parent_instance_id, 9),
           'created_at', now() - interval '60 days', 'updated_at', now() - interval '60 days'))).*
    FROM _duroxide.instances x JOIN clone_ids c ON c.old_id = x.instance_id ORDER BY c.new_id;
INSERT INTO _duroxide.executions
  SELECT (jsonb_populate_record(NULL::_duroxide.executions, to_jsonb(x) || jsonb_build_object(
           'instance_id', c.new_id, 'started_at', now() - interval '60 days',
           'completed_at', now() - interval '60 days'))).*
    FROM _duroxide.executions x JOIN clone_ids c ON c.old_id = x.instance_id
    ORDER BY c.new_id, x.execution_id;
INSERT INTO _duroxide.history
  SELECT (jsonb_populate_record(NULL::_duroxide.history, to_jsonb(x) || jsonb_build_object(
           'instance_id', c.new_id, 'created_at', now() - interval '60 days'))).*
    FROM _duroxide.history x JOIN clone_ids c ON c.old_id = x.instance_id
    ORDER BY c.new_id, x.execution_id, x.event_id;
INSERT INTO _duroxide.kv_store
  SELECT (jsonb_populate_record(NULL::_duroxide.kv_store, to_jsonb(x) || jsonb_build_object(
           'instance_id', c.new_id))).*
    FROM _duroxide.kv_store x JOIN clone_ids c ON c.old_id = x.instance_id;
";

/// One round: the workload's latencies without a pass and during one, and the pass.
struct Round {
    without: Vec<Duration>,
    during: Vec<Duration>,
    failed: u64,
    pass_wall: Duration,
    removed: u64,
    paused_ms: u64,
}

/// The real-impact measure: `impact_rounds` rounds on one real engine, each re-seeding
/// the backlog (`real_n` roots), running the workload `impact_secs` without a pass, then
/// while a pass clears the backlog.
pub async fn measure(daemon: &Daemon, args: &Args, results: &mut Results) -> Result<()> {
    let Some((engine, client)) = start_engine("real-impact", args, results).await? else {
        return Ok(());
    };
    let dsn = engine.dsn();
    let label = thousands(args.real_n.into());
    let mut rounds = Vec::new();
    for round in 1..=args.impact_rounds.max(1) {
        let r = run_round(&client, daemon, args, &dsn, round).await?;
        eprintln!(
            "  real impact round {round}: p99 {} without, {} during a pass of {} ({} removed)",
            ms(p99(&r.without)),
            ms(p99(&r.during)),
            secs(r.pass_wall),
            thousands(r.removed)
        );
        rounds.push(r);
    }
    let describe = |s: &[Duration]| {
        Spread::of(s).map_or("no samples".to_owned(), |sp| {
            format!(
                "p50 {}, p99 {}, max {}, {} workflows",
                ms(sp.p50),
                ms(sp.p99),
                ms(sp.max),
                s.len()
            )
        })
    };
    for (i, r) in rounds.iter().enumerate() {
        results.line(
            &format!(
                "real engine, round {}: workflow latency without a pass",
                i + 1
            ),
            &label,
            describe(&r.without),
            "",
            "",
        );
        results.line(
            &format!(
                "real engine, round {}: workflow latency during a pass",
                i + 1
            ),
            &label,
            format!(
                "{} (a pass that removed {} roots in {}, {} ms paused{})",
                describe(&r.during),
                thousands(r.removed),
                secs(r.pass_wall),
                r.paused_ms,
                if r.failed > 0 {
                    format!("; {} workflows did not complete", r.failed)
                } else {
                    String::new()
                }
            ),
            "",
            "",
        );
    }
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|r| p99(&r.during).as_secs_f64() / p99(&r.without).as_secs_f64().max(1e-9))
        .collect();
    let mid = median(&ratios);
    let (without, during): (Vec<Duration>, Vec<Duration>) = (
        rounds.iter().flat_map(|r| r.without.clone()).collect(),
        rounds.iter().flat_map(|r| r.during.clone()).collect(),
    );
    results.line(
        "real engine: workflow p99 during / without (median of the rounds)",
        &label,
        format!(
            "{mid:.2}x (rounds: {}; all rounds: {} without, {} during)",
            crate::stats::ratios(&ratios, "x"),
            describe(&without),
            describe(&during)
        ),
        "<= 1.2x",
        holds(mid <= TARGET && rounds.iter().all(|r| r.failed == 0)),
    );
    drop(client);
    drop(engine);
    Ok(())
}

fn p99(s: &[Duration]) -> Duration {
    crate::stats::percentile(s, 99.0).unwrap_or_default()
}

pub async fn connect(dsn: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .with_context(|| format!("connecting to {dsn}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// A real engine ready for a measure named `measure`: the cluster, a connection, the
/// templates and the supporting indexes. None (and a note saying why) where pg_durable is
/// not installed.
pub async fn start_engine(
    measure: &str,
    args: &Args,
    results: &mut Results,
) -> Result<Option<(RealEngine, Client)>> {
    if let Err(why) = real_extension_available() {
        eprintln!("{measure} skipped: {why}");
        results.notes.push(format!("{measure}: skipped, {why}"));
        return Ok(None);
    }
    eprintln!("starting a throwaway PostgreSQL with pg_durable's engine ({measure})");
    let engine = tokio::task::spawn_blocking(RealEngine::start).await??;
    let client = connect(&engine.dsn()).await?;
    make_templates(&client).await?;
    supporting_indexes(&client, args).await?;
    Ok(Some((engine, client)))
}

/// Runs the templates to completion.
pub async fn make_templates(c: &Client) -> Result<()> {
    for (graph, count) in TEMPLATES {
        for _ in 0..count {
            c.execute(&format!("SELECT df.start({graph}, 'bench-template')"), &[])
                .await
                .context("starting a template workflow")?;
        }
    }
    wait_ended(c, "bench-template").await?;
    let failed: i64 = c
        .query_one(
            "SELECT count(*) FROM df.instances WHERE label = 'bench-template' AND status <> 'completed'",
            &[],
        )
        .await?
        .get(0);
    if failed > 0 {
        bail!("{failed} template workflows did not complete");
    }
    Ok(())
}

/// Waits until no workflow labelled `label` is pending or running.
async fn wait_ended(c: &Client, label: &str) -> Result<()> {
    let began = Instant::now();
    loop {
        let live: i64 = c
            .query_one(
                "SELECT count(*) FROM df.instances WHERE label = $1 AND status IN ('pending', 'running')",
                &[&label],
            )
            .await?
            .get(0);
        if live == 0 {
            return Ok(());
        }
        if began.elapsed() > COMPLETION_DEADLINE {
            bail!("{live} workflows labelled {label} still live after {COMPLETION_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The backlog's rows in both stores, kept aside after the first seeding, each table in
/// the order the rows were written: later seedings restore them with plain copies (the
/// copies of the templates go through JSON per row, minutes for a million history rows).
const KEEP_BACKLOG: &str = "
CREATE SCHEMA bench_seed;
CREATE TABLE bench_seed.ids AS
  SELECT id::text AS id FROM df.instances WHERE label = 'bench-backlog';
CREATE TABLE bench_seed.df_instances AS
  SELECT * FROM df.instances WHERE label = 'bench-backlog' ORDER BY id;
CREATE TABLE bench_seed.df_nodes AS
  SELECT * FROM df.nodes WHERE instance_id::text IN (SELECT id FROM bench_seed.ids)
   ORDER BY instance_id, id;
CREATE TABLE bench_seed.instances AS
  SELECT * FROM _duroxide.instances WHERE left(instance_id, 8) IN (SELECT id FROM bench_seed.ids)
   ORDER BY instance_id;
CREATE TABLE bench_seed.executions AS
  SELECT * FROM _duroxide.executions WHERE left(instance_id, 8) IN (SELECT id FROM bench_seed.ids)
   ORDER BY instance_id, execution_id;
CREATE TABLE bench_seed.history AS
  SELECT * FROM _duroxide.history WHERE left(instance_id, 8) IN (SELECT id FROM bench_seed.ids)
   ORDER BY instance_id, execution_id, event_id;
CREATE TABLE bench_seed.kv_store AS
  SELECT * FROM _duroxide.kv_store WHERE left(instance_id, 8) IN (SELECT id FROM bench_seed.ids)
   ORDER BY instance_id";

/// Restores [`KEEP_BACKLOG`]'s rows, in their order (no synchronized scan starting
/// mid-table).
const RESTORE_BACKLOG: &str = "
SET synchronize_seqscans = off;
INSERT INTO df.instances SELECT * FROM bench_seed.df_instances;
INSERT INTO df.nodes SELECT * FROM bench_seed.df_nodes;
INSERT INTO _duroxide.instances SELECT * FROM bench_seed.instances;
INSERT INTO _duroxide.executions SELECT * FROM bench_seed.executions;
INSERT INTO _duroxide.history SELECT * FROM bench_seed.history;
INSERT INTO _duroxide.kv_store SELECT * FROM bench_seed.kv_store;
RESET synchronize_seqscans";

/// Seeds the backlog: `real_n` roots copied from the templates, the first time, then
/// kept aside; restored from there every later time (the previous backlog must be gone).
pub async fn seed_backlog(c: &mut Client, roots: u32) -> Result<()> {
    let kept: bool = c
        .query_one(
            "SELECT pg_catalog.to_regclass('bench_seed.ids') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let tx = c.transaction().await?;
    if kept {
        tx.batch_execute(RESTORE_BACKLOG)
            .await
            .context("restoring the backlog")?;
    } else {
        let templates: u32 = TEMPLATES.iter().map(|(_, n)| n).sum();
        let copies = i64::from(roots.div_ceil(templates));
        for statement in CLONE_TEMPLATES
            .split(";\n")
            .filter(|s| !s.trim().is_empty())
        {
            if statement.contains("$1") {
                tx.execute(statement, &[&copies]).await
            } else {
                tx.execute(statement, &[]).await
            }
            .with_context(|| format!("seeding the backlog: {}", statement.trim()))?;
        }
        tx.batch_execute(KEEP_BACKLOG)
            .await
            .context("keeping the backlog aside")?;
    }
    tx.commit().await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    Ok(())
}

/// Creates the daemon's supporting indexes (`migrate --indexes`), as the documented
/// setup does, unless `--no-indexes`.
pub async fn supporting_indexes(c: &Client, args: &Args) -> Result<()> {
    if args.no_indexes {
        return Ok(());
    }
    let schemas = Schemas::new("df", "_duroxide");
    preflight::create_supporting_indexes(c, &schemas).await?;
    Ok(())
}

/// Starts a two-step workflow every `interval` until `stop`, labelled by whether a pass
/// runs at that moment.
async fn steady_workload(
    dsn: String,
    round: u32,
    interval: Duration,
    pass_running: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let c = connect(&dsn).await?;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let label = if pass_running.load(Ordering::Relaxed) {
            format!("bench-during-{round}")
        } else {
            format!("bench-without-{round}")
        };
        c.execute(&format!("SELECT df.start({TWO_STEP}, $1)"), &[&label])
            .await
            .context("starting a workload workflow")?;
    }
    Ok(())
}

/// Latencies of the completed workflows labelled `label`, and how many did not complete
/// (failed, or still live after [`COMPLETION_DEADLINE`]: an engine that fell that far
/// behind is a result, not a reason to stop the run).
async fn latencies(c: &Client, label: &str) -> Result<(Vec<Duration>, u64)> {
    if let Err(e) = wait_ended(c, label).await {
        eprintln!("  {e:#}; counted as not completed");
    }
    let rows = c
        .query(
            "SELECT (extract(epoch FROM completed_at - created_at) * 1000000)::bigint
               FROM df.instances WHERE label = $1 AND status = 'completed'",
            &[&label],
        )
        .await?;
    let failed: i64 = c
        .query_one(
            "SELECT count(*) FROM df.instances WHERE label = $1 AND status <> 'completed'",
            &[&label],
        )
        .await?
        .get(0);
    let samples = rows
        .iter()
        .map(|r| Duration::from_micros(r.get::<_, i64>(0).max(0) as u64))
        .collect();
    Ok((samples, failed as u64))
}

async fn run_round(
    client: &Client,
    daemon: &Daemon,
    args: &Args,
    dsn: &str,
    round: u32,
) -> Result<Round> {
    eprintln!(
        "real impact round {round}: seeding {} roots",
        thousands(args.real_n.into())
    );
    let mut seeding = connect(dsn).await?;
    seed_backlog(&mut seeding, args.real_n).await?;
    drop(seeding);

    let pass_running = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let interval = Duration::from_millis(1000 / u64::from(args.real_rate.max(1)));
    let workload = tokio::spawn(steady_workload(
        dsn.to_owned(),
        round,
        interval,
        pass_running.clone(),
        stop.clone(),
    ));
    eprintln!(
        "real impact round {round}: {} s without a pass",
        args.impact_secs
    );
    tokio::time::sleep(Duration::from_secs(args.impact_secs)).await;
    eprintln!("real impact round {round}: a pass over the backlog");
    pass_running.store(true, Ordering::Relaxed);
    let (d, pass_dsn) = (daemon.clone(), dsn.to_owned());
    let run = tokio::task::spawn_blocking(move || d.once(&pass_dsn, &[])).await?;
    pass_running.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    workload.await??;
    let run = run?;

    let (without, failed_without) = latencies(client, &format!("bench-without-{round}")).await?;
    let (during, failed_during) = latencies(client, &format!("bench-during-{round}")).await?;
    // The workload's own workflows go too, so each round starts alike.
    client
        .execute(
            "UPDATE df.instances SET completed_at = now() - interval '60 days'
              WHERE label LIKE 'bench-%' AND label <> 'bench-template' AND status = 'completed'",
            &[],
        )
        .await?;
    Ok(Round {
        without,
        during,
        failed: failed_without + failed_during,
        pass_wall: run.wall,
        removed: run.instances_removed,
        paused_ms: run.report["paused_ms"].as_u64().unwrap_or(0),
    })
}
