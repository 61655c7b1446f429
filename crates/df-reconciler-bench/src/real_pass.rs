//! Floor and pass on the real extension: the same measures as [`crate::pass_runs`], on a
//! throwaway cluster with pg_durable's engine running and idle (no workflow in flight,
//! its dispatchers polling empty queues), in the one database the engine serves. Runs
//! only where the extension is installed; says so and skips otherwise.
//!
//! The backlog is [`crate::real_impact`]'s: real workflows copied under new ids and aged
//! 60 days, so the engine can keep running beside it. Each floor and each pass gets the
//! same backlog seeded afresh (and vacuumed) in the engine's database; they alternate, and
//! the ratio is the median of the floor-then-pass pairs. Every pass is checked to remove
//! exactly the floor's rows, and must not pause: the engine is idle.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use df_reconciler_core::config::Config;
use tokio_postgres::Client;

use crate::daemon::{self, Daemon};
use crate::dry_run::Expected;
use crate::floor::{self, Timed};
use crate::ratio::Ratio;
use crate::real_impact::{connect, seed_backlog, start_engine};
use crate::results::{holds, Results};
use crate::stats::{ms, rate, secs, thousands};
use crate::Args;

/// The target on the real extension: a pass at least 0.8 times as fast as the
/// floor, with the engine idle.
pub const TARGET: f64 = 0.8;

/// How long the engine may take to settle (its queues empty) before a timed run.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// The real-pass measure: `repeat` floor-then-pass pairs over `real_n` roots.
pub async fn measure(daemon: &Daemon, args: &Args, results: &mut Results) -> Result<()> {
    let Some((engine, client)) = start_engine("real-pass", args, results).await? else {
        return Ok(());
    };
    let dsn = engine.dsn();
    let label = thousands(args.real_n.into());
    let mut expected: Option<Expected> = None;
    let mut floors: Vec<Timed> = Vec::new();
    let mut passes: Vec<daemon::Run> = Vec::new();
    for r in 0..args.repeat.max(1) {
        reseed(&dsn, &client, args.real_n).await?;
        let (timed, got) = floor_run(&dsn, r).await?;
        match &expected {
            Some(e) if *e != got => bail!(
                "real floor run {} removed {} roots, rows {:?}; the first removed {} roots, rows {:?}",
                r + 1,
                got.roots,
                got.rows,
                e.roots,
                e.rows
            ),
            Some(_) => {}
            None => expected = Some(got),
        }
        floors.push(timed);

        reseed(&dsn, &client, args.real_n).await?;
        let d = daemon.clone();
        let pass_dsn = dsn.clone();
        eprintln!("  real pass run {}: df-reconciler once --json", r + 1);
        let run = tokio::task::spawn_blocking(move || d.once(&pass_dsn, &[])).await??;
        if let Some(e) = &expected {
            if run.rows_deleted != e.rows || run.instances_removed != e.roots {
                bail!(
                    "the daemon removed {} roots, rows {:?}; the floor {} roots, rows {:?}",
                    run.instances_removed,
                    run.rows_deleted,
                    e.roots,
                    e.rows
                );
            }
        }
        eprintln!(
            "  real pass run {}: {} ({} in the pass, {} ms paused), {} batches",
            r + 1,
            secs(run.wall),
            ms(Duration::from_millis(run.pass_ms)),
            paused_ms(&run),
            run.batches
        );
        passes.push(run);
    }
    let Some(e) = expected else {
        return Ok(());
    };
    floor::line_named(
        "real engine (idle): floor, set-wise delete, one transaction",
        &label,
        &e,
        &floors,
        results,
    );
    let total = e.rows.values().sum();
    let figure = passes
        .iter()
        .map(|p| {
            format!(
                "{} ({} roots/s, {} rows/s; {} ms paused)",
                secs(p.wall),
                rate(e.roots, p.wall),
                rate(total, p.wall),
                paused_ms(p)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let never_paused = passes.iter().all(|p| paused_ms(p) == 0);
    results.line(
        "real engine (idle): pass, `df-reconciler once`, batch 1000",
        &label,
        format!("{figure}; {} batches", passes[0].batches),
        "0 ms paused",
        holds(never_paused),
    );
    let ratio = Ratio::of(
        &floors.iter().map(|f| f.took).collect::<Vec<_>>(),
        &passes.iter().map(|p| p.wall).collect::<Vec<_>>(),
    );
    results.line(
        "real engine (idle): ratio floor / daemon (median of floor-then-pass pairs)",
        &label,
        ratio.figure(),
        ">= 0.8",
        holds(ratio.holds_at(TARGET)),
    );
    drop(client);
    drop(engine);
    Ok(())
}

fn paused_ms(run: &daemon::Run) -> u64 {
    run.report["paused_ms"].as_u64().unwrap_or(0)
}

/// Seeds the backlog afresh (the floor or the pass before removed all of it) and waits
/// until the engine is idle.
async fn reseed(dsn: &str, client: &Client, roots: u32) -> Result<()> {
    eprintln!(
        "  seeding {} real roots in the engine's database",
        thousands(roots.into())
    );
    let mut seeding = connect(dsn).await?;
    seed_backlog(&mut seeding, roots).await?;
    drop(seeding);
    settle(client).await
}

/// Waits until no queue item is ready or leased and no instance is locked: the engine
/// idle, only polling.
async fn settle(c: &Client) -> Result<()> {
    let began = Instant::now();
    loop {
        let busy: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM _duroxide.orchestrator_queue WHERE visible_at <= now())
                     OR EXISTS (SELECT 1 FROM _duroxide.worker_queue WHERE visible_at <= now())
                     OR EXISTS (SELECT 1 FROM _duroxide.instance_locks
                                 WHERE locked_until > (extract(epoch FROM now()) * 1000)::bigint)",
                &[],
            )
            .await?
            .get(0);
        if !busy {
            return Ok(());
        }
        if began.elapsed() > SETTLE_DEADLINE {
            bail!("the engine still had work queued after {SETTLE_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One floor in the engine's database: the selection (untimed), then the timed delete.
async fn floor_run(dsn: &str, index: u32) -> Result<(Timed, Expected)> {
    let mut client = connect(dsn).await?;
    floor::timed(&mut client, &Config::default(), "real floor", index).await
}
