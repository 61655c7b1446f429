//! `df-reconciler-bench`: how fast and how heavy a reconciliation pass is, on a throwaway
//! PostgreSQL seeded with `df_fixture.backlog`. One run measures and prints a Markdown
//! table:
//!
//! - floor: the daemon's exact selection deleted set-wise in ONE transaction;
//! - pass: `df-reconciler once --json` (release binary, default config) on an identical
//!   copy: wall time, roots/s, rows/s, floor/daemon ratio, and the batch latencies of an
//!   in-process pass on a third copy. Floor and pass runs alternate and the ratio is the
//!   median of the floor-then-pass pairs, so both sides of a ratio share the machine's
//!   conditions; every timed run records CPU steal;
//! - rss: the daemon's peak RSS at 10k (and, with --big, 1M) roots;
//! - idle: a pass that finds nothing to delete on a 1M-row df table;
//! - impact: p99 latency of an engine-like workload without and during a pass, in rounds
//!   (fresh copy each); the verdict is on the median round;
//! - prune: a 100k-generation backlog of live loops pruned by a pass, next to its floor
//!   (one set-wise delete of the same rows);
//! - rules: a pass with ten `[[retention.rules]]` against one with none, same removals;
//! - real-pass: where pg_durable is installed, floor and pass as above on the real
//!   extension, its engine running and idle, over a backlog of real workflows;
//! - real-impact: where pg_durable is installed, start-to-completion latency of real
//!   workflows without and during a pass over a backlog, with the real engine running.
//!
//! This file holds the command line and the order of the measures; each measure has its
//! own module. See docs/PERFORMANCE.md for the figures and how to read them.

mod cpu;
mod daemon;
mod dry_run;
mod environment;
mod floor;
mod idle;
mod impact;
mod latency;
mod pass_runs;
mod prune;
mod ratio;
mod real_impact;
mod real_pass;
mod results;
mod rss;
mod rules;
mod server;
mod stats;
mod workload;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

use daemon::Daemon;
use results::Results;
use server::Server;

#[derive(Parser, Debug)]
#[command(
    name = "df-reconciler-bench",
    about = "Benchmark df-reconciler on a throwaway PostgreSQL"
)]
struct Args {
    /// Roots seeded for floor, pass and impact.
    #[arg(long, default_value_t = 200_000)]
    n: u32,
    /// Also run floor, pass and peak RSS at 1,000,000 roots.
    #[arg(long)]
    big: bool,
    /// Measure only these (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Measure>,
    /// Floor-then-pass pairs per size (each run on a fresh copy); the ratio is the median
    /// of the pairs' ratios.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Roots of the idle database (default: N, or 1,000,000 with --big).
    #[arg(long)]
    idle_n: Option<u32>,
    /// Largest N for which the daemon's dry run is run first to cross-check the floor
    /// (a dry run deletes nothing, so it pays the full cost of every keyset rescan).
    #[arg(long, default_value_t = 200_000)]
    dry_run_max: u32,
    /// Seconds of workload without and during a pass.
    #[arg(long, default_value_t = 15)]
    impact_secs: u64,
    /// Rounds of the impact measurement (each: a fresh copy, the workload without a pass,
    /// then during one); the verdict is on the median round.
    #[arg(long, default_value_t = 3)]
    impact_rounds: u32,
    /// Real pass and real impact: roots of the backlog a pass clears beside the real
    /// engine.
    #[arg(long, default_value_t = 40_000)]
    real_n: u32,
    /// Real impact: workflows started per second by the steady workload.
    #[arg(long, default_value_t = 10)]
    real_rate: u32,
    /// Concurrent workload tasks (one connection each).
    #[arg(long, default_value_t = 4)]
    impact_tasks: usize,
    /// Think time of each workload task between two transactions, in milliseconds.
    #[arg(long, default_value_t = 5)]
    impact_pause_ms: u64,
    /// Skip the in-process pass that measures batch latencies (it uses the core library
    /// this benchmark was built with, not --daemon-bin).
    #[arg(long)]
    no_latency: bool,
    /// Impact only: run the concurrent pass in-process (this build's core, not the
    /// daemon binary) and sleep this long after every batch, to measure how pacing
    /// between batches changes the workload's latency. 0: the daemon binary, unpaced.
    #[arg(long, default_value_t = 0)]
    impact_batch_pause_ms: u64,
    /// The daemon binary (default: df-reconciler next to this executable).
    #[arg(long)]
    daemon_bin: Option<PathBuf>,
    /// A `--set SECTION.KEY=VALUE` override for every run of the daemon binary
    /// (repeatable), e.g. `--daemon-set pass.busy_duty_percent=25`.
    #[arg(long, value_name = "SECTION.KEY=VALUE")]
    daemon_set: Vec<String>,
    /// Do not run `cargo build -p df-reconciler` first.
    #[arg(long)]
    no_build: bool,
    /// Seed without the daemon's supporting indexes (`migrate --indexes` not run).
    #[arg(long)]
    no_indexes: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Measure {
    Floor,
    Pass,
    Rss,
    Idle,
    Impact,
    Prune,
    RealPass,
    RealImpact,
    Rules,
}

const BIG_N: u32 = 1_000_000;
const SMALL_N: u32 = 10_000;

fn main() -> ExitCode {
    let args = Args::parse();
    match start(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("df-reconciler-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(args: &Args) -> Result<()> {
    let daemon = Daemon {
        bin: daemon::locate(args.daemon_bin.clone(), !args.no_build)?,
        sets: args.daemon_set.clone(),
    };
    eprintln!("starting a throwaway PostgreSQL");
    let server = Server::start(!args.no_indexes)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(bench(&server, args, &daemon));
    // Connections close with the runtime, before the cluster stops.
    drop(runtime);
    drop(server);
    result
}

/// Runs the chosen measures in a fixed order (floor and pass, rss, idle, impact, prune,
/// real-pass, real-impact, rules) and prints the environment, the table and the notes to
/// stdout.
async fn bench(server: &Server, args: &Args, daemon: &Daemon) -> Result<()> {
    let measures: BTreeSet<Measure> = if args.only.is_empty() {
        Measure::value_variants().iter().copied().collect()
    } else {
        args.only.iter().copied().collect()
    };
    let began = Instant::now();
    server.create_base().await?;
    let environment = environment::describe(server, args).await?;
    eprintln!("{environment}");

    let mut results = Results::default();
    let floor = measures.contains(&Measure::Floor);
    let pass = measures.contains(&Measure::Pass);
    if floor || pass {
        pass_runs::floor_and_pass(server, daemon, args, floor, pass, &mut results).await?;
    }
    if measures.contains(&Measure::Rss) {
        rss::measure(server, daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::Idle) {
        idle::measure(server, daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::Impact) {
        impact::measure(server, daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::Prune) {
        prune::measure(server, daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::RealPass) {
        real_pass::measure(daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::RealImpact) {
        real_impact::measure(daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::Rules) {
        rules::measure(server, args, &mut results).await?;
    }

    print!(
        "{}",
        results.render(&environment, began.elapsed(), &environment::loadavg())
    );
    Ok(())
}
