//! Model-based test of one pass: random populations of df rows and engine trees are seeded
//! with the `df_fixture` functions, ONE real pass runs, and what survives is compared with a
//! small reference model of the retention rules written in plain Rust over in-memory
//! structs, independently of the daemon's SQL.
//!
//! The model has two layers:
//! - [`stored`]: what the fixture writes for a generated row (df.completed_at, the engine
//!   root's status, executions.completed_at, instances.updated_at), as ages in seconds
//!   before the seeding transaction's `now()`;
//! - [`model`]: the specification's rules over those stored values (terminal_at, settled,
//!   per-status windows, the hard cap ranking, orphans).
//!
//! Boundaries: workflow ages are whole days plus half a day and windows whole days; orphan
//! ages are whole hours plus half an hour and their cutoff max(window, orphan_min_age) is
//! whole hours. No age is within 30 minutes of a cutoff, so the pass starting a moment after
//! seeding cannot flip a decision. Everything is seeded in one transaction so that equal
//! generated ages give equal timestamps (ties are real ties, broken by id as the cap says).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use df_reconciler_core::config::Config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio_postgres::Client;

use crate::harness::TestDb;
use crate::support::{config_for, df_ids, engine_ids, pass};

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

// ---------------------------------------------------------------------------------------
// The population
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DfStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl DfStatus {
    fn sql(self) -> &'static str {
        match self {
            DfStatus::Pending => "pending",
            DfStatus::Running => "running",
            DfStatus::Completed => "completed",
            DfStatus::Failed => "failed",
            DfStatus::Cancelled => "cancelled",
        }
    }

    fn is_terminal(self) -> bool {
        matches!(
            self,
            DfStatus::Completed | DfStatus::Failed | DfStatus::Cancelled
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EngineStatus {
    Running,
    Completed,
    Failed,
    ContinuedAsNew,
}

impl EngineStatus {
    fn sql(self) -> &'static str {
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
struct Ago(u64);

impl Ago {
    fn secs(self) -> f64 {
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

/// `df_fixture.workflow(id, df, engine, now() - created, now() - finished, children)`.
#[derive(Clone, Debug)]
struct Workflow {
    df: DfStatus,
    /// None: no engine record at all.
    engine: Option<EngineStatus>,
    created: Ago,
    finished: Option<Ago>,
    children: i32,
}

/// `df_fixture.orphan_root(id, engine, now() - created, now() - finished, children)`.
#[derive(Clone, Debug)]
struct Orphan {
    engine: EngineStatus,
    created: Ago,
    finished: Option<Ago>,
    children: i32,
}

#[derive(Clone, Debug)]
struct Retention {
    window: Ago,
    completed: Option<Ago>,
    failed: Option<Ago>,
    cancelled: Option<Ago>,
    hard_cap: u64,
    orphan_min_age: Ago,
    batch_size: u32,
}

impl Retention {
    fn window_for(&self, status: DfStatus) -> Ago {
        let specific = match status {
            DfStatus::Completed => self.completed,
            DfStatus::Failed => self.failed,
            DfStatus::Cancelled => self.cancelled,
            DfStatus::Pending | DfStatus::Running => unreachable!("live rows have no window"),
        };
        specific.unwrap_or(self.window)
    }

    fn apply(&self, cfg: &mut Config) {
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
struct Population {
    workflows: BTreeMap<String, Workflow>,
    orphans: BTreeMap<String, Orphan>,
    retention: Retention,
}

// ---------------------------------------------------------------------------------------
// What the fixture stores (read from seed_functions.sql's documentation)
// ---------------------------------------------------------------------------------------

/// The stored values the rules look at, for one root.
#[derive(Clone, Debug)]
struct Stored {
    df: Option<StoredDf>,
    engine: Option<StoredEngine>,
}

#[derive(Clone, Debug)]
struct StoredDf {
    status: DfStatus,
    created_at: Ago,
    completed_at: Option<Ago>,
}

#[derive(Clone, Debug)]
struct StoredEngine {
    /// Status of the root's current execution.
    status: EngineStatus,
    /// executions.completed_at of the current execution.
    completed_at: Option<Ago>,
    /// instances.updated_at.
    updated_at: Ago,
}

/// The engine root the fixture writes: finished_at counts only for a terminal status; the
/// execution's completed_at only for Completed and Failed; updated_at is the finish time, or
/// the creation time when there is none.
fn stored_engine(status: EngineStatus, created: Ago, finished: Option<Ago>) -> StoredEngine {
    let done = if status == EngineStatus::Running {
        None
    } else {
        finished
    };
    StoredEngine {
        status,
        completed_at: match status {
            EngineStatus::Completed | EngineStatus::Failed => done,
            EngineStatus::Running | EngineStatus::ContinuedAsNew => None,
        },
        updated_at: done.unwrap_or(created),
    }
}

fn stored(p: &Population) -> BTreeMap<String, Stored> {
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
                engine: w.engine.map(|e| stored_engine(e, w.created, w.finished)),
            },
        );
    }
    for (id, o) in &p.orphans {
        all.insert(
            id.clone(),
            Stored {
                df: None,
                engine: Some(stored_engine(o.engine, o.created, o.finished)),
            },
        );
    }
    all
}

// ---------------------------------------------------------------------------------------
// The reference model: the specification's rules
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Live df row (pending / running): never deleted.
    Live,
    /// Terminal, within its window and the cap.
    Retained,
    /// Terminal and expired (by age or cap), but its engine root still runs.
    Unsettled,
    /// Terminal, settled, older than its window: deleted with its tree.
    ExpiredByAge,
    /// Terminal, settled, within its window but outside the newest `hard_cap`: deleted.
    OverCap,
    /// Engine root without df row, settled and old enough: deleted with its tree.
    OrphanReclaimed,
    /// Engine root without df row, Running: kept.
    OrphanRunning,
    /// Engine root without df row, settled but too young: kept.
    OrphanYoung,
}

impl Fate {
    fn deleted(self) -> bool {
        matches!(
            self,
            Fate::ExpiredByAge | Fate::OverCap | Fate::OrphanReclaimed
        )
    }
}

/// terminal_at = df.completed_at, else the engine root's current-execution completed_at,
/// else df.created_at.
fn terminal_at(df: &StoredDf, engine: Option<&StoredEngine>) -> Ago {
    df.completed_at
        .or_else(|| engine.and_then(|e| e.completed_at))
        .unwrap_or(df.created_at)
}

/// The fate of every root (df row and/or engine root) under the rules.
fn model(p: &Population) -> BTreeMap<String, Fate> {
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
                        let settled = engine.as_ref().is_none_or(|e| {
                            matches!(
                                e.status,
                                EngineStatus::Completed
                                    | EngineStatus::Failed
                                    | EngineStatus::ContinuedAsNew
                            )
                        });
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
                    if e.status == EngineStatus::Running {
                        Fate::OrphanRunning
                    } else if e.completed_at.unwrap_or(e.updated_at) > orphan_age {
                        Fate::OrphanReclaimed
                    } else {
                        Fate::OrphanYoung
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
fn expected_survivors(
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
fn root_of(engine_id: &str) -> &str {
    engine_id.split("::").next().expect("split yields one item")
}

// ---------------------------------------------------------------------------------------
// Seeding and checking
// ---------------------------------------------------------------------------------------

/// Seeds the population in ONE transaction, so every row shares the same `now()`.
async fn seed(c: &Client, p: &Population) {
    c.batch_execute("BEGIN").await.expect("BEGIN");
    for (id, w) in &p.workflows {
        c.execute(
            "SELECT df_fixture.workflow($1, $2, $3, now() - make_interval(secs => $4),
                    now() - make_interval(secs => $5), $6)",
            &[
                id,
                &w.df.sql(),
                &w.engine.map(EngineStatus::sql),
                &w.created.secs(),
                &w.finished.map(Ago::secs),
                &w.children,
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("seeding workflow {id} {w:?}: {e:?}"));
    }
    for (id, o) in &p.orphans {
        c.execute(
            "SELECT df_fixture.orphan_root($1, $2, now() - make_interval(secs => $3),
                    now() - make_interval(secs => $4), $5)",
            &[
                id,
                &o.engine.sql(),
                &o.created.secs(),
                &o.finished.map(Ago::secs),
                &o.children,
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("seeding orphan {id} {o:?}: {e:?}"));
    }
    c.batch_execute("COMMIT").await.expect("COMMIT");
}

/// Seeds `p` into a fresh database, runs one pass and compares with the model; then a second
/// pass must remove nothing.
async fn check(p: &Population) -> Result<(), TestCaseError> {
    let fates = model(p);
    let db = TestDb::new().await;
    let c = db.client().await;
    seed(&c, p).await;

    // The fixture wrote what the model assumes: one df row per workflow, and a tree of
    // 1 + children engine instances per root with an engine record.
    let seeded_engine = engine_ids(&c).await;
    let mut tree_sizes: BTreeMap<&str, i32> = BTreeMap::new();
    for id in &seeded_engine {
        *tree_sizes.entry(root_of(id)).or_default() += 1;
    }
    let planned_sizes: BTreeMap<&str, i32> = p
        .workflows
        .iter()
        .filter(|(_, w)| w.engine.is_some())
        .map(|(id, w)| (id.as_str(), 1 + w.children))
        .chain(
            p.orphans
                .iter()
                .map(|(id, o)| (id.as_str(), 1 + o.children)),
        )
        .collect();
    prop_assert_eq!(&tree_sizes, &planned_sizes, "seeded engine trees");
    let seeded_df = df_ids(&c).await;
    prop_assert_eq!(
        seeded_df,
        p.workflows.keys().cloned().collect::<Vec<_>>(),
        "seeded df rows"
    );

    let mut cfg = config_for(&db);
    p.retention.apply(&mut cfg);
    let report = pass(&cfg, false).await;

    let (want_df, want_engine) = expected_survivors(p, &fates, &seeded_engine);
    let mut got_engine = engine_ids(&c).await;
    got_engine.sort();
    let got_df = df_ids(&c).await;
    prop_assert_eq!(
        &got_df,
        &want_df,
        "surviving df ids\nmodel fates: {:#?}\nreport: {}",
        fates,
        report
    );
    prop_assert_eq!(
        &got_engine,
        &want_engine,
        "surviving engine ids\nmodel fates: {:#?}\nreport: {}",
        fates,
        report
    );

    // The report counts the same removals.
    let deleted_roots = fates.values().filter(|f| f.deleted()).count() as u64;
    let reclaimed = fates
        .values()
        .filter(|f| **f == Fate::OrphanReclaimed)
        .count() as u64;
    let children_removed = (seeded_engine.len() - want_engine.len()) as u64
        - fates
            .iter()
            .filter(|(id, f)| f.deleted() && planned_sizes.contains_key(id.as_str()))
            .count() as u64;
    prop_assert!(
        report.complete && report.errors.is_empty(),
        "pass incomplete: {}",
        report
    );
    prop_assert_eq!(
        report.instances_removed(),
        deleted_roots,
        "report: {}",
        report
    );
    prop_assert_eq!(report.orphans_reclaimed, reclaimed, "report: {}", report);
    prop_assert_eq!(
        report.engine_children_removed,
        children_removed,
        "report: {}",
        report
    );

    // Idempotence: the survivors are a fixed point.
    let again = pass(&cfg, false).await;
    prop_assert_eq!(
        again.instances_removed(),
        0,
        "second pass removed more: {}",
        again
    );
    prop_assert_eq!(df_ids(&c).await, got_df, "second pass, df ids");
    let mut engine_again = engine_ids(&c).await;
    engine_again.sort();
    prop_assert_eq!(engine_again, got_engine, "second pass, engine ids");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Whole days plus half a day: 12 h away from every whole-day cutoff.
fn days_and_a_half(days: u64) -> Ago {
    Ago(days * DAY + DAY / 2)
}

/// Whole hours plus half an hour: 30 min away from every whole-hour cutoff.
fn hours_and_a_half(hours: u64) -> Ago {
    Ago(hours * HOUR + HOUR / 2)
}

fn df_status() -> impl Strategy<Value = DfStatus> {
    prop_oneof![
        Just(DfStatus::Completed),
        Just(DfStatus::Failed),
        Just(DfStatus::Cancelled),
        Just(DfStatus::Running),
        Just(DfStatus::Pending),
    ]
}

fn engine_status() -> impl Strategy<Value = EngineStatus> {
    prop_oneof![
        Just(EngineStatus::Completed),
        Just(EngineStatus::Failed),
        Just(EngineStatus::ContinuedAsNew),
        Just(EngineStatus::Running),
    ]
}

fn workflow() -> impl Strategy<Value = Workflow> {
    (
        df_status(),
        prop::option::weighted(0.85, engine_status()),
        // Mostly within reach of the windows (1..60 days), so that the cap matters too.
        prop_oneof![3 => 1u64..40, 1 => 1u64..400],
        prop::option::weighted(0.8, 0u64..=8),
        0i32..=2,
    )
        .prop_map(|(df, engine, created, eighths, children)| Workflow {
            df,
            engine,
            created: days_and_a_half(created),
            // Between creation and now (inclusive): `eighths` of the way back to creation.
            finished: eighths.map(|k| days_and_a_half(created * k / 8)),
            children,
        })
}

/// Minutes to 400 days, on the half hour.
fn orphan_age() -> impl Strategy<Value = Ago> {
    prop_oneof![
        (0u64..72).prop_map(hours_and_a_half),
        (0u64..400).prop_map(|d| hours_and_a_half(d * 24)),
    ]
}

fn orphan() -> impl Strategy<Value = Orphan> {
    (
        engine_status(),
        orphan_age(),
        0u64..5,
        prop::option::weighted(0.85, Just(())),
        0i32..=2,
    )
        .prop_map(
            |(engine, finished, ran_days, has_finish, children)| Orphan {
                engine,
                created: Ago(finished.0 + ran_days * DAY),
                finished: has_finish.map(|()| finished),
                children,
            },
        )
}

fn retention() -> impl Strategy<Value = Retention> {
    let days = |d: u64| Ago(d * DAY);
    (
        1u64..=60,
        prop::option::of(1u64..=60),
        prop::option::of(1u64..=60),
        prop::option::of(1u64..=60),
        // Often below the number of terminal rows, so that the cap bites.
        prop_oneof![0u64..=30, 0u64..=10],
        1u64..=72,
        1u32..=10,
    )
        .prop_map(
            move |(window, completed, failed, cancelled, hard_cap, min_age, batch_size)| {
                Retention {
                    window: days(window),
                    completed: completed.map(days),
                    failed: failed.map(days),
                    cancelled: cancelled.map(days),
                    hard_cap,
                    orphan_min_age: Ago(min_age * HOUR),
                    batch_size,
                }
            },
        )
}

fn population() -> impl Strategy<Value = Population> {
    (
        prop::collection::btree_map("[0-9a-f]{8}", workflow(), 0..40),
        prop::collection::btree_map("[0-9a-f]{8}", orphan(), 0..10),
        retention(),
    )
        .prop_filter("ids unique across df rows and orphans", |(w, o, _)| {
            o.keys().all(|id| !w.contains_key(id))
        })
        .prop_map(|(workflows, orphans, retention)| Population {
            workflows,
            orphans,
            retention,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        // Every shrink step costs a database and a pass (~0.2 s).
        max_shrink_iters: 400,
        // No regression files next to the sources: the failing input is printed instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn one_pass_matches_the_reference_model(p in population()) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(check(&p))?;
    }
}

// ---------------------------------------------------------------------------------------
// The model itself, on a hand-written population
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_model_on_a_hand_written_population() {
    use DfStatus as D;
    use EngineStatus as E;
    let wf = |df, engine, created: u64, finished: Option<u64>, children| Workflow {
        df,
        engine,
        created: days_and_a_half(created),
        finished: finished.map(days_and_a_half),
        children,
    };
    let orphan = |engine, created: Ago, finished: Option<Ago>, children| Orphan {
        engine,
        created,
        finished,
        children,
    };
    let p = Population {
        workflows: BTreeMap::from([
            // Live rows: never deleted, however old.
            (
                "00000001".into(),
                wf(D::Running, Some(E::Running), 300, None, 1),
            ),
            ("00000002".into(), wf(D::Pending, None, 300, None, 0)),
            (
                "00000003".into(),
                wf(D::Running, Some(E::Completed), 300, Some(299), 0),
            ),
            // Completed 20.5 days ago; completed window 10 days: expired by age.
            (
                "00000004".into(),
                wf(D::Completed, Some(E::Completed), 25, Some(20), 2),
            ),
            // Failed 20.5 days ago (engine completed_at); failed window 30 days: kept...
            (
                "00000005".into(),
                wf(D::Failed, Some(E::Failed), 40, Some(20), 0),
            ),
            // ...and the same, but the engine has no completed_at (ContinuedAsNew): ages
            // from df.created_at, 40.5 days: expired.
            (
                "00000006".into(),
                wf(D::Failed, Some(E::ContinuedAsNew), 40, Some(20), 1),
            ),
            // df failed but the engine root still runs: unsettled, never deleted.
            (
                "00000007".into(),
                wf(D::Failed, Some(E::Running), 200, None, 1),
            ),
            // Cancelled, no engine record, 5.5 days: window 30 days, so only the cap can
            // delete it.
            ("00000008".into(), wf(D::Cancelled, None, 5, None, 0)),
            // Cancelled 3.5 days (engine completed_at), young.
            (
                "00000009".into(),
                wf(D::Cancelled, Some(E::Failed), 9, Some(3), 0),
            ),
            // Completed 1.5 days: df.completed_at. Same age as 0000000b: a tie.
            (
                "0000000a".into(),
                wf(D::Completed, Some(E::Completed), 2, Some(1), 0),
            ),
            ("0000000b".into(), wf(D::Completed, None, 2, Some(1), 0)),
            // Engine root still running, but not expired: retained; as the youngest
            // terminal row it takes rank 1 of the cap.
            (
                "0000000c".into(),
                wf(D::Completed, Some(E::Running), 1, Some(0), 0),
            ),
        ]),
        orphans: BTreeMap::from([
            // Orphans must be older than max(window 30 days, orphan_min_age 1 h) = 30 days.
            // 10.5 days: young.
            (
                "f0000001".into(),
                orphan(
                    E::Completed,
                    days_and_a_half(12),
                    Some(days_and_a_half(10)),
                    1,
                ),
            ),
            // 40.5 days: reclaimed with its child.
            (
                "f0000002".into(),
                orphan(E::Failed, days_and_a_half(45), Some(days_and_a_half(40)), 1),
            ),
            // ContinuedAsNew ages from updated_at (= finished): 35.5 days: reclaimed.
            (
                "f0000003".into(),
                orphan(
                    E::ContinuedAsNew,
                    days_and_a_half(50),
                    Some(days_and_a_half(35)),
                    0,
                ),
            ),
            // No completion time: ages from updated_at = created_at, 31.5 days: reclaimed.
            (
                "f0000004".into(),
                orphan(E::Completed, days_and_a_half(31), None, 0),
            ),
            // Running orphans stay.
            (
                "f0000005".into(),
                orphan(E::Running, days_and_a_half(300), None, 2),
            ),
            // Young.
            (
                "f0000006".into(),
                orphan(E::Failed, hours_and_a_half(1), Some(Ago(HOUR / 2)), 0),
            ),
        ]),
        retention: Retention {
            window: Ago(30 * DAY),
            completed: Some(Ago(10 * DAY)),
            failed: None,
            cancelled: None,
            // Terminal rows by terminal_at DESC, id DESC:
            //   1 0000000c (0.5 d, engine Running)   2 0000000b (1.5 d)   3 0000000a (1.5 d)
            //   4 00000009 (3.5 d)   5 00000008 (5.5 d)   6 00000005 (20.5 d)
            //   7 00000004 (20.5 d)  8 00000006 (40.5 d)  9 00000007 (200.5 d)
            hard_cap: 4,
            orphan_min_age: Ago(HOUR),
            batch_size: 2,
        },
    };

    let fates = model(&p);
    let expect = [
        ("00000001", Fate::Live),
        ("00000002", Fate::Live),
        ("00000003", Fate::Live),
        ("00000004", Fate::ExpiredByAge),
        ("00000005", Fate::OverCap),
        ("00000006", Fate::ExpiredByAge),
        ("00000007", Fate::Unsettled),
        ("00000008", Fate::OverCap),
        ("00000009", Fate::Retained),
        ("0000000a", Fate::Retained),
        ("0000000b", Fate::Retained),
        ("0000000c", Fate::Retained),
        ("f0000001", Fate::OrphanYoung),
        ("f0000002", Fate::OrphanReclaimed),
        ("f0000003", Fate::OrphanReclaimed),
        ("f0000004", Fate::OrphanReclaimed),
        ("f0000005", Fate::OrphanRunning),
        ("f0000006", Fate::OrphanYoung),
    ];
    let expect: BTreeMap<String, Fate> = expect
        .into_iter()
        .map(|(id, f)| (id.to_string(), f))
        .collect();
    assert_eq!(fates, expect, "the model's own verdicts");

    // With a cap of 2 the tie at 1.5 days splits by id: 0000000b keeps rank 2, 0000000a
    // falls to rank 3.
    let mut tight = p.clone();
    tight.retention.hard_cap = 2;
    let fates = model(&tight);
    assert_eq!(fates["0000000b"], Fate::Retained);
    assert_eq!(fates["0000000a"], Fate::OverCap);
    assert_eq!(fates["0000000c"], Fate::Retained, "rank 1, engine Running");

    // And the daemon agrees on both.
    check(&p).await.unwrap_or_else(|e| panic!("{e}"));
    check(&tight).await.unwrap_or_else(|e| panic!("{e}"));
}
