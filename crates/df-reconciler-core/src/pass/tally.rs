//! What a batch did, kept apart from the report until its transaction committed.

use std::time::SystemTime;

use tokio_postgres::types::Timestamp;

use super::deletes::Rows;
use super::phase::Phase;
use crate::audit::DeletedRoot;
use crate::policy::{EngineStatus, TerminalStatus};
use crate::report::{PassReport, RowReason};

/// What a batch found, applied to the report only once its transaction committed.
#[derive(Debug, Default)]
pub(crate) struct BatchTally {
    /// Removed df roots: status, removed by its window (else by a cap), its rule's name.
    pub(crate) expired: Vec<(TerminalStatus, bool, String)>,
    pub(crate) orphans: Vec<EngineStatus>,
    pub(crate) children: u64,
    /// Generations pruned (phase 3).
    pub(crate) generations: u64,
    /// Prunable generations left in place: locked elsewhere or their instance leased.
    pub(crate) generations_skipped: u64,
    pub(crate) rows: Vec<(String, u64)>,
    pub(crate) skipped_unsettled: u64,
    pub(crate) skipped_locked: u64,
    pub(crate) skipped_inconsistent: u64,
    /// Oldest terminal_at (or orphan age) among candidates the batch left in place.
    pub(crate) oldest_skipped: Option<SystemTime>,
    /// Removed roots, for the opt-in deletions audit table.
    pub(crate) deleted_roots: Vec<DeletedRoot>,
    /// Every engine instance and bare id the batch deletes: their dispatcher queue items
    /// go in its last statement ([`super::statements::Statements::delete_last`]).
    pub(crate) deleted_last: Rows,
}

impl BatchTally {
    pub(crate) fn skipped_since(&mut self, at: Option<Timestamp<SystemTime>>) {
        let at = match at {
            Some(Timestamp::Value(t)) => Some(t),
            Some(Timestamp::NegInfinity) => Some(SystemTime::UNIX_EPOCH),
            _ => None,
        };
        if let Some(at) = at {
            self.oldest_skipped = Some(self.oldest_skipped.map_or(at, |o| o.min(at)));
        }
    }

    /// Adds the batch to the pass's report, and its oldest skipped candidate to the pass's.
    pub(crate) fn apply(
        self,
        phase: Phase,
        oldest_skipped: &mut Option<SystemTime>,
        report: &mut PassReport,
    ) {
        if let Some(at) = self.oldest_skipped {
            *oldest_skipped = Some(oldest_skipped.map_or(at, |o| o.min(at)));
        }
        let r = report;
        for (status, window_expired, rule) in self.expired {
            let by_rule = r.removed_by_rule.entry(rule).or_default();
            if window_expired {
                r.expired_removed.add(status, 1);
                by_rule.expired += 1;
            } else {
                r.capped_removed += 1;
                r.capped_by_status.add(status, 1);
                by_rule.capped += 1;
            }
        }
        for status in self.orphans {
            r.orphans_reclaimed += 1;
            r.removed_by_rule
                .entry(crate::rules::DEFAULT_RULE.to_owned())
                .or_default()
                .orphans += 1;
            match status {
                EngineStatus::Completed => r.orphans_by_status.completed += 1,
                EngineStatus::Failed => r.orphans_by_status.failed += 1,
                // Live, like Running: no tree is cleared with such a root (the key stays in
                // the report for the stability of its JSON; only a bug could count here).
                EngineStatus::ContinuedAsNew => r.orphans_by_status.continued_as_new += 1,
                EngineStatus::Running => {}
            }
        }
        r.engine_children_removed += self.children;
        r.generations_pruned += self.generations;
        r.generations_skipped += self.generations_skipped;
        let reason = match phase {
            Phase::Expired => RowReason::Expired,
            Phase::Orphans => RowReason::Orphan,
            Phase::Generations => RowReason::Pruned,
        };
        for (table, n) in self.rows {
            r.add_rows(&table, reason, n);
        }
        r.skipped_unsettled += self.skipped_unsettled;
        r.skipped_locked += self.skipped_locked;
        r.skipped_inconsistent += self.skipped_inconsistent;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_oldest_skipped_candidate_is_kept() {
        let mut tally = BatchTally::default();
        tally.skipped_since(None);
        assert_eq!(tally.oldest_skipped, None, "unknown age says nothing");
        tally.skipped_since(Some(Timestamp::Value(at(50))));
        tally.skipped_since(Some(Timestamp::Value(at(80))));
        assert_eq!(tally.oldest_skipped, Some(at(50)));
        tally.skipped_since(Some(Timestamp::PosInfinity));
        assert_eq!(
            tally.oldest_skipped,
            Some(at(50)),
            "+infinity is not an age"
        );
        tally.skipped_since(Some(Timestamp::NegInfinity));
        assert_eq!(tally.oldest_skipped, Some(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn window_and_cap_removals_are_told_apart() {
        let tally = BatchTally {
            expired: vec![
                (TerminalStatus::Completed, true, "default".into()),
                (TerminalStatus::Completed, true, "billing".into()),
                (TerminalStatus::Failed, false, "billing".into()),
                (TerminalStatus::Cancelled, true, "default".into()),
            ],
            ..BatchTally::default()
        };
        let mut report = PassReport::default();
        tally.apply(Phase::Expired, &mut None, &mut report);
        assert_eq!(report.expired_removed.completed, 2);
        assert_eq!(report.expired_removed.cancelled, 1);
        assert_eq!(report.expired_removed.failed, 0);
        assert_eq!(report.capped_removed, 1);
        assert_eq!(report.capped_by_status.failed, 1);
        assert_eq!(report.instances_removed(), 4);
        let billing = report.removed_by_rule["billing"];
        assert_eq!((billing.expired, billing.capped), (1, 1));
        assert_eq!(report.removed_by_rule["default"].expired, 2);
    }

    #[test]
    fn orphans_count_by_status_and_rows_by_phase() {
        let tally = BatchTally {
            orphans: vec![
                EngineStatus::Completed,
                EngineStatus::ContinuedAsNew,
                EngineStatus::Failed,
                EngineStatus::Failed,
            ],
            children: 3,
            rows: vec![
                ("duroxide.history".into(), 40),
                ("duroxide.instances".into(), 7),
            ],
            ..BatchTally::default()
        };
        let mut report = PassReport::default();
        report.add_rows("duroxide.history", RowReason::Expired, 10);
        tally.apply(Phase::Orphans, &mut None, &mut report);
        assert_eq!(report.orphans_reclaimed, 4);
        assert_eq!(report.orphans_by_status.failed, 2);
        assert_eq!(report.orphans_by_status.completed, 1);
        assert_eq!(report.orphans_by_status.continued_as_new, 1);
        assert_eq!(report.engine_children_removed, 3);
        assert_eq!(report.rows_deleted["duroxide.history"], 50);
        assert_eq!(report.rows_by_reason.orphan["duroxide.history"], 40);
        assert_eq!(report.rows_by_reason.expired["duroxide.history"], 10);
        assert_eq!(report.rows_by_reason.orphan["duroxide.instances"], 7);
    }

    #[test]
    fn skips_add_up_and_the_pass_keeps_its_oldest() {
        let mut report = PassReport::default();
        let mut oldest = Some(at(100));
        for (unsettled, locked, inconsistent, skipped_at) in [(1, 2, 0, 150), (0, 3, 1, 70)] {
            let mut tally = BatchTally {
                skipped_unsettled: unsettled,
                skipped_locked: locked,
                skipped_inconsistent: inconsistent,
                ..BatchTally::default()
            };
            tally.skipped_since(Some(Timestamp::Value(at(skipped_at))));
            tally.apply(Phase::Expired, &mut oldest, &mut report);
        }
        assert_eq!(
            (
                report.skipped_unsettled,
                report.skipped_locked,
                report.skipped_inconsistent
            ),
            (1, 5, 1)
        );
        assert_eq!(oldest, Some(at(70)));
        BatchTally::default().apply(Phase::Expired, &mut oldest, &mut report);
        assert_eq!(
            oldest,
            Some(at(70)),
            "a batch that skipped nothing changes nothing"
        );
    }
}
