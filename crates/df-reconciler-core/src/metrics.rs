//! Prometheus metrics, in a registry owned by the daemon (no global registry).
//!
//! Counters are fed from each finished [`PassReport`], so the numbers on /metrics, in the
//! log and in the audit trail are the same numbers. Batch durations are observed as they
//! happen. Metric names are listed in docs/METRICS.md.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::report::{OrphanHold, PassReport};

/// Labels of `df_reconciler_rows_deleted_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableReason {
    /// `schema.table` the rows were deleted from.
    pub table: String,
    /// `expired` (df-owned instances, window or cap), `orphan`, or `pruned` (old
    /// generations of instances that stay).
    pub reason: &'static str,
}

/// Labels of `df_reconciler_instances_removed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonStatus {
    /// `expired`, `capped` or `orphan`.
    pub reason: &'static str,
    /// The df status (`completed`, ...), or for an orphan its root's engine status
    /// (`Completed`, ...).
    pub status: &'static str,
}

/// Labels of `df_reconciler_rule_instances_removed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleReason {
    /// A `[[retention.rules]]` name, or `default` (top-level keys, orphans): bounded by
    /// the configuration file.
    pub rule: String,
    /// `expired`, `capped` or `orphan`.
    pub reason: &'static str,
}

/// Labels of `df_reconciler_skipped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why candidates were left in place: `unsettled`, `locked`, `abandoned`,
    /// `inconsistent`, `young_orphan`, or `generation_locked` (a prunable generation
    /// locked elsewhere or of a leased instance).
    pub reason: &'static str,
}

/// Labels of `df_reconciler_passes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, `failed`, `fenced` (another replica held the fence) or `stopped`.
    pub outcome: &'static str,
    /// `true` or `false`, so dry runs never look like work done.
    pub dry_run: &'static str,
}

/// Labels of `df_reconciler_config_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadOutcome {
    /// `ok` or `rejected` (the old configuration stays in force).
    pub outcome: &'static str,
}

/// Labels of `df_reconciler_drift`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftKind {
    /// `running_without_df_row`, `df_rows_without_engine`, `df_live_engine_ended` or
    /// `queue_items_without_instance`.
    pub kind: &'static str,
}

/// Labels of `df_reconciler_orphans_held`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldReason {
    /// `no_stats_privilege`, `hidden_sessions` or `prepared_transactions`
    /// ([`OrphanHold::as_str`]).
    pub reason: &'static str,
}

/// Labels of `df_reconciler_not_reconcilable`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Problem {
    /// A kind of preflight problem ([`crate::readiness::PROBLEM_KINDS`]):
    /// `schema_missing`, `table_missing`, `privilege`, `row_level_security`,
    /// `unknown_engine_table` or `other`.
    pub problem: &'static str,
}

/// Every metric of the daemon. Cheap to clone handles live inside; share it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `df_reconciler_rows_deleted_total`: rows deleted per table and reason.
    pub rows_deleted: Family<TableReason, Counter>,
    /// `df_reconciler_instances_removed_total`: roots removed per reason and status.
    pub instances_removed: Family<ReasonStatus, Counter>,
    /// `df_reconciler_rule_instances_removed_total`: roots removed per retention rule and
    /// reason.
    pub rule_instances_removed: Family<RuleReason, Counter>,
    /// `df_reconciler_orphans_reclaimed_total`: orphan engine roots reclaimed with their trees.
    pub orphans_reclaimed: Counter,
    /// `df_reconciler_engine_children_removed_total`: sub-orchestrations removed with their root.
    pub engine_children_removed: Counter,
    /// `df_reconciler_skipped_total`: candidates left in place for a later pass, per reason.
    pub skipped: Family<Reason, Counter>,
    /// `df_reconciler_generations_pruned_total`: old generations (executions with their
    /// history) pruned from instances that stay.
    pub generations_pruned: Counter,
    /// `df_reconciler_generations_waiting`: generations prunable at the last complete pass
    /// that counted drift, after its own pruning (the pruning backlog).
    pub generations_waiting: Gauge,
    /// `df_reconciler_passes_total`: passes per outcome, dry runs included.
    pub passes: Family<Outcome, Counter>,
    /// `df_reconciler_pass_duration_seconds`: duration of real passes.
    pub pass_duration: Histogram,
    /// `df_reconciler_batch_duration_seconds`: how long each batch transaction held its
    /// row locks.
    pub batch_duration: Histogram,
    /// `df_reconciler_batches_abandoned_total`: batches rolled back on a lock or statement
    /// timeout, or on a queue item leased just before COMMIT.
    pub batches_abandoned: Counter,
    /// `df_reconciler_paused_seconds_total`: time paused between batches for busy
    /// sessions (`pass.busy_duty_percent`).
    pub paused_seconds: Counter<f64, AtomicU64>,
    /// `df_reconciler_last_success_timestamp_seconds`: Unix time of the last successful
    /// real pass; the alert that passes stopped succeeding watches it.
    pub last_success: Gauge<f64, AtomicU64>,
    /// `df_reconciler_consecutive_failures`: passes failed in a row, 0 after a success.
    pub consecutive_failures: Gauge,
    /// `df_reconciler_backlog_eligible`: eligible instances left after the last complete
    /// pass; growth means rows stay locked, leased or unsettled.
    pub backlog_eligible: Gauge,
    /// `df_reconciler_backlog_oldest_age_seconds`: how long the oldest of those has been
    /// terminal.
    pub backlog_oldest_age: Gauge<f64, AtomicU64>,
    /// `df_reconciler_drift`: drift between the stores, per kind, at the last complete
    /// pass that counted it (reported, never deleted).
    pub drift: Family<DriftKind, Gauge>,
    /// `df_reconciler_orphans_held`: 1 per reason that kept the last real pass from
    /// reclaiming any orphan (the open-transaction guard could not see every
    /// transaction), 0 otherwise.
    pub orphans_held: Family<HoldReason, Gauge>,
    /// `df_reconciler_leader`: 1 while this replica holds the leader lock; 0 otherwise,
    /// also when leader election is off or not in use (pooler mode).
    pub leader: Gauge,
    /// `df_reconciler_fenced_total`: times this replica stood down because another held
    /// the batch fence.
    pub fenced: Counter,
    /// `df_reconciler_config_reloads_total`: SIGHUP reloads, accepted or rejected.
    pub config_reloads: Family<ReloadOutcome, Counter>,
    /// `df_reconciler_not_reconcilable`: 1 per kind of preflight problem while `run` waits
    /// for a database it can reach but not reconcile yet, 0 otherwise.
    pub not_reconcilable: Family<Problem, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under the `df_reconciler` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("df_reconciler");
        let m = Metrics {
            rows_deleted: Family::default(),
            instances_removed: Family::default(),
            rule_instances_removed: Family::default(),
            orphans_reclaimed: Counter::default(),
            engine_children_removed: Counter::default(),
            skipped: Family::default(),
            generations_pruned: Counter::default(),
            generations_waiting: Gauge::default(),
            passes: Family::default(),
            // 10 ms .. ~80 min
            pass_duration: Histogram::new(exponential_buckets(0.01, 2.0, 19)),
            // 1 ms .. ~65 s
            batch_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            batches_abandoned: Counter::default(),
            paused_seconds: Counter::default(),
            last_success: Gauge::default(),
            consecutive_failures: Gauge::default(),
            backlog_eligible: Gauge::default(),
            backlog_oldest_age: Gauge::default(),
            drift: Family::default(),
            orphans_held: Family::default(),
            leader: Gauge::default(),
            fenced: Counter::default(),
            config_reloads: Family::default(),
            not_reconcilable: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "rows_deleted",
            "Rows deleted (or, in dry runs, not counted here) per table and reason",
            m.rows_deleted.clone(),
        );
        r.register(
            "instances_removed",
            "Instances removed per reason (expired, capped, orphan) and status",
            m.instances_removed.clone(),
        );
        r.register(
            "rule_instances_removed",
            "Instances removed per retention rule (a [[retention.rules]] name, or default) and reason",
            m.rule_instances_removed.clone(),
        );
        r.register(
            "orphans_reclaimed",
            "Orphan engine roots reclaimed with their trees",
            m.orphans_reclaimed.clone(),
        );
        r.register(
            "engine_children_removed",
            "Sub-orchestrations removed as part of their root's tree",
            m.engine_children_removed.clone(),
        );
        r.register(
            "skipped",
            "Candidates skipped per reason (unsettled, locked, inconsistent, young_orphan)",
            m.skipped.clone(),
        );
        r.register(
            "generations_pruned",
            "Old generations (executions with their history) pruned from instances that stay",
            m.generations_pruned.clone(),
        );
        r.register(
            "generations_waiting",
            "Generations prunable after the last pass that counted drift",
            m.generations_waiting.clone(),
        );
        r.register("passes", "Passes per outcome", m.passes.clone());
        r.register(
            "pass_duration_seconds",
            "Duration of real passes",
            m.pass_duration.clone(),
        );
        r.register(
            "batch_duration_seconds",
            "Duration of batch transactions",
            m.batch_duration.clone(),
        );
        r.register(
            "batches_abandoned",
            "Batches rolled back on a lock or statement timeout, or a late lease",
            m.batches_abandoned.clone(),
        );
        r.register(
            "paused_seconds",
            "Time passes paused between batches because other sessions were active",
            m.paused_seconds.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful real pass",
            m.last_success.clone(),
        );
        r.register(
            "consecutive_failures",
            "Passes failed in a row (0 after a success)",
            m.consecutive_failures.clone(),
        );
        r.register(
            "backlog_eligible",
            "Instances eligible for removal after the last pass (skipped or not reached)",
            m.backlog_eligible.clone(),
        );
        r.register(
            "backlog_oldest_age_seconds",
            "Age past its cutoff of the oldest eligible instance after the last pass",
            m.backlog_oldest_age.clone(),
        );
        r.register(
            "drift",
            "Drift between the stores at the last pass, per kind",
            m.drift.clone(),
        );
        r.register(
            "orphans_held",
            "1 per reason that kept the last real pass from reclaiming any orphan",
            m.orphans_held.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader lock",
            m.leader.clone(),
        );
        r.register(
            "fenced",
            "Batches not run because another replica held the fence",
            m.fenced.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) per outcome",
            m.config_reloads.clone(),
        );
        r.register(
            "not_reconcilable",
            "1 per kind of problem while the database cannot be reconciled yet",
            m.not_reconcilable.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn observe_batch(&self, elapsed: Duration) {
        self.batch_duration.observe(elapsed.as_secs_f64());
    }

    /// Folds a finished pass into the metrics. Dry runs only count as passes.
    pub(crate) fn observe_pass(&self, report: &PassReport, failed: bool) {
        let outcome = report.outcome(failed);
        self.passes
            .get_or_create(&Outcome {
                outcome,
                dry_run: if report.dry_run { "true" } else { "false" },
            })
            .inc();
        if report.dry_run {
            return;
        }
        if failed {
            self.consecutive_failures.inc();
        } else {
            self.consecutive_failures.set(0);
            for hold in OrphanHold::ALL {
                self.orphans_held
                    .get_or_create(&HoldReason {
                        reason: hold.as_str(),
                    })
                    .set(i64::from(report.orphans_held.contains(&hold)));
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(now.as_secs_f64());
        }
        self.pass_duration
            .observe(Duration::from_millis(report.duration_ms).as_secs_f64());
        for (table, n) in &report.rows_by_reason.expired {
            self.rows_deleted
                .get_or_create(&TableReason {
                    table: table.clone(),
                    reason: "expired",
                })
                .inc_by(*n);
        }
        for (table, n) in &report.rows_by_reason.orphan {
            self.rows_deleted
                .get_or_create(&TableReason {
                    table: table.clone(),
                    reason: "orphan",
                })
                .inc_by(*n);
        }
        for (table, n) in &report.rows_by_reason.pruned {
            self.rows_deleted
                .get_or_create(&TableReason {
                    table: table.clone(),
                    reason: "pruned",
                })
                .inc_by(*n);
        }
        self.generations_pruned.inc_by(report.generations_pruned);
        let e = &report.expired_removed;
        let c = &report.capped_by_status;
        let o = &report.orphans_by_status;
        for (reason, status, n) in [
            ("expired", "completed", e.completed),
            ("expired", "failed", e.failed),
            ("expired", "cancelled", e.cancelled),
            ("capped", "completed", c.completed),
            ("capped", "failed", c.failed),
            ("capped", "cancelled", c.cancelled),
            ("orphan", "Completed", o.completed),
            ("orphan", "Failed", o.failed),
            ("orphan", "ContinuedAsNew", o.continued_as_new),
        ] {
            self.instances_removed
                .get_or_create(&ReasonStatus { reason, status })
                .inc_by(n);
        }
        for (rule, n) in &report.removed_by_rule {
            for (reason, n) in [
                ("expired", n.expired),
                ("capped", n.capped),
                ("orphan", n.orphans),
            ] {
                if n > 0 {
                    self.rule_instances_removed
                        .get_or_create(&RuleReason {
                            rule: rule.clone(),
                            reason,
                        })
                        .inc_by(n);
                }
            }
        }
        self.orphans_reclaimed.inc_by(report.orphans_reclaimed);
        self.engine_children_removed
            .inc_by(report.engine_children_removed);
        for (reason, n) in [
            ("unsettled", report.skipped_unsettled),
            ("locked", report.skipped_locked),
            ("abandoned", report.skipped_abandoned),
            ("inconsistent", report.skipped_inconsistent),
            ("young_orphan", report.orphans_waiting),
            ("generation_locked", report.generations_skipped),
        ] {
            self.skipped.get_or_create(&Reason { reason }).inc_by(n);
        }
        self.batches_abandoned.inc_by(report.batches_abandoned);
        self.paused_seconds.inc_by(report.paused_ms as f64 / 1000.0);
        if report.complete {
            self.backlog_eligible.set(report.backlog_eligible as i64);
            self.backlog_oldest_age
                .set(report.backlog_oldest_age_s.unwrap_or(0.0));
        }
        if report.complete && report.drift_counted {
            for (kind, n) in [
                ("running_without_df_row", report.running_without_df_row),
                ("df_rows_without_engine", report.df_rows_without_engine),
                ("df_live_engine_ended", report.df_live_engine_ended),
                (
                    "queue_items_without_instance",
                    report.queue_items_without_instance,
                ),
            ] {
                self.drift.get_or_create(&DriftKind { kind }).set(n as i64);
            }
            self.generations_waiting
                .set(report.generations_waiting as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_pass_sets_the_drift_gauges_and_the_orphan_holds() {
        let metrics = Metrics::new();
        let report = PassReport {
            complete: true,
            drift_counted: true,
            df_live_engine_ended: 3,
            orphans_held: vec![OrphanHold::PreparedTransactions],
            ..PassReport::default()
        };
        metrics.observe_pass(&report, false);
        let text = metrics.encode();
        for line in [
            "df_reconciler_drift{kind=\"df_live_engine_ended\"} 3",
            "df_reconciler_orphans_held{reason=\"prepared_transactions\"} 1",
            "df_reconciler_orphans_held{reason=\"no_stats_privilege\"} 0",
            "df_reconciler_orphans_held{reason=\"hidden_sessions\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }

        metrics.observe_pass(&PassReport::default(), false);
        assert!(metrics
            .encode()
            .lines()
            .any(|l| l == "df_reconciler_orphans_held{reason=\"prepared_transactions\"} 0"));
    }
}
