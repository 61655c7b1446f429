//! The model's two layers: what the fixture stores for a generated population, and the
//! specification's rules over those stored values (terminal_at, settled, per-status
//! windows, the hard-cap ranking, orphans), in plain Rust, independent of the daemon's SQL.

use std::collections::{BTreeMap, BTreeSet};

use super::population::{Ago, DfStatus, EngineStatus, Population};

// ---------------------------------------------------------------------------------------
// What the fixture stores (read from seed_functions.sql's documentation)
// ---------------------------------------------------------------------------------------

/// The stored values the rules look at, for one root.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    pub(super) df: Option<StoredDf>,
    pub(super) engine: Option<StoredEngine>,
}

#[derive(Clone, Debug)]
pub(super) struct StoredDf {
    pub(super) status: DfStatus,
    pub(super) created_at: Ago,
    pub(super) completed_at: Option<Ago>,
}

#[derive(Clone, Debug)]
pub(super) struct StoredEngine {
    /// Status of the root's current execution.
    pub(super) status: EngineStatus,
    /// executions.completed_at of the current execution.
    pub(super) completed_at: Option<Ago>,
    /// instances.updated_at.
    pub(super) updated_at: Ago,
    /// Status of each child's current execution.
    pub(super) children: Vec<EngineStatus>,
}

impl StoredEngine {
    /// Settled: the root and every child are terminal engine instances (Completed or
    /// Failed); a root can end while its children still run.
    pub(super) fn settled(&self) -> bool {
        self.status.is_terminal() && self.children.iter().all(|c| c.is_terminal())
    }
}

/// The engine tree the fixture writes: finished_at counts only for a status other than
/// Running; the execution's completed_at only for Completed and Failed; updated_at is the
/// finish time, or the creation time when there is none. Children are in `child`, by
/// default in the root's status (Completed under a root between generations: the children
/// of its finished generation).
pub(super) fn stored_engine(
    status: EngineStatus,
    created: Ago,
    finished: Option<Ago>,
    children: i32,
    child: Option<EngineStatus>,
) -> StoredEngine {
    let done = if status == EngineStatus::Running {
        None
    } else {
        finished
    };
    let child = child.unwrap_or(match status {
        EngineStatus::ContinuedAsNew => EngineStatus::Completed,
        other => other,
    });
    StoredEngine {
        status,
        completed_at: match status {
            EngineStatus::Completed | EngineStatus::Failed => done,
            EngineStatus::Running | EngineStatus::ContinuedAsNew => None,
        },
        updated_at: done.unwrap_or(created),
        children: vec![child; children.max(0) as usize],
    }
}

pub(super) fn stored(p: &Population) -> BTreeMap<String, Stored> {
    let mut all = BTreeMap::new();
    for (id, w) in &p.workflows {
        let df = StoredDf {
            status: w.df,
            created_at: w.created,
            completed_at: if w.df == DfStatus::Completed {
                w.finished
            } else {
                None
            },
        };
        all.insert(
            id.clone(),
            Stored {
                df: Some(df),
                engine: w
                    .engine
                    .map(|e| stored_engine(e, w.created, w.finished, w.children, w.child)),
            },
        );
    }
    for (id, o) in &p.orphans {
        all.insert(
            id.clone(),
            Stored {
                df: None,
                engine: Some(stored_engine(
                    o.engine, o.created, o.finished, o.children, o.child,
                )),
            },
        );
    }
    all
}

// ---------------------------------------------------------------------------------------
// The reference model: the specification's rules
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    /// Live df row (pending / running): never deleted.
    Live,
    /// Terminal, within its window and the cap.
    Retained,
    /// Terminal and expired (by age or cap), but its engine tree has not ended: the root
    /// or a child is Running or between generations (ContinuedAsNew).
    Unsettled,
    /// Terminal, settled, older than its window: deleted with its tree.
    ExpiredByAge,
    /// Terminal, settled, within its window but outside the newest `hard_cap`: deleted.
    OverCap,
    /// Engine root without df row, settled and old enough: deleted with its tree.
    OrphanReclaimed,
    /// Engine root without df row, Running or between generations: kept.
    OrphanRunning,
    /// Engine root without df row, ended but too young: kept.
    OrphanYoung,
    /// Engine root without df row, ended and old enough, but a child has not ended: kept.
    OrphanUnsettled,
}

impl Fate {
    pub(super) fn deleted(self) -> bool {
        matches!(
            self,
            Fate::ExpiredByAge | Fate::OverCap | Fate::OrphanReclaimed
        )
    }
}

/// terminal_at = df.completed_at, else the engine root's current-execution completed_at,
/// else df.created_at.
pub(super) fn terminal_at(df: &StoredDf, engine: Option<&StoredEngine>) -> Ago {
    df.completed_at
        .or_else(|| engine.and_then(|e| e.completed_at))
        .unwrap_or(df.created_at)
}

/// The fate of every root (df row and/or engine root) under the rules.
pub(super) fn model(p: &Population) -> BTreeMap<String, Fate> {
    let r = &p.retention;
    let rows = stored(p);

    // The cap ranks ALL terminal df rows (settled or not): terminal_at DESC (youngest
    // first), then id DESC; ranks above hard_cap (1-based) are over the cap.
    let mut terminal: Vec<(Ago, &String)> = rows
        .iter()
        .filter_map(|(id, s)| {
            let df = s.df.as_ref()?;
            df.status
                .is_terminal()
                .then(|| (terminal_at(df, s.engine.as_ref()), id))
        })
        .collect();
    terminal.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
    let over_cap: BTreeSet<&String> = terminal
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as u64 + 1) > r.hard_cap)
        .map(|(_, (_, id))| *id)
        .collect();

    let orphan_age = r.window.max(r.orphan_min_age);
    rows.iter()
        .map(|(id, s)| {
            let fate = match (&s.df, &s.engine) {
                (Some(df), engine) => {
                    if !df.status.is_terminal() {
                        Fate::Live
                    } else {
                        // No engine tree at all is settled too.
                        let settled = engine.as_ref().is_none_or(StoredEngine::settled);
                        let too_old = terminal_at(df, engine.as_ref()) > r.window_for(df.status);
                        let capped = over_cap.contains(id);
                        match (too_old || capped, settled) {
                            (false, _) => Fate::Retained,
                            (true, false) => Fate::Unsettled,
                            (true, true) if too_old => Fate::ExpiredByAge,
                            (true, true) => Fate::OverCap,
                        }
                    }
                }
                (None, Some(e)) => {
                    if !e.status.is_terminal() {
                        Fate::OrphanRunning
                    } else if e.completed_at.unwrap_or(e.updated_at) <= orphan_age {
                        Fate::OrphanYoung
                    } else if e.settled() {
                        Fate::OrphanReclaimed
                    } else {
                        Fate::OrphanUnsettled
                    }
                }
                (None, None) => unreachable!("every generated root has a df row or an engine"),
            };
            (id.clone(), fate)
        })
        .collect()
}

/// What the model expects to survive, given the engine ids actually seeded (children carry
/// fixture-made ids `{root}::1::{node}`): df ids, and every engine id whose tree's root
/// survives.
pub(super) fn expected_survivors(
    p: &Population,
    fates: &BTreeMap<String, Fate>,
    seeded_engine: &[String],
) -> (Vec<String>, Vec<String>) {
    let df: Vec<String> = p
        .workflows
        .keys()
        .filter(|id| !fates[*id].deleted())
        .cloned()
        .collect();
    let mut engine: Vec<String> = seeded_engine
        .iter()
        .filter(|id| !fates[root_of(id)].deleted())
        .cloned()
        .collect();
    engine.sort();
    (df, engine)
}

/// The root a fixture engine id belongs to: children are `{parent}::1::{node}`.
pub(super) fn root_of(engine_id: &str) -> &str {
    engine_id.split("::").next().expect("split yields one item")
}
