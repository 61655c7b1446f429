//! Idle passes: a pass with nothing to delete on a df table of live and young rows.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::daemon::Daemon;
use crate::results::{holds, Results};
use crate::server::{Seed, Server};
use crate::stats::{secs, thousands};
use crate::{Args, BIG_N};

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
pub async fn measure(
    server: &Server,
    daemon: &Daemon,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
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
