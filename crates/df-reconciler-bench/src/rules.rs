//! The cost of retention rules: in-process passes over fresh copies of the realistic seed,
//! its df rows labelled `wl-0` .. `wl-11`, without rules and with ten (`wl-0` .. `wl-8` by
//! label, `wl-9` by label and role; `wl-10` and `wl-11` match none and take every test).
//! The rules keep the top-level windows and share the global cap, so both passes remove
//! the same instances: the difference is the cost of finding each row's rule. Passes
//! alternate, none then ten, on a fresh copy each. In-process both: this build's core,
//! not `--daemon-bin`.
//!
//! Two figures per pass: wall time, and CPU time (the server's backends, children of the
//! postmaster, plus this process), which other load on the machine barely changes while
//! it stretches wall times (2 shared cores). Each is the median of the pairs' ratios; the
//! verdict is on CPU time, the cost the rules add.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use df_reconciler_core::config::Config;
use df_reconciler_core::db;
use df_reconciler_core::pass;
use df_reconciler_core::rules::RetentionRule;
use tokio_util::sync::CancellationToken;

use crate::results::{holds, Results};
use crate::server::{Seed, Server};
use crate::stats::{median, ratios, secs, thousands};
use crate::Args;

/// The pass with rules may take at most this much longer than the pass without.
const BUDGET: f64 = 1.10;

/// Labels the seeded rows, then runs `args.repeat` pairs of passes.
pub async fn measure(server: &Server, args: &Args, results: &mut Results) -> Result<()> {
    let seed = Seed::realistic(args.n);
    let (seed_db, _) = server.seeded(seed).await?;
    let template = format!("rules_{}", args.n);
    eprintln!("rules: labelling a copy of {seed_db}");
    server.copy_db(&seed_db, &template).await?;
    let client = server.connect(&template).await?;
    client
        .batch_execute(
            "UPDATE df.instances SET label = 'wl-' || (pg_catalog.abs(pg_catalog.hashtext(id::text)) % 12)",
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE").await?;
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    drop(client);
    let rules = ten_rules(&role);

    let postmaster = server.postmaster_pid();
    dry_runs(server, &template, &rules, postmaster, args, results).await?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut cpu_without = Vec::new();
    let mut cpu_with = Vec::new();
    let mut removed = None;
    for pair in 0..args.repeat.max(1) {
        for with_rules in [false, true] {
            let db = format!("rules_run_{}", args.n);
            server.fresh_copy(&template, &db).await?;
            let mut cfg = server.config(&db);
            if with_rules {
                cfg.retention.rules = rules.clone();
            }
            let (wall, cpu, n) = timed(&cfg, postmaster, false).await?;
            server.drop_db(&db).await?;
            eprintln!(
                "  pair {pair}: {} rules: {} wall, {} CPU ({n} removed)",
                if with_rules { "ten" } else { "no" },
                secs(wall),
                secs(cpu)
            );
            if with_rules {
                &mut cpu_with
            } else {
                &mut cpu_without
            }
            .push(cpu.as_secs_f64());
            if *removed.get_or_insert(n) != n {
                bail!("the passes removed different counts: {removed:?} and {n}");
            }
            if with_rules { &mut with } else { &mut without }.push(wall.as_secs_f64());
        }
    }
    server.drop_db(&template).await?;
    let pair_ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(w, o)| w / o).collect() };
    let pairs = pair_ratios(&with, &without);
    let ratio = median(&pairs);
    let cpu_pairs = pair_ratios(&cpu_with, &cpu_without);
    let cpu_ratio = median(&cpu_pairs);
    // Other load only ever slows a run down: the fastest run of each side is the one
    // least disturbed, so their ratio is reported beside the median of the pairs.
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let fastest_ratio = fastest(&with) / fastest(&without);
    results.line(
        "pass with ten [[retention.rules]] / pass with none (in-process, same removals)",
        &thousands(args.n.into()),
        format!(
            "{ratio:.2} (pairs: {}; fastest runs {fastest_ratio:.2} = {:.2} s / {:.2} s)",
            ratios(&pairs, ""),
            fastest(&with),
            fastest(&without)
        ),
        "",
        "",
    );
    results.line(
        "the same passes' CPU time (server backends + this process): ten rules / none",
        &thousands(args.n.into()),
        format!(
            "{cpu_ratio:.2} (pairs: {}; medians {:.2} s / {:.2} s)",
            ratios(&cpu_pairs, ""),
            median(&cpu_with),
            median(&cpu_without)
        ),
        "<= 1.10",
        holds(cpu_ratio <= BUDGET),
    );
    Ok(())
}

/// Dry runs, alternating without and with the rules on the same labelled copy (a dry run
/// deletes nothing): the same selections over every row, without the deletes whose cost
/// dwarfs the rules', so the rules' own cost shows most plainly.
async fn dry_runs(
    server: &Server,
    template: &str,
    rules: &[RetentionRule],
    postmaster: Option<u32>,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
    let db = format!("rules_dry_{}", args.n);
    server.fresh_copy(template, &db).await?;
    let (mut cpu_with, mut cpu_without, mut with, mut without) = (vec![], vec![], vec![], vec![]);
    for pair in 0..args.repeat.max(1) + 2 {
        for with_rules in [false, true] {
            let mut cfg = server.config(&db);
            if with_rules {
                cfg.retention.rules = rules.to_vec();
            }
            let (wall, cpu, n) = timed(&cfg, postmaster, true).await?;
            eprintln!(
                "  dry run {pair}: {} rules: {} wall, {} CPU ({n} would go)",
                if with_rules { "ten" } else { "no" },
                secs(wall),
                secs(cpu)
            );
            if with_rules { &mut with } else { &mut without }.push(wall.as_secs_f64());
            if with_rules {
                &mut cpu_with
            } else {
                &mut cpu_without
            }
            .push(cpu.as_secs_f64());
        }
    }
    server.drop_db(&db).await?;
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(w, o)| w / o).collect() };
    let (pairs, cpu_pairs) = (ratio(&with, &without), ratio(&cpu_with, &cpu_without));
    results.line(
        "dry run with ten rules / none, same database (wall; CPU)",
        &thousands(args.n.into()),
        format!(
            "{:.2} (pairs: {}); CPU {:.2} (pairs: {}; medians {:.2} s / {:.2} s)",
            median(&pairs),
            ratios(&pairs, ""),
            median(&cpu_pairs),
            ratios(&cpu_pairs, ""),
            median(&cpu_with),
            median(&cpu_without)
        ),
        "",
        "",
    );
    Ok(())
}

/// Ten rules in front of the default, none changing a window or a cap.
fn ten_rules(role: &str) -> Vec<RetentionRule> {
    (0..10)
        .map(|i| RetentionRule {
            name: format!("wl{i}"),
            label: Some(format!("wl-{i}")),
            submitted_by: (i == 9).then(|| role.to_owned()),
            ..RetentionRule::default()
        })
        .collect()
}

/// One in-process pass (a dry run when `dry_run`): its wall time, its CPU time and the
/// roots it removed.
async fn timed(
    cfg: &Config,
    postmaster: Option<u32>,
    dry_run: bool,
) -> Result<(Duration, Duration, u64)> {
    let pool = db::build_pool(cfg)?;
    let before = cpu_ticks(postmaster);
    let started = Instant::now();
    let report = pass::run_pass(&pool, cfg, dry_run, &CancellationToken::new())
        .await
        .map_err(|f| anyhow::anyhow!("in-process pass failed: {}", f.error))?;
    let wall = started.elapsed();
    // Before the pool closes: a backend's CPU time goes with its process.
    let after = cpu_ticks(postmaster);
    pool.close();
    if !report.complete {
        bail!("the pass stopped early");
    }
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    let cpu = Duration::from_secs_f64(ticks as f64 / procfs::ticks_per_second() as f64);
    Ok((wall, cpu, report.instances_removed()))
}

/// CPU ticks (user + system) so far of this process and of every child of the postmaster,
/// by pid; empty where /proc cannot be read.
fn cpu_ticks(postmaster: Option<u32>) -> HashMap<i32, u64> {
    let mut ticks = HashMap::new();
    let me = std::process::id() as i32;
    let Ok(all) = procfs::process::all_processes() else {
        return ticks;
    };
    for process in all.flatten() {
        let Ok(stat) = process.stat() else { continue };
        let ours = stat.pid == me || postmaster.is_some_and(|p| stat.ppid == p as i32);
        if ours {
            ticks.insert(stat.pid, stat.utime + stat.stime);
        }
    }
    ticks
}
