//! The cost of retention rules: in-process passes over fresh copies of the realistic seed,
//! its df rows labelled `wl-0` .. `wl-11`, without rules and with ten (`wl-0` .. `wl-8` by
//! label, `wl-9` by label and role; `wl-10` and `wl-11` match none and take every test).
//! The rules keep the top-level windows and share the global cap, so both passes remove
//! the same instances: the difference is the cost of finding each row's rule. Passes
//! alternate, none then ten, on a fresh copy each; the figure is the median of the pairs'
//! ratios. In-process both: this build's core, not `--daemon-bin`.

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

    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut removed = None;
    for pair in 0..args.repeat.max(1) {
        for with_rules in [false, true] {
            let db = format!("rules_run_{}", args.n);
            server.fresh_copy(&template, &db).await?;
            let mut cfg = server.config(&db);
            if with_rules {
                cfg.retention.rules = rules.clone();
            }
            let (wall, n) = timed_pass(&cfg).await?;
            server.drop_db(&db).await?;
            eprintln!(
                "  pair {pair}: {} rules: {} ({n} removed)",
                if with_rules { "ten" } else { "no" },
                secs(wall)
            );
            if *removed.get_or_insert(n) != n {
                bail!("the passes removed different counts: {removed:?} and {n}");
            }
            if with_rules { &mut with } else { &mut without }.push(wall.as_secs_f64());
        }
    }
    server.drop_db(&template).await?;
    let pairs: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w / o).collect();
    let ratio = median(&pairs);
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
        "<= 1.10",
        holds(ratio <= BUDGET),
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

/// One in-process pass: its wall time and the roots it removed.
async fn timed_pass(cfg: &Config) -> Result<(Duration, u64)> {
    let pool = db::build_pool(cfg)?;
    let started = Instant::now();
    let report = pass::run_pass(&pool, cfg, false, &CancellationToken::new())
        .await
        .map_err(|f| anyhow::anyhow!("in-process pass failed: {}", f.error))?;
    let wall = started.elapsed();
    pool.close();
    if !report.complete {
        bail!("the pass stopped early");
    }
    Ok((wall, report.instances_removed()))
}
