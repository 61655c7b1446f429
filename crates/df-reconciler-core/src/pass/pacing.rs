//! Pacing: while the database is at work (the engine working through its queues, other
//! sessions running statements, sessions waiting for locks), a pass pauses after each
//! batch, so a backlog never takes the live engine's cores; while the engine falls behind
//! its work, the pass waits for it to catch up. A quiet database, and an idle engine
//! polling its empty queues, are never slowed.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::bounded;
use super::phase::Pass;
use crate::db::Exec;
use crate::error::{DbContext, Error};

/// How long one sighting of load counts as "the database is busy": a sample per batch
/// misses short transactions between two statements, a busy workload is seen again well
/// within this.
const BUSY_MEMORY: Duration = Duration::from_secs(1);

/// How often a pass re-reads the load while the engine is behind.
const BEHIND_RECHECK: Duration = Duration::from_millis(250);

/// The longest a pass waits after one batch for the engine to catch up: beside an engine
/// that never does, the pass still moves, a batch per this much.
const BEHIND_MAX_WAIT: Duration = Duration::from_secs(10);

/// What a batch read as load at its start ([`crate::sql::reconcile::DATABASE_LOAD`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// The engine at work: a queue item ready within the last seconds, or a lease in force.
    pub(crate) engine_work: bool,
    /// Other client sessions at work, the engine's pollers left out.
    pub(crate) other_sessions: i64,
    /// Sessions waiting for a lock.
    pub(crate) lock_waits: i64,
    /// The engine not keeping up: a queue item has waited over a second for a dispatcher.
    pub(crate) engine_behind: bool,
}

impl Load {
    /// Any sign of work is load: the engine's, an application's, or a wait on a lock.
    pub(crate) fn is_busy(&self) -> bool {
        self.engine_work || self.engine_behind || self.other_sessions > 0 || self.lock_waits > 0
    }
}

/// When a batch last saw the database at work, and the share of its time a pass may then
/// spend in batches (`pass.busy_duty_percent`, 1 to 100).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    duty_percent: u32,
    /// When a batch last saw the database at work.
    last_busy: Option<Instant>,
    /// Whether the latest look saw the engine behind.
    engine_behind: bool,
}

impl Pacing {
    pub(crate) fn new(duty_percent: u32) -> Self {
        Self {
            duty_percent,
            last_busy: None,
            engine_behind: false,
        }
    }

    /// Whether batches look at the database's load at all: at 100% a pass never pauses.
    pub(crate) fn watches_load(&self) -> bool {
        self.duty_percent < 100
    }

    /// What a batch read at `at`: busy load is remembered for [`BUSY_MEMORY`].
    pub(crate) fn saw(&mut self, load: Load, at: Instant) {
        if load.is_busy() {
            self.last_busy = Some(at);
        }
        self.engine_behind = load.engine_behind;
    }

    /// Whether a pass that has paused `waited` after a batch waits on for the engine to
    /// catch up: while the latest look saw it behind, up to [`BEHIND_MAX_WAIT`].
    fn waits_for_engine(&self, waited: Duration) -> bool {
        self.watches_load() && self.engine_behind && waited < BEHIND_MAX_WAIT
    }

    /// The pause after a batch that took `batch`, at `now`: none unless load was seen
    /// within [`BUSY_MEMORY`]; else `batch` x (100 / percent - 1), so batches fill at
    /// most `percent` of the time, cut at the pass deadline.
    fn pause_after(
        &self,
        batch: Duration,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        let percent = self.duty_percent;
        let busy = self
            .last_busy
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_MEMORY);
        if !busy || percent >= 100 {
            return None;
        }
        let mut pause = batch.mul_f64(100.0 / f64::from(percent) - 1.0);
        if let Some(deadline) = deadline {
            pause = pause.min(deadline.saturating_duration_since(now));
        }
        Some(pause)
    }

    /// Gives the engine and other sessions the database's cores back: while a batch has
    /// seen load within the last [`BUSY_MEMORY`], pauses so that batches fill at most
    /// `pass.busy_duty_percent` of the time. Ends early on shutdown or the pass deadline.
    /// Returns how long it paused.
    pub(crate) async fn pace(
        &self,
        batch: Duration,
        deadline: Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Duration {
        let Some(pause) = self.pause_after(batch, Instant::now(), deadline) else {
            return Duration::ZERO;
        };
        let started = Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => {}
        }
        started.elapsed()
    }
}

impl Pass<'_> {
    /// The pause after a batch that took `batch`: the duty cycle's ([`Pacing::pace`]), then,
    /// while the engine is behind, until it has caught up (the load re-read every
    /// [`BEHIND_RECHECK`], [`BEHIND_MAX_WAIT`] at most). Ends early on shutdown or at the
    /// pass deadline. Returns how long it paused.
    pub(crate) async fn pause_after_batch(&mut self, batch: Duration) -> Duration {
        let mut paused = self.pacing.pace(batch, self.deadline, self.shutdown).await;
        while self.pacing.waits_for_engine(paused) {
            let mut step = BEHIND_RECHECK;
            if let Some(deadline) = self.deadline {
                step = step.min(deadline.saturating_duration_since(Instant::now()));
            }
            if step.is_zero() || self.shutdown.is_cancelled() {
                break;
            }
            let started = Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = self.shutdown.cancelled() => {}
            }
            paused += started.elapsed();
            match bounded(self.cfg, "reading the database's load", self.read_load()).await {
                Ok(load) => self.pacing.saw(load, Instant::now()),
                // The next batch reads it again, and reports its own errors.
                Err(e) => {
                    debug!(error = %e, "could not re-read the load; the pass goes on");
                    break;
                }
            }
        }
        paused
    }

    /// The database's load, read outside a batch.
    async fn read_load(&self) -> Result<Load, Error> {
        let row = (**self.client)
            .fetch_one(&self.statements.database_load, &[])
            .await
            .context("looking at the database's load")?;
        Ok(Load::from_row(&row))
    }
}

impl Load {
    /// A row of [`crate::sql::reconcile::DATABASE_LOAD`].
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Load {
        Load {
            engine_work: row.get(0),
            other_sessions: row.get(1),
            lock_waits: row.get(2),
            engine_behind: row.get(3),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: Duration = Duration::from_secs(2);

    const ENGINE_AT_WORK: Load = Load {
        engine_work: true,
        other_sessions: 0,
        lock_waits: 0,
        engine_behind: false,
    };

    const ENGINE_BEHIND: Load = Load {
        engine_work: true,
        other_sessions: 0,
        lock_waits: 0,
        engine_behind: true,
    };

    fn busy_at(percent: u32, seen: Instant) -> Pacing {
        let mut pacing = Pacing::new(percent);
        pacing.saw(ENGINE_AT_WORK, seen);
        pacing
    }

    #[test]
    fn any_sign_of_work_is_load_and_none_is_quiet() {
        assert!(!Load::default().is_busy(), "an idle engine, no one else");
        assert!(ENGINE_AT_WORK.is_busy());
        let application = Load {
            other_sessions: 1,
            ..Load::default()
        };
        assert!(application.is_busy());
        let lock_wait = Load {
            lock_waits: 2,
            ..Load::default()
        };
        assert!(lock_wait.is_busy());
        assert!(ENGINE_BEHIND.is_busy());
    }

    #[test]
    fn a_quiet_sample_neither_pauses_nor_forgets_a_recent_busy_one() {
        let seen = Instant::now();
        let mut quiet = Pacing::new(25);
        quiet.saw(Load::default(), seen);
        assert_eq!(quiet.pause_after(BATCH, seen, None), None);
        let mut busy = busy_at(25, seen);
        busy.saw(Load::default(), seen + Duration::from_millis(100));
        assert_eq!(
            busy.pause_after(BATCH, seen + Duration::from_millis(200), None),
            Some(BATCH * 3),
            "busy 200 ms ago still counts"
        );
    }

    #[test]
    fn a_quiet_database_is_never_slowed() {
        let now = Instant::now();
        assert_eq!(Pacing::new(25).pause_after(BATCH, now, None), None);
    }

    #[test]
    fn a_busy_database_gets_the_rest_of_the_duty_cycle() {
        let seen = Instant::now();
        let now = seen + Duration::from_millis(300);
        let pause = |percent| busy_at(percent, seen).pause_after(BATCH, now, None);
        assert_eq!(pause(25), Some(BATCH * 3));
        assert_eq!(pause(50), Some(BATCH));
        assert_eq!(pause(10), Some(BATCH * 9));
        assert_eq!(pause(100), None, "100% never pauses");
    }

    #[test]
    fn a_sighting_counts_for_one_second() {
        let seen = Instant::now();
        let pacing = busy_at(25, seen);
        let just_before = seen + BUSY_MEMORY - Duration::from_millis(1);
        assert_eq!(
            pacing.pause_after(BATCH, just_before, None),
            Some(BATCH * 3)
        );
        assert_eq!(pacing.pause_after(BATCH, seen + BUSY_MEMORY, None), None);
    }

    #[test]
    fn the_pause_ends_at_the_pass_deadline() {
        let seen = Instant::now();
        let pacing = busy_at(25, seen);
        let soon = seen + Duration::from_millis(500);
        assert_eq!(
            pacing.pause_after(BATCH, seen, Some(soon)),
            Some(Duration::from_millis(500))
        );
        // Past the deadline (the sighting still fresh): no time left to pause; the phase
        // loop then stops.
        assert_eq!(
            pacing.pause_after(BATCH, soon + Duration::from_millis(1), Some(soon)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_pass_waits_for_an_engine_behind_its_work_up_to_a_limit() {
        let now = Instant::now();
        let mut pacing = Pacing::new(25);
        pacing.saw(ENGINE_AT_WORK, now);
        assert!(
            !pacing.waits_for_engine(Duration::ZERO),
            "an engine at work but keeping up gets the duty cycle only"
        );
        pacing.saw(ENGINE_BEHIND, now);
        assert!(pacing.waits_for_engine(Duration::ZERO));
        assert!(pacing.waits_for_engine(BEHIND_MAX_WAIT - Duration::from_millis(1)));
        assert!(
            !pacing.waits_for_engine(BEHIND_MAX_WAIT),
            "the pass moves on beside an engine that never catches up"
        );
        pacing.saw(ENGINE_AT_WORK, now + BEHIND_RECHECK);
        assert!(!pacing.waits_for_engine(BEHIND_RECHECK), "caught up");
        let mut unpaced = Pacing::new(100);
        unpaced.saw(ENGINE_BEHIND, now);
        assert!(
            !unpaced.waits_for_engine(Duration::ZERO),
            "100% never pauses"
        );
    }

    #[test]
    fn only_pacing_below_100_percent_watches_the_load() {
        assert!(Pacing::new(25).watches_load());
        assert!(Pacing::new(99).watches_load());
        assert!(!Pacing::new(100).watches_load());
    }
}
