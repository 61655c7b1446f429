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
//!   (fresh copy each); the verdict is on the median round.
//!
//! See docs/PERFORMANCE.md for the figures and how to read them.

mod cpu;
mod daemon;
mod floor;
mod server;
mod stats;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use df_reconciler_core::pass::{self, PassOptions};
use df_reconciler_core::{db, report::PassReport};
use tokio_util::sync::CancellationToken;

use cpu::{CpuMark, CpuUse};
use daemon::Daemon;
use server::{Seed, Server};
use stats::{median, mib, ms, percentile, rate, secs, thousands};

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
}

const BIG_N: u32 = 1_000_000;
const SMALL_N: u32 = 10_000;

/// One line of the summary table.
struct Line {
    measure: String,
    n: String,
    figure: String,
    target: String,
    verdict: String,
}

#[derive(Default)]
struct Results {
    lines: Vec<Line>,
    notes: Vec<String>,
    /// Peak RSS (KiB) of `once` per seeded size.
    rss: BTreeMap<u32, u64>,
}

impl Results {
    fn line(&mut self, measure: &str, n: &str, figure: String, target: &str, verdict: &str) {
        eprintln!("  => {measure} [{n}]: {figure} {target} {verdict}");
        self.lines.push(Line {
            measure: measure.into(),
            n: n.into(),
            figure,
            target: target.into(),
            verdict: verdict.into(),
        });
    }
}

fn holds(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}

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

async fn bench(server: &Server, args: &Args, daemon: &Daemon) -> Result<()> {
    let measures: BTreeSet<Measure> = if args.only.is_empty() {
        Measure::value_variants().iter().copied().collect()
    } else {
        args.only.iter().copied().collect()
    };
    let began = Instant::now();
    server.create_base().await?;
    let environment = environment(server, args).await?;
    eprintln!("{environment}");

    let mut results = Results::default();
    let mut sizes = vec![args.n];
    if args.big && args.n != BIG_N {
        sizes.push(BIG_N);
    }
    if measures.contains(&Measure::Floor) || measures.contains(&Measure::Pass) {
        for &n in &sizes {
            // 1M runs once: seeding, floor and pass take minutes each there.
            let repeat = if n == BIG_N { 1 } else { args.repeat };
            let (seed_db, mut expected) =
                prepare_size(server, n, n <= args.dry_run_max, &mut results).await?;
            // Floor and pass alternate, so that both sides of each ratio ran under the
            // same machine conditions (this VM's speed drifts by 20% within minutes).
            let mut floors: Vec<Timed> = Vec::new();
            let mut passes: Vec<PassRun> = Vec::new();
            for r in 0..repeat {
                if measures.contains(&Measure::Floor) {
                    let (timed, got) = floor_run(server, &seed_db, n, r).await?;
                    match &expected {
                        Some(e) if *e != got => bail!(
                            "the floor removes {} roots, rows {:?}; the reference (dry run or first floor run) {} roots, rows {:?}",
                            got.roots, got.rows, e.roots, e.rows
                        ),
                        Some(_) => {}
                        None => expected = Some(got),
                    }
                    floors.push(timed);
                }
                if measures.contains(&Measure::Pass) {
                    let reference = expected.clone().or_else(|| {
                        passes.first().map(|first| Expected {
                            roots: first.run.instances_removed,
                            rows: first.run.rows_deleted.clone(),
                        })
                    });
                    passes
                        .push(pass_run(server, daemon, &seed_db, n, r, reference.as_ref()).await?);
                }
            }
            if let (Some(e), false) = (&expected, floors.is_empty()) {
                floor_line(n, e, &floors, &mut results);
            }
            if !passes.is_empty() {
                let summary = PassSummary {
                    n,
                    seed_db: &seed_db,
                    floors: &floors,
                    passes: &passes,
                    latency: n == args.n && !args.no_latency,
                };
                pass_lines(server, &summary, &mut results).await?;
            }
        }
    }
    if measures.contains(&Measure::Rss) {
        rss(server, daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::Idle) {
        idle(server, daemon, args, &mut results).await?;
    }
    if measures.contains(&Measure::Impact) {
        impact(server, daemon, args, &mut results).await?;
    }

    println!("{environment}");
    println!("| measure | N (roots) | figure | target | holds |");
    println!("|---|---|---|---|---|");
    for l in &results.lines {
        println!(
            "| {} | {} | {} | {} | {} |",
            l.measure, l.n, l.figure, l.target, l.verdict
        );
    }
    if !results.notes.is_empty() {
        println!();
        for note in &results.notes {
            println!("- {note}");
        }
    }
    println!();
    println!(
        "Benchmark wall time {}; load average at the end: {}",
        secs(began.elapsed()),
        loadavg()
    );
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn environment(server: &Server, args: &Args) -> Result<String> {
    let client = server.connect(server::BASE_DB).await?;
    let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
    let mut settings = Vec::new();
    for name in [
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "effective_cache_size",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "jit",
        "max_wal_size",
    ] {
        let v: String = client.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
        settings.push(format!("{name}={v}"));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    Ok(format!(
        "## Environment\n\n- cores: {cores} ({cpu}), memory {mem}\n- {version}\n- server: {}\n- N = {}{}, repeat = {}, load average at start: {}\n",
        settings.join(", "),
        thousands(args.n.into()),
        if args.big { " (+ 1,000,000 with --big)" } else { "" },
        args.repeat,
        loadavg()
    ))
}

/// What a pass over a seeded database removes: from the daemon's dry run, else from the
/// floor's selection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    /// Rows per `schema.table`, zeros left out.
    rows: BTreeMap<String, u64>,
    /// df instances (expired and capped) plus orphan engine roots.
    roots: u64,
}

/// Seeds (or reuses) the realistic database of size `n`, records its shape, and, with
/// `dry_run`, returns what the daemon's dry run says a pass removes.
async fn prepare_size(
    server: &Server,
    n: u32,
    dry_run: bool,
    results: &mut Results,
) -> Result<(String, Option<Expected>)> {
    let seed = Seed::realistic(n);
    eprintln!("seeding {} roots (backlog({n}))", thousands(n.into()));
    let (db, took) = server.seeded(seed).await?;
    let client = server.connect(&db).await?;
    let sizes = server::table_sizes(&client).await?;
    let size = server::database_size(&client).await?;
    drop(client);
    if !took.is_zero() {
        eprintln!("  seeded in {}", secs(took));
        results.notes.push(format!(
            "N = {}: seeded in {} (backlog + VACUUM ANALYZE, {} roots/s); {} MiB; rows: {}",
            thousands(n.into()),
            secs(took),
            rate(n.into(), took),
            size / (1024 * 1024),
            sizes
                .iter()
                .map(|(t, c)| format!("{t} {}", thousands(*c as u64)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !dry_run {
        return Ok((db, None));
    }
    eprintln!("  dry run (in-process) for the expected counts");
    let cfg = server.config(&db);
    let pool = db::build_pool(&cfg)?;
    let started = Instant::now();
    let report = pass::run_pass(&pool, &cfg, true, &CancellationToken::new())
        .await
        .map_err(|f| anyhow::anyhow!("dry run failed: {}", f.error))?;
    let took = started.elapsed();
    pool.close();
    drop(pool);
    let rows: BTreeMap<String, u64> = report
        .rows_deleted
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let label = thousands(n.into());
    results.line(
        "dry run (in-process, nothing deleted)",
        &label,
        format!("{} ({} batches)", secs(took), report.batches),
        "",
        "",
    );
    results.notes.push(format!(
        "N = {label}: a pass removes {} expired + {} capped df instances, {} orphan roots, {} engine children, skips {} unsettled; {} rows: {}",
        thousands(report.expired_removed.total()),
        thousands(report.capped_removed),
        thousands(report.orphans_reclaimed),
        thousands(report.engine_children_removed),
        thousands(report.skipped_unsettled),
        thousands(rows.values().sum()),
        rows.iter()
            .map(|(t, c)| format!("{t} {}", thousands(*c)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let roots = report.instances_removed();
    Ok((db, Some(Expected { rows, roots })))
}

/// A timed run and where the machine's cores spent it.
#[derive(Debug, Clone, Copy)]
struct Timed {
    took: Duration,
    cpu: Option<CpuUse>,
}

/// A run of the daemon's `once` and where the machine's cores spent it.
struct PassRun {
    run: daemon::Run,
    cpu: Option<CpuUse>,
}

async fn floor_run(server: &Server, seed_db: &str, n: u32, run: u32) -> Result<(Timed, Expected)> {
    let db = format!("floor_{n}_{run}");
    server.fresh_copy(seed_db, &db).await?;
    let mut client = server.connect(&db).await?;
    let cfg = server.config(&db);
    let selection = floor::select(&client, &cfg).await?;
    eprintln!(
        "  floor run {}: selection {} df roots ({} bare), {} orphans, {} engine instances, computed in {}",
        run + 1,
        selection.df_roots,
        selection.bare,
        selection.orphans,
        selection.engine_members,
        secs(selection.took)
    );
    let mark = CpuMark::now();
    let (took, rows) = floor::delete(&mut client).await?;
    let cpu = mark.and_then(|m| m.since());
    drop(client);
    server.drop_db(&db).await?;
    eprintln!(
        "  floor run {}: {} rows in {} ({})",
        run + 1,
        thousands(rows.values().sum()),
        secs(took),
        cpu::describe(cpu)
    );
    let roots = (selection.df_roots + selection.orphans) as u64;
    Ok((Timed { took, cpu }, Expected { rows, roots }))
}

fn floor_line(n: u32, e: &Expected, floors: &[Timed], results: &mut Results) {
    let total: u64 = e.rows.values().sum();
    let figure = floors
        .iter()
        .map(|t| {
            format!(
                "{} ({} roots/s, {} rows/s; {})",
                secs(t.took),
                rate(e.roots, t.took),
                rate(total, t.took),
                cpu::describe(t.cpu)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    results.line(
        "floor: set-wise delete, one transaction",
        &thousands(n.into()),
        format!(
            "{figure}; {} roots, {} rows",
            thousands(e.roots),
            thousands(total)
        ),
        "",
        "",
    );
}

/// One `once` over a fresh copy of `seed_db`, checked against `expected` (what the dry run
/// or the floor removes).
async fn pass_run(
    server: &Server,
    daemon: &Daemon,
    seed_db: &str,
    n: u32,
    run: u32,
    expected: Option<&Expected>,
) -> Result<PassRun> {
    let db = format!("pass_{n}_{run}");
    server.fresh_copy(seed_db, &db).await?;
    let dsn = server.dsn(&db);
    let d = daemon.clone();
    eprintln!("  pass run {}: df-reconciler once --json", run + 1);
    let mark = CpuMark::now();
    let result = tokio::task::spawn_blocking(move || d.once(&dsn, &[])).await??;
    let cpu = mark.and_then(|m| m.since());
    server.drop_db(&db).await?;
    if let Some(e) = expected {
        if result.rows_deleted != e.rows || result.instances_removed != e.roots {
            bail!(
                "the daemon removed {} roots, rows {:?}; expected {} roots, rows {:?}",
                result.instances_removed,
                result.rows_deleted,
                e.roots,
                e.rows
            );
        }
    }
    eprintln!(
        "  pass run {}: {} ({} in the pass, {} ms paused), {} batches, peak RSS {} ({})",
        run + 1,
        secs(result.wall),
        ms(Duration::from_millis(result.pass_ms)),
        result.report["paused_ms"],
        result.batches,
        result.max_rss_kb.map_or("?".into(), mib),
        cpu::describe(cpu)
    );
    Ok(PassRun { run: result, cpu })
}

/// What [`pass_lines`] reports on.
struct PassSummary<'a> {
    n: u32,
    seed_db: &'a str,
    /// Floor runs, each run just before the pass run of the same index.
    floors: &'a [Timed],
    passes: &'a [PassRun],
    /// Also run the in-process pass for batch latencies.
    latency: bool,
}

async fn pass_lines(server: &Server, p: &PassSummary<'_>, results: &mut Results) -> Result<()> {
    let n = p.n;
    let label = thousands(n.into());
    let first = &p.passes[0].run;
    let roots = first.instances_removed;
    let total = first.rows_total();
    let figure = p
        .passes
        .iter()
        .map(|p| {
            format!(
                "{} ({} roots/s, {} rows/s; {})",
                secs(p.run.wall),
                rate(roots, p.run.wall),
                rate(total, p.run.wall),
                cpu::describe(p.cpu)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    results.line(
        "pass: `df-reconciler once`, batch 1000",
        &label,
        format!(
            "{figure}; {} roots, {} rows, {} batches",
            thousands(roots),
            thousands(total),
            first.batches
        ),
        "",
        "",
    );
    if !p.floors.is_empty() {
        // Each floor run with the pass run right after it.
        let pairs: Vec<f64> = p
            .floors
            .iter()
            .zip(p.passes)
            .map(|(f, p)| f.took.as_secs_f64() / p.run.wall.as_secs_f64())
            .collect();
        let floor = mean(&p.floors.iter().map(|f| f.took).collect::<Vec<_>>());
        let daemon = mean(&p.passes.iter().map(|p| p.run.wall).collect::<Vec<_>>());
        let median = median(&pairs);
        results.line(
            "ratio floor / daemon (median of floor-then-pass pairs)",
            &label,
            format!(
                "{median:.2} (pairs: {}; ratio of the means {:.2} = {} / {})",
                stats::ratios(&pairs, ""),
                floor.as_secs_f64() / daemon.as_secs_f64(),
                secs(floor),
                secs(daemon)
            ),
            ">= 0.6",
            holds(median >= 0.6),
        );
    }
    if let Some(kb) = p.passes.iter().filter_map(|p| p.run.max_rss_kb).max() {
        results.rss.insert(n, kb);
        results.line("peak RSS of `once`", &label, mib(kb), "", first.rss_method);
    }
    if p.latency {
        batch_latency(server, p.seed_db, n, results).await?;
    }
    Ok(())
}

fn mean(values: &[Duration]) -> Duration {
    values.iter().sum::<Duration>() / values.len().max(1) as u32
}

/// An in-process pass with the daemon's per-batch hook, which the pass calls after every
/// committed batch with that batch transaction's wall time.
async fn batch_latency(
    server: &Server,
    seed_db: &str,
    n: u32,
    results: &mut Results,
) -> Result<()> {
    let db = format!("latency_{n}");
    server.fresh_copy(seed_db, &db).await?;
    let cfg = server.config(&db);
    let pool = db::build_pool(&cfg)?;
    let durations: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let sink = durations.clone();
    let options = PassOptions {
        dry_run: false,
        on_batch: Some(Arc::new(move |took| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(took);
        })),
        ..PassOptions::default()
    };
    let started = Instant::now();
    let report: PassReport = pass::run_pass_with(&pool, &cfg, &options, &CancellationToken::new())
        .await
        .map_err(|f| anyhow::anyhow!("in-process pass failed: {}", f.error))?;
    let wall = started.elapsed();
    pool.close();
    drop(pool);
    server.drop_db(&db).await?;
    let durations = std::mem::take(&mut *durations.lock().unwrap_or_else(|e| e.into_inner()));
    let label = thousands(n.into());
    let (Some(p50), Some(p99), Some(max)) = (
        percentile(&durations, 50.0),
        percentile(&durations, 99.0),
        percentile(&durations, 100.0),
    ) else {
        results.notes.push(format!(
            "N = {label}: too few batches ({}) for batch latencies",
            report.batches
        ));
        return Ok(());
    };
    results.line(
        "batch transaction (in-process pass)",
        &label,
        format!(
            "p50 {}, p99 {}, max {} over {} batches; pass {}",
            ms(p50),
            ms(p99),
            ms(max),
            durations.len(),
            secs(wall)
        ),
        "",
        "",
    );
    Ok(())
}

async fn rss(server: &Server, daemon: &Daemon, args: &Args, results: &mut Results) -> Result<()> {
    let mut sizes = vec![SMALL_N];
    if args.big {
        sizes.push(BIG_N);
    }
    for n in sizes {
        if results.rss.contains_key(&n) {
            continue;
        }
        eprintln!("peak RSS at {} roots", thousands(n.into()));
        let (seed_db, took) = server.seeded(Seed::realistic(n)).await?;
        if !took.is_zero() {
            eprintln!("  seeded in {}", secs(took));
        }
        let db = format!("rss_{n}");
        server.fresh_copy(&seed_db, &db).await?;
        let dsn = server.dsn(&db);
        let d = daemon.clone();
        let run = tokio::task::spawn_blocking(move || d.once(&dsn, &[])).await??;
        server.drop_db(&db).await?;
        if let Some(kb) = run.max_rss_kb {
            results.rss.insert(n, kb);
            results.line(
                "peak RSS of `once`",
                &thousands(n.into()),
                format!(
                    "{} (pass {}, {} roots removed)",
                    mib(kb),
                    secs(run.wall),
                    thousands(run.instances_removed)
                ),
                "",
                run.rss_method,
            );
        }
    }
    let small = results.rss.get(&SMALL_N).copied();
    let largest = results.rss.iter().next_back().map(|(n, kb)| (*n, *kb));
    if let (Some(small), Some((n, large))) = (small, largest) {
        if n > SMALL_N {
            let growth = large as f64 / 1024.0 - small as f64 / 1024.0;
            results.line(
                "peak RSS growth",
                &format!("10,000 -> {}", thousands(n.into())),
                format!("{growth:+.1} MiB"),
                "< 10 MB",
                holds(growth * 1.048_576 < 10.0),
            );
        }
    }
    Ok(())
}

/// A pass with nothing to delete on a df table of live and young rows.
///
/// Idle passes on `backlog(n, 0, 0)`: no expired row and no orphan; 50% young terminal,
/// 40% running, 5% pending, and 5% unsettled (df terminal and expired, engine still
/// Running). Unsettled rows are eligible (the daemon counts them in `backlog_eligible`) and
/// every pass must examine and skip them, so the "nothing eligible" figure turns them into
/// running rows first ([`Seed::idle`]); the seed as it is gives the second figure. Under the
/// default hard cap of 10,000 the young terminal rows would be capped, so the passes run
/// with `retention.hard_cap` raised above the table size: every row stays. Passes run with
/// `--no-drift` (drift is counted on its own interval, `pass.drift_interval`); one more
/// pass with the drift counts gives their cost. Two passes each, same database.
async fn idle(server: &Server, daemon: &Daemon, args: &Args, results: &mut Results) -> Result<()> {
    let n = args.idle_n.unwrap_or(if args.big { BIG_N } else { args.n });
    for (seed, what, with_drift) in [
        (Seed::idle(n), "idle pass (nothing eligible)", true),
        (
            Seed::live(n),
            "idle pass with 5% unsettled rows (eligible, examined and skipped)",
            false,
        ),
    ] {
        idle_figure(server, daemon, seed, what, with_drift, results).await?;
    }
    Ok(())
}

async fn idle_figure(
    server: &Server,
    daemon: &Daemon,
    seed: Seed,
    what: &str,
    with_drift: bool,
    results: &mut Results,
) -> Result<()> {
    let n = seed.n;
    let label = thousands(n.into());
    eprintln!("idle: seeding {label} live roots ({})", seed.db_name());
    let (seed_db, took) = server.seeded(seed).await?;
    let client = server.connect(&seed_db).await?;
    let count = |sql: &'static str| {
        let client = &client;
        async move { anyhow::Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0) as u64) }
    };
    let df_rows = count("SELECT count(*) FROM df.instances").await?;
    let terminal = count(
        "SELECT count(*) FROM df.instances WHERE status IN ('completed', 'failed', 'cancelled')",
    )
    .await?;
    let engine_rows = count("SELECT count(*) FROM _duroxide.instances").await?;
    drop(client);
    if !took.is_zero() {
        results.notes.push(format!(
            "{}: {label} live roots seeded in {} ({} df rows of which {} terminal, {} engine instances)",
            seed.db_name(),
            secs(took),
            thousands(df_rows),
            thousands(terminal),
            thousands(engine_rows)
        ));
    }
    let db = format!("idle_{}", seed.db_name());
    server.fresh_copy(&seed_db, &db).await?;
    let dsn = server.dsn(&db);
    let keep_all = vec![format!("retention.hard_cap={}", u64::from(n) * 10)];
    let pass = |once_args: &'static [&'static str]| {
        let (daemon, d, s) = (daemon.clone(), dsn.clone(), keep_all.clone());
        async move {
            let r = tokio::task::spawn_blocking(move || daemon.once_with(&d, &s, once_args, true))
                .await??;
            if r.rows_total() != 0 {
                bail!("the idle pass deleted rows: {:?}", r.rows_deleted);
            }
            eprintln!(
                "  {}: {} (pass {} ms, {} batches, {} skipped unsettled)",
                once_args.join(" "),
                secs(r.wall),
                r.pass_ms,
                r.batches,
                r.report["skipped_unsettled"]
            );
            anyhow::Ok(r)
        }
    };
    let mut figures = Vec::new();
    let mut worst = Duration::ZERO;
    for _ in 0..2 {
        let r = pass(&["--no-drift"]).await?;
        worst = worst.max(r.wall);
        figures.push(format!("{} ({} batches)", secs(r.wall), r.batches));
    }
    let rows = format!(
        "{} df rows ({} terminal), {} engine instances",
        thousands(df_rows),
        thousands(terminal),
        thousands(engine_rows)
    );
    results.line(
        &format!("{what}; hard cap raised so every row stays"),
        &rows,
        figures.join("; "),
        "< 1 s",
        holds(worst < Duration::from_secs(1)),
    );
    if with_drift {
        let r = pass(&[]).await?;
        results.line(
            "the same pass counting drift (pass.drift_interval, default 1h)",
            &rows,
            secs(r.wall),
            "",
            "",
        );
    }
    server.drop_db(&db).await?;
    Ok(())
}

/// What the impact measurement needs to know of the concurrent pass.
struct PassOutcome {
    removed: u64,
    wall: Duration,
    complete: bool,
    paused_ms: u64,
}

/// An in-process pass on its own single-threaded runtime (blocking: call it from
/// `spawn_blocking`) that sleeps `pause` after every batch.
fn paced_pass(cfg: &df_reconciler_core::config::Config, pause: Duration) -> Result<PassOutcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pool = db::build_pool(cfg)?;
        let options = PassOptions {
            dry_run: false,
            metrics: None,
            // Runs on this dedicated thread between two batches: the pass pauses, the
            // workload's runtime does not.
            on_batch: Some(Arc::new(move |_| std::thread::sleep(pause))),
            ..PassOptions::default()
        };
        let started = Instant::now();
        let report = pass::run_pass_with(&pool, cfg, &options, &CancellationToken::new())
            .await
            .map_err(|f| anyhow::anyhow!("paced pass failed: {}", f.error))?;
        pool.close();
        Ok(PassOutcome {
            removed: report.instances_removed(),
            wall: started.elapsed(),
            complete: report.complete,
            paused_ms: report.paused_ms,
        })
    })
}

async fn connect_many(server: &Server, db: &str, k: usize) -> Result<Vec<tokio_postgres::Client>> {
    let mut clients = Vec::with_capacity(k);
    for _ in 0..k {
        clients.push(server.connect(db).await?);
    }
    Ok(clients)
}

/// One round of the impact measurement: the workload without a pass, then during one.
struct ImpactRound {
    baseline: workload::Samples,
    baseline_window: Duration,
    baseline_cpu: Option<CpuUse>,
    during: workload::Samples,
    during_window: Duration,
    during_cpu: Option<CpuUse>,
    pass: PassOutcome,
}

impl ImpactRound {
    fn ratio(&self) -> f64 {
        p99(&self.baseline).map_or(f64::NAN, |b| {
            p99(&self.during).map_or(f64::NAN, |d| d.as_secs_f64() / b.as_secs_f64().max(1e-9))
        })
    }
}

fn p99(s: &workload::Samples) -> Option<Duration> {
    percentile(&s.all, 99.0)
}

/// p99 of the workload's transactions for `impact_secs` without a pass, then while a
/// pass runs over a fresh backlog of N roots; `impact_rounds` times, each on a fresh copy,
/// so that each ratio compares two windows a few seconds apart.
async fn impact(
    server: &Server,
    daemon: &Daemon,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
    let n = args.n;
    let label = thousands(n.into());
    let (seed_db, _) = server.seeded(Seed::realistic(n)).await?;
    let mut rounds = Vec::new();
    for round in 0..args.impact_rounds.max(1) {
        let r = impact_round(server, daemon, args, &seed_db, round).await?;
        eprintln!(
            "  impact round {}: p99 {} without ({}), {} during ({}): {:.2}x",
            round + 1,
            ms(p99(&r.baseline).unwrap_or_default()),
            cpu::describe(r.baseline_cpu),
            ms(p99(&r.during).unwrap_or_default()),
            cpu::describe(r.during_cpu),
            r.ratio()
        );
        rounds.push(r);
    }
    let describe = |s: &workload::Samples, w: Duration, c: Option<CpuUse>| {
        format!(
            "p50 {}, p99 {}, max {}, {} tx/s{}, {}",
            ms(percentile(&s.all, 50.0).unwrap_or_default()),
            ms(p99(s).unwrap_or_default()),
            ms(percentile(&s.all, 100.0).unwrap_or_default()),
            rate(s.all.len() as u64, w),
            if s.errors > 0 {
                format!(", {} errors", s.errors)
            } else {
                String::new()
            },
            cpu::describe(c)
        )
    };
    let batch_pause = Duration::from_millis(args.impact_batch_pause_ms);
    for (i, r) in rounds.iter().enumerate() {
        results.line(
            &format!("round {}: workload without a pass", i + 1),
            &label,
            format!(
                "{} ({} tasks, {})",
                describe(&r.baseline, r.baseline_window, r.baseline_cpu),
                args.impact_tasks,
                secs(r.baseline_window)
            ),
            "",
            "",
        );
        results.line(
            &format!("round {}: workload during a pass", i + 1),
            &label,
            format!(
                "{} ({} of a pass that removed {} roots in {}{}, {} ms paused{})",
                describe(&r.during, r.during_window, r.during_cpu),
                secs(r.during_window),
                thousands(r.pass.removed),
                secs(r.pass.wall),
                if r.pass.complete {
                    ""
                } else {
                    ", stopped by pass.max_duration"
                },
                r.pass.paused_ms,
                if batch_pause.is_zero() {
                    String::new()
                } else {
                    format!(", in-process, {} pause after each batch", ms(batch_pause))
                }
            ),
            "",
            "",
        );
    }
    let ratios: Vec<f64> = rounds.iter().map(ImpactRound::ratio).collect();
    let median = median(&ratios);
    results.line(
        "workload p99 during / without (median of the rounds)",
        &label,
        format!("{median:.2}x (rounds: {})", stats::ratios(&ratios, "x")),
        "<= 1.5x",
        holds(median <= 1.5),
    );
    // Per kind of transaction, every round's samples together.
    let mut baseline = workload::Samples::default();
    let mut during = workload::Samples::default();
    for r in rounds {
        baseline.merge(r.baseline);
        during.merge(r.during);
    }
    for op in workload::OPS {
        results.notes.push(format!(
            "impact, {op:?} (all rounds): p99 {} without, {} during a pass",
            ms(percentile(&baseline.of(op), 99.0).unwrap_or_default()),
            ms(percentile(&during.of(op), 99.0).unwrap_or_default())
        ));
    }
    Ok(())
}

async fn impact_round(
    server: &Server,
    daemon: &Daemon,
    args: &Args,
    seed_db: &str,
    round: u32,
) -> Result<ImpactRound> {
    let db = format!("impact_{}_{round}", args.n);
    server.fresh_copy(seed_db, &db).await?;
    let pause = Duration::from_millis(args.impact_pause_ms);
    let window = Duration::from_secs(args.impact_secs);

    eprintln!("impact round {}: warm-up 2 s", round + 1);
    let stop = CancellationToken::new();
    let warm = tokio::spawn(workload::run(
        connect_many(server, &db, args.impact_tasks).await?,
        0,
        pause,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    warm.await??;

    eprintln!(
        "impact round {}: {} s without a pass",
        round + 1,
        window.as_secs()
    );
    let stop = CancellationToken::new();
    let mark = CpuMark::now();
    let started = Instant::now();
    let baseline = tokio::spawn(workload::run(
        connect_many(server, &db, args.impact_tasks).await?,
        1,
        pause,
        stop.clone(),
    ));
    tokio::time::sleep(window).await;
    stop.cancel();
    let baseline = baseline.await??;
    let baseline_window = started.elapsed();
    let baseline_cpu = mark.and_then(|m| m.since());

    eprintln!(
        "impact round {}: up to {} s during a pass",
        round + 1,
        window.as_secs()
    );
    let stop = CancellationToken::new();
    let during = tokio::spawn(workload::run(
        connect_many(server, &db, args.impact_tasks).await?,
        2,
        pause,
        stop.clone(),
    ));
    let mark = CpuMark::now();
    let started = Instant::now();
    let (d, dsn) = (daemon.clone(), server.dsn(&db));
    // The pass stops itself (between batches) shortly after the window.
    let stop_after = window + Duration::from_secs(3);
    let batch_pause = Duration::from_millis(args.impact_batch_pause_ms);
    let mut cfg = server.config(&db);
    cfg.pass.max_duration = Some(stop_after);
    let mut pass = tokio::task::spawn_blocking(move || {
        if batch_pause.is_zero() {
            let sets = vec![format!("pass.max_duration={}s", stop_after.as_secs())];
            d.once_with(&dsn, &sets, &[], false).map(|r| PassOutcome {
                removed: r.instances_removed,
                wall: r.wall,
                complete: r.report["complete"] == serde_json::Value::Bool(true),
                paused_ms: r.report["paused_ms"].as_u64().unwrap_or(0),
            })
        } else {
            paced_pass(&cfg, batch_pause)
        }
    });
    let pass_result = tokio::select! {
        r = &mut pass => { stop.cancel(); Some(r) }
        _ = tokio::time::sleep(window) => { stop.cancel(); None }
    };
    let during_window = started.elapsed();
    let during_cpu = mark.and_then(|m| m.since());
    let during = during.await??;
    let pass = match pass_result {
        Some(r) => r??,
        None => pass.await??,
    };
    server.drop_db(&db).await?;
    Ok(ImpactRound {
        baseline,
        baseline_window,
        baseline_cpu,
        during,
        during_window,
        during_cpu,
        pass,
    })
}
