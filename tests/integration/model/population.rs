//! What the model-based test generates: df rows and their engine trees, orphan engine
//! trees, and the retention configuration of the pass.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use df_reconciler_core::config::Config;

pub(super) const HOUR: u64 = 3_600;
pub(super) const DAY: u64 = 86_400;

// ---------------------------------------------------------------------------------------
// The population
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DfStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl DfStatus {
    pub(super) fn sql(self) -> &'static str {
        match self {
            DfStatus::Pending => "pending",
            DfStatus::Running => "running",
            DfStatus::Completed => "completed",
            DfStatus::Failed => "failed",
            DfStatus::Cancelled => "cancelled",
        }
    }

    pub(super) fn is_terminal(self) -> bool {
        matches!(
            self,
            DfStatus::Completed | DfStatus::Failed | DfStatus::Cancelled
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EngineStatus {
    Running,
    Completed,
    Failed,
    ContinuedAsNew,
}

impl EngineStatus {
    /// A terminal engine instance: Completed or Failed. Running and ContinuedAsNew (between
    /// two generations) are live.
    pub(super) fn is_terminal(self) -> bool {
        matches!(self, EngineStatus::Completed | EngineStatus::Failed)
    }

    pub(super) fn sql(self) -> &'static str {
        match self {
            EngineStatus::Running => "Running",
            EngineStatus::Completed => "Completed",
            EngineStatus::Failed => "Failed",
            EngineStatus::ContinuedAsNew => "ContinuedAsNew",
        }
    }
}

/// Seconds before the seeding transaction's `now()`; larger is older.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Ago(pub(super) u64);

impl Ago {
    pub(super) fn secs(self) -> f64 {
        self.0 as f64
    }
}

impl fmt::Debug for Ago {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d, rest) = (self.0 / DAY, self.0 % DAY);
        let (h, m) = (rest / HOUR, rest % HOUR / 60);
        write!(f, "{d}d{h:02}h{m:02}m")
    }
}

/// `df_fixture.workflow(id, df, engine, now() - created, now() - finished, children,
/// child_status => child)`.
#[derive(Clone, Debug)]
pub(super) struct Workflow {
    pub(super) df: DfStatus,
    /// None: no engine record at all.
    pub(super) engine: Option<EngineStatus>,
    pub(super) created: Ago,
    pub(super) finished: Option<Ago>,
    pub(super) children: i32,
    /// The status of every child; None: the fixture's default (see `rules::stored`).
    pub(super) child: Option<EngineStatus>,
}

/// `df_fixture.orphan_root(id, engine, now() - created, now() - finished, children,
/// child_status => child)`.
#[derive(Clone, Debug)]
pub(super) struct Orphan {
    pub(super) engine: EngineStatus,
    pub(super) created: Ago,
    pub(super) finished: Option<Ago>,
    pub(super) children: i32,
    /// The status of every child; None: the fixture's default.
    pub(super) child: Option<EngineStatus>,
}

#[derive(Clone, Debug)]
pub(super) struct Retention {
    pub(super) window: Ago,
    pub(super) completed: Option<Ago>,
    pub(super) failed: Option<Ago>,
    pub(super) cancelled: Option<Ago>,
    pub(super) hard_cap: u64,
    pub(super) orphan_min_age: Ago,
    pub(super) batch_size: u32,
}

impl Retention {
    pub(super) fn window_for(&self, status: DfStatus) -> Ago {
        let specific = match status {
            DfStatus::Completed => self.completed,
            DfStatus::Failed => self.failed,
            DfStatus::Cancelled => self.cancelled,
            DfStatus::Pending | DfStatus::Running => unreachable!("live rows have no window"),
        };
        specific.unwrap_or(self.window)
    }

    pub(super) fn apply(&self, cfg: &mut Config) {
        let d = |a: Ago| Duration::from_secs(a.0);
        cfg.retention.window = d(self.window);
        cfg.retention.completed = self.completed.map(d);
        cfg.retention.failed = self.failed.map(d);
        cfg.retention.cancelled = self.cancelled.map(d);
        cfg.retention.hard_cap = self.hard_cap;
        cfg.retention.orphan_min_age = d(self.orphan_min_age);
        let shortest = [
            Some(self.window),
            self.completed,
            self.failed,
            self.cancelled,
            Some(self.orphan_min_age),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("window is always set");
        cfg.retention.allow_short_retention = shortest < Ago(HOUR);
        cfg.pass.batch_size = self.batch_size;
    }
}

/// Ids are 8 lowercase hex digits, unique across workflows and orphans.
#[derive(Clone, Debug)]
pub(super) struct Population {
    pub(super) workflows: BTreeMap<String, Workflow>,
    pub(super) orphans: BTreeMap<String, Orphan>,
    pub(super) retention: Retention,
}
