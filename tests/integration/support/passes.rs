//! Running a pass in-process against a test database, as the daemon would, and comparing
//! its reports.

use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::pass::{self, PassFailed};
use df_reconciler_core::report::PassReport;
use tokio_util::sync::CancellationToken;

use super::harness::TestDb;

/// The default configuration pointed at `db`.
pub fn config_for(db: &TestDb) -> Config {
    let mut cfg = Config::default();
    cfg.database.url = Some(SecretString::new(db.dsn.clone()));
    cfg
}

/// [`config_for`] with old generations left alone, for tests of the other phases that
/// assert on every row of a looping instance or on batch counts (pruning has its own tests,
/// classification::generations).
pub fn config_without_pruning(db: &TestDb) -> Config {
    let mut cfg = config_for(db);
    cfg.retention.prune_executions = false;
    cfg
}

/// Runs one pass with `cfg`, returning the report or the failure.
pub async fn try_pass(cfg: &Config, dry_run: bool) -> Result<PassReport, PassFailed> {
    let pool = df_reconciler_core::db::build_pool(cfg).expect("pool builds");
    let result = pass::run_pass(&pool, cfg, dry_run, &CancellationToken::new()).await;
    pool.close();
    result
}

/// Runs one pass that must succeed.
pub async fn pass(cfg: &Config, dry_run: bool) -> PassReport {
    match try_pass(cfg, dry_run).await {
        Ok(r) => r,
        Err(f) => panic!("pass failed: {}\n{}", f.error, f.report),
    }
}

/// Instances a pass would remove now (a dry run), e.g. to wait until a backlog is gone.
pub async fn remaining(db: &TestDb) -> u64 {
    pass(&config_for(db), true).await.instances_removed()
}

/// A report with the fields that legitimately differ between two runs blanked out.
pub fn comparable(report: &PassReport) -> PassReport {
    PassReport {
        pass_id: String::new(),
        backlog_oldest_age_s: None,
        dry_run: false,
        started_at: String::new(),
        duration_ms: 0,
        batches: 0,
        // Timing: a pass beside engine work (leases, queue items) pauses for as long as
        // its batches took.
        paused_ms: 0,
        warnings: Vec::new(),
        ..report.clone()
    }
}
