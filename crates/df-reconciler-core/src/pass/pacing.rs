//! Pacing: while other sessions of the database are at work, a pass pauses after each
//! batch, so a backlog never takes the live engine's cores; a quiet database is never
//! slowed.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long one sighting of another active session counts as "the database is busy": a
/// sample per batch misses short transactions between two statements, a busy workload is
/// seen again well within this.
const BUSY_MEMORY: Duration = Duration::from_secs(1);

/// When a batch last saw other sessions at work, and the share of its time a pass may then
/// spend in batches (`pass.busy_duty_percent`, 1 to 100).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    duty_percent: u32,
    /// When a batch last saw other sessions at work.
    last_busy: Option<Instant>,
}

impl Pacing {
    pub(crate) fn new(duty_percent: u32) -> Self {
        Self {
            duty_percent,
            last_busy: None,
        }
    }

    /// Whether batches look at other sessions at all: at 100% a pass never pauses.
    pub(crate) fn watches_others(&self) -> bool {
        self.duty_percent < 100
    }

    /// A batch saw other sessions at work.
    pub(crate) fn saw_others(&mut self, at: Instant) {
        self.last_busy = Some(at);
    }

    /// The pause after a batch that took `batch`, at `now`: none unless other sessions were
    /// seen within [`BUSY_MEMORY`]; else `batch` x (100 / percent - 1), so batches fill at
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

    /// Gives other sessions the database's cores back: while a batch has seen them at work
    /// within the last [`BUSY_MEMORY`], pauses so that batches fill at most
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

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: Duration = Duration::from_secs(2);

    fn busy_at(percent: u32, seen: Instant) -> Pacing {
        let mut pacing = Pacing::new(percent);
        pacing.saw_others(seen);
        pacing
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
    fn only_pacing_below_100_percent_watches_other_sessions() {
        assert!(Pacing::new(25).watches_others());
        assert!(Pacing::new(99).watches_others());
        assert!(!Pacing::new(100).watches_others());
    }
}
