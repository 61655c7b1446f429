//! Impact: p99 latency of an engine-like workload without a pass and during one, in
//! rounds on fresh copies; the verdict is on the median round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use df_reconciler_core::config::Config;
use df_reconciler_core::db;
use df_reconciler_core::pass::{self, PassOptions};
use tokio_util::sync::CancellationToken;

use crate::cpu::{self, CpuMark, CpuUse};
use crate::daemon::Daemon;
use crate::results::{holds, Results};
use crate::server::{Seed, Server};
use crate::stats::{self, median, ms, percentile, rate, secs, thousands, Spread};
use crate::workload;
use crate::Args;

/// What the impact measurement needs to know of the concurrent pass.
struct PassOutcome {
    removed: u64,
    wall: Duration,
    complete: bool,
    paused_ms: u64,
}

/// An in-process pass on its own single-threaded runtime (blocking: call it from
/// `spawn_blocking`) that sleeps `pause` after every batch.
fn paced_pass(cfg: &Config, pause: Duration) -> Result<PassOutcome> {
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
pub async fn measure(
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
        let spread = Spread::of(&s.all).unwrap_or_default();
        format!(
            "p50 {}, p99 {}, max {}, {} tx/s{}, {}",
            ms(spread.p50),
            ms(spread.p99),
            ms(spread.max),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(millis: impl IntoIterator<Item = u64>) -> workload::Samples {
        workload::Samples {
            all: millis.into_iter().map(Duration::from_millis).collect(),
            ..workload::Samples::default()
        }
    }

    fn round(baseline: workload::Samples, during: workload::Samples) -> ImpactRound {
        ImpactRound {
            baseline,
            baseline_window: Duration::from_secs(15),
            baseline_cpu: None,
            during,
            during_window: Duration::from_secs(15),
            during_cpu: None,
            pass: PassOutcome {
                removed: 0,
                wall: Duration::ZERO,
                complete: true,
                paused_ms: 0,
            },
        }
    }

    #[test]
    fn ratio_of_the_p99s() {
        let r = round(samples(1..=100), samples((1..=100).map(|m| m * 3 / 2)));
        assert_eq!(p99(&r.baseline), Some(Duration::from_millis(99)));
        assert_eq!(p99(&r.during), Some(Duration::from_millis(148)));
        assert!((r.ratio() - 148.0 / 99.0).abs() < 1e-12);
    }

    #[test]
    fn no_ratio_without_samples() {
        assert!(round(samples([]), samples([5])).ratio().is_nan());
        assert!(round(samples([5]), samples([])).ratio().is_nan());
    }
}
