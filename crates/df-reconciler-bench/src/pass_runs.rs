//! Floor and pass at each size: seed (and dry-run) the size, then alternate floor and
//! pass runs on fresh copies, each checked against the dry run (or the first run); then
//! the floor line, the pass line, the ratio, the pass's peak RSS, and the batch latency.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::cpu::{self, CpuMark, CpuUse};
use crate::daemon::{self, Daemon};
use crate::dry_run::{prepare_size, Expected};
use crate::floor::{self, Timed};
use crate::latency::batch_latency;
use crate::ratio::Ratio;
use crate::results::Results;
use crate::server::Server;
use crate::stats::{mib, ms, rate, secs, thousands};
use crate::{Args, BIG_N};

/// The sizes floor and pass run at: N, and 1M with `--big`.
fn sizes(n: u32, big: bool) -> Vec<u32> {
    let mut sizes = vec![n];
    if big && n != BIG_N {
        sizes.push(BIG_N);
    }
    sizes
}

/// Floor-then-pass pairs at size `n`: 1M runs once (seeding, floor and pass take minutes
/// each there).
fn repeat_at(n: u32, repeat: u32) -> u32 {
    if n == BIG_N {
        1
    } else {
        repeat
    }
}

/// The floor runs (with `floor`) and the pass runs (with `pass`) at every size, and their
/// lines.
pub async fn floor_and_pass(
    server: &Server,
    daemon: &Daemon,
    args: &Args,
    floor: bool,
    pass: bool,
    results: &mut Results,
) -> Result<()> {
    for n in sizes(args.n, args.big) {
        let repeat = repeat_at(n, args.repeat);
        let (seed_db, mut expected) =
            prepare_size(server, n, n <= args.dry_run_max, results).await?;
        // Floor and pass alternate, so that both sides of each ratio ran under the
        // same machine conditions (this VM's speed drifts by 20% within minutes).
        let mut floors: Vec<Timed> = Vec::new();
        let mut passes: Vec<PassRun> = Vec::new();
        for r in 0..repeat {
            if floor {
                let (timed, got) = floor::run(server, &seed_db, n, r).await?;
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
            if pass {
                let reference = expected.clone().or_else(|| {
                    passes.first().map(|first| Expected {
                        roots: first.run.instances_removed,
                        rows: first.run.rows_deleted.clone(),
                    })
                });
                passes.push(pass_run(server, daemon, &seed_db, n, r, reference.as_ref()).await?);
            }
        }
        if let (Some(e), false) = (&expected, floors.is_empty()) {
            floor::line(n, e, &floors, results);
        }
        if !passes.is_empty() {
            let summary = PassSummary {
                n,
                seed_db: &seed_db,
                floors: &floors,
                passes: &passes,
                latency: n == args.n && !args.no_latency,
            };
            pass_lines(server, &summary, results).await?;
        }
    }
    Ok(())
}

/// A run of the daemon's `once` and where the machine's cores spent it.
struct PassRun {
    run: daemon::Run,
    cpu: Option<CpuUse>,
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
        let floors: Vec<Duration> = p.floors.iter().map(|f| f.took).collect();
        let passes: Vec<Duration> = p.passes.iter().map(|p| p.run.wall).collect();
        Ratio::of(&floors, &passes).line(&label, results);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_one_million_with_big() {
        assert_eq!(sizes(200_000, false), vec![200_000]);
        assert_eq!(sizes(200_000, true), vec![200_000, BIG_N]);
        assert_eq!(sizes(BIG_N, true), vec![BIG_N]);
    }

    #[test]
    fn one_million_runs_once() {
        assert_eq!(repeat_at(10_000, 3), 3);
        assert_eq!(repeat_at(BIG_N, 3), 1);
    }
}
