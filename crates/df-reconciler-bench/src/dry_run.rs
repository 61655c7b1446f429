//! Seeding a size for floor and pass, and the daemon's dry run over it: what a pass
//! removes there, the reference every floor and pass run is checked against.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use df_reconciler_core::{db, pass};
use tokio_util::sync::CancellationToken;

use crate::results::Results;
use crate::server::{self, Seed, Server};
use crate::stats::{rate, secs, thousands};

/// What a pass over a seeded database removes: from the daemon's dry run, else from the
/// floor's selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Rows per `schema.table`, zeros left out.
    pub rows: BTreeMap<String, u64>,
    /// df instances (expired and capped) plus orphan engine roots.
    pub roots: u64,
}

/// Seeds (or reuses) the realistic database of size `n`, records its shape, and, with
/// `dry_run`, returns what the daemon's dry run says a pass removes.
pub async fn prepare_size(
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
