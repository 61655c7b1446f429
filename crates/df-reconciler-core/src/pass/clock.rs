//! The pass's clock: `now()`, the oldest open transaction, what the open-transaction guard
//! can see and the hard-cap edge, read once from the database; every cutoff of the pass
//! derives from them.

use std::time::{Duration, SystemTime};

use deadpool_postgres::Object;
use tokio_postgres::types::Timestamp;

use super::batch::set_local_limits;
use super::statements::Statements;
use crate::config::{Config, RetentionConfig};
use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::policy::TerminalStatus;
use crate::preflight::{self, OrphanGuard};
use crate::rules::RuleSet;
use crate::sql::reconcile;

/// The newest terminal row over a hard cap: (terminal_at, id).
type CapEdge = (Option<Timestamp<SystemTime>>, String);

/// The rules' parameters of the expired selection, one element per rule index (the rules
/// in file order, then the default; see [`crate::rules`]), bound as arrays.
#[derive(Debug, Clone)]
pub(crate) struct RuleParams {
    /// LIKE patterns (`$1`).
    pub(crate) labels: Vec<Option<String>>,
    /// Role OIDs (`$2`), resolved at the start of the pass.
    pub(crate) roles: Vec<Option<u32>>,
    /// Cutoff per terminal status (completed, failed, cancelled); None: nothing expires.
    pub(crate) cutoffs: [Vec<Option<SystemTime>>; 3],
    /// The newest terminal row over the rule's cap (its own, or the global one); None id:
    /// that cap is not reached.
    pub(crate) edge_at: Vec<Option<Timestamp<SystemTime>>>,
    pub(crate) edge_id: Vec<Option<String>>,
    /// Generations kept per instance (`keep_executions`), for generation pruning.
    pub(crate) keep_executions: Vec<i32>,
    /// Generations that ended before this may be pruned (now - `execution_min_age`); None:
    /// nothing is that old.
    pub(crate) generation_cutoffs: Vec<Option<SystemTime>>,
}

/// Everything fixed at the start of a pass, from the database clock.
#[derive(Debug, Clone)]
pub(crate) struct PassClock {
    pub(crate) db_now: SystemTime,
    /// Cutoffs and cap edges per rule.
    pub(crate) rules: RuleParams,
    pub(crate) orphan_cutoff: Option<SystemTime>,
    /// Orphans must have been created before this (the oldest open transaction).
    pub(crate) orphan_created_before: SystemTime,
    /// What the guard could see; when it holds orphans back, phase 2 does not run.
    pub(crate) guard: OrphanGuard,
    pub(crate) drift_cutoff: Option<SystemTime>,
}

impl PassClock {
    pub(crate) async fn read(
        client: &mut Object,
        cfg: &Config,
        st: &Statements,
    ) -> Result<Self, Error> {
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .context("starting the pass")?;
        set_local_limits(&tx, cfg).await?;
        let row = tx
            .fetch_one(reconcile::PASS_CLOCK, &[])
            .await
            .context("reading the database clock")?;
        let db_now: SystemTime = row.get(0);
        let oldest_open_xact: SystemTime = row.get(1);
        // After PASS_CLOCK, in the same transaction: the same sessions, then the prepared
        // transactions (see reconcile::ORPHAN_GUARD).
        let guard = preflight::orphan_guard(&*tx).await?;
        let rules = RuleSet::new(&cfg.retention);
        let roles = resolve_roles(&*tx, &rules).await?;
        let labels = rules.label_patterns();
        let mut edges: Vec<Option<CapEdge>> = vec![None; rules.len()];
        for (cap, group) in rules.cap_groups() {
            let cap = i64::try_from(cap).unwrap_or(i64::MAX);
            let terminal_rows: i64 = tx
                .fetch_one(
                    &st.terminal_count_up_to,
                    &[&labels, &roles, &cap.saturating_add(1), &group],
                )
                .await
                .context("counting terminal rows up to the hard cap")?
                .get(0);
            if terminal_rows <= cap {
                continue;
            }
            let edge = tx
                .fetch_opt(&st.cap_edge, &[&labels, &roles, &cap, &group])
                .await
                .context("finding the hard-cap edge")?
                .map(|row| {
                    (
                        row.get::<_, Option<Timestamp<SystemTime>>>(0),
                        row.get::<_, String>(1),
                    )
                });
            for index in group {
                edges[index as usize - 1] = edge.clone();
            }
        }
        tx.commit().await.context("ending the pass setup")?;
        Ok(Self::derive(
            db_now,
            oldest_open_xact,
            guard,
            RuleInputs {
                labels,
                roles,
                edges,
            },
            &cfg.retention,
        ))
    }

    /// The cutoffs from what the database said: each is `db_now` minus its window (None
    /// when that precedes what a timestamp can hold, or the window is forever: nothing is
    /// that old).
    fn derive(
        db_now: SystemTime,
        oldest_open_xact: SystemTime,
        guard: OrphanGuard,
        inputs: RuleInputs,
        r: &RetentionConfig,
    ) -> Self {
        let before = |d: Duration| db_now.checked_sub(d);
        let set = RuleSet::new(r);
        let (edge_at, edge_id) = inputs
            .edges
            .into_iter()
            .map(|e| match e {
                Some((at, id)) => (at, Some(id)),
                None => (None, None),
            })
            .unzip();
        Self {
            db_now,
            rules: RuleParams {
                labels: inputs.labels,
                roles: inputs.roles,
                cutoffs: TerminalStatus::ALL.map(|s| {
                    set.windows(s)
                        .into_iter()
                        .map(|w| w.and_then(before))
                        .collect()
                }),
                edge_at,
                edge_id,
                keep_executions: set.keep_executions(r.keep_executions),
                generation_cutoffs: set
                    .execution_min_ages(r.execution_min_age)
                    .into_iter()
                    .map(before)
                    .collect(),
            },
            orphan_cutoff: before(r.orphan_age()),
            orphan_created_before: oldest_open_xact.min(db_now),
            guard,
            drift_cutoff: before(r.orphan_min_age),
        }
    }
}

/// What the database said about the rules: their bound match values and cap edges.
#[derive(Debug, Clone, Default)]
struct RuleInputs {
    labels: Vec<Option<String>>,
    roles: Vec<Option<u32>>,
    edges: Vec<Option<CapEdge>>,
}

/// The OID of every rule's role, by rule index. A rule naming a role that does not exist
/// refuses the pass: its instances would silently fall under the rules after it.
pub(crate) async fn resolve_roles(
    client: &impl tokio_postgres::GenericClient,
    rules: &RuleSet<'_>,
) -> Result<Vec<Option<u32>>, Error> {
    let names = rules.role_names();
    let rows = client
        .fetch_all(reconcile::RULE_ROLES, &[&names])
        .await
        .context("resolving the rules' roles")?;
    let oids: Vec<Option<u32>> = rows.iter().map(|r| r.get(0)).collect();
    let missing = missing_roles(rules, &oids);
    if missing.is_empty() {
        Ok(oids)
    } else {
        Err(Error::Refused(missing))
    }
}

/// A problem per rule whose `submitted_by` names no role (`oids` by rule index).
pub(crate) fn missing_roles(rules: &RuleSet<'_>, oids: &[Option<u32>]) -> Vec<String> {
    rules
        .rules()
        .iter()
        .zip(oids)
        .filter_map(|(rule, oid)| match (&rule.submitted_by, oid) {
            (Some(role), None) => Some(format!(
                "retention.rules {:?}: submitted_by role {role:?} does not exist (the rule would match nothing)",
                rule.name
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * days as u32
    }

    /// The clock of a pass at 1000 s with no open transaction, an unblinded guard and no
    /// rule inputs from the database.
    fn derived(retention: &RetentionConfig) -> PassClock {
        PassClock::derive(
            at(1000),
            at(1000),
            OrphanGuard::CLEAR,
            RuleInputs::default(),
            retention,
        )
    }

    #[test]
    fn each_status_expires_after_its_own_window() {
        let retention = RetentionConfig {
            window: DAY * 30,
            failed: Some(DAY * 90),
            cancelled: Some(DAY),
            ..RetentionConfig::default()
        };
        let clock = derived(&retention);
        assert_eq!(
            clock.rules.cutoffs,
            [
                vec![Some(at(970))],
                vec![Some(at(910))],
                vec![Some(at(999))]
            ],
            "completed, failed, cancelled"
        );
    }

    #[test]
    fn orphans_age_from_the_longer_of_window_and_floor() {
        let retention = RetentionConfig {
            window: DAY,
            orphan_min_age: DAY * 7,
            ..RetentionConfig::default()
        };
        let clock = derived(&retention);
        assert_eq!(clock.orphan_cutoff, Some(at(993)));
        assert_eq!(clock.drift_cutoff, Some(at(993)));
        let retention = RetentionConfig {
            window: DAY * 30,
            ..retention
        };
        let clock = derived(&retention);
        assert_eq!(clock.orphan_cutoff, Some(at(970)));
        assert_eq!(
            clock.drift_cutoff,
            Some(at(993)),
            "drift uses the floor alone"
        );
    }

    #[test]
    fn orphans_must_predate_the_oldest_open_transaction_never_now() {
        let r = RetentionConfig::default();
        assert_eq!(
            PassClock::derive(
                at(1000),
                at(998),
                OrphanGuard::CLEAR,
                RuleInputs::default(),
                &r
            )
            .orphan_created_before,
            at(998)
        );
        // A transaction start ahead of now() must not widen the guard.
        assert_eq!(
            PassClock::derive(
                at(1000),
                at(1001),
                OrphanGuard::CLEAR,
                RuleInputs::default(),
                &r
            )
            .orphan_created_before,
            at(1000)
        );
    }

    #[test]
    fn a_window_older_than_any_timestamp_expires_nothing() {
        let retention = RetentionConfig {
            window: Duration::MAX,
            ..RetentionConfig::default()
        };
        let clock = derived(&retention);
        assert_eq!(clock.rules.cutoffs, [vec![None], vec![None], vec![None]]);
        assert_eq!(clock.orphan_cutoff, None);
        assert_eq!(
            clock.drift_cutoff,
            Some(at(1000) - Duration::from_secs(3600))
        );
    }
}
