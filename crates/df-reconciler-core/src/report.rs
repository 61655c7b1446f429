//! [`PassReport`]: the numbers of one pass, printed as a table, as one JSON object, and
//! logged. In a dry run every "removed" number means "would be removed".

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::policy::TerminalStatus;

/// Counts per terminal df status.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ByStatus {
    /// Instances in status `completed`.
    pub completed: u64,
    /// Instances in status `failed`.
    pub failed: u64,
    /// Instances in status `cancelled`.
    pub cancelled: u64,
}

impl ByStatus {
    /// Adds `n` to the count of `status`.
    pub fn add(&mut self, status: TerminalStatus, n: u64) {
        match status {
            TerminalStatus::Completed => self.completed += n,
            TerminalStatus::Failed => self.failed += n,
            TerminalStatus::Cancelled => self.cancelled += n,
        }
    }
    /// All statuses together.
    pub fn total(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }
}

/// Orphans per engine status of the root's current execution.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ByEngineStatus {
    /// Roots whose execution `Completed`.
    pub completed: u64,
    /// Roots whose execution `Failed`.
    pub failed: u64,
    /// Always 0: a root whose current execution is `ContinuedAsNew` is between two
    /// generations, live, and never reclaimed. Kept so the JSON report keeps its keys.
    pub continued_as_new: u64,
}

/// Why a pass reclaimed no orphan at all: the open-transaction guard could not see every
/// transaction that may still commit a df row for an engine record (reconcile.md). The
/// expired phase runs regardless. Serialized in snake_case (`"no_stats_privilege"`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OrphanHold {
    /// The role does not use pg_read_all_stats's privileges (nor is it a superuser):
    /// other roles' sessions hide their `xact_start` in pg_stat_activity.
    NoStatsPrivilege,
    /// Some sessions of the database hide their transaction start although the role has
    /// the privilege (e.g. a session running with `track_activities = off`).
    HiddenSessions,
    /// A prepared transaction exists in the database: pg_prepared_xacts has only its
    /// PREPARE time, so an engine record created between a df.start() inside it and the
    /// PREPARE is indistinguishable from an orphan.
    PreparedTransactions,
}

impl OrphanHold {
    /// Every reason, in the order reports list them.
    pub const ALL: [OrphanHold; 3] = [
        OrphanHold::NoStatsPrivilege,
        OrphanHold::HiddenSessions,
        OrphanHold::PreparedTransactions,
    ];

    /// The snake_case name used in the JSON report and as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanHold::NoStatsPrivilege => "no_stats_privilege",
            OrphanHold::HiddenSessions => "hidden_sessions",
            OrphanHold::PreparedTransactions => "prepared_transactions",
        }
    }
}

/// Roots one retention rule removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RuleCounts {
    /// Past the rule's window.
    pub expired: u64,
    /// Over the rule's cap (its own, or the global one it shares).
    pub capped: u64,
    /// Orphan engine roots (always under `default`: no df row, no label).
    pub orphans: u64,
}

impl RuleCounts {
    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.expired + self.capped + self.orphans
    }
}

/// Rows per `schema.table`, split by why their instance went.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RowsByReason {
    /// Instances of expired (window or cap) df rows.
    pub expired: BTreeMap<String, u64>,
    /// Orphan engine trees.
    pub orphan: BTreeMap<String, u64>,
    /// Old generations of retained instances (`retention.prune_executions`).
    pub pruned: BTreeMap<String, u64>,
}

/// Why rows went: the key of [`RowsByReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowReason {
    Expired,
    Orphan,
    Pruned,
}

/// What one pass did and found: the `once` output, the "pass finished" log line, the
/// audit row's `report` and the source of every counter on /metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PassReport {
    /// Random id carried by every log line of the pass and by its audit row.
    pub pass_id: String,
    /// True when nothing was written: every "removed" count means "would be removed".
    pub dry_run: bool,
    /// Database clock at the start of the pass (RFC 3339, UTC).
    pub started_at: String,
    /// Wall time of the whole pass, pauses included.
    pub duration_ms: u64,
    /// Terminal df instances removed because their retention window passed, by status.
    pub expired_removed: ByStatus,
    /// Terminal df instances removed only because they fell outside the hard cap.
    pub capped_removed: u64,
    /// The same instances, by status (feeds `instances_removed_total{reason="capped"}`).
    pub capped_by_status: ByStatus,
    /// Engine roots with no df row, reclaimed with their trees.
    pub orphans_reclaimed: u64,
    /// The same roots, by the engine status of their current execution.
    pub orphans_by_status: ByEngineStatus,
    /// Roots removed per retention rule (`[[retention.rules]]` name, `default` for the
    /// top-level keys and orphans); only rules that removed something appear.
    pub removed_by_rule: BTreeMap<String, RuleCounts>,
    /// Sub-orchestrations removed as part of their root's tree.
    pub engine_children_removed: u64,
    /// Old generations (engine executions, with their history) pruned from instances
    /// still retained, roots and children alike (`retention.prune_executions`).
    pub generations_pruned: u64,
    /// Prunable generations left in place this pass: their row locked by another
    /// session, or their instance leased by a dispatcher; retried next pass.
    pub generations_skipped: u64,
    /// Rows per `schema.table`.
    pub rows_deleted: BTreeMap<String, u64>,
    /// The same rows, by reason.
    pub rows_by_reason: RowsByReason,
    /// Expired df rows whose engine tree has not ended (the root or a descendant Running
    /// or between generations): retried next pass.
    pub skipped_unsettled: u64,
    /// Candidates locked by another session or leased by a dispatcher: retried next pass.
    pub skipped_locked: u64,
    /// Candidates of batches rolled back on a lock or statement timeout, left whole for
    /// the next pass.
    pub skipped_abandoned: u64,
    /// Expired df rows whose engine record is not a root (hostile or corrupt data).
    pub skipped_inconsistent: u64,
    /// Engine roots Running or between generations with no df row (drift; never deleted).
    pub running_without_df_row: u64,
    /// pending/running df rows with neither engine record nor queue item (drift).
    pub df_rows_without_engine: u64,
    /// pending/running df rows whose engine root's current execution ended (Completed or
    /// Failed; ContinuedAsNew is live) more than `retention.orphan_min_age` ago (drift "df
    /// live, engine ended", e.g. a rolled-back `df.cancel()`; never deleted).
    pub df_live_engine_ended: u64,
    /// Orchestrator queue items whose id has neither engine instance nor df row (drift).
    pub queue_items_without_instance: u64,
    /// Terminal orphan roots not old enough yet (kept; reclaimed by a later pass).
    pub orphans_waiting: u64,
    /// Generations prunable when the drift was counted, after the pass's own pruning: the
    /// pruning backlog (0 with `retention.prune_executions` off).
    pub generations_waiting: u64,
    /// Why this pass reclaimed no orphan at all (the open-transaction guard could not see
    /// every transaction); empty when orphans were reclaimed normally. Each reason also
    /// has a line in `warnings`.
    pub orphans_held: Vec<OrphanHold>,
    /// Whether this pass counted the drift fields above (see `pass.drift_interval`); when
    /// false they are 0 and mean nothing.
    pub drift_counted: bool,
    /// Eligible instances left after the pass (skipped ones), when the pass completed.
    pub backlog_eligible: u64,
    /// How long the oldest of those has been terminal (seconds), if any.
    pub backlog_oldest_age_s: Option<f64>,
    /// Batch transactions committed (or, in a dry run, evaluated).
    pub batches: u64,
    /// Time spent pausing between batches for other sessions' sake (`pass.busy_duty_percent`).
    pub paused_ms: u64,
    /// Batches rolled back on a lock or statement timeout, or on a queue item leased just
    /// before COMMIT; their candidates count as skipped.
    pub batches_abandoned: u64,
    /// False when the pass stopped early (shutdown, pass.max_duration, fence); the next continues.
    pub complete: bool,
    /// True when another replica held the batch fence, so this pass stood down.
    pub fenced: bool,
    /// Problems that did not stop the pass (preflight findings, VACUUM hints, audit
    /// tables missing).
    pub warnings: Vec<String>,
    /// The error that ended the pass, if it failed.
    pub errors: Vec<String>,
}

impl PassReport {
    /// Roots removed (or, in a dry run, that would be): expired, capped and orphans.
    pub fn instances_removed(&self) -> u64 {
        self.expired_removed.total() + self.capped_removed + self.orphans_reclaimed
    }

    /// Eligible candidates this pass left in place, for any reason: the backlog it leaves.
    pub(crate) fn instances_skipped(&self) -> u64 {
        self.skipped_unsettled
            + self.skipped_locked
            + self.skipped_abandoned
            + self.skipped_inconsistent
    }

    pub(crate) fn add_rows(&mut self, table: &str, reason: RowReason, n: u64) {
        *self.rows_deleted.entry(table.to_owned()).or_default() += n;
        let by_reason = match reason {
            RowReason::Expired => &mut self.rows_by_reason.expired,
            RowReason::Orphan => &mut self.rows_by_reason.orphan,
            RowReason::Pruned => &mut self.rows_by_reason.pruned,
        };
        *by_reason.entry(table.to_owned()).or_default() += n;
    }

    /// Outcome word used by the audit trail and the metrics.
    pub fn outcome(&self, failed: bool) -> &'static str {
        if failed {
            "failed"
        } else if self.fenced {
            "fenced"
        } else if !self.complete {
            "stopped"
        } else {
            "ok"
        }
    }

    /// One line for `systemctl status` and the log.
    pub fn summary(&self) -> String {
        format!(
            "last pass {}: removed {} (expired {}, capped {}, orphans {}), skipped {}, pruned {} generations, {} ms",
            self.started_at,
            self.instances_removed(),
            self.expired_removed.total(),
            self.capped_removed,
            self.orphans_reclaimed,
            self.instances_skipped(),
            self.generations_pruned,
            self.duration_ms
        )
    }

    /// The report as one JSON object, as `once --json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a PassReport always serializes")
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        writeln!(
            f,
            "{} {} started {} took {} ms in {} batches{}",
            if self.dry_run { "DRY RUN" } else { "pass" },
            self.pass_id,
            self.started_at,
            self.duration_ms,
            self.batches,
            if self.complete {
                ""
            } else {
                " (stopped early)"
            }
        )?;
        let e = &self.expired_removed;
        // Drift counts this pass did not take print as "-", not as 0.
        let drift = |n: u64| self.drift_counted.then_some(n);
        let rows: [(&str, Option<u64>); 20] = [
            ("expired completed", Some(e.completed)),
            ("expired failed", Some(e.failed)),
            ("expired cancelled", Some(e.cancelled)),
            ("over hard cap", Some(self.capped_removed)),
            ("orphan engine roots", Some(self.orphans_reclaimed)),
            (
                "engine children (in trees)",
                Some(self.engine_children_removed),
            ),
            ("old generations pruned", Some(self.generations_pruned)),
            (
                "generations skipped: locked or leased",
                Some(self.generations_skipped),
            ),
            (
                "skipped: engine still running",
                Some(self.skipped_unsettled),
            ),
            ("skipped: locked or leased", Some(self.skipped_locked)),
            (
                "skipped: in an abandoned batch",
                Some(self.skipped_abandoned),
            ),
            (
                "skipped: inconsistent engine record",
                Some(self.skipped_inconsistent),
            ),
            (
                "drift: engine running, no df row",
                drift(self.running_without_df_row),
            ),
            (
                "drift: df live, no engine record",
                drift(self.df_rows_without_engine),
            ),
            (
                "drift: df live, engine ended",
                drift(self.df_live_engine_ended),
            ),
            (
                "drift: queue item, no instance",
                drift(self.queue_items_without_instance),
            ),
            ("orphans not old enough yet", drift(self.orphans_waiting)),
            (
                "generations waiting to be pruned",
                drift(self.generations_waiting),
            ),
            (
                "batches abandoned (timeouts, late leases)",
                Some(self.batches_abandoned),
            ),
            ("errors", Some(self.errors.len() as u64)),
        ];
        writeln!(f, "  {:<40} {:>10}", format!("instances ({verb})"), "count")?;
        for (label, n) in rows {
            match n {
                Some(n) => writeln!(f, "  {label:<40} {n:>10}")?,
                None => writeln!(f, "  {label:<40} {:>10}", "-")?,
            }
        }
        if !self.orphans_held.is_empty() {
            let reasons: Vec<&str> = self.orphans_held.iter().map(|h| h.as_str()).collect();
            writeln!(f, "  orphans held (none reclaimed): {}", reasons.join(", "))?;
        }
        if !self.removed_by_rule.is_empty() {
            writeln!(f, "  {:<40} {:>10}", format!("by rule ({verb})"), "count")?;
            for (rule, n) in &self.removed_by_rule {
                writeln!(f, "  {:<40} {:>10}", format!("rule {rule}"), n.total())?;
            }
        }
        writeln!(f, "  {:<40} {:>10}", format!("rows ({verb})"), "count")?;
        for (table, n) in &self.rows_deleted {
            writeln!(f, "  {table:<40} {n:>10}")?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphan_holds_serialize_as_their_names() {
        for hold in OrphanHold::ALL {
            assert_eq!(
                serde_json::to_value(hold).unwrap(),
                serde_json::Value::from(hold.as_str())
            );
        }
    }

    #[test]
    fn the_table_names_the_holds_and_the_new_drift() {
        let report = PassReport {
            drift_counted: true,
            df_live_engine_ended: 4,
            orphans_held: vec![OrphanHold::NoStatsPrivilege],
            ..PassReport::default()
        };
        let table = report.to_string();
        assert!(table.contains("orphans held (none reclaimed): no_stats_privilege"));
        assert!(table
            .lines()
            .any(|l| l.contains("drift: df live, engine ended") && l.ends_with(" 4")));
    }
}
