//! Whether `run` may reconcile the database yet, and how it says so while it waits.
//!
//! A database can be reachable and still not reconcilable: on a fresh install the engine's
//! store appears only once pg_durable's background worker has migrated it, seconds after
//! `CREATE EXTENSION`; the role's grants (or its BYPASSRLS) may come after the daemon
//! started; an engine upgrade may add a per-instance table the daemon does not know.
//! Preflight refuses all of these ([`crate::error::Error::Refused`]). `once` and `check`
//! exit 3 on it; `run` instead waits as it does for an unreachable server: it stays up,
//! deletes nothing, retries with the capped backoff, and says why, once per change, in
//! the log, on /readyz, in `df_reconciler_not_reconcilable` and in systemd's STATUS.

use tracing::{info, warn};

use crate::http::Health;
use crate::lifecycle;
use crate::metrics::{Metrics, Problem};

/// Every value of the `problem` label of `df_reconciler_not_reconcilable`.
pub const PROBLEM_KINDS: [&str; 6] = [
    "schema_missing",
    "table_missing",
    "privilege",
    "row_level_security",
    "unknown_engine_table",
    "other",
];

/// The kind of one of preflight's problem lines (a label value of [`PROBLEM_KINDS`]).
pub(crate) fn problem_kind(problem: &str) -> &'static str {
    if problem.contains("schema") && problem.contains("does not exist") {
        "schema_missing"
    } else if problem.starts_with("table ") && problem.contains("does not exist") {
        "table_missing"
    } else if problem.starts_with("role lacks") {
        "privilege"
    } else if problem.contains("row-level security") {
        "row_level_security"
    } else if problem.contains("does not know") {
        "unknown_engine_table"
    } else {
        "other"
    }
}

/// Records that preflight refused with `problems` (empty: it passed), on /readyz, in the
/// metric and in systemd's STATUS; logs only when the reason changed.
pub(crate) fn record(health: &Health, metrics: &Metrics, problems: &[String]) {
    let reason = (!problems.is_empty()).then(|| problems.join("; "));
    for kind in PROBLEM_KINDS {
        let present = problems.iter().any(|p| problem_kind(p) == kind);
        metrics
            .not_reconcilable
            .get_or_create(&Problem { problem: kind })
            .set(i64::from(present));
    }
    let changed = health.set_not_reconcilable(reason.clone());
    match reason {
        Some(reason) => {
            lifecycle::status(&format!(
                "not reconciling: the database is not reconcilable yet: {reason}"
            ));
            if changed {
                warn!(
                    reason = %reason,
                    "database not reconcilable yet; waiting, nothing is deleted meanwhile"
                );
            }
        }
        None if changed => info!("database reconcilable now; passes start"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_preflight_words_has_its_kind() {
        for (problem, kind) in [
            (
                "control schema \"df\" does not exist (is pg_durable installed in this database? see schemas.control)",
                "schema_missing",
            ),
            (
                "engine schema \"_duroxide\" does not exist (see schemas.engine)",
                "schema_missing",
            ),
            ("table _duroxide.kv_store does not exist", "table_missing"),
            (
                "role lacks USAGE on schema df (GRANT USAGE ON SCHEMA df)",
                "privilege",
            ),
            (
                "role lacks DELETE on df.nodes (GRANT DELETE ON df.nodes)",
                "privilege",
            ),
            (
                "role is subject to row-level security on df.instances: it would see only its own rows",
                "row_level_security",
            ),
            (
                "engine table _duroxide.extra has an instance_id column this version of df-reconciler does not know; deleting",
                "unknown_engine_table",
            ),
            ("something new", "other"),
        ] {
            assert_eq!(problem_kind(problem), kind, "{problem}");
            assert!(PROBLEM_KINDS.contains(&kind));
        }
    }

    #[test]
    fn a_reason_is_reported_until_preflight_passes() {
        let health = Health::new(std::time::Duration::from_secs(60));
        let metrics = Metrics::new();
        let problems = vec!["table _duroxide.kv_store does not exist".to_owned()];
        record(&health, &metrics, &problems);
        assert!(
            !health.set_not_reconcilable(Some(problems[0].clone())),
            "unchanged"
        );
        let table_missing = Problem {
            problem: "table_missing",
        };
        assert_eq!(
            metrics.not_reconcilable.get_or_create(&table_missing).get(),
            1
        );
        record(&health, &metrics, &[]);
        assert_eq!(
            metrics.not_reconcilable.get_or_create(&table_missing).get(),
            0
        );
        assert!(!health.set_not_reconcilable(None), "cleared");
    }
}
