//! The phases of a pass: keyset batches of each phase in turn until each finds no
//! candidate, the pass stops (shutdown, `pass.max_duration`) or another replica holds the
//! batch fence. A batch rolled back by a timeout leaves its candidates whole for the next
//! pass.

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
    /// Old generations of retained instances (`retention.prune_executions`).
    Generations,
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
    /// A dispatcher leased a queue item of the batch after its trees were locked, seen by
    /// the batch's last statement: the whole batch was rolled back.
    LeasedAtCommit,
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
    /// The deletions table has the `rule` column (audit migration 3).
    pub(crate) deletions_have_rule: bool,
    pub(crate) oldest_skipped: Option<SystemTime>,
    pub(crate) pacing: Pacing,
    pub(crate) report: &'a mut PassReport,
}

/// Where each phase stands in the keyset: the watermark to continue after (None: from
/// before every id, the empty one included), and whether the phase found its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// Phase 1, expired df rows: the last df id seen.
    pub expired: Option<String>,
    /// Phase 2, orphan engine roots: the last engine id seen.
    pub orphans: Option<String>,
    /// Phase 3, old generations: the last (engine instance id, execution id) seen, as
    /// [`GenerationMark`] text.
    pub generations: Option<String>,
}

/// One phase's place in a pass.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub(crate) phase: Phase,
    pub(crate) watermark: Option<String>,
    pub(crate) exhausted: bool,
}

impl Cursor {
    /// Every phase, each from where `resume` says (a pass that stopped early leaves its
    /// watermarks for the next one, so a long run of skipped rows at the start of the
    /// keyset cannot eat every pass's budget).
    pub(crate) fn all(resume: &Watermarks) -> [Cursor; 3] {
        [
            Cursor::at(Phase::Expired, resume.expired.clone()),
            Cursor::at(Phase::Orphans, resume.orphans.clone()),
            Cursor::at(Phase::Generations, resume.generations.clone()),
        ]
    }

    fn at(phase: Phase, watermark: Option<String>) -> Cursor {
        Cursor {
            phase,
            watermark,
            exhausted: false,
        }
    }

    /// Where the next pass starts: after this pass's last batch, or from the beginning
    /// once the phase reached its end.
    pub(crate) fn resume_point(cursors: &[Cursor]) -> Watermarks {
        let of = |phase| {
            cursors
                .iter()
                .find(|c| c.phase == phase && !c.exhausted)
                .and_then(|c| c.watermark.clone())
        };
        Watermarks {
            expired: of(Phase::Expired),
            orphans: of(Phase::Orphans),
            generations: of(Phase::Generations),
        }
    }
}

/// A place in the keyset of generations, (engine instance id, execution id), kept in a
/// [`Cursor`]'s text watermark as `{execution id}:{instance id}` (the number first, so
/// any instance id reads back whole). An execution id of `i64::MAX` stands for "past
/// every generation of the instance".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenerationMark {
    pub(crate) instance_id: String,
    pub(crate) execution_id: i64,
}

impl GenerationMark {
    pub(crate) fn to_text(&self) -> String {
        format!("{}:{}", self.execution_id, self.instance_id)
    }

    /// None for text no mark wrote (then the phase starts over from the beginning).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (execution_id, instance_id) = text.split_once(':')?;
        Some(Self {
            instance_id: instance_id.to_owned(),
            execution_id: execution_id.parse().ok()?,
        })
    }
}

/// Which phases get the next batch: every phase not yet exhausted, in turn, so that under
/// any budget both make progress (orphans never wait behind a long expired backlog).
/// Empty once every phase is done.
pub(crate) fn next_round(cursors: &[Cursor]) -> Vec<usize> {
    (0..cursors.len())
        .filter(|&i| !cursors[i].exhausted)
        .collect()
}

impl Pass<'_> {
    /// Runs every phase's batches in turn until each found its end. Returns false when the
    /// pass stopped early (shutdown, budget, fence). The first round always runs, so even
    /// the smallest `pass.max_duration` gives each phase a batch per pass.
    pub(crate) async fn run_phases(&mut self, cursors: &mut [Cursor]) -> Result<bool, Error> {
        let mut first_round = true;
        loop {
            let round = next_round(cursors);
            if round.is_empty() {
                return Ok(true);
            }
            for i in round {
                if self.shutdown.is_cancelled()
                    || (!first_round && self.deadline.is_some_and(|d| Instant::now() >= d))
                {
                    return Ok(false);
                }
                if !self.next_batch(&mut cursors[i]).await? {
                    return Ok(false);
                }
            }
            first_round = false;
        }
    }

    /// One batch of `cursor`'s phase, moving its watermark. Returns false when the pass
    /// must stop (another replica holds the fence).
    async fn next_batch(&mut self, cursor: &mut Cursor) -> Result<bool, Error> {
        let phase = cursor.phase;
        let mut progress = None;
        let cfg = self.cfg;
        let batch_started = Instant::now();
        let result = bounded(
            cfg,
            "running a batch",
            self.batch(phase, cursor.watermark.as_deref(), &mut progress),
        )
        .await;
        match result {
            Ok(Step::Exhausted) => cursor.exhausted = true,
            Ok(Step::Fenced) => {
                info!("another replica holds the batch fence; standing down until the next pass");
                self.report.fenced = true;
                if let Some(m) = &self.options.metrics {
                    m.fenced.inc();
                }
                return Ok(false);
            }
            Ok(Step::Continue { watermark: next }) => {
                cursor.watermark = Some(next);
                self.report.batches += 1;
                self.batch_size.after_clean_batch();
                let paused = self.pause_after_batch(batch_started.elapsed()).await;
                self.report.paused_ms += paused.as_millis() as u64;
            }
            Ok(Step::LeasedAtCommit) => {
                self.report.batches_abandoned += 1;
                warn!(
                    ?phase,
                    "a queue item of the batch was leased before it committed; batch rolled back"
                );
                // Its candidates are left whole for the next pass, like a timed-out batch's.
                if let Some(p) = progress {
                    self.report.skipped_abandoned += p.candidates;
                    cursor.watermark = Some(p.watermark);
                }
            }
            Err(e) if is_timeout(&e) => {
                self.report.batches_abandoned += 1;
                warn!(?phase, batch_size = self.batch_size.get(), error = %e, "batch abandoned, rolled back");
                let statement_timeout = e.sqlstate() == Some(&SqlState::QUERY_CANCELED);
                match after_timeout(statement_timeout, progress, &mut self.batch_size) {
                    Abandoned::MovePast(p) => {
                        self.report.skipped_abandoned += p.candidates;
                        cursor.watermark = Some(p.watermark);
                    }
                    // The same watermark again, in this phase's next turn.
                    Abandoned::Retry => {}
                    Abandoned::Fail => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        Ok(true)
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

    #[test]
    fn every_phase_not_yet_exhausted_gets_a_batch_in_each_round() {
        let mut cursors = Cursor::all(&Watermarks::default());
        assert_eq!(next_round(&cursors), vec![0, 1, 2]);
        cursors[0].exhausted = true;
        assert_eq!(next_round(&cursors), vec![1, 2]);
        cursors[1].exhausted = true;
        cursors[2].exhausted = true;
        assert!(next_round(&cursors).is_empty());
    }

    #[test]
    fn a_pass_resumes_where_the_last_stopped_and_starts_over_after_the_end() {
        let resume = Watermarks {
            expired: Some("0000a000".to_owned()),
            orphans: None,
            generations: Some("7:0000c000".to_owned()),
        };
        let mut cursors = Cursor::all(&resume);
        assert_eq!(cursors[2].phase, Phase::Generations);
        assert_eq!(cursors[2].watermark.as_deref(), Some("7:0000c000"));
        assert_eq!(cursors[0].phase, Phase::Expired);
        assert_eq!(cursors[0].watermark.as_deref(), Some("0000a000"));
        assert_eq!(cursors[1].watermark, None);
        cursors[0].watermark = Some("0000b000".to_owned());
        cursors[1].watermark = Some("ffff0001".to_owned());
        cursors[1].exhausted = true;
        assert_eq!(
            Cursor::resume_point(&cursors),
            Watermarks {
                expired: Some("0000b000".to_owned()),
                orphans: None,
                generations: Some("7:0000c000".to_owned()),
            }
        );
    }

    #[test]
    fn a_generation_mark_reads_back_whatever_the_instance_id_holds() {
        for id in ["0000c000", "a::1::b", "odd:id:", ""] {
            let mark = GenerationMark {
                instance_id: id.to_owned(),
                execution_id: 42,
            };
            assert_eq!(GenerationMark::parse(&mark.to_text()), Some(mark));
        }
        assert_eq!(GenerationMark::parse("0000c000"), None);
        assert_eq!(GenerationMark::parse("x:0000c000"), None);
    }

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
