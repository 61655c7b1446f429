//! The floor: what the daemon deletes, computed set-wise in SQL beforehand and deleted in
//! ONE transaction by one DELETE per table. No batching, no locking, no re-checks: the
//! cheapest way PostgreSQL can remove those rows, and the yardstick for a pass.
//!
//! [`run`] times one floor on a fresh copy of a seeded database, [`line()`] reports the runs
//! of one size.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use df_reconciler_core::config::Config;
use df_reconciler_core::policy::TerminalStatus;
use df_reconciler_core::sql::engine::child_shape;
use tokio_postgres::Client;

use crate::cpu::{self, CpuMark, CpuUse};
use crate::dry_run::Expected;
use crate::results::Results;
use crate::server::Server;
use crate::stats::{rate, secs, thousands};

/// The engine's per-instance tables, in the order the daemon deletes them.
pub const ENGINE_TABLES: [&str; 8] = [
    "history",
    "executions",
    "orchestrator_queue",
    "worker_queue",
    "instance_locks",
    "kv_delta",
    "kv_store",
    "instances",
];

/// Rows the selection holds, per class.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Expired df rows (window or cap) that the daemon deletes.
    pub df_roots: i64,
    /// Of those, rows with no engine record.
    pub bare: i64,
    /// Orphan engine roots.
    pub orphans: i64,
    /// Every engine instance of the deleted trees.
    pub engine_members: i64,
    pub took: Duration,
}

/// Computes the daemon's selection into temp tables `f_df` (df ids to delete),
/// `f_members` (engine instances to delete) and `f_bare` (df ids without an engine record,
/// whose queue items go too), with the retention rules of `cfg`.
pub async fn select(client: &Client, cfg: &Config) -> Result<Selection> {
    let started = Instant::now();
    let secs = |s: TerminalStatus| cfg.retention.window_for(s).as_secs_f64();
    let child = child_shape("ei.instance_id");
    let sql = format!(
        "
DROP TABLE IF EXISTS f_cand, f_exp, f_cand_roots, f_tree, f_roots, f_df, f_members, f_bare;
-- Every terminal df row with its engine root state and terminal_at.
CREATE TEMP TABLE f_cand AS
SELECT d.id::text AS id, d.status,
       coalesce(d.completed_at, ex.completed_at, d.created_at) AS terminal_at,
       ei.instance_id IS NOT NULL AS has_engine,
       coalesce(ei.parent_instance_id IS NULL AND NOT {child}, false) AS engine_is_root,
       ex.status AS engine_status
FROM df.instances d
LEFT JOIN _duroxide.instances ei ON ei.instance_id = d.id::text
LEFT JOIN _duroxide.executions ex
       ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
WHERE d.status IN ('completed', 'failed', 'cancelled');
ANALYZE f_cand;

-- Expired (window or over the hard cap), with a terminal engine root or none; whether the
-- rest of the tree has ended is decided on whole trees below.
CREATE TEMP TABLE f_exp AS
WITH edge AS (
    SELECT terminal_at AS at, id FROM f_cand
    ORDER BY terminal_at DESC NULLS FIRST, id DESC
    OFFSET {cap} LIMIT 1)
SELECT c.id, c.has_engine
FROM f_cand c LEFT JOIN edge ON true
WHERE c.terminal_at IS NOT NULL
  AND (c.terminal_at < now() - make_interval(secs => CASE c.status
                                 WHEN 'completed' THEN {w_completed}
                                 WHEN 'failed' THEN {w_failed}
                                 ELSE {w_cancelled} END)
       OR (edge.id IS NOT NULL
           AND (edge.at IS NULL OR c.terminal_at < edge.at
                OR (c.terminal_at = edge.at AND c.id <= edge.id))))
  AND (NOT c.has_engine
       OR (c.engine_is_root AND c.engine_status IN ('Completed', 'Failed')));

-- Candidate engine roots: those of the expired df rows, and the aged orphans.
CREATE TEMP TABLE f_cand_roots AS
SELECT id, false AS orphan FROM f_exp WHERE has_engine
UNION ALL
SELECT ei.instance_id, true
FROM _duroxide.instances ei
JOIN _duroxide.executions ex
  ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
WHERE ei.parent_instance_id IS NULL AND NOT {child}
  AND ex.status IN ('Completed', 'Failed')
  AND coalesce(ex.completed_at, ei.updated_at) < now() - make_interval(secs => {orphan_age})
  AND ei.created_at < now()
  AND NOT EXISTS (SELECT 1 FROM df.instances d WHERE d.id::text = ei.instance_id);

-- Their whole trees, each member with its current execution's status.
CREATE TEMP TABLE f_tree AS
WITH RECURSIVE tree(root, id) AS (
    SELECT id, id FROM f_cand_roots
  UNION
    SELECT tree.root, c.instance_id
    FROM _duroxide.instances c JOIN tree ON c.parent_instance_id = tree.id)
SELECT tree.root, tree.id, ex.status
FROM tree
JOIN _duroxide.instances ei ON ei.instance_id = tree.id
LEFT JOIN _duroxide.executions ex
       ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id;

-- Settled: every member Completed or Failed.
CREATE TEMP TABLE f_roots AS
SELECT r.id, r.orphan
FROM f_cand_roots r
WHERE NOT EXISTS (SELECT 1 FROM f_tree t
                   WHERE t.root = r.id AND coalesce(t.status NOT IN ('Completed', 'Failed'), true));

CREATE TEMP TABLE f_df AS
SELECT e.id, e.has_engine FROM f_exp e
WHERE NOT e.has_engine OR EXISTS (SELECT 1 FROM f_roots r WHERE r.id = e.id AND NOT r.orphan);

CREATE TEMP TABLE f_members AS
SELECT t.id FROM f_tree t JOIN f_roots r ON r.id = t.root;

CREATE TEMP TABLE f_bare AS SELECT id FROM f_df WHERE NOT has_engine;
ANALYZE f_df; ANALYZE f_roots; ANALYZE f_members; ANALYZE f_bare;
",
        cap = cfg.retention.hard_cap,
        w_completed = secs(TerminalStatus::Completed),
        w_failed = secs(TerminalStatus::Failed),
        w_cancelled = secs(TerminalStatus::Cancelled),
        orphan_age = cfg.retention.orphan_age().as_secs_f64(),
    );
    client
        .batch_execute(&sql)
        .await
        .context("computing the floor's selection")?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM f_df), (SELECT count(*) FROM f_bare),
                    (SELECT count(*) FROM f_roots WHERE orphan), (SELECT count(*) FROM f_members)",
            &[],
        )
        .await?;
    Ok(Selection {
        df_roots: row.get(0),
        bare: row.get(1),
        orphans: row.get(2),
        engine_members: row.get(3),
        took: started.elapsed(),
    })
}

/// Deletes the selection in one transaction, one DELETE per table, and returns the wall
/// time from BEGIN to the end of COMMIT and the rows per `schema.table` (zeros left out,
/// as in the daemon's report).
pub async fn delete(client: &mut Client) -> Result<(Duration, BTreeMap<String, u64>)> {
    let mut statements: Vec<(String, String)> = vec![
        (
            "df.nodes".into(),
            "DELETE FROM df.nodes t USING f_df s WHERE t.instance_id::text = s.id".into(),
        ),
        (
            "df.instances".into(),
            "DELETE FROM df.instances t USING f_df s WHERE t.id::text = s.id".into(),
        ),
    ];
    for table in ENGINE_TABLES {
        statements.push((
            format!("_duroxide.{table}"),
            format!("DELETE FROM _duroxide.{table} t USING f_members s WHERE t.instance_id = s.id"),
        ));
    }
    for table in ["orchestrator_queue", "worker_queue"] {
        statements.push((
            format!("_duroxide.{table}"),
            format!("DELETE FROM _duroxide.{table} t USING f_bare s WHERE t.instance_id = s.id"),
        ));
    }
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    let tx = client.transaction().await?;
    for (table, sql) in &statements {
        let n = tx
            .execute(sql.as_str(), &[])
            .await
            .with_context(|| format!("floor: {sql}"))?;
        if n > 0 {
            *rows.entry(table.clone()).or_default() += n;
        }
    }
    tx.commit().await.context("floor: COMMIT")?;
    Ok((started.elapsed(), rows))
}

/// A timed run and where the machine's cores spent it.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    pub took: Duration,
    pub cpu: Option<CpuUse>,
}

/// One floor on a fresh copy of `seed_db` (run `index` of size `n`, from 0): selection
/// (untimed), then the timed delete; returns what it removed.
pub async fn run(server: &Server, seed_db: &str, n: u32, index: u32) -> Result<(Timed, Expected)> {
    let db = format!("floor_{n}_{index}");
    server.fresh_copy(seed_db, &db).await?;
    let mut client = server.connect(&db).await?;
    let result = timed(&mut client, &server.config(&db), "floor", index).await?;
    drop(client);
    server.drop_db(&db).await?;
    Ok(result)
}

/// One floor on `client`'s database, named `what` run `index` (from 0) in the progress
/// lines: the selection of `cfg` (untimed), then the timed delete; returns what it removed.
pub async fn timed(
    client: &mut Client,
    cfg: &Config,
    what: &str,
    index: u32,
) -> Result<(Timed, Expected)> {
    let selection = select(client, cfg).await?;
    eprintln!(
        "  {what} run {}: selection {} df roots ({} bare), {} orphans, {} engine instances, computed in {}",
        index + 1,
        selection.df_roots,
        selection.bare,
        selection.orphans,
        selection.engine_members,
        secs(selection.took)
    );
    let mark = CpuMark::now();
    let (took, rows) = delete(client).await?;
    let cpu = mark.and_then(|m| m.since());
    eprintln!(
        "  {what} run {}: {} rows in {} ({})",
        index + 1,
        thousands(rows.values().sum()),
        secs(took),
        cpu::describe(cpu)
    );
    let roots = (selection.df_roots + selection.orphans) as u64;
    Ok((Timed { took, cpu }, Expected { rows, roots }))
}

/// The floor's line for size `n`: every run's time and throughput, and what it removed.
pub fn line(n: u32, e: &Expected, floors: &[Timed], results: &mut Results) {
    line_named(
        "floor: set-wise delete, one transaction",
        &thousands(n.into()),
        e,
        floors,
        results,
    );
}

/// A floor line named `measure` for size `label`.
pub fn line_named(
    measure: &str,
    label: &str,
    e: &Expected,
    floors: &[Timed],
    results: &mut Results,
) {
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
        measure,
        label,
        format!(
            "{figure}; {} roots, {} rows",
            thousands(e.roots),
            thousands(total)
        ),
        "",
        "",
    );
}
