//! Model-based test of one pass: random populations of df rows and engine trees are seeded
//! with the `df_fixture` functions, ONE real pass runs, and what survives is compared with a
//! small reference model of the retention rules written in plain Rust over in-memory
//! structs, independently of the daemon's SQL.
//!
//! The model has two layers:
//! - [`stored`](rules::stored): what the fixture writes for a generated row (df.completed_at, the engine
//!   root's status, executions.completed_at, instances.updated_at), as ages in seconds
//!   before the seeding transaction's `now()`;
//! - [`model`](rules::model): the specification's rules over those stored values (terminal_at, settled,
//!   per-status windows, the hard cap ranking, orphans).
//!
//! Boundaries: workflow ages are whole days plus half a day and windows whole days; orphan
//! ages are whole hours plus half an hour and their cutoff max(window, orphan_min_age) is
//! whole hours. No age is within 30 minutes of a cutoff, so the pass starting a moment after
//! seeding cannot flip a decision. Everything is seeded in one transaction so that equal
//! generated ages give equal timestamps (ties are real ties, broken by id as the cap says).
//!
//! Modules: [`population`] (what is generated), [`rules`] (the two layers above),
//! [`strategies`] (how it is generated), [`seeding`] (writing a population and checking
//! one pass against the model).

use std::collections::BTreeMap;

use proptest::prelude::*;

use population::{Ago, DfStatus, EngineStatus, Orphan, Population, Retention, Workflow, DAY, HOUR};
use rules::{model, Fate};
use seeding::check;
use strategies::{days_and_a_half, hours_and_a_half, population};

mod population;
mod rules;
mod seeding;
mod strategies;

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
        child: None,
    };
    let orphan = |engine, created: Ago, finished: Option<Ago>, children| Orphan {
        engine,
        created,
        finished,
        children,
        child: None,
    };
    // The same, with children in `child` whatever the root's status.
    let with_child = |w: Workflow, child| Workflow {
        child: Some(child),
        ..w
    };
    let orphan_with_child = |o: Orphan, child| Orphan {
        child: Some(child),
        ..o
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
            // ...and the same, but the engine root is between generations (ContinuedAsNew,
            // no completed_at): ages from df.created_at, 40.5 days, expired, but live:
            // unsettled, never deleted.
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
            // Completed 45.5 days ago, but a RACE's loser still runs: unsettled.
            (
                "0000000d".into(),
                with_child(
                    wf(D::Completed, Some(E::Completed), 50, Some(45), 2),
                    E::Running,
                ),
            ),
            // Failed 44.5 days ago; its child loop is between generations: unsettled.
            (
                "0000000e".into(),
                with_child(
                    wf(D::Failed, Some(E::Failed), 50, Some(44), 1),
                    E::ContinuedAsNew,
                ),
            ),
            // Cancelled 43.5 days ago; its child was cancelled too (Failed): expired.
            (
                "0000000f".into(),
                with_child(
                    wf(D::Cancelled, Some(E::Failed), 50, Some(43), 1),
                    E::Failed,
                ),
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
            // Between generations (ContinuedAsNew) since 35.5 days: live, kept.
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
            // Failed 40.5 days ago, a child still Running: kept until it ends.
            (
                "f0000007".into(),
                orphan_with_child(
                    orphan(E::Failed, days_and_a_half(45), Some(days_and_a_half(40)), 2),
                    E::Running,
                ),
            ),
            // Completed 40.5 days ago, its children too (given explicitly): reclaimed.
            (
                "f0000008".into(),
                orphan_with_child(
                    orphan(
                        E::Completed,
                        days_and_a_half(45),
                        Some(days_and_a_half(40)),
                        1,
                    ),
                    E::Completed,
                ),
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
            //   7 00000004 (20.5 d)  8 00000006 (40.5 d)  9 0000000f (43.5 d)
            //  10 0000000e (44.5 d) 11 0000000d (45.5 d) 12 00000007 (200.5 d)
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
        ("00000006", Fate::Unsettled),
        ("00000007", Fate::Unsettled),
        ("00000008", Fate::OverCap),
        ("00000009", Fate::Retained),
        ("0000000a", Fate::Retained),
        ("0000000b", Fate::Retained),
        ("0000000c", Fate::Retained),
        ("0000000d", Fate::Unsettled),
        ("0000000e", Fate::Unsettled),
        ("0000000f", Fate::ExpiredByAge),
        ("f0000001", Fate::OrphanYoung),
        ("f0000002", Fate::OrphanReclaimed),
        ("f0000003", Fate::OrphanRunning),
        ("f0000004", Fate::OrphanReclaimed),
        ("f0000005", Fate::OrphanRunning),
        ("f0000006", Fate::OrphanYoung),
        ("f0000007", Fate::OrphanUnsettled),
        ("f0000008", Fate::OrphanReclaimed),
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
