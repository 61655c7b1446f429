//! The `run` loop: a pass at start, then one every `pass.interval`, until shutdown.
//!
//! The loop never opens a transaction itself. A database the first pass refuses to touch
//! (fail closed: RLS, missing schema, privilege) stops the daemon with that error; any later
//! failure, including an unreachable server, is logged and retried at the next tick.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::error::Error;
use crate::pass;

/// Runs passes until `shutdown` is cancelled. A pass in progress stops after its current
/// batch. `pass.interval = 0` idles: no passes, the process stays up.
pub async fn run(pool: &Pool, cfg: &Config, shutdown: CancellationToken) -> Result<(), Error> {
    let interval = cfg.pass.interval;
    if interval.is_zero() {
        info!("pass.interval is 0: passes are disabled, idling until shutdown");
        shutdown.cancelled().await;
        return Ok(());
    }
    info!(interval = %humantime::format_duration(interval), "reconciler started");
    let mut first = true;
    loop {
        if let Err(failed) = pass::run_pass(pool, cfg, false, &shutdown).await {
            if first && matches!(failed.error, Error::Refused(_) | Error::Config(_)) {
                return Err(failed.error);
            }
            error!(error = %failed.error, "pass failed; retrying at the next interval");
        }
        first = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    info!("reconciler stopped");
    Ok(())
}
