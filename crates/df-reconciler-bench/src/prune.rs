//! Pruning a backlog of old generations: `PRUNE_LOOPS` live root loops, each with
//! `KEEP + PER_LOOP` generations (ContinuedAsNew executions with 6 history rows each, all
//! ended two days ago), so a pass with the default `retention.keep_executions` (10) and
//! `retention.execution_min_age` (1h) prunes `PRUNE_LOOPS * PER_LOOP` generations.
//!
//! Floor: the same rows deleted set-wise in ONE statement (every execution outside its
//! instance's newest `KEEP`, with its history), no batches, no locks beyond the deletes'
//! own. Daemon: `df-reconciler once --json --no-drift` on an identical copy. Floor and
//! pass runs alternate, each on a fresh copy, and the ratio is the median of the
//! floor-then-pass pairs ([`Ratio`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use df_reconciler_core::preflight;
use df_reconciler_core::sql::Schemas;

use crate::daemon::Daemon;
use crate::ratio::Ratio;
use crate::results::Results;
use crate::server::{Server, BASE_DB};
use crate::stats::{rate, secs, thousands};
use crate::Args;

/// Live root loops of the backlog.
const PRUNE_LOOPS: i32 = 1_000;
/// Generations of each loop the pass prunes: 100,000 in all.
const PER_LOOP: i32 = 100;
/// `retention.keep_executions`' default: the generations each loop keeps.
const KEEP: i32 = 10;
const SEED_DB: &str = "prune_seed";

/// Every live root loop with KEEP + PER_LOOP generations, two days old.
const SEED: &str = "
    SELECT df_fixture.workflow(pg_catalog.lpad(pg_catalog.to_hex(1879048192 + i), 8, '0'),
                               'running', 'Running', now() - interval '2 days', NULL,
                               executions => $2)
    FROM pg_catalog.generate_series(1, $1) AS i";

/// The floor: the executions outside each instance's newest `$1`, and their history, in
/// one statement.
const FLOOR: &str = "
    WITH doomed AS MATERIALIZED (
        SELECT r.instance_id, r.execution_id FROM (
            SELECT x.instance_id, x.execution_id,
                   pg_catalog.row_number() OVER (PARTITION BY x.instance_id
                                                 ORDER BY x.execution_id DESC) AS rank
            FROM _duroxide.executions x) r
        WHERE r.rank > $1),
    history AS (
        DELETE FROM _duroxide.history h USING doomed d
        WHERE h.instance_id = d.instance_id AND h.execution_id = d.execution_id
        RETURNING 1),
    executions AS (
        DELETE FROM _duroxide.executions x USING doomed d
        WHERE x.instance_id = d.instance_id AND x.execution_id = d.execution_id
        RETURNING 1)
    SELECT (SELECT pg_catalog.count(*) FROM history), (SELECT pg_catalog.count(*) FROM executions)";

/// Seeds the backlog once (reused when it exists), then alternates floor and pass runs.
pub async fn measure(
    server: &Server,
    daemon: &Daemon,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
    let generations = u64::try_from(PRUNE_LOOPS * PER_LOOP)?;
    let label = format!("{} generations", thousands(generations));
    seed(server, results).await?;
    let mut floors = Vec::new();
    let mut passes = Vec::new();
    let mut expected = None;
    for round in 0..args.repeat.max(1) {
        let db = format!("prune_run_{round}");
        server.fresh_copy(SEED_DB, &db).await?;
        let client = server.connect(&db).await?;
        let started = Instant::now();
        let row = client
            .query_one(FLOOR, &[&i64::from(KEEP)])
            .await
            .context("the set-wise floor delete")?;
        let floor = started.elapsed();
        let rows = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        drop(client);
        if rows.1 != generations {
            bail!(
                "the floor deleted {} generations, not {generations}",
                rows.1
            );
        }
        expected = Some(rows);
        eprintln!("prune: floor {} ({} history rows)", secs(floor), rows.0);
        floors.push(floor);

        server.fresh_copy(SEED_DB, &db).await?;
        let dsn = server.dsn(&db);
        let d = daemon.clone();
        let run =
            tokio::task::spawn_blocking(move || d.once_with(&dsn, &[], &["--no-drift"], true))
                .await??;
        let pruned = run.report["generations_pruned"].as_u64().unwrap_or(0);
        let history = run.report["rows_by_reason"]["pruned"]["_duroxide.history"]
            .as_u64()
            .unwrap_or(0);
        if (history, pruned) != rows {
            bail!(
                "the daemon pruned {pruned} generations and {history} history rows, the floor {} and {}",
                rows.1,
                rows.0
            );
        }
        eprintln!(
            "prune: daemon {} (pass {} ms, {} batches)",
            secs(run.wall),
            run.pass_ms,
            run.batches
        );
        passes.push(Duration::from_millis(run.pass_ms));
        server.drop_db(&db).await?;
    }
    let (history, _) = expected.unwrap_or_default();
    let floor = crate::stats::mean(&floors);
    let pass = crate::stats::mean(&passes);
    results.line(
        "prune old generations: floor (one set-wise DELETE of the same rows)",
        &label,
        format!(
            "{} ({} generations/s)",
            secs(floor),
            rate(generations, floor)
        ),
        "",
        "",
    );
    results.line(
        "prune old generations: daemon pass (`once --no-drift`, keep 10, 1h min age)",
        &label,
        format!("{} ({} generations/s)", secs(pass), rate(generations, pass)),
        "",
        "",
    );
    let ratio = Ratio::of(&floors, &passes);
    results.line(
        "prune: ratio floor / daemon (median of floor-then-pass pairs)",
        &label,
        ratio.figure(),
        "",
        "",
    );
    results.notes.push(format!(
        "prune: {PRUNE_LOOPS} live root loops of {} generations each; every pass prunes \
         {} generations with {} history rows; the daemon's time is its pass's own duration_ms",
        KEEP + PER_LOOP,
        thousands(generations),
        thousands(history)
    ));
    Ok(())
}

async fn seed(server: &Server, results: &mut Results) -> Result<()> {
    let admin = server.connect("postgres").await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&SEED_DB])
        .await?
        .is_some();
    drop(admin);
    if exists {
        return Ok(());
    }
    eprintln!("prune: seeding {PRUNE_LOOPS} loops");
    let started = Instant::now();
    server.copy_db(BASE_DB, SEED_DB).await?;
    let client = server.connect(SEED_DB).await?;
    client
        .execute(SEED, &[&PRUNE_LOOPS, &(KEEP + PER_LOOP)])
        .await
        .context("seeding the loops")?;
    // As every seeded database of the benchmark has them (`migrate --indexes`): without,
    // the orphan walk of the same pass reads every execution.
    preflight::create_supporting_indexes(&client, &Schemas::new("df", "_duroxide")).await?;
    client.batch_execute("VACUUM ANALYZE").await?;
    results
        .notes
        .push(format!("{SEED_DB}: seeded in {}", secs(started.elapsed())));
    Ok(())
}
