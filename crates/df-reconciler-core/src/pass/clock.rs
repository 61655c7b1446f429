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
use crate::sql::reconcile;

/// The newest terminal row over the hard cap: (terminal_at, id).
type CapEdge = (Option<Timestamp<SystemTime>>, String);

/// Everything fixed at the start of a pass, from the database clock.
#[derive(Debug, Clone)]
pub(crate) struct PassClock {
    pub(crate) db_now: SystemTime,
    /// Cutoff per terminal status (completed, failed, cancelled); None: nothing expires.
    pub(crate) cutoffs: [Option<SystemTime>; 3],
    /// The newest terminal row over the hard cap (terminal_at, id); None: cap not reached.
    pub(crate) cap_edge: Option<CapEdge>,
    pub(crate) orphan_cutoff: Option<SystemTime>,
    /// Orphans must have been created before this (the oldest open transaction).
    pub(crate) orphan_created_before: SystemTime,
    /// What the guard could see; when it holds orphans back, phase 2 does not run.
    pub(crate) guard: OrphanGuard,
    pub(crate) drift_cutoff: Option<SystemTime>,
    /// Generations that ended before this may be pruned (now - execution_min_age).
    pub(crate) generation_cutoff: Option<SystemTime>,
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
        let hard_cap = i64::try_from(cfg.retention.hard_cap).unwrap_or(i64::MAX);
        let terminal_rows: i64 = tx
            .fetch_one(&st.terminal_count_up_to, &[&hard_cap.saturating_add(1)])
            .await
            .context("counting terminal rows up to the hard cap")?
            .get(0);
        let cap_edge = if terminal_rows <= hard_cap {
            None
        } else {
            tx.fetch_opt(&st.cap_edge, &[&hard_cap])
                .await
                .context("finding the hard-cap edge")?
                .map(|row| {
                    (
                        row.get::<_, Option<Timestamp<SystemTime>>>(0),
                        row.get::<_, String>(1),
                    )
                })
        };
        tx.commit().await.context("ending the pass setup")?;
        Ok(Self::derive(
            db_now,
            oldest_open_xact,
            guard,
            cap_edge,
            &cfg.retention,
        ))
    }

    /// The cutoffs from what the database said: each is `db_now` minus its window (None
    /// when that precedes what a timestamp can hold: nothing is that old).
    fn derive(
        db_now: SystemTime,
        oldest_open_xact: SystemTime,
        guard: OrphanGuard,
        cap_edge: Option<CapEdge>,
        r: &RetentionConfig,
    ) -> Self {
        let before = |d: Duration| db_now.checked_sub(d);
        Self {
            db_now,
            cutoffs: TerminalStatus::ALL.map(|s| before(r.window_for(s))),
            cap_edge,
            orphan_cutoff: before(r.orphan_age()),
            orphan_created_before: oldest_open_xact.min(db_now),
            guard,
            drift_cutoff: before(r.orphan_min_age),
            generation_cutoff: before(r.execution_min_age),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * days as u32
    }

    #[test]
    fn each_status_expires_after_its_own_window() {
        let retention = RetentionConfig {
            window: DAY * 30,
            failed: Some(DAY * 90),
            cancelled: Some(DAY),
            ..RetentionConfig::default()
        };
        let clock = PassClock::derive(at(1000), at(1000), OrphanGuard::CLEAR, None, &retention);
        assert_eq!(
            clock.cutoffs,
            [Some(at(970)), Some(at(910)), Some(at(999))],
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
        let clock = PassClock::derive(at(1000), at(1000), OrphanGuard::CLEAR, None, &retention);
        assert_eq!(clock.orphan_cutoff, Some(at(993)));
        assert_eq!(clock.drift_cutoff, Some(at(993)));
        let retention = RetentionConfig {
            window: DAY * 30,
            ..retention
        };
        let clock = PassClock::derive(at(1000), at(1000), OrphanGuard::CLEAR, None, &retention);
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
            PassClock::derive(at(1000), at(998), OrphanGuard::CLEAR, None, &r)
                .orphan_created_before,
            at(998)
        );
        // A transaction start ahead of now() must not widen the guard.
        assert_eq!(
            PassClock::derive(at(1000), at(1001), OrphanGuard::CLEAR, None, &r)
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
        let clock = PassClock::derive(at(1000), at(1000), OrphanGuard::CLEAR, None, &retention);
        assert_eq!(clock.cutoffs, [None; 3]);
        assert_eq!(clock.orphan_cutoff, None);
        assert_eq!(
            clock.drift_cutoff,
            Some(at(1000) - Duration::from_secs(3600))
        );
    }
}
