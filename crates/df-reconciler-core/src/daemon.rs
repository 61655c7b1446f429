//! The `run` loop: serve health and metrics, verify the database, then a pass at start
//! (after a small random jitter) and one every `pass.interval`, until shutdown.
//!
//! - A database the daemon cannot reach, or can reach but not reconcile yet (preflight
//!   refuses: the engine's store not migrated yet, a grant or BYPASSRLS still missing, an
//!   unknown per-instance engine table), is waited for: nothing is deleted, the reason is
//!   on /readyz, in the log once per change and in a metric ([`crate::readiness`]), and it
//!   is looked at again with capped exponential backoff and jitter. Any later failure is
//!   logged and retried the same way; the loop never dies. Only an unusable configuration
//!   or HTTP address stops it.
//! - systemd hears READY once the database answered and was looked at, reconcilable or
//!   not: a unit waiting for its engine neither fails its start nor claims to reconcile
//!   (its STATUS says `not reconciling: ...` until the first pass).
//! - With `pass.leader_election`, only the replica holding the leader lock runs passes;
//!   the others idle cheaply. Correctness never depends on it: every batch also takes the
//!   transaction-level fence (see `crate::locks`).
//! - SIGHUP (delivered as [`Event::Reload`]) swaps in a new configuration when it is valid
//!   and keeps the old one otherwise.
//! - The loop itself never opens a transaction; only [`crate::pass`] does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::db::Exec;
use crate::error::Error;
use crate::http::{self, Health};
use crate::metrics::Metrics;
use crate::pass::{self, PassOptions};
use crate::{audit, db, lifecycle, locks, preflight, readiness};

/// How often an idle loop wakes to prove it is alive (health, watchdog).
const IDLE_TICK: Duration = Duration::from_secs(5);
/// First retry delay after a failure; doubles up to `pass.retry_backoff_max`.
const RETRY_BASE: Duration = Duration::from_secs(1);

/// Something from outside the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Re-read the configuration (SIGHUP).
    Reload,
}

/// Produces a freshly loaded configuration for a reload.
pub type Reloader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// The daemon's shared state, exposed so tests and the binary can look inside.
pub struct Daemon {
    /// Served on /metrics; the binary and tests read it after passes.
    pub metrics: Arc<Metrics>,
    /// Backs /healthz and /readyz.
    pub health: Arc<Health>,
}

impl Daemon {
    /// Fresh metrics and health; `cfg` supplies `http.ready_max_failing`.
    pub fn new(cfg: &Config) -> Self {
        Self {
            metrics: Arc::new(Metrics::new()),
            health: Health::new(cfg.http.ready_max_failing),
        }
    }

    /// Runs until `shutdown` is cancelled. Returns an error only for a start-up refusal
    /// (fail closed) or an HTTP address that cannot be bound.
    pub async fn run(
        &self,
        mut cfg: Config,
        reload: Reloader,
        mut events: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let http_stop = shutdown.child_token();
        if !cfg.http.listen.is_empty() {
            let listener = http::bind(&cfg.http.listen).await.map_err(Error::Startup)?;
            info!(listen = %cfg.http.listen, "serving /metrics, /healthz, /readyz");
            let (health, metrics, stop) =
                (self.health.clone(), self.metrics.clone(), http_stop.clone());
            tokio::spawn(async move {
                if let Err(e) = http::serve(listener, health, metrics, stop).await {
                    error!(error = %e, "HTTP endpoint stopped");
                }
            });
        }
        self.health.tick();
        let mut pool = db::build_pool(&cfg)?;
        *self.health.pool.write().await = Some(pool.clone());

        let Some(mut reconcilable) = self.start_up(&cfg, &pool, &shutdown).await? else {
            return Ok(());
        };
        lifecycle::ready();
        info!(interval = %humantime::format_duration(cfg.pass.interval), reconcilable, "reconciler started");
        for mode in cfg.connection_modes() {
            info!("{mode}");
        }

        let mut leader = Leader::default();
        let mut failures: u32 = 0;
        // When drift was last counted (`pass.drift_interval`); None: never yet.
        let mut last_drift: Option<Instant> = None;
        // Passes cut short by pass.max_duration continue where they stopped.
        let resume = Arc::new(std::sync::Mutex::new(pass::Watermarks::default()));
        let mut due = Instant::now()
            + if reconcilable {
                jitter(cfg.pass.jitter)
            } else {
                backoff(1, retry_cap(&cfg))
            };
        loop {
            match self.wait_until(due, &mut events, &shutdown).await {
                Wake::Shutdown => break,
                Wake::Reload => {
                    if let Some(new) = self.reload(&reload) {
                        if connection_settings_differ(&new, &cfg) {
                            match db::build_pool(&new) {
                                Ok(p) => {
                                    pool = p;
                                    *self.health.pool.write().await = Some(pool.clone());
                                    leader = Leader::default();
                                }
                                Err(e) => {
                                    error!(error = %e, "reloaded database settings unusable; keeping the old configuration");
                                    continue;
                                }
                            }
                        }
                        *self.health.ready_max_failing.write().await = new.http.ready_max_failing;
                        cfg = new;
                    }
                    continue;
                }
                Wake::Due => {}
            }
            if cfg.pass.interval.is_zero() {
                // Passes disabled: stay up, answer health checks, wait for a reload.
                due = Instant::now() + Duration::from_secs(3600);
                continue;
            }
            if !reconcilable {
                // Waiting for the database to become reconcilable: look again, no pass.
                match self.look(&cfg, &pool).await {
                    Ok(()) => {
                        readiness::record(&self.health, &self.metrics, &[]);
                        reconcilable = true;
                    }
                    Err(e) => {
                        failures += 1;
                        let delay = backoff(failures, retry_cap(&cfg));
                        self.waiting(&e, delay);
                        due = Instant::now() + delay;
                        continue;
                    }
                }
            }
            if cfg.leader_lock_in_use() && !leader.hold(&cfg).await {
                self.metrics.leader.set(0);
                due = Instant::now() + cfg.pass.interval + jitter(cfg.pass.jitter);
                continue;
            }
            self.metrics.leader.set(i64::from(cfg.leader_lock_in_use()));
            let health = self.health.clone();
            let options = PassOptions {
                dry_run: false,
                metrics: Some(self.metrics.clone()),
                on_batch: Some(Arc::new(move |_| {
                    health.tick();
                    lifecycle::watchdog();
                })),
                skip_drift: last_drift.is_some_and(|t| t.elapsed() < cfg.pass.drift_interval),
                resume: Some(resume.clone()),
            };
            match pass::run_pass_with(&pool, &cfg, &options, &shutdown).await {
                Ok(report) => {
                    if report.drift_counted {
                        last_drift = Some(Instant::now());
                    }
                    failures = 0;
                    self.health.pass_succeeded();
                    lifecycle::status(&report.summary());
                    due = Instant::now() + cfg.pass.interval + jitter(cfg.pass.jitter);
                }
                Err(failed) => {
                    failures += 1;
                    self.health.pass_failed();
                    let delay = backoff(failures, retry_cap(&cfg));
                    if let Error::Refused(_) = failed.error {
                        // Preflight's refusal (grants revoked, the engine's store gone),
                        // or a batch's safety stop? Preflight says which: wait for the
                        // former like for a database at start.
                        if let Err(Error::Refused(problems)) = self.look(&cfg, &pool).await {
                            reconcilable = false;
                            readiness::record(&self.health, &self.metrics, &problems);
                            due = Instant::now() + delay;
                            continue;
                        }
                    }
                    lifecycle::status(&format!(
                        "pass failing ({failures} in a row): {}; retry in {}",
                        failed.error,
                        humantime::format_duration(delay)
                    ));
                    error!(error = %failed.error, failures, retry_in = %humantime::format_duration(delay), "pass failed");
                    due = Instant::now() + delay;
                }
            }
        }
        lifecycle::stopping();
        http_stop.cancel();
        pool.close();
        info!("reconciler stopped");
        Ok(())
    }

    /// Connects and looks at the database until it answers. Some(true): reconcilable;
    /// Some(false): reachable, but preflight refused (recorded; the loop waits for it);
    /// None: shut down while waiting.
    async fn start_up(
        &self,
        cfg: &Config,
        pool: &Pool,
        shutdown: &CancellationToken,
    ) -> Result<Option<bool>, Error> {
        let mut failures = 0;
        loop {
            match self.look(cfg, pool).await {
                Ok(()) => {
                    readiness::record(&self.health, &self.metrics, &[]);
                    return Ok(Some(true));
                }
                Err(Error::Refused(problems)) => {
                    readiness::record(&self.health, &self.metrics, &problems);
                    return Ok(Some(false));
                }
                Err(e @ Error::Config(_)) => return Err(e),
                Err(e) => {
                    failures += 1;
                    let delay = backoff(failures, cfg.pass.retry_backoff_max);
                    self.waiting(&e, delay);
                    let mut no_events = mpsc::channel(1).1;
                    if let Wake::Shutdown = self
                        .wait_until(Instant::now() + delay, &mut no_events, shutdown)
                        .await
                    {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Connects, applies the audit migrations when `audit.auto_migrate`, and runs
    /// preflight. Ok: a pass may run; its warnings, and what the open-transaction guard
    /// cannot see, are logged (once per call: at start, and when a waited-for database
    /// becomes reconcilable).
    async fn look(&self, cfg: &Config, pool: &Pool) -> Result<(), Error> {
        let target = db::describe_target(&db::pg_config(&cfg.database)?);
        let mut client = db::connect(pool, &target).await?;
        audit::migrate_if_auto(&mut client, &cfg.audit).await?;
        let verified = preflight::verify(&**client, cfg, preflight::Intent::Delete).await?;
        for w in &verified.warnings {
            warn!("{w}");
        }
        if let Ok(Some(w)) = preflight::in_database_reconcile_warning(&**client).await {
            warn!("{w}");
        }
        // Also in every pass's report while it lasts; said once here.
        if let Ok(guard) = preflight::orphan_guard(&**client).await {
            for w in guard.warnings() {
                warn!("{w}");
            }
        }
        Ok(())
    }

    /// Says why the daemon waits: a refusal through [`readiness::record`] (once per
    /// change), anything else (the server unreachable) on every retry.
    fn waiting(&self, error: &Error, retry_in: Duration) {
        if let Error::Refused(problems) = error {
            readiness::record(&self.health, &self.metrics, problems);
            return;
        }
        error!(error = %error, retry_in = %humantime::format_duration(retry_in), "database not usable yet");
        lifecycle::status(&format!("waiting for the database: {error}"));
        self.health.pass_failed();
    }

    /// Sleeps until `due`, waking every [`IDLE_TICK`] (or the watchdog period) to prove
    /// liveness, and returning early on shutdown or an event.
    async fn wait_until(
        &self,
        due: Instant,
        events: &mut mpsc::Receiver<Event>,
        shutdown: &CancellationToken,
    ) -> Wake {
        let tick = lifecycle::watchdog_period().map_or(IDLE_TICK, |w| w.min(IDLE_TICK));
        loop {
            self.health.tick();
            lifecycle::watchdog();
            let now = Instant::now();
            if now >= due {
                return Wake::Due;
            }
            let sleep = tokio::time::sleep((due - now).min(tick));
            tokio::select! {
                _ = shutdown.cancelled() => return Wake::Shutdown,
                Some(Event::Reload) = events.recv() => return Wake::Reload,
                _ = sleep => {}
            }
        }
    }

    fn reload(&self, reload: &Reloader) -> Option<Config> {
        match reload() {
            Ok(new) => {
                info!("configuration reloaded");
                self.metrics
                    .config_reloads
                    .get_or_create(&crate::metrics::ReloadOutcome { outcome: "ok" })
                    .inc();
                Some(new)
            }
            Err(e) => {
                error!(error = %e, "configuration reload rejected; keeping the running configuration");
                self.metrics
                    .config_reloads
                    .get_or_create(&crate::metrics::ReloadOutcome {
                        outcome: "rejected",
                    })
                    .inc();
                None
            }
        }
    }
}

/// Whether a reload changed anything that needs a new pool (DSN, pool, TLS settings).
fn connection_settings_differ(a: &Config, b: &Config) -> bool {
    let section = |c: &Config| {
        (
            serde_json::to_value(&c.database).ok(),
            serde_json::to_value(&c.tls).ok(),
            c.database.connection_string().ok(),
        )
    };
    section(a) != section(b)
}

enum Wake {
    Due,
    Reload,
    Shutdown,
}

/// The leader lock, held on a dedicated connection outside the pool: a pooled connection
/// could be recycled and silently drop the session lock.
#[derive(Default)]
struct Leader {
    client: Option<tokio_postgres::Client>,
}

impl Leader {
    /// True while this replica holds (or just took) leadership.
    async fn hold(&mut self, cfg: &Config) -> bool {
        if let Some(client) = &self.client {
            // The lock lives as long as the session: a dead session means it is gone.
            if !client.is_closed() && client.simple_query("SELECT 1").await.is_ok() {
                return true;
            }
            warn!("leader connection lost; leadership released");
            self.client = None;
        }
        let client = match db::connect_dedicated(cfg).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot open the leader connection");
                return false;
            }
        };
        match client
            .fetch_one(
                "SELECT pg_catalog.pg_try_advisory_lock($1::bigint)",
                &[&locks::LEADER],
            )
            .await
        {
            Ok(row) if row.get::<_, bool>(0) => {
                info!("became leader");
                self.client = Some(client);
                true
            }
            Ok(_) => false,
            Err(e) => {
                warn!(error = %crate::error::describe_pg_error(&e), "leader lock query failed");
                false
            }
        }
    }
}

/// The cap of the backoff between failed passes (and looks at a database that cannot be
/// reconciled yet): `pass.retry_backoff_max`, never above the pass interval.
fn retry_cap(cfg: &Config) -> Duration {
    cfg.pass.retry_backoff_max.min(cfg.pass.interval)
}

/// A random delay in [0, max].
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(fastrand::u64(..=max.as_millis() as u64))
}

/// Exponential backoff from [`RETRY_BASE`], capped, with ±20% jitter.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let base = exp.min(cap.max(RETRY_BASE));
    let spread = base.as_millis() as u64 / 5;
    let ms = base.as_millis() as u64 - spread + fastrand::u64(..=spread * 2);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(60);
        let first = backoff(1, cap);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let fifth = backoff(5, cap);
        assert!(fifth >= Duration::from_millis(12_800) && fifth <= Duration::from_millis(19_200));
        for n in [10, 30, u32::MAX] {
            assert!(backoff(n, cap) <= Duration::from_secs(72));
        }
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(3)) <= Duration::from_secs(3));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
