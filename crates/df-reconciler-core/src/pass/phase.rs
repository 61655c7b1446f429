//! A phase: keyset batches until one finds no candidate, the pass stops (shutdown,
//! `pass.max_duration`) or another replica holds the batch fence. A batch rolled back by a
//! timeout leaves its candidates whole for the next pass.

use std::time::{Instant, SystemTime};

use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::batch_size::BatchSize;
use super::candidates::Progress;
use super::clock::PassClock;
use super::pacing::Pacing;
use super::statements::Statements;
use super::{bounded, PassOptions};
use crate::config::Config;
use crate::error::Error;
use crate::report::PassReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Expired,
    Orphans,
}

/// Where a phase stands after a batch.
pub(crate) enum Step {
    /// No candidate after the watermark: the phase is done.
    Exhausted,
    Continue {
        watermark: String,
    },
    /// Another replica holds the batch fence: this pass stands down.
    Fenced,
}

/// A pass under way: its connection, statements and clock, and what it has done so far.
pub(crate) struct Pass<'a> {
    pub(crate) client: &'a mut Object,
    pub(crate) cfg: &'a Config,
    pub(crate) options: &'a PassOptions,
    pub(crate) statements: Statements,
    pub(crate) clock: PassClock,
    pub(crate) batch_size: BatchSize,
    pub(crate) deadline: Option<Instant>,
    pub(crate) shutdown: &'a CancellationToken,
    /// Set when removed roots are written to the audit deletions table.
    pub(crate) deletions_schema: Option<String>,
    pub(crate) oldest_skipped: Option<SystemTime>,
    pub(crate) pacing: Pacing,
    pub(crate) report: &'a mut PassReport,
}

impl Pass<'_> {
    /// Runs a phase to its end. Returns false when it stopped early (shutdown or budget).
    pub(crate) async fn run_phase(&mut self, phase: Phase) -> Result<bool, Error> {
        // None: the phase starts before every id, the empty one included.
        let mut watermark: Option<String> = None;
        loop {
            if self.shutdown.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let mut progress = None;
            let cfg = self.cfg;
            let batch_started = Instant::now();
            let result = bounded(
                cfg,
                "running a batch",
                self.batch(phase, watermark.as_deref(), &mut progress),
            )
            .await;
            match result {
                Ok(Step::Exhausted) => return Ok(true),
                Ok(Step::Fenced) => {
                    info!(
                        "another replica holds the batch fence; standing down until the next pass"
                    );
                    self.report.fenced = true;
                    if let Some(m) = &self.options.metrics {
                        m.fenced.inc();
                    }
                    return Ok(false);
                }
                Ok(Step::Continue { watermark: next }) => {
                    watermark = Some(next);
                    self.report.batches += 1;
                    self.batch_size.after_clean_batch();
                    let paused = self
                        .pacing
                        .pace(batch_started.elapsed(), self.deadline, self.shutdown)
                        .await;
                    self.report.paused_ms += paused.as_millis() as u64;
                }
                Err(e) if is_timeout(&e) => {
                    self.report.batches_abandoned += 1;
                    warn!(?phase, batch_size = self.batch_size.get(), error = %e, "batch abandoned, rolled back");
                    let statement_timeout = e.sqlstate() == Some(&SqlState::QUERY_CANCELED);
                    match after_timeout(statement_timeout, progress, &mut self.batch_size) {
                        Abandoned::MovePast(p) => {
                            self.report.skipped_abandoned += p.candidates;
                            watermark = Some(p.watermark);
                        }
                        Abandoned::Retry => {}
                        Abandoned::Fail => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.sqlstate(),
        Some(s) if *s == SqlState::LOCK_NOT_AVAILABLE || *s == SqlState::QUERY_CANCELED
    )
}

/// How a phase goes on after a batch that a lock or statement timeout rolled back.
#[derive(Debug, PartialEq, Eq)]
enum Abandoned {
    /// Past the candidates the batch had read: they count as `skipped_abandoned`, left
    /// whole for the next pass.
    MovePast(Progress),
    /// The candidate selection itself hit statement_timeout: the same watermark again, at
    /// half the size.
    Retry,
    /// The pass fails with the error: a lock timeout before any candidate, or a selection
    /// that times out at size 1.
    Fail,
}

/// What a timed-out batch leads to. A statement timeout also halves the batch size.
fn after_timeout(
    statement_timeout: bool,
    progress: Option<Progress>,
    batch_size: &mut BatchSize,
) -> Abandoned {
    if statement_timeout {
        if batch_size.get() == 1 && progress.is_none() {
            return Abandoned::Fail;
        }
        batch_size.halve();
    }
    match progress {
        Some(p) => Abandoned::MovePast(p),
        None if statement_timeout => Abandoned::Retry,
        None => Abandoned::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(candidates: u64) -> Option<Progress> {
        Some(Progress {
            watermark: "inst-9".to_owned(),
            candidates,
        })
    }

    #[test]
    fn a_lock_timeout_moves_past_the_candidates_at_the_same_size() {
        let mut size = BatchSize::new(1000);
        assert_eq!(
            after_timeout(false, read(7), &mut size),
            Abandoned::MovePast(read(7).unwrap())
        );
        assert_eq!(size.get(), 1000);
    }

    #[test]
    fn a_lock_timeout_before_any_candidate_fails_the_pass() {
        let mut size = BatchSize::new(1000);
        assert_eq!(after_timeout(false, None, &mut size), Abandoned::Fail);
        assert_eq!(size.get(), 1000);
    }

    #[test]
    fn a_statement_timeout_moves_past_the_candidates_and_halves() {
        let mut size = BatchSize::new(1000);
        assert_eq!(
            after_timeout(true, read(1000), &mut size),
            Abandoned::MovePast(read(1000).unwrap())
        );
        assert_eq!(size.get(), 500);
    }

    #[test]
    fn a_timed_out_selection_is_retried_at_half_the_size_until_size_one() {
        let mut size = BatchSize::new(4);
        assert_eq!(after_timeout(true, None, &mut size), Abandoned::Retry);
        assert_eq!(size.get(), 2);
        assert_eq!(after_timeout(true, None, &mut size), Abandoned::Retry);
        assert_eq!(size.get(), 1);
        assert_eq!(after_timeout(true, None, &mut size), Abandoned::Fail);
    }

    #[test]
    fn at_size_one_a_batch_with_candidates_still_moves_past_them() {
        let mut size = BatchSize::new(1);
        assert_eq!(
            after_timeout(true, read(1), &mut size),
            Abandoned::MovePast(read(1).unwrap())
        );
        assert_eq!(size.get(), 1);
    }
}
